"""Pilot tests for the dashboard against the in-memory FakeClient."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
from typing import Any

import pytest
from fake_client import (
    NOW,
    FakeClient,
    FakeClientError,
    demo_logs,
    demo_snapshot,
    make_worker,
    screen_text,
)
from support import assert_greys_only, dashboard
from support import pilot_until as until
from textual.pilot import Pilot
from textual.strip import Strip

from clusterui.dashboard import DashboardApp
from clusterui.dashboard.detail import DetailPane
from clusterui.dashboard.feed import LIVE_LINES
from clusterui.dashboard.keys import KEYS
from clusterui.dashboard.messages import LogsArrived, StateUpdated
from clusterui.dashboard.modals import ConfirmScreen, HelpScreen, QuitScreen

UTC = dt.UTC


def notices(app: DashboardApp) -> list[tuple[str, str]]:
    return [(n.severity, n.message) for n in app._notifications]


def messages(app: DashboardApp) -> list[str]:
    return [m for _, m in notices(app)]


async def select(app: DashboardApp, pilot: Pilot, key: str) -> None:
    assert app.table.select_key(key), key
    await pilot.pause()
    assert app.selection is not None and app.selection.key == key


# -- loading -------------------------------------------------------------------


async def test_first_snapshot_and_log_backlog_are_shown() -> None:
    async with dashboard() as (app, pilot, client):
        assert client.calls[:3] == [
            ("subscribe", (True, True, LIVE_LINES, False, True)),
            ("state", ()),
            ("logs", (None, 1000)),
        ]
        assert app.table.row_keys == [
            "app:web", "w:0", "w:1", "app:api", "w:2", "w:3", "app:jobs", "w:4",
        ]  # fmt: skip
        assert len(app.log_view.records) == 60
        text = screen_text(app)
        assert "ecosystem.yaml" in text and "pid 40990 up 3h12m" in text
        assert "├ web:0" in text and "↻ waiting" in text


async def test_log_lines_in_backlog_and_stream_are_shown_once() -> None:
    backlog = demo_logs(10)
    client = FakeClient(logs=backlog)
    async with dashboard(client) as (app, pilot, _):
        newer = dict(backlog[-1], time=NOW + 5, text="a new line")
        client.push_logs([backlog[-2], backlog[-1], newer])
        await until(pilot, lambda: len(app.log_view.records) == 11)
        assert [r.text for r in app.log_view.records[-2:]] == [backlog[-1]["text"], "a new line"]


# -- keys that act on the supervisor ---------------------------------------------------

KEY_CASES = [
    ("plus", "w:0", "scale", ("web", "+1"), "web: scaled +1."),
    ("minus", "app:api", "scale", ("api", "-1"), "api: scaled -1."),
    ("r", "w:3", "restart", (["api:1"],), "Restarted api:1."),
    ("R", "w:0", "reload", (["web"],), "Reloaded web."),
    ("s", "w:2", "stop", (["api:0"],), "Stopped api:0."),
    ("S", "w:4", "start", (["jobs:0"],), "Started jobs:0."),
    ("S", "app:jobs", "start", (["jobs"],), "Started jobs."),
    ("w", "app:web", "watch", ("web", None), "web: watch off."),
    ("w", "w:2", "watch", ("api", None), "api: watch on."),
]


@pytest.mark.parametrize(("key", "row", "op", "args", "feedback"), KEY_CASES)
async def test_key_calls_the_client_and_shows_its_message(
    key: str, row: str, op: str, args: tuple[Any, ...], feedback: str
) -> None:
    async with dashboard() as (app, pilot, client):
        await select(app, pilot, row)
        await pilot.press(key)
        await until(pilot, lambda: feedback in messages(app))
        assert client.calls_of(op) == [args]
        assert isinstance(app.screen, type(app.main_screen))  # no dialog for these


@pytest.mark.parametrize(
    ("key", "op", "question"),
    [("r", "restart", "Restart all 2 workers of web"), ("s", "stop", "Stop web and its 2 workers")],
)
async def test_whole_app_restart_and_stop_ask_first(key: str, op: str, question: str) -> None:
    async with dashboard() as (app, pilot, client):
        await select(app, pilot, "app:web")
        await pilot.press(key)
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert question in screen_text(app)
        await pilot.press("n")
        await until(pilot, lambda: "Cancelled." in messages(app))
        assert client.calls_of(op) == []

        await pilot.press(key)
        # Once the question is up, the focus is on Cancel: a stray enter is harmless.
        await until(
            pilot,
            lambda: (
                isinstance(app.screen, ConfirmScreen) and getattr(app.focused, "id", None) == "no"
            ),
        )
        await pilot.press("enter")
        await until(pilot, lambda: messages(app).count("Cancelled.") == 2)
        assert client.calls_of(op) == []

        await pilot.press(key)
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.click("#yes")
        await until(pilot, lambda: client.calls_of(op) == [(["web"],)])
        await until(pilot, lambda: any(m.endswith("web.") for m in messages(app)))


async def test_error_from_the_supervisor_is_one_sentence_not_a_traceback() -> None:
    async with dashboard() as (app, pilot, client):
        client.fail("restart", "web:0 is stopped; start it first.")
        await select(app, pilot, "w:0")
        await pilot.press("r")
        await until(pilot, lambda: ("error", "web:0 is stopped; start it first.") in notices(app))
        assert app.is_running
        # and an unexpected exception type still becomes one line
        client._failures["stop"] = ConnectionResetError("connection reset by peer")  # type: ignore[assignment]
        await pilot.press("s")
        await until(pilot, lambda: ("error", "connection reset by peer") in notices(app))
        assert "most recent call last" not in screen_text(app)


async def test_a_slow_reload_does_not_block_the_ui() -> None:
    async with dashboard() as (app, pilot, client):
        client.hold("reload")
        await select(app, pilot, "w:0")
        await pilot.press("R")
        await until(pilot, lambda: client.calls_of("reload") == [(["web"],)])
        assert "Reloading web (one worker at a time)…" in messages(app)
        # the reload is still running: keys still work
        row = app.table.cursor_row
        await pilot.press("j")
        assert app.table.cursor_row == row + 1
        await pilot.press("r")
        await until(pilot, lambda: "Restarted web:1." in messages(app))
        assert "Reloaded web." not in messages(app)
        client.release("reload")
        await until(pilot, lambda: "Reloaded web." in messages(app))


async def test_nothing_selected_says_so() -> None:
    client = FakeClient(snapshot={"supervisor": {}, "apps": [], "workers": []}, logs=[])
    async with dashboard(client) as (app, pilot, _):
        await pilot.press("r")
        await until(pilot, lambda: any("Nothing is selected" in m for m in messages(app)))
        assert client.calls_of("restart") == []


# -- the command palette --------------------------------------------------------


async def run_palette(app: DashboardApp, pilot: Pilot, query: str) -> None:
    from textual.widgets import Input

    await pilot.press("ctrl+p")
    await until(pilot, lambda: type(app.screen).__name__ == "CommandPalette")
    app.screen.query_one(Input).value = query  # as typed, without a search per key
    # the palette searches in the background: wait until the best hit is the query
    await until(pilot, lambda: (_palette_highlight(app) or "").startswith(query))
    await pilot.press("enter")
    await until(pilot, lambda: type(app.screen).__name__ != "CommandPalette")


def _palette_highlight(app: DashboardApp) -> str | None:
    from textual.command import CommandList

    try:
        hits = app.screen.query_one(CommandList)
    except Exception:
        return None
    if hits.highlighted is None or not hits.option_count:
        return None
    return str(hits.get_option_at_index(hits.highlighted).prompt)


PALETTE_CASES = [
    ("Scale web up", lambda c, a: c.calls_of("scale")[-1:] == [("web", "+1")]),
    ("Scale web down", lambda c, a: c.calls_of("scale")[-1:] == [("web", "-1")]),
    ("Restart web:1", lambda c, a: c.calls_of("restart")[-1:] == [(["web:1"],)]),
    ("Rolling reload web", lambda c, a: c.calls_of("reload")[-1:] == [(["web"],)]),
    ("Stop web:1", lambda c, a: c.calls_of("stop")[-1:] == [(["web:1"],)]),
    ("Start web:1", lambda c, a: c.calls_of("start")[-1:] == [(["web:1"],)]),
    ("Toggle file watch for web", lambda c, a: c.calls_of("watch")[-1:] == [("web", None)]),
    (
        "Apply the ecosystem file",
        lambda c, a: c.calls_of("apply")[-1:] == [("/srv/shop/ecosystem.yaml",)],
    ),
    ("Focus or maximise the logs", lambda c, a: a.log_view.has_focus),
    ("Filter the logs", lambda c, a: a.focused is not None and a.focused.id == "filter"),
    ("Show or hide details", lambda c, a: not a.main_screen.has_class("-details")),
    ("Logs: all apps or the selection", lambda c, a: a.log_view.scope == ("web", 1)),
    ("Follow logs on or off", lambda c, a: a.log_view.follow is False),
    ("Log timestamps on or off", lambda c, a: a.log_view.timestamps is False),
    ("Detach", lambda c, a: a.exit_reason == "detach"),
]


async def test_every_palette_command_does_its_thing() -> None:
    # Each command's callback is run the way the palette runs the chosen one
    # (app.call_later); the palette UI itself is driven in the next test.
    async with dashboard() as (app, pilot, client):
        await select(app, pilot, "w:1")
        commands = list(app.get_system_commands(app.screen))
        for query, effect in PALETTE_CASES:
            (command,) = [c for c in commands if c.title.startswith(query)]
            app.call_later(command.callback)
            try:
                await until(pilot, lambda effect=effect: effect(client, app), timeout=3)
            except AssertionError:
                pytest.fail(f"palette command {query!r} had no effect")


async def test_palette_ui_finds_and_runs_commands() -> None:
    async with dashboard() as (app, pilot, client):
        await select(app, pilot, "w:1")
        await run_palette(app, pilot, "Restart web:1")
        await until(pilot, lambda: "Restarted web:1." in messages(app))
        await run_palette(app, pilot, "Filter the logs")
        await until(pilot, lambda: app.focused is not None and app.focused.id == "filter")


async def test_palette_lists_every_key_action() -> None:
    async with dashboard() as (app, pilot, _):
        titles = [c.title for c in app.get_system_commands(app.screen)]
        for key in KEYS:
            if key.palette:
                assert any(t.endswith(f"({key.show})") for t in titles), key
        assert "Quit  (q)" in titles and "Quit" not in titles  # ours, not Textual's


async def test_palette_delete_asks_first() -> None:
    async with dashboard() as (app, pilot, client):
        await select(app, pilot, "w:4")
        await run_palette(app, pilot, "Delete jobs")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: client.calls_of("delete") == [(["jobs"],)])
        await until(pilot, lambda: "Deleted jobs." in messages(app))


async def test_u_applies_the_loaded_files_and_the_header_names_them() -> None:
    client = FakeClient()
    async with dashboard(client, file="/srv/shop/other.yaml") as (app, pilot, _):
        await pilot.press("u")
        await until(pilot, lambda: len(client.calls_of("apply")) == 2)
        # The file we were started on (its apps are gone now) and the file apps come from.
        assert client.calls_of("apply") == [
            ("/srv/shop/other.yaml",),
            ("/srv/shop/ecosystem.yaml",),
        ]
        await until(pilot, lambda: any("Applied" in m for m in messages(app)))
        assert "ecosystem.yaml" in screen_text(app) and "other.yaml" not in screen_text(app)


async def test_u_with_no_file_says_so() -> None:
    client = FakeClient()
    client.snapshot["supervisor"]["files"] = []
    async with dashboard(client) as (app, pilot, _):
        await pilot.press("u")
        await until(pilot, lambda: "No ecosystem file is loaded." in messages(app))
        assert client.calls_of("apply") == []


# -- quitting --------------------------------------------------------------------


async def test_q_when_attached_just_detaches() -> None:
    async with dashboard(started_supervisor=False) as (app, pilot, client):
        await pilot.press("q")
        await until(pilot, lambda: app.return_code is not None)
        assert app.exit_reason == "detach" and app.return_code == 0
        assert client.calls_of("shutdown") == []


async def test_q_when_we_started_the_supervisor_asks_and_can_leave_them_running() -> None:
    async with dashboard(started_supervisor=True) as (app, pilot, client):
        await pilot.press("q")
        await until(pilot, lambda: isinstance(app.screen, QuitScreen))
        assert "Stop all apps (3 apps)" in screen_text(app)
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, QuitScreen))
        assert app.return_code is None and app.is_running

        await pilot.press("q")
        await until(pilot, lambda: isinstance(app.screen, QuitScreen))
        await pilot.click("#leave")
        await until(pilot, lambda: app.return_code is not None)
        assert app.exit_reason == "detach" and app.return_code == 0
        assert client.calls_of("shutdown") == []


async def test_q_stop_all_shuts_the_supervisor_down() -> None:
    async with dashboard(started_supervisor=True) as (app, pilot, client):
        await pilot.press("q")
        await until(pilot, lambda: isinstance(app.screen, QuitScreen))
        await pilot.press("s")
        await until(pilot, lambda: app.return_code is not None)
        assert client.calls_of("shutdown") == [()]
        assert app.exit_reason == "shutdown" and app.return_code == 0
        await pilot.pause()
        assert not any("Lost the connection" in m for m in messages(app))


async def test_stop_all_failure_is_reported_and_the_dashboard_stays() -> None:
    client = FakeClient()
    client.fail("shutdown", "the supervisor did not answer within 10 s.")
    async with dashboard(client, started_supervisor=True) as (app, pilot, _):
        await pilot.press("q")
        await until(pilot, lambda: isinstance(app.screen, QuitScreen))
        await pilot.click("#stop")
        await until(
            pilot, lambda: ("error", "the supervisor did not answer within 10 s.") in notices(app)
        )
        assert app.return_code is None and app.is_running


@pytest.mark.parametrize("started", [True, False])
async def test_d_always_detaches(started: bool) -> None:
    async with dashboard(started_supervisor=started) as (app, pilot, client):
        await pilot.press("d")
        await until(pilot, lambda: app.return_code is not None)
        assert app.exit_reason == "detach"
        assert client.calls_of("shutdown") == []


# -- the table -------------------------------------------------------------------


async def test_rows_update_by_key_and_the_cursor_stays_put() -> None:
    async with dashboard() as (app, pilot, client):
        table = app.table
        await select(app, pilot, "w:3")
        row_before = table.cursor_row
        added: list[str] = []
        removed: list[str] = []
        real_add, real_remove = table.add_row, table.remove_row

        def spy_add(*cells: Any, key: str | None = None, **kw: Any) -> Any:
            added.append(str(key))
            return real_add(*cells, key=key, **kw)

        def spy_remove(key: Any) -> None:
            removed.append(str(key))
            real_remove(key)

        table.add_row = spy_add  # type: ignore[method-assign]
        table.remove_row = spy_remove  # type: ignore[method-assign]
        table.clear = lambda *a, **k: pytest.fail("the table was rebuilt")  # type: ignore[method-assign]

        # 1. values change: cells change in place, no row is added or removed
        snap = copy.deepcopy(client.snapshot)
        snap["workers"][3]["cpu"] = 87.5
        snap["workers"][3]["status"] = "draining"
        client.push_state(snap)
        await until(pilot, lambda: "87.5%" in str(table.get_cell("w:3", "cpu")))
        assert "◑ draining" in str(table.get_cell("w:3", "status"))
        assert added == [] and removed == []
        assert table.cursor_row == row_before and app.selection.key == "w:3"

        # 2. a worker appears in an app above the cursor: it goes into its group,
        #    and the cursor follows its row
        snap = copy.deepcopy(snap)
        snap["workers"].insert(2, make_worker(7, "web", 2))
        client.push_state(snap)
        await until(pilot, lambda: "w:7" in table.row_keys)
        assert added == ["w:7"]
        assert table.row_keys[:4] == ["app:web", "w:0", "w:1", "w:7"]
        assert app.selection.key == "w:3" and table.cursor_row == row_before + 1

        # 3. a worker above goes away
        snap = copy.deepcopy(snap)
        snap["workers"] = [w for w in snap["workers"] if w["id"] != 0]
        client.push_state(snap)
        await until(pilot, lambda: "w:0" not in table.row_keys)
        assert removed == ["w:0"]
        assert app.selection.key == "w:3" and table.cursor_row == row_before

        # 4. the selected worker goes away: the cursor lands on its app
        snap = copy.deepcopy(snap)
        snap["workers"] = [w for w in snap["workers"] if w["id"] != 3]
        client.push_state(snap)
        await until(pilot, lambda: "w:3" not in table.row_keys)
        assert app.selection.key == "app:api"


@pytest.mark.parametrize(("size", "word"), [((200, 60), "suspended"), ((80, 24), "paused")])
async def test_a_suspended_worker_is_shown_as_such(size: tuple[int, int], word: str) -> None:
    async with dashboard(size=size) as (app, pilot, client):
        snap = copy.deepcopy(client.snapshot)
        snap["workers"][1]["status"] = "suspended"  # web:1 got SIGSTOP
        client.push_state(snap)
        table = app.table
        await until(pilot, lambda: word in table.get_cell("w:1", "status").plain)
        assert "‖" in table.get_cell("w:1", "status").plain
        assert "1/2 up" in table.get_cell("app:web", "status").plain
        await select(app, pilot, "w:1")
        if not app.details_visible:  # narrow: the details open on enter
            await pilot.press("enter")
            await until(pilot, lambda: app.details_visible)
        assert "‖ suspended" in screen_text(app)


@pytest.mark.parametrize("size", [(200, 60), (80, 24), (60, 20)])
async def test_an_errored_worker_and_its_app_show_errored(size: tuple[int, int]) -> None:
    async with dashboard(size=size) as (app, pilot, client):
        snap = copy.deepcopy(client.snapshot)
        snap["workers"][1].update(status="errored", pid=None, error="exited (code 1) 15 times")
        client.push_state(snap)
        table = app.table
        await until(pilot, lambda: "✖" in table.get_cell("w:1", "status").plain)
        assert "errored" in table.get_cell("w:1", "status").plain
        # The app's summary: one of two up, and the errored glyph rather than "launching".
        summary = table.get_cell("app:web", "status").plain
        assert "✖" in summary and "1/2 up" in summary, summary
        if size[0] < 78:  # narrower than any layout: the rest is a sideways scroll away
            width = table.scrollable_content_region.width
            assert table.max_scroll_x + width >= table.virtual_size.width > width
        # An app whose every worker is errored is errored too, not "stopped".
        for w in snap["workers"][:2]:
            w.update(status="errored", pid=None)
        client.push_state(snap)
        await until(pilot, lambda: "0/2 up" in table.get_cell("app:web", "status").plain)
        assert "✖" in table.get_cell("app:web", "status").plain


async def test_j_k_and_arrows_move_the_selection() -> None:
    async with dashboard() as (app, pilot, _):
        assert app.selection.key == "app:web"
        await pilot.press("j", "j", "down")
        assert app.selection.key == "app:api"
        await pilot.press("k", "up")
        assert app.selection.key == "w:0"


async def test_the_detail_pane_follows_the_selection() -> None:
    async with dashboard() as (app, pilot, _):
        detail = app.main_screen.query_one(DetailPane)
        await select(app, pilot, "w:4")
        text = screen_text(app)
        assert "jobs:0  id 4  ↻ waiting-restart" in text
        assert "exit code 1" in text and "crashed (exit code 1)" in text
        assert "/home/dev/.clusterui/logs/jobs-0-err.log" in text
        assert detail.query("SparkChart").first() is not None
        assert "queue" in text and "17" in text  # a custom metric, charted and listed
        await select(app, pilot, "app:web")
        text = screen_text(app)
        assert "round-robin" in text or "cluster rr" in text
        assert "last: reloaded: web/views.py changed" in text


async def test_state_messages_coalesce_to_the_newest() -> None:
    assert StateUpdated({}).can_replace(StateUpdated({}))
    assert not StateUpdated({}).can_replace(LogsArrived([]))
    async with dashboard() as (app, pilot, client):
        seen: list[float] = []
        real = app.table.update_snapshot

        def counting(snapshot: dict[str, Any], history: Any) -> None:
            seen.append(snapshot["supervisor"]["uptime"])
            real(snapshot, history)

        app.table.update_snapshot = counting  # type: ignore[method-assign]
        for i in range(50):
            snap = copy.deepcopy(client.snapshot)
            snap["supervisor"]["uptime"] = 1000.0 + i
            app.post_message(StateUpdated(snap))
        await until(pilot, lambda: seen and seen[-1] == 1049.0)
        assert len(seen) < 50  # older queued snapshots were dropped unseen


# -- logs ------------------------------------------------------------------------


async def test_filter_narrows_highlights_and_clears() -> None:
    async with dashboard() as (app, pilot, client):
        log = app.log_view
        await pilot.press("l", "slash")  # in the log pane, `/` filters the lines
        assert app.focused is not None and app.focused.id == "filter"
        await pilot.press(*"slow qu")
        await until(pilot, lambda: log.filter_text == "slow qu")
        assert log.shown and all("slow qu" in r.text.lower() for r in log.shown)
        assert len(log.shown) < len(log.records)
        assert "filter “slow qu”" in str(app.main_screen.query_one("#logs").border_title)
        # typing in the box did not trigger the keys (s = stop, q = quit)
        assert client.calls_of("stop") == [] and app.is_running

        line = log.render_record(log.shown[0])
        start = line.plain.lower().index("slow qu")
        match = log.style_of("logview--match")
        assert any(s.start <= start and s.end >= start + 7 and s.style == match for s in line.spans)

        await pilot.press("enter")  # keep the filter, back to the logs
        assert log.has_focus and log.filter_text == "slow qu"
        # new lines are filtered too
        client.push_logs(
            [
                dict(demo_logs(1)[0], text="fast path", time=NOW + 1),
                dict(demo_logs(1)[0], text="SLOW QUERY again", time=NOW + 2),
            ]
        )
        await until(pilot, lambda: log.shown[-1].text == "SLOW QUERY again")

        await pilot.press("slash", "escape")
        assert log.filter_text == "" and len(log.shown) == len(log.records)


async def test_stderr_and_sys_lines_look_different() -> None:
    async with dashboard() as (app, pilot, _):
        log = app.log_view
        by_stream = {r.stream: r for r in log.records}
        out, err, sys_ = (log.render_record(by_stream[s]) for s in ("out", "err", "sys"))
        err_style = log.style_of("logview--err")
        sys_style = log.style_of("logview--sys")
        assert err_style != sys_style
        assert any(s.style == err_style for s in err.spans)
        assert any(s.style == sys_style for s in sys_.spans)
        assert not any(s.style in (err_style, sys_style) for s in out.spans)
        # and they differ without colour too (NO_COLOR): their own markers
        assert " ! " in err.plain and " » " in sys_.plain and " │ " in out.plain


async def test_log_memory_is_bounded() -> None:
    async with dashboard(max_log_lines=500) as (app, pilot, client):
        log = app.log_view
        lines = [dict(demo_logs(1)[0], text=f"line {i}", time=NOW + i) for i in range(1200)]
        client.push_logs(lines)
        await until(pilot, lambda: log.records and log.records[-1].text == "line 1199")
        assert len(log.records) == 500 and len(log.shown) == 500
        # the backlog's supervisor lines stay (a flood must not hide an exit); the
        # output is the newest that fits beside them
        kept = [r.text for r in log.records if r.stream == "sys"]
        assert kept == [r["text"] for r in demo_logs() if r["stream"] == "sys"]
        assert log.records[len(kept)].text == f"line {700 + len(kept)}"


async def test_the_fast_line_path_draws_what_the_rich_path_draws() -> None:
    """Plain lines skip Rich's Text rendering: cell for cell, the same characters and styles."""
    async with dashboard() as (app, pilot, _):
        log = app.log_view
        base = log.rich_style

        def cells(strip: Any) -> list[tuple[str, Any]]:
            return [(ch, seg.style) for seg in strip for ch in seg.text]

        texts = ["GET /cart 200", "naïve café 寿司 ✓", "", "  indented"]
        for timestamps in (True, False):
            log.timestamps = timestamps
            for stream in ("out", "err", "sys"):
                for text in texts:
                    rec = dataclasses.replace(log.records[-1], stream=stream, text=text)
                    fast = log._plain_strip(rec, base)
                    assert fast is not None
                    rich = log.render_record(rec)
                    rich.stylize_before(base)
                    slow = Strip(rich.render(app.console), rich.cell_len)
                    assert cells(fast) == cells(slow), (stream, text)
                    assert fast.cell_length == slow.cell_length
        # lines it does not handle go the Rich way
        for text in ("tab\there", "\x1b[31mred\x1b[0m", "bell\x07"):
            assert log._plain_strip(dataclasses.replace(log.records[-1], text=text), base) is None
        log.filter_text = "cart"
        assert log._plain_strip(log.records[-1], base) is None


