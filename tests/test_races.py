"""Overlapping operations on one app from several clients leave no ghosts.

Five clients (five connections) fire 250 scale, restart, reload, stop and start calls at
one cluster app without waiting for each other. Afterwards the supervisor's worker
children are exactly the pids `ls` lists, the count is the one the last scale reported
(or what start/stop left), and every listed pid answers HTTP requests.
"""

from __future__ import annotations

import asyncio
import random
import re
import time

import psutil
import pytest
from support import WEB, Env, get, wait_for, web_app

from clusterui.client import Client, ClientError
from clusterui.core.home import Home

pytestmark = pytest.mark.timeout(300)

CLIENTS = 5
CALLS = 50  # per client: 250 in all
# Scale calls are cheap unless the count changes; restart and reload spawn every worker.
OPS = ["scale", "scale+", "scale-", "restart", "reload", "stop", "start"]
WEIGHTS = [40, 15, 15, 8, 8, 7, 7]


def worker_children(cu: Env) -> set[int]:
    """The supervisor's children running web.py (not the guardian, not dispatchers)."""
    sup = psutil.Process(cu.supervisor_pid())
    found = set()
    for child in sup.children():
        try:
            if WEB in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE:
                found.add(child.pid)
        except psutil.Error:
            pass
    return found


async def hammer(home: Home, seed: int, log: list[tuple[float, str, str, object]]) -> None:
    rng = random.Random(seed)
    client = await Client.connect(home, timeout=120)
    try:
        pending = []
        for _ in range(CALLS):
            op = rng.choices(OPS, WEIGHTS)[0]
            if op == "scale":
                call = client.scale("web", str(rng.randint(1, 4)))
            elif op == "scale+":
                call = client.scale("web", "+1")
            elif op == "scale-":
                call = client.scale("web", "-1")
            else:
                call = getattr(client, op)(["web"])
            pending.append(asyncio.ensure_future(_record(call, op, log)))
            await asyncio.sleep(rng.random() * 0.02)
        await asyncio.gather(*pending)
    finally:
        await client.close()


async def _record(call, op: str, log: list) -> None:
    try:
        result = await call
        log.append((time.monotonic(), op, "ok", result))
    except ClientError as exc:
        log.append((time.monotonic(), op, "error", exc.message))


def test_overlapping_operations_from_several_clients_leave_no_ghosts(cu: Env) -> None:
    port = web_app(cu, instances=2, kill_timeout=500)
    home = Home.from_env(cu.home)
    log: list[tuple[float, str, str, object]] = []

    async def main() -> None:
        await asyncio.gather(*(hammer(home, seed, log) for seed in range(CLIENTS)))

    asyncio.run(main())
    assert len(log) == CLIENTS * CALLS
    errors = [entry for entry in log if entry[2] == "error"]
    # Refusals are fine ("cannot scale web to -1", a reload of a stopped app), crashes are not.
    assert not [e for e in errors if "internal error" in e[3]], errors[:5]

    def settled():
        rows = cu.ls()
        busy = [w for w in rows if w["status"] not in ("online", "stopped") or w["draining_pids"]]
        return None if busy else rows

    rows = wait_for(settled, 60, "every worker online or stopped")
    # Once settled, one more scale reports the truth and is the truth.
    result = cu.run("scale", "web", "+0", check=True).stdout
    n = int(re.search(r"web: (\d+) instance", result).group(1))
    rows = wait_for(settled, 60, "settled again")
    assert len(rows) == n, (result, rows)
    listed = {w["pid"] for w in rows if w["pid"]}
    assert worker_children(cu) == listed, (worker_children(cu), rows)
    # Every listed pid answers (round robin: a few rounds reach each online worker).
    if listed:
        seen: set[int] = set()
        deadline = time.monotonic() + 30
        while seen != listed and time.monotonic() < deadline:
            seen.add(int(get(port).split(" pid ")[1]))
        assert seen == listed
    # And stop really ends them all: no process of web.py is left.
    cu.run("stop", "web", check=True)
    wait_for(lambda: not worker_children(cu), 30, "no web.py process after stop")
