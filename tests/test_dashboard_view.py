"""The dashboard's per-worker views (issue 17): the detail pane's Processes section and
the full-screen log (`L`), driven with Pilot over the FakeClient."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from fake_client import NOW, FakeClient, FakeClientError, demo_logs, demo_snapshot, screen_text
from support import burst, wait_for_async
from textual.pilot import Pilot

from clusterui.dashboard import DashboardApp
from clusterui.dashboard.detail import DetailPane
from clusterui.dashboard.logscreen import LogScreen
from clusterui.vocab.logs import is_restart

pytestmark = pytest.mark.timeout(60)


def make(client: FakeClient | None = None) -> tuple[DashboardApp, FakeClient]:
    fake = client or FakeClient(demo_snapshot())
    return DashboardApp(fake, tz=dt.UTC), fake  # type: ignore[arg-type]


def jobs_line(text: str, stream: str = "out", time: float = NOW) -> dict[str, Any]:
    """A log line of jobs:0 (worker 4), as the supervisor sends it."""
    return {"worker": 4, "app": "jobs", "instance": 0, "stream": stream, "time": time,
            "text": text}  # fmt: skip


def with_long_line(text: str, stream: str = "out") -> tuple[DashboardApp, FakeClient]:
    """The demo dashboard, its logs ending with `text` from jobs:0."""
    return make(FakeClient(demo_snapshot(), logs=demo_logs() + [jobs_line(text, stream)]))


async def until(pilot: Pilot, check: Any, what: str) -> Any:
    return await wait_for_async(check, 10, what, sleep=pilot.pause)


async def select(pilot: Pilot, key: str) -> None:
    app = pilot.app
    assert isinstance(app, DashboardApp)
    await asyncio.wait_for(app.loaded.wait(), 10)
    assert app.table.select_key(key)
    await pilot.pause()


async def tree_drawn(pilot: Pilot, target: str) -> str:
    app = pilot.app
    assert isinstance(app, DashboardApp)
    pane = app.main_screen.query_one(DetailPane)
    await until(pilot, lambda: pane.tree_target == target and pane.tree_read, f"{target}'s tree")
    await pilot.pause()
    return screen_text(app)


# -- the Processes section -------------------------------------------------------


async def test_processes_section_shows_the_selected_workers_tree() -> None:
    app, fake = make()
    async with app.run_test(size=(160, 48)) as pilot:
        await select(pilot, "w:2")  # api:0: a renderer with a converter under it
        text = await tree_drawn(pilot, "api:0")
        assert "Processes  2 below the worker" in text
        assert "41015" in text and "└ python3 -m shop.render --pool 2" in text
        assert "41016" in text and "└ convert -resize" in text
        # A process seen for the first time has no CPU figure yet: a dash, not 0.
        row = next(line for line in text.splitlines() if "41016" in line)
        assert "—" in row.split("41016", 1)[1].split("convert")[0]
        assert ("tree", ("api:0",)) in fake.calls

        await select(pilot, "w:1")  # web:1 left a helper that called setsid()
        text = await tree_drawn(pilot, "web:1")
        assert "⚠ left session sleep 600" in text
        assert "⚠ 1 left" in text


async def test_on_an_app_row_every_workers_tree_is_shown() -> None:
    app, fake = make()
    async with app.run_test(size=(160, 48)) as pilot:
        await select(pilot, "app:api")
        text = await tree_drawn(pilot, "api")
        assert "api:0 python3 /srv/shop/api.py" in text
        assert "api:1 python3 /srv/shop/api.py" in text
        assert "Processes  4 below the workers" in text
        assert ("tree", ("api",)) in fake.calls


async def test_the_tree_is_asked_for_again_while_the_pane_is_open_and_not_after() -> None:
    app, fake = make()
    async with app.run_test(size=(160, 48)) as pilot:
        await select(pilot, "w:0")
        await tree_drawn(pilot, "web:0")
        # The once-a-second timer asks again (no sleep: wait for the second call).
        await until(pilot, lambda: len(fake.calls_of("tree")) >= 2, "a second tree call")
        await pilot.press("enter")  # hide the detail pane
        await pilot.pause()
        assert not app.details_visible
        await until(pilot, lambda: app._tree_asking is None, "no tree call under way")
        asked = len(fake.calls_of("tree"))
        app._poll_tree()  # what the timer calls: nothing while the pane is hidden
        await pilot.pause()
        assert len(fake.calls_of("tree")) == asked
        await pilot.press("L")  # nor on another screen, with the pane open again
        await pilot.pause()
        app._details_wide = True
        app._poll_tree()
        await pilot.pause()
        assert len(fake.calls_of("tree")) == asked


async def test_worker_controlled_names_are_drawn_visibly_never_as_markup() -> None:
    fake = FakeClient(demo_snapshot())
    fake.trees[0] = [
        {
            "pid": 41000,
            "ppid": 1,
            "depth": 0,
            "name": "python3",
            "cmdline": "python3 web.py",
            "cpu": 1.0,
            "memory": 1 << 20,
            "status": "sleeping",
            "left": None,
        },
        {
            "pid": 41001,
            "ppid": 41000,
            "depth": 1,
            "name": "\x1b]2;PWNED\x07",
            "cmdline": "\x1b]2;P\x07 [b]x[/z]",
            "cpu": 0.0,
            "memory": 1 << 20,
            "status": "sleeping",
            "left": "orphan",
        },
    ]
    app, _ = make(fake)
    async with app.run_test(size=(160, 48)) as pilot:
        await select(pilot, "w:0")
        text = await tree_drawn(pilot, "web:0")
        assert "⚠ orphan ␛]2;P␇ [b]x[/z]" in text
        assert "\x1b]2;" not in text


async def test_a_supervisor_without_the_tree_op_is_said_once_in_the_section() -> None:
    app, fake = make()

    async def no_tree(target: str) -> None:  # an older supervisor, every time
        raise FakeClientError("unknown operation 'tree'", 2)

    fake.tree = no_tree  # type: ignore[method-assign]
    async with app.run_test(size=(160, 48)) as pilot:
        await select(pilot, "w:3")
        text = await tree_drawn(pilot, "api:1")
        assert "unknown operation 'tree'" in text


# -- the full-screen log ------------------------------------------------------------


async def open_log(pilot: Pilot, key: str) -> LogScreen:
    await select(pilot, key)
    await pilot.press("L")
    app = pilot.app
    screen = await until(pilot, lambda: isinstance(app.screen, LogScreen), "the log screen")
    screen = app.screen
    assert isinstance(screen, LogScreen)
    await asyncio.wait_for(screen.loaded.wait(), 10)
    await pilot.pause()
    return screen


async def test_L_opens_the_workers_log_with_its_lines_only_and_live_ones_follow() -> None:
    app, fake = make()
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_log(pilot, "w:4")
        log = screen.log_view
        assert fake.calls_of("logs")[-1] == ("jobs:0", app.max_log_lines)
        assert log.shown and {r.worker for r in log.shown} == {4}
        text = screen_text(app)
        assert "log · jobs:0" in text and "Traceback: KeyError" in text
        fake.push_logs(
            [
                {"worker": 4, "app": "jobs", "instance": 0, "stream": "out", "time": NOW + 1,
                 "text": "a live line of jobs"},
                {"worker": 0, "app": "web", "instance": 0, "stream": "out", "time": NOW + 1,
                 "text": "a live line of web"},
            ]
        )  # fmt: skip
        await until(pilot, lambda: log.shown[-1].text == "a live line of jobs", "the live line")
        assert all(r.worker == 4 for r in log.shown)
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is app.main_screen, "back to the dashboard")


async def test_search_moves_between_matches_with_n_and_N() -> None:
    app, _ = make()
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_log(pilot, "w:4")
        log = screen.log_view
        await pilot.press("slash", *"keyerror", "enter")
        await pilot.pause()
        hits = [i for i, r in enumerate(log.shown) if "keyerror" in r.text.lower()]
        assert len(hits) >= 3

        def at() -> int:
            return next(i for i, r in enumerate(log.shown) if r.seq == log.current)

        first = at()
        assert first in hits
        assert "search “keyerror”: 7 lines" in screen_text(app)
        await pilot.press("n")
        second = at()
        assert second in hits and second == hits[(hits.index(first) + 1) % len(hits)]
        await pilot.press("N")
        assert at() == first
        await pilot.press("N")
        assert at() == hits[(hits.index(first) - 1) % len(hits)]
        # The search is plain text, never markup: brackets are looked for as they are.
        await pilot.press("slash", "ctrl+u", *"[b", "enter")
        await pilot.pause()
        assert log.search_text == "[b"
        assert "No line holds" in " ".join(str(n.message) for n in app._notifications)


async def test_what_is_typed_in_one_burst_after_slash_is_searched_for() -> None:
    app, _ = make()
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_log(pilot, "w:4")
        log = screen.log_view
        burst(app, "/keyerror\r")
        await until(pilot, lambda: log.search_text == "keyerror" and log.has_focus, "search")
        assert "keyerror" in next(r for r in log.shown if r.seq == log.current).text.lower()
        burst(app, "/a/b")
        await until(pilot, lambda: log.search_text == "a/b", "a / in the search box")


async def test_wrapped_lines_continue_under_their_text() -> None:
    long = "".join(f"{i:03d}-" for i in range(60))  # 240 cells, each 4-cell piece numbered
    app, _ = with_long_line(long)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_log(pilot, "w:4")
        log = screen.log_view
        await pilot.press("w")
        await pilot.pause()
        drawn = [log.render_line(y).text for y in range(log.size.height)]
        at = next(i for i, row in enumerate(drawn) if "000-" in row)
        rows = drawn[at : at + 3]  # 18 cells of time, source and marker, then 82 + 82 + 76
        prefix = rows[0].index("000-")
        assert prefix == 18 and rows[0][8:prefix] == " jobs:0 │ "
        for row in rows[1:]:
            assert row[:prefix] == " " * prefix, row  # under the text, not at column 0
        assert "".join([rows[0][prefix:]] + [r[prefix:] for r in rows[1:]]).rstrip() == long
        assert log.virtual_size.height == len(log.shown) + 2  # the others take one row each

        # Too narrow to indent (under 20 cells would be left): the rows take the whole
        # width but the scrollbar's, and hold the line end to end.
        await pilot.resize_terminal(30, 30)
        await pilot.pause()
        wrap = log.scrollable_content_region.width
        assert wrap < 30  # the scrollbar came with the extra rows
        drawn = [log.render_line(y).text[:wrap] for y in range(log.size.height)]
        at = next(i for i, row in enumerate(drawn) if "jobs:0 │ 000-" in row)
        whole = "".join(drawn[at:]).rstrip()
        assert whole[9:] == "jobs:0 │ " + long, whole


async def test_after_a_reconnect_the_full_screen_log_fetches_what_it_missed() -> None:
    """What the worker wrote while the dashboard was cut off comes from the new
    connection's backlog, once; live lines that come first wait for it."""
    first = FakeClient(demo_snapshot())
    missed = [
        jobs_line("written while cut off", time=NOW + 1),
        jobs_line("so was this", time=NOW + 2),
    ]
    second = FakeClient(demo_snapshot(), logs=demo_logs() + missed)
    live = jobs_line("live after the reconnect", time=NOW + 3)
    second.push_logs([live])  # queued: it reaches the dashboard before the backlog does

    async def factory() -> FakeClient:
        return second

    app = DashboardApp(first, tz=dt.UTC, client_factory=factory, reconnect_delay=0.01)  # type: ignore[arg-type]
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_log(pilot, "w:4")
        log = screen.log_view
        before = [r.text for r in log.shown]
        first.drop()
        await until(pilot, lambda: app.client is second and app.connected, "the reconnect")
        await asyncio.wait_for(screen.loaded.wait(), 10)
        await until(pilot, lambda: log.shown[-1].text == live["text"], "the live line")
        assert second.calls_of("logs")[-1] == ("jobs:0", app.max_log_lines)
        texts = [r.text for r in log.shown]
        assert texts == before + [x["text"] for x in missed] + [live["text"]]


