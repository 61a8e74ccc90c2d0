"""Pilot tests for the dashboard's signal menu (`x`) and the Events section (issue 17).

The dashboard never signals a process: it asks the supervisor through the client, here
tests/fake_client.py, which records every call.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as dt
from collections.abc import AsyncIterator

from fake_client import NOW, FakeClient, demo_snapshot, event, screen_text
from support import pilot_until as until
from textual.pilot import Pilot
from textual.widgets import OptionList, Static

from clusterui.dashboard import DashboardApp
from clusterui.dashboard.modals import ConfirmScreen, SignalScreen


@contextlib.asynccontextmanager
async def dashboard(
    client: FakeClient | None = None, *, size: tuple[int, int] = (160, 48)
) -> AsyncIterator[tuple[DashboardApp, Pilot, FakeClient]]:
    client = client or FakeClient()
    app = DashboardApp(client, tz=dt.UTC)
    async with app.run_test(size=size) as pilot:
        await asyncio.wait_for(app.loaded.wait(), 5)
        await pilot.pause()
        yield app, pilot, client


async def select(app: DashboardApp, pilot: Pilot, key: str) -> None:
    assert app.table.select_key(key), key
    await pilot.pause()


def events_shown(app: DashboardApp) -> str:
    """The Events section as drawn (its lines on screen, trailing blanks stripped)."""
    static = app.main_screen.query_one("#detail-events", Static)
    lines = [static.render_line(y).text.rstrip() for y in range(static.size.height)]
    return "\n".join(lines)


def notices(app: DashboardApp) -> list[str]:
    return [str(n.message) for n in app._notifications]


async def pick(pilot: Pilot, app: DashboardApp, name: str) -> None:
    """In the open signal menu, move to `name` and press enter."""
    await until(pilot, lambda: isinstance(app.screen, SignalScreen), what="the signal menu")
    menu = app.screen.query_one(OptionList)
    while menu.get_option_at_index(menu.highlighted or 0).id != name:
        await pilot.press("down")
    await pilot.press("enter")


# -- the x menu -------------------------------------------------------------------------


async def test_x_on_a_worker_asks_the_supervisor_to_send_the_chosen_signal() -> None:
    async with dashboard() as (app, pilot, client):
        await select(app, pilot, "w:1")
        fetched = len(client.calls_of("app_events"))
        await pilot.press("x")
        await pick(pilot, app, "USR1")
        await until(pilot, lambda: client.calls_of("signal"), what="a signal call")
        assert client.calls_of("signal") == [("USR1", ["web:1"])]
        await until(pilot, lambda: "sent SIGUSR1 to 1 worker(s)" in notices(app), what="notice")
        # The timeline is fetched again: it has the signal the supervisor recorded.
        await until(
            pilot, lambda: len(client.calls_of("app_events")) > fetched, what="an events refetch"
        )
        assert client.calls_of("app_events")[-1] == ("web", 1, 15)


async def test_x_on_an_app_row_signals_every_worker_and_kill_asks_first() -> None:
    async with dashboard() as (app, pilot, client):
        await select(app, pilot, "app:api")
        await pilot.press("x")
        await until(pilot, lambda: isinstance(app.screen, SignalScreen), what="the menu")
        assert "Send a signal to 2 workers of api" in screen_text(app)
        await pick(pilot, app, "KILL")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the question")
        assert "Send SIGKILL to all 2 workers of api?" in screen_text(app)
        await pilot.press("n")
        await until(pilot, lambda: "Cancelled." in notices(app), what="cancelled")
        assert client.calls_of("signal") == []

        await pilot.press("x")
        await pick(pilot, app, "KILL")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the question")
        await pilot.press("y")
        await until(pilot, lambda: client.calls_of("signal"), what="a signal call")
        assert client.calls_of("signal") == [("KILL", ["api"])]


async def test_signals_other_than_kill_are_sent_without_a_question() -> None:
    async with dashboard() as (app, pilot, client):
        await select(app, pilot, "app:web")
        for name in ("HUP", "TERM"):
            sent = len(client.calls_of("signal"))
            await pilot.press("x")
            await pick(pilot, app, name)
            await until(
                pilot, lambda n=sent: len(client.calls_of("signal")) > n, what=f"{name} sent"
            )
            assert not isinstance(app.screen, ConfirmScreen)
        assert client.calls_of("signal") == [("HUP", ["web"]), ("TERM", ["web"])]


async def test_esc_closes_the_menu_without_a_call_and_errors_are_shown() -> None:
    async with dashboard() as (app, pilot, client):
        await select(app, pilot, "w:0")
        await pilot.press("x")
        await until(pilot, lambda: isinstance(app.screen, SignalScreen), what="the menu")
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, SignalScreen), what="closed")
        assert client.calls_of("signal") == []

        client.fail("signal", "no running worker to signal (web:0 not running)")
        await pilot.press("x")
        await pick(pilot, app, "HUP")
        await until(
            pilot,
            lambda: "no running worker to signal (web:0 not running)" in notices(app),
            what="the supervisor's error",
        )


async def test_the_palette_and_help_list_the_signal_key() -> None:
    async with dashboard() as (app, pilot, _):
        await select(app, pilot, "w:1")
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "Send a signal to web:1…  (x)" in titles
        await pilot.press("question_mark")
        await pilot.pause()
        assert "Send a signal (HUP, USR1, USR2, INT, TERM, KILL)" in screen_text(app)


# -- the Events section -----------------------------------------------------------------


async def test_events_of_the_selection_newest_first_with_local_times() -> None:
    async with dashboard() as (app, pilot, client):
        await select(app, pilot, "w:4")
        await until(pilot, lambda: "crashed" in events_shown(app), what="jobs:0's events")
        text = events_shown(app).splitlines()
        assert text[0] == "Events"
        rows = [line.split() for line in text[1:]]
        times = [r[0] for r in rows]
        assert times == sorted(times, reverse=True) and len(rows) == 4
        assert rows[0][1:] == ["restart", ":0", "crashed", "(exit", "code", "1)"]
        assert client.calls_of("app_events")[-1] == ("jobs", 0, 15)

        await select(app, pilot, "app:web")
        await until(pilot, lambda: "watch" in events_shown(app), what="web's events")
        lines = events_shown(app).splitlines()
        assert "restart :1  file change (watch)" in lines[1]
        assert "watch   app views.py changed: reloading" in lines[2]


async def test_events_are_fetched_again_when_the_apps_counters_move() -> None:
    async with dashboard() as (app, pilot, client):
        await select(app, pilot, "w:2")
        await until(pilot, lambda: "scale" in events_shown(app), what="api:0's events")
        calls = len(client.calls_of("app_events"))
        client.push_state()  # nothing changed: no new fetch
        await pilot.pause()
        await pilot.pause()
        assert len(client.calls_of("app_events")) == calls

        # A crash the supervisor recorded, with text the worker controls in it.
        hostile = "\x1b]2;pwned\x07[b]boo[/b]"
        client.timeline.append(event(NOW, "restart", "api", 0, hostile))
        snap = copy.deepcopy(client.snapshot)
        snap["workers"][2]["restarts"] += 1
        client.push_state(snap)
        await until(pilot, lambda: "pwned" in events_shown(app), what="the new event")
        assert len(client.calls_of("app_events")) == calls + 1
        shown = screen_text(app)
        assert "restart :0  \u241b]2;pwned\u2407[b]boo[/b]" in shown  # visible, not markup
        assert "\x1b" not in shown


async def test_no_fetch_while_the_detail_pane_is_hidden() -> None:
    async with dashboard(size=(80, 24)) as (app, pilot, client):
        await select(app, pilot, "w:4")
        assert not app.details_visible and client.calls_of("app_events") == []
        await pilot.press("enter")
        await until(pilot, lambda: client.calls_of("app_events"), what="a fetch")
        assert client.calls_of("app_events") == [("jobs", 0, 15)]


async def test_an_events_error_is_said_in_the_section() -> None:
    client = FakeClient(demo_snapshot())
    client.fail("app_events", "unknown operation 'events'", 2)
    async with dashboard(client) as (app, pilot, _):
        await until(pilot, lambda: "unknown operation" in events_shown(app), what="the fetch error")
        assert app.is_running