async def test_follow_timestamps_and_scope_keys() -> None:
    async with dashboard() as (app, pilot, _):
        log = app.log_view
        await select(app, pilot, "w:0")
        assert log.render_record(log.shown[-1]).plain[:8].count(":") == 2  # HH:MM:SS
        await pilot.press("t")
        assert not log.timestamps
        assert log.render_record(log.shown[-1]).plain.startswith(log.shown[-1].source)
        await pilot.press("a")
        assert log.scope == ("web", 0)
        assert log.shown and {r.worker for r in log.shown} == {0}
        await select(app, pilot, "app:api")
        assert {r.app for r in log.shown} == {"api"}
        await pilot.press("a")
        assert log.scope == (None, None) and len(log.shown) == len(log.records)
        assert log.follow
        await pilot.press("f")
        assert not log.follow and "Follow off." in messages(app)
        assert "paused" in str(app.main_screen.query_one("#logs").border_title)


async def test_a_full_log_buffer_still_repaints_the_newest_lines() -> None:
    async with dashboard(max_log_lines=200, size=(160, 48)) as (app, pilot, client):
        first = [dict(demo_logs(1)[0], text=f"line {i}", time=NOW + i) for i in range(400)]
        client.push_logs(first)
        await until(pilot, lambda: "line 399" in screen_text(app))
        client.push_logs([dict(demo_logs(1)[0], text="the very newest", time=NOW + 500)])
        # The buffer was full: neither its size nor the scroll position changes.
        await until(pilot, lambda: "the very newest" in screen_text(app))


