"""The dashboard's look, as SVG snapshots (pytest-textual-snapshot).

Everything on screen comes from the FakeClient's fixed data and the UTC clock, so the
pictures are reproducible. After an intended change of look:
    pytest tests/test_dashboard_snapshots.py --snapshot-update
and review the SVGs in tests/__snapshots__/.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable

from fake_client import NOW, FakeClient, demo_logs, demo_snapshot, event
from support import wait_for_async
from textual.pilot import Pilot

from clusterui.dashboard import DashboardApp
from clusterui.dashboard.detail import DetailPane
from clusterui.dashboard.logscreen import LogScreen


def make_app(**snapshot_args: object) -> DashboardApp:
    return DashboardApp(FakeClient(demo_snapshot(**snapshot_args)), tz=dt.UTC)  # type: ignore[arg-type]


def loaded(*keys: str, select: str | None = None) -> Callable[[Pilot], Awaitable[None]]:
    """Wait for the first snapshot and the log backlog, then select a row and press keys."""

    async def run_before(pilot: Pilot) -> None:
        app = pilot.app
        assert isinstance(app, DashboardApp)
        await asyncio.wait_for(app.loaded.wait(), 10)
        await pilot.pause()
        if select is not None:
            assert app.table.select_key(select)
            await pilot.pause()
        for key in keys:
            await pilot.press(key)
            await pilot.pause()
        await tree_shown(pilot)

    return run_before


async def tree_shown(pilot: Pilot) -> None:
    """With the detail pane open, wait for the selection's process tree to be drawn."""
    app = pilot.app
    assert isinstance(app, DashboardApp)
    if app.details_visible and app.screen is app.main_screen and app.selection is not None:
        pane = app.main_screen.query_one(DetailPane)
        target = app.selection.target
        await wait_for_async(
            lambda: pane.tree_target == target and pane.tree_read,
            10,
            "the process tree",
            sleep=pilot.pause,
        )
        await pilot.pause()


def test_main_80x24(snap_compare) -> None:
    assert snap_compare(make_app(), terminal_size=(80, 24), run_before=loaded())


def test_main_160x48(snap_compare) -> None:
    assert snap_compare(make_app(), terminal_size=(160, 48), run_before=loaded())


def test_scaled_busy_app_with_worker_details_160x48(snap_compare) -> None:
    assert snap_compare(
        make_app(api_workers=5, busy=True),
        terminal_size=(160, 48),
        run_before=loaded(select="w:3"),
    )


def test_details_80x24(snap_compare) -> None:
    assert snap_compare(
        make_app(), terminal_size=(80, 24), run_before=loaded("enter", select="w:4")
    )


def test_log_filter_80x24(snap_compare) -> None:
    assert snap_compare(
        make_app(),
        terminal_size=(80, 24),
        run_before=loaded("l", "slash", *"slow", "enter"),
    )


def test_confirm_dialog_80x24(snap_compare) -> None:
    assert snap_compare(
        make_app(), terminal_size=(80, 24), run_before=loaded("s", select="app:api")
    )


def test_help_160x48(snap_compare) -> None:
    assert snap_compare(make_app(), terminal_size=(160, 48), run_before=loaded("question_mark"))


def with_states(**by_worker: dict[str, object]) -> DashboardApp:
    """The demo with some workers changed (keyword: w<id>) and apps (keyword: the name)."""
    snap = demo_snapshot(api_workers=3)
    for key, changes in by_worker.items():
        if key.startswith("w") and key[1:].isdigit():
            (row,) = [w for w in snap["workers"] if w["id"] == int(key[1:])]
        else:
            (row,) = [a for a in snap["apps"] if a["name"] == key]
        row.update(changes)  # type: ignore[typeddict-item]
    return DashboardApp(FakeClient(snap), tz=dt.UTC)  # type: ignore[arg-type]


GONE = {"pid": None, "uptime": 0, "cpu": 0.0, "memory": 0, "active": 0}


def test_errored_worker_with_details_160x48(snap_compare) -> None:
    app = with_states(
        w1={**GONE, "status": "errored", "exit_code": 1, "error": "exited (code 1) 16 times"}
    )
    assert snap_compare(app, terminal_size=(160, 48), run_before=loaded(select="w:1"))


def test_suspended_and_stopped_workers_160x48(snap_compare) -> None:
    app = with_states(w2={"status": "suspended"}, w5={**GONE, "status": "stopped"})
    assert snap_compare(app, terminal_size=(160, 48), run_before=loaded(select="w:2"))


