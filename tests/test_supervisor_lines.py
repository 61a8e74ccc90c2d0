"""The supervisor's own lines are their own stream: a worker's flood cannot push them out
of memory, `clusterui logs` interleaves them by time, and they are in supervisor.log."""

from __future__ import annotations

import asyncio
import json

import pytest
from support import pilot_until, wait_for

from clusterui.client import Client
from clusterui.core.home import Home
from clusterui.dashboard import DashboardApp

pytestmark = pytest.mark.timeout(90)

FLOOD = 3000  # lines per start: three times the 1,000 lines a worker's ring holds


def every_line(cu, target: str) -> list[dict]:
    out = cu.run("logs", target, "--lines", "100000", "--json", check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def sys_lines(cu, target: str) -> tuple[list[dict], list[dict]]:
    got = every_line(cu, target)
    return [x for x in got if x["stream"] == "sys"], [x for x in got if x["stream"] != "sys"]


def test_a_flood_does_not_push_the_exit_and_reload_lines_out(cu):
    cu.write(
        "flood.py",
        f"""
        import sys, time
        for i in range({FLOOD}):
            print("GET /item/%d 200" % i)
        sys.stdout.flush()
        print("flooded", flush=True)
        time.sleep(600)
        """,
    )
    cu.write("ecosystem.yaml", "apps:\n  - name: flood\n    script: flood.py\n")
    cu.run("up", "-d", check=True)
    wait_for(lambda: "flooded" in cu.run("logs", "flood", "--lines", "5").stdout, 20, "flood 1")
    old_pid = cu.ls()[0]["pid"]
    cu.run("reload", "flood", check=True)
    wait_for(
        lambda: (
            (r := cu.ls()) and r[0]["pid"] not in (None, old_pid) and r[0]["status"] == "online"
        ),
        20,
        "the reloaded worker",
    )

    def flooded_again() -> bool:
        _, out = sys_lines(cu, "flood")
        return (
            [x["text"] for x in out].count("flooded") >= 1
            and len(out) >= 900
            and (out[-1]["text"] == "flooded")
        )

    wait_for(flooded_again, 20, "the new worker's flood")
    sys_, out = sys_lines(cu, "flood")
    # the ring holds at most 1,000 of the app's lines: the old worker's output is gone ...
    assert len(out) <= 1000 and "GET /item/0 200" not in [x["text"] for x in out[:10]]
    # ... but the supervisor's line about the old worker's exit is still there, in time order
    exits = [x["text"] for x in sys_ if x["text"].startswith(("stopped (", "old worker"))]
    assert exits, sys_
    everything = every_line(cu, "flood")
    times = [x["time"] for x in everything]
    assert times == sorted(times)
    # and it is in supervisor.log, the file the README names (the daemon's file)
    text = (cu.home / "supervisor.log").read_text()
    assert f"flood:0 {exits[-1]}" in text
    assert "GET /item/" not in text  # never the app's output
    # the dashboard's backlog (the newest 1,000 lines) has it too, and `v` finds it
    assert exits[-1] in asyncio.run(dashboard_sys_lines(cu))
    cu.run("down")


async def dashboard_sys_lines(cu) -> list[str]:
    home = Home.from_env(cu.home)
    client = await Client.connect(home)
    app = DashboardApp(client)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await asyncio.wait_for(app.loaded.wait(), 10)
            await pilot_until(pilot, lambda: len(app.log_view.records) >= 900, 10, "backlog")
            await pilot.press("v")
            shown = [r.text for r in app.log_view.shown]
            await pilot.press("d")
            return shown
    finally:
        await client.close()


def test_the_hub_keeps_its_own_lines_apart_from_a_workers_ring(tmp_path):
    from clusterui.core.logs import LogHub, LogLine, live_cut, skipped_note

    hub = LogHub(tmp_path / "logs", ring_lines=10, sys_log=tmp_path / "supervisor.log")
    hub.emit(0, "web", 0, "exited with code 1")
    ring = hub._ring(0, "web", 0)
    for i in range(50):  # five times what the ring holds
        ring.add(1e12 + i, "out", f"line {i}\n".encode(), 1)
    got = hub.recent([0], 5)
    assert [x.text for x in got] == [
        "exited with code 1",
        "line 46",
        "line 47",
        "line 48",
        "line 49",
    ]
    assert [x.text for x in hub.recent(None, 100)][0] == "exited with code 1"
    assert hub.recent([1], 10) == []
    hub.forget(0)
    assert hub.recent([0], 10) == []
    assert "web:0 exited with code 1" in (tmp_path / "supervisor.log").read_text()

    # a live batch cut to its newest lines keeps the supervisor's line, not the flood
    sys_line = LogLine(0, "web", 0, "sys", 1.0, "reloaded")
    flood = [LogLine(0, "web", 0, "out", 2.0 + i, f"x{i}") for i in range(20)]
    note = skipped_note(0, "web", 0, 3, 1.5)
    cut = live_cut([sys_line, note, *flood], 5)
    assert cut[0] is sys_line and [x.text for x in cut[-5:]] == [f"x{i}" for i in range(15, 20)]
    assert cut[1].text.startswith("18 ")  # 15 flood lines and the earlier note's 3