async def test_l_focuses_the_log_pane_even_with_no_lines() -> None:
    async with dashboard(FakeClient(logs=[])) as (app, pilot, _):
        assert app.log_view.shown == []
        await pilot.press("l")
        assert app.log_view.has_focus


async def test_l_focuses_then_maximises_then_restores() -> None:
    async with dashboard() as (app, pilot, _):
        screen = app.main_screen
        await pilot.press("l")
        assert app.log_view.has_focus and screen.maximized is None
        await pilot.press("l")
        assert screen.maximized is not None and screen.maximized.id == "logs"
        await pilot.press("l")
        assert screen.maximized is None and app.table.has_focus


async def test_enter_toggles_details_wide_and_narrow() -> None:
    async with dashboard(size=(160, 48)) as (app, pilot, _):
        assert app.main_screen.has_class("-details")
        assert app.main_screen.query_one(DetailPane).display
        await pilot.press("enter")
        assert not app.main_screen.query_one(DetailPane).display
    async with dashboard(size=(80, 24)) as (app, pilot, _):
        pane = app.main_screen.query_one(DetailPane)
        assert not pane.display and app.main_screen.query_one("#logs").display
        await select(app, pilot, "w:2")
        await pilot.press("enter")
        await pilot.pause()
        assert pane.display and not app.main_screen.query_one("#logs").display
        assert "api:0  id 2" in screen_text(app)
        await pilot.press("l")  # the logs come back
        assert not pane.display and app.log_view.has_focus