async def test_r_jumps_to_the_last_restart_and_g_G_move_to_top_and_bottom() -> None:
    app, fake = make()
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_log(pilot, "w:4")
        log = screen.log_view
        await pilot.press("r")
        rec = next(r for r in log.shown if r.seq == log.current)
        assert is_restart(rec.stream, rec.text) and rec.text.endswith("#52")  # the newest
        assert not log.follow
        await pilot.press("G")
        assert log.follow and log.scroll_y == log.max_scroll_y
        await pilot.press("g")
        assert not log.follow and log.scroll_y == 0
        assert "paused" in screen_text(app)


async def test_w_wraps_long_lines_and_t_hides_times() -> None:
    long = "x" * 150 + " THE-END"
    app, _ = with_long_line(long, "err")
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_log(pilot, "w:4")
        log = screen.log_view
        assert "THE-END" not in screen_text(app)  # cut at the right edge
        assert log.virtual_size.width > log.size.width
        await pilot.press("w")
        await pilot.pause()
        assert log.wrap and log.virtual_size.width == log.size.width
        assert log.virtual_size.height == len(log.shown) + 1  # the long line takes two rows
        assert "THE-END" in screen_text(app)
        assert "· wrap ·" in screen_text(app)
        await pilot.press("t")
        await pilot.pause()
        assert not log.timestamps
        assert "no times" in screen_text(app)
        await pilot.press("w")
        await pilot.pause()
        assert not log.wrap and log.virtual_size.height == len(log.shown)


async def test_the_dashboards_keys_do_not_act_from_the_log_screen() -> None:
    app, fake = make()
    async with app.run_test(size=(100, 30)) as pilot:
        await open_log(pilot, "w:2")
        for key in ("s", "plus", "R", "d"):
            await pilot.press(key)
        await pilot.pause()
        assert not [c for c in fake.calls if c[0] in ("stop", "scale", "reload")]
        assert app.is_running
        await pilot.press("q")
        await until(pilot, lambda: app.screen is app.main_screen, "back to the dashboard")
        assert app.is_running
