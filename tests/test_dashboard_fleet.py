"""The table at fleet size under state deltas: rows updated in place, their cells made
again only where drawn, and never stale once scrolled to."""

from __future__ import annotations

from typing import Any

from fake_client import FakeClient, make_app, make_snapshot, make_worker
from support import dashboard
from support import pilot_until as until
from textual.pilot import Pilot

from clusterui.dashboard import DashboardApp
from clusterui.dashboard.model import worker_key

APPS, PER_APP = 30, 10  # 330 rows: most of them off a 30-line screen


def fleet() -> dict[str, Any]:
    apps = [make_app(f"a{i:02d}", instances=PER_APP) for i in range(APPS)]
    workers = [
        make_worker(i * PER_APP + n, f"a{i:02d}", n, history=0)
        for i in range(APPS)
        for n in range(PER_APP)
    ]
    return make_snapshot(apps, workers)


def pid_cell(app: DashboardApp, wid: int) -> str:
    return app.table.get_cell(worker_key(wid), "pid").plain.strip()


def drawn(app: DashboardApp) -> str:
    """The table's lines as drawn now."""
    return "\n".join(
        "".join(seg.text for seg in app.table.render_line(y)) for y in range(app.table.size.height)
    )


async def push(client: FakeClient, pilot: Pilot, change: Any) -> None:
    snap = client.snapshot
    change(snap)
    snap["supervisor"]["uptime"] += 1.0
    client.push_state(snap)
    await pilot.pause()


async def test_rows_drawn_before_or_never_show_the_new_figures_after_deltas() -> None:
    client = FakeClient(snapshot=fleet())
    async with dashboard(client, size=(160, 30)) as (app, pilot, client):
        await push(client, pilot, lambda s: None)  # the whole one a delta subscriber gets
        deep, never = 200, 290  # a worker scrolled to and away from, one never drawn
        app.table.focus()
        app.table.select_key(worker_key(deep))
        await pilot.pause()
        assert f"a{deep // PER_APP:02d}:{deep % PER_APP}" in drawn(app)
        app.table.select_key(worker_key(0))
        await pilot.pause()
        old_deep = pid_cell(app, deep)  # asked for: made now, like a drawn row
        old_never = str(client.snapshot["workers"][never]["pid"])  # never made

        def kill(s: dict[str, Any]) -> None:
            for wid in (deep, never, 1):
                w = s["workers"][wid]
                w["pid"] += 5000
                w["restarts"] += 1
                w["uptime"] = 0.5

        await push(client, pilot, kill)
        await until(pilot, lambda: str(41007 + 5000) in drawn(app), what="row 1 redrawn")
        for wid, old in ((deep, old_deep), (never, old_never)):
            app.table.select_key(worker_key(wid))
            await pilot.pause()
            new = pid_cell(app, wid)
            assert new == str(int(old) + 5000), (wid, old, new)
            assert new in drawn(app)

        # A scale between deltas: a new row, the structure made again.
        def scale(s: dict[str, Any]) -> None:
            s["workers"].append(make_worker(999, "a00", PER_APP, history=0))

        await push(client, pilot, scale)
        await until(pilot, lambda: worker_key(999) in app.table.row_keys, what="the new row")
        keys = app.table.row_keys
        assert keys.index(worker_key(999)) == keys.index(worker_key(PER_APP - 1)) + 1