async def test_help_lists_every_key() -> None:
    async with dashboard() as (app, pilot, _):
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        text = screen_text(app)
        for key in KEYS:
            assert key.help[:30] in text, key.help  # long ones wrap
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, HelpScreen))


async def test_footer_shows_the_keys() -> None:
    # `/` is in KEYS twice: the table's row filter and the logs' line filter; the footer
    # shows the one the focused pane gives it.
    pane_keys = {"filter_rows": "table", "filter": "logs"}
    async with dashboard(size=(200, 60)) as (app, pilot, _):
        for pane in ("table", "logs"):
            if pane == "logs":
                await pilot.press("l")
                assert app.log_view.has_focus
            await pilot.pause()
            footer = screen_text(app).splitlines()[-1]
            actions = [k.action for k in app.screen.query("FooterKey")]  # type: ignore[attr-defined]
            for key in KEYS:
                if key.footer and not key.action.startswith("scale"):
                    assert f"{key.show} {key.label}" in footer
                    shown = key.action in actions
                    assert shown == (pane_keys.get(key.action, pane) == pane), (pane, key.label)
            assert "+- Scale" in footer


async def test_an_80_column_footer_has_the_filter_and_quit() -> None:
    async with dashboard(size=(80, 24)) as (app, pilot, _):
        await pilot.pause()
        footer = screen_text(app).splitlines()[-1]
        assert footer.rstrip().endswith("l Logs / Filter q Quit"), footer
        assert footer.startswith("? Help r Restart R Reload +- Scale s Stop S Start"), footer