def test_launching_and_draining_during_a_reload_160x48(snap_compare) -> None:
    app = with_states(
        api={"reloading": True},
        w2={"status": "launching", "uptime": 0.4, "restarts": 1},
        w3={"status": "draining", "active": 3},
    )
    assert snap_compare(app, terminal_size=(160, 48), run_before=loaded(select="app:api"))


def test_narrow_60x20_with_an_errored_worker(snap_compare) -> None:
    app = with_states(w1={**GONE, "status": "errored", "exit_code": 1})
    assert snap_compare(app, terminal_size=(60, 20), run_before=loaded())


def test_worker_details_with_the_events_timeline_160x48(snap_compare) -> None:
    """The Events section: newest first, a failed reload in red, a signal, a watch restart."""
    client = FakeClient(demo_snapshot())
    client.timeline += [
        event(NOW - 200, "reload-failed", "web", None, "manual: reload of web stopped at "
              "instance 0: the new worker exited; the old worker keeps serving"),
        event(NOW - 90, "signal", "web", 1, "SIGUSR1 sent to pid 41007"),
        event(NOW - 30, "health", "web", 1, "unhealthy: probe failed (HTTP 503)"),
    ]  # fmt: skip
    app = DashboardApp(client, tz=dt.UTC)  # type: ignore[arg-type]
    assert snap_compare(app, terminal_size=(160, 48), run_before=loaded(select="w:1"))


def test_signal_menu_80x24(snap_compare) -> None:
    assert snap_compare(make_app(), terminal_size=(80, 24), run_before=loaded("x", select="w:1"))


def test_processes_section_with_a_helper_that_left_120x40(snap_compare) -> None:
    """web:1's tree: the worker and a helper that called setsid() (marked)."""
    assert snap_compare(make_app(), terminal_size=(120, 40), run_before=loaded(select="w:1"))


def full_log(*keys: str, select: str) -> Callable[[Pilot], Awaitable[None]]:
    """L on a row, its backlog loaded, then keys pressed inside the full-screen log."""

    async def run_before(pilot: Pilot) -> None:
        await loaded("L", select=select)(pilot)
        app = pilot.app
        await wait_for_async(
            lambda: isinstance(app.screen, LogScreen), 10, "the log screen", sleep=pilot.pause
        )
        assert isinstance(app.screen, LogScreen)
        await asyncio.wait_for(app.screen.loaded.wait(), 10)
        await pilot.pause()
        for key in keys:
            await pilot.press(key)
            await pilot.pause()

    return run_before


def test_full_screen_log_searching_100x30(snap_compare) -> None:
    assert snap_compare(
        make_app(),
        terminal_size=(100, 30),
        run_before=full_log("slash", *"keyerror", "enter", "n", select="w:4"),
    )


def test_full_screen_log_at_the_last_restart_wrapped_100x30(snap_compare) -> None:
    """A long line folded at the width, with the escape sequences a worker wrote drawn as
    pictures; the current line is the newest restart."""
    text = "sending invoice batch: " + ", ".join(f"order-{n}" for n in range(1000, 1014))
    lines = demo_logs() + [
        {"worker": 4, "app": "jobs", "instance": 0, "stream": "out", "time": NOW, "text": text},
        {"worker": 4, "app": "jobs", "instance": 0, "stream": "err", "time": NOW,
         "text": "\x1b]2;PWNED\x07\x1b[2J title and clear-screen, drawn as pictures"},
    ]  # fmt: skip
    app = DashboardApp(FakeClient(demo_snapshot(), logs=lines), tz=dt.UTC)  # type: ignore[arg-type]
    assert snap_compare(app, terminal_size=(100, 30), run_before=full_log("w", "r", select="w:4"))


def test_row_filter_sorted_100x30(snap_compare) -> None:
    # sorted by CPU, only the online workers, each under its app; the cursor on api:1
    keys = loaded("o", "slash", *"online", "enter", select="w:3")

    async def run_before(pilot: Pilot) -> None:
        await keys(pilot)
        pilot.app.clear_notifications()  # "Sorted by CPU": a toast would time out unevenly
        await pilot.pause()

    assert snap_compare(make_app(api_workers=3), terminal_size=(100, 30), run_before=run_before)


def test_light_theme_100x30(snap_compare) -> None:
    app = with_states(w1={**GONE, "status": "errored", "exit_code": 1}, w3={"status": "suspended"})

    async def light(pilot: Pilot) -> None:
        assert isinstance(pilot.app, DashboardApp)
        pilot.app.theme = "textual-light"
        await loaded(select="w:2")(pilot)
        await pilot.pause()

    assert snap_compare(app, terminal_size=(100, 30), run_before=light)