# -- the supervisor's events and the connection ----------------------------------------


async def test_notices_become_notifications() -> None:
    async with dashboard() as (app, pilot, client):
        client.push_notice("error", "worker jobs:0 errored after 16 unstable restarts")
        client.push_notice("info", "web: reload finished [2/2]")
        await until(pilot, lambda: len(notices(app)) >= 2)
        assert ("error", "worker jobs:0 errored after 16 unstable restarts") in notices(app)
        assert ("information", "web: reload finished [2/2]") in notices(app)  # no markup


async def test_lost_connection_is_shown_and_quit_exits_3() -> None:
    async with dashboard() as (app, pilot, client):
        client.drop(FakeClientError("connection reset by peer", code=3))
        await until(pilot, lambda: not app.connected)
        assert "supervisor connection lost" in screen_text(app)
        assert any("connection reset by peer" in m for _, m in notices(app))
        await pilot.press("r")
        await until(pilot, lambda: "Not connected to the supervisor." in messages(app))
        assert client.calls_of("restart") == []
        await pilot.press("q")
        await until(pilot, lambda: app.return_code is not None)
        assert app.return_code == 3 and app.exit_reason == "lost"


async def test_reconnects_with_the_factory() -> None:
    first = FakeClient()
    second = FakeClient(snapshot=demo_snapshot(api_workers=4))
    attempts: list[int] = []

    async def factory() -> FakeClient:
        attempts.append(1)
        if len(attempts) < 3:
            raise FakeClientError("no supervisor is running.", code=3)
        return second

    async with dashboard(first, client_factory=factory, reconnect_delay=0.01) as (app, pilot, _):
        first.drop()
        await until(pilot, lambda: app.client is second and app.connected)
        assert first.closed and second.subscribed and len(attempts) == 3
        await until(pilot, lambda: "w:5" in app.table.row_keys)
        assert "Reconnected to the supervisor." in messages(app)
        assert len(app.log_view.records) == 60  # the backlog again, not shown twice
        assert "connection lost" not in screen_text(app)


async def test_no_color_is_respected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    async with dashboard(size=(100, 30)) as (app, pilot, _):
        assert app.no_color
        svg = app.export_screenshot()
    assert_greys_only(svg)


async def test_hangup_handler_detaches() -> None:
    import signal

    async with dashboard(started_supervisor=True) as (app, pilot, client):
        assert signal.getsignal(signal.SIGHUP) == app._on_signal
        assert signal.getsignal(signal.SIGTERM) == app._on_signal
        app._on_signal(signal.SIGTERM, None)  # as Python would call it
        await until(pilot, lambda: app.return_code is not None)
        assert app.exit_reason == "hangup" and app.return_code == 0
        assert client.calls_of("shutdown") == []
    assert signal.getsignal(signal.SIGHUP) != app._on_signal  # put back on the way out


async def test_a_tick_redraws_only_the_rows_that_changed() -> None:
    async with dashboard() as (app, pilot, client):
        table = app.table
        drawn: list[tuple[str, ...]] = []
        real = table._strip

        def spy(cells: Any, *style: Any) -> Any:
            drawn.append(tuple(c.plain for c in cells))
            return real(cells, *style)

        table._strip = spy  # type: ignore[method-assign]
        snap = copy.deepcopy(client.snapshot)
        snap["workers"][1]["cpu"] = 42.5  # web:1, and with it its app's total
        client.push_state(snap)
        await until(pilot, lambda: "42.5%" in str(table.get_cell("w:1", "cpu")))
        await pilot.pause()
        names = sorted(cells[1].strip() for cells in drawn)
        assert names == ["web ◉", "└ web:1"], names


async def test_a_long_table_scrolls_to_keep_the_cursor_in_view() -> None:
    # 40 api workers at 80x24: the table holds a few rows and scrolls under its header
    client = FakeClient(snapshot=demo_snapshot(api_workers=40))
    async with dashboard(client, size=(80, 24)) as (app, pilot, _):
        table = app.table
        assert table.row_count == 46
        await pilot.press("end")
        await pilot.pause()
        assert app.selection.key == "w:42"  # jobs:0, the last row
        text = screen_text(app)
        assert "└ jobs:0" in text and "├ web:0" not in text
        assert "pid status" in text  # the column header stays put
        await pilot.press("home")
        await pilot.pause()
        assert app.selection.key == "app:web" and "├ web:0" in screen_text(app)
        await pilot.press("pagedown")
        before = table.cursor_row
        assert before > 3
        await pilot.press(*["j"] * 20)
        await pilot.pause()
        assert table.cursor_row == before + 20
        assert f"api:{app.selection.instance} " in screen_text(app)


async def test_mouse_selects_rows_and_shows_details() -> None:
    async with dashboard(size=(160, 48)) as (app, pilot, _):
        await pilot.press("enter")  # hide the details first
        assert not app.details_visible
        # the table's border is row 0 of the widget, its header row 1, then the rows
        await pilot.click("#procs", offset=(10, 4))
        assert app.selection is not None and app.selection.key == "w:1"
        await pilot.click("#procs", offset=(10, 4))  # again: "select" it
        await until(pilot, lambda: app.details_visible)
        assert "web:1  id 1" in screen_text(app)
        await pilot.click("#log")
        assert app.log_view.has_focus


async def test_request_rate_column_and_latencies_for_web_hosts() -> None:
    async with dashboard() as (app, pilot, client):
        assert "conn/s" in screen_text(app) and "req/s" not in screen_text(app)
        snap = copy.deepcopy(client.snapshot)
        for w in snap["workers"]:
            if w["app"] == "web":
                w["req_rate"] = 1234.0 + w["id"]
                w["history"]["req_rate"] = [1000.0, 1100.0, w["req_rate"]]
                w["metrics"] = {"req_rate": w["req_rate"], "p50_ms": 1.5, "p99_ms": 9.0 + w["id"]}
        app.post_message(StateUpdated(snap))
        await until(pilot, lambda: "req/s" in screen_text(app))
        text = screen_text(app)
        assert "1.2k" in text  # the web workers' requests/s, where conn/s was
        await select(app, pilot, "app:web")
        text = screen_text(app)
        assert "p99_ms" in text and "10" in text  # the slowest worker's p99, not a sum
