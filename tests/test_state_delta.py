"""State deltas (vocab/delta.py): what the supervisor sends a delta subscriber, applied
on the other side, gives back each snapshot; and a real supervisor's stream of them
follows kills, scaling and removal."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import random
import signal
from typing import Any

import pytest
from support import Env, wait_for

from clusterui.client import Client, ClientError
from clusterui.vocab.delta import UPTIME_SLACK, Mirror, apply


def wire(obj: Any) -> Any:
    """Through JSON, as on the socket."""
    return json.loads(json.dumps(obj))


def same(held: dict[str, Any], snapshot: dict[str, Any]) -> None:
    """`held` is `snapshot`, a worker's uptime within the slack."""
    assert held["supervisor"] == snapshot["supervisor"]
    assert held["apps"] == snapshot["apps"]
    assert [w["id"] for w in held["workers"]] == [w["id"] for w in snapshot["workers"]]
    for mine, real in zip(held["workers"], snapshot["workers"], strict=True):
        assert abs(mine["uptime"] - real["uptime"]) <= UPTIME_SLACK + 1e-9, (mine, real)
        assert {**mine, "uptime": 0} == {**real, "uptime": 0}


class Fleet:
    """Snapshots of a made-up fleet that changes the way a real one does."""

    def __init__(self, seed: int) -> None:
        self.rnd = random.Random(seed)
        self.now = 100.0
        self.next_id = 0
        self.next_pid = 1000
        self.apps = [{"name": n, "instances": 0, "watch": False} for n in ("a", "b", "c")]
        self.workers: list[dict[str, Any]] = []
        for app in self.apps:
            for _ in range(3):
                self.add(app["name"])

    def add(self, app: str) -> None:
        self.next_pid += 1
        self.workers.append(
            {
                "id": self.next_id,
                "app": app,
                "pid": self.next_pid,
                "status": "online",
                "started": self.now,
                "cpu": 0.0,
                "metrics": {},
                "restart_history": [],
            }
        )
        self.next_id += 1

    def step(self) -> None:
        rnd = self.rnd
        self.now += rnd.uniform(0.9, 1.1)
        for w in self.workers:
            roll = rnd.random()
            if roll < 0.05 and w["pid"] is not None:  # killed and replaced
                self.next_pid += 1
                w["restart_history"] = w["restart_history"] + [{"at": self.now}]
                w["pid"], w["started"] = self.next_pid, self.now
            elif roll < 0.08:  # stopped
                w["pid"], w["status"] = None, "stopped"
            elif roll < 0.11 and w["pid"] is None:
                self.next_pid += 1
                w["pid"], w["status"], w["started"] = self.next_pid, "online", self.now
            elif roll < 0.3:
                w["cpu"] = round(rnd.uniform(0, 100), 1)
            elif roll < 0.35:
                w["metrics"] = {"rss": rnd.randint(1, 9)}
        if rnd.random() < 0.2:
            self.add(rnd.choice(self.apps)["name"])
        if rnd.random() < 0.2 and self.workers:
            self.workers.pop(rnd.randrange(len(self.workers)))
        if rnd.random() < 0.1:
            rnd.shuffle(self.workers)
        if rnd.random() < 0.1:
            self.apps[rnd.randrange(3)]["watch"] ^= True

    def snapshot(self) -> dict[str, Any]:
        rows = []
        for w in self.workers:
            row = {k: v for k, v in w.items() if k != "started"}
            # as the supervisor's rounding leaves it, read a moment after its own clock
            up = self.now - w["started"] + self.rnd.uniform(0, 0.002) if w["pid"] else 0
            row["uptime"] = round(up, 3)
            rows.append(row)
        sup = {"pid": 1, "uptime": round(self.now, 3)}
        return copy.deepcopy({"supervisor": sup, "apps": self.apps, "workers": rows})


@pytest.mark.parametrize("seed", range(20))
def test_applied_deltas_give_back_every_snapshot(seed: int) -> None:
    fleet = Fleet(seed)
    mirror = Mirror()
    first = fleet.snapshot()
    mirror.delta(first)  # the whole first one is what a new subscriber gets
    held = wire(first)
    for _ in range(200):
        fleet.step()
        snap = fleet.snapshot()
        held = apply(held, wire(mirror.delta(snap)))
        same(held, snap)
        held = wire(held)  # nothing of the subscriber's is shared with the mirror


def test_an_idle_fleet_sends_no_rows_and_a_change_sends_only_its_fields() -> None:
    fleet = Fleet(1)
    mirror = Mirror()
    mirror.delta(fleet.snapshot())
    fleet.rnd = random.Random(7)
    for _ in range(30):  # only time passes: uptimes drift, nothing is sent for them
        fleet.now += 1.0
        d = mirror.delta(fleet.snapshot())
        assert d["workers"] == {"set": [], "drop": []} and d["apps"] == {"set": [], "drop": []}
    fleet.workers[4]["cpu"] = 55.5
    fleet.now += 1.0
    d = mirror.delta(fleet.snapshot())
    assert d["workers"]["set"] == [{"cpu": 55.5, "id": 4}]
    old = fleet.workers[2]["pid"]
    fleet.workers[2]["pid"], fleet.workers[2]["started"] = old + 500, fleet.now
    fleet.now += 1.0
    [row] = mirror.delta(fleet.snapshot())["workers"]["set"]
    # a new process: its pid and its own uptime (not the running sum)
    assert row["id"] == 2 and row["pid"] == old + 500 and 0.99 <= row["uptime"] <= 1.01


def test_a_delta_with_nothing_held_or_an_unknown_row_is_refused() -> None:
    with pytest.raises(ValueError):
        apply(None, {"supervisor": {}, "workers": {"set": [], "drop": []}})
    held = {"supervisor": {"uptime": 1}, "apps": [], "workers": []}
    with pytest.raises(ValueError, match="never sent"):
        apply(held, {"supervisor": {"uptime": 2}, "workers": {"set": [], "order": [9]}})


# -- a real supervisor ------------------------------------------------------------------


async def _stream(cu: Env, checks: Any) -> None:
    client = await Client.connect(cu.home)
    try:
        with pytest.raises(ClientError, match="delta needs history: false"):
            await client.call("subscribe", delta=True)
        await client.call("subscribe", state=True, logs=False, history=False, delta=True)
        events = client.events()
        first = await asyncio.wait_for(anext(events), 10)
        assert first["event"] == "state"  # whole, once
        held = first["data"]
        sent: list[int] = []  # worker rows in each delta

        async def next_state() -> dict[str, Any]:
            nonlocal held
            while True:
                event = await asyncio.wait_for(anext(events), 10)
                if event["event"] == "state_delta":
                    sent.append(len(event["data"]["workers"]["set"]))
                    held = apply(held, event["data"])
                    return held
                assert event["event"] != "state", "a second whole state event"

        await checks(client, next_state, sent)
    finally:
        await client.close()


def test_a_real_supervisors_deltas_follow_kills_scaling_and_removal(cu: Env) -> None:
    cu.write("sleep.py", "import time\ntime.sleep(600)\n")
    cu.write(
        "ecosystem.yaml",
        "apps:\n  - name: a\n    script: sleep.py\n    instances: 3\n"
        "  - name: b\n    script: sleep.py\n",
    )
    cu.run("up", "-d", check=True)
    wait_for(lambda: [w["status"] for w in cu.ls()] == ["online"] * 4, 30, "4 online")

    def view(snapshot: dict[str, Any]) -> list[tuple[Any, ...]]:
        return [(w["app"], w["instance"], w["pid"], w["status"]) for w in snapshot["workers"]]

    async def checks(client: Client, next_state: Any, sent: list[int]) -> None:
        async def settles_to_truth() -> dict[str, Any]:
            """The held state equals a fresh state() once nothing moves for a tick."""
            for _ in range(40):
                held = await next_state()
                truth = await client.state(history=False)
                if view(held) == view(truth) and held["apps"] == truth["apps"]:
                    for mine, real in zip(held["workers"], truth["workers"], strict=True):
                        assert abs(mine["uptime"] - real["uptime"]) < 1.5  # a tick apart
                    return held
            raise AssertionError(f"held {view(held)} never matched {view(truth)}")

        held = await settles_to_truth()
        victim = dict(held["workers"][1])  # apply() updates the held rows in place
        os.kill(victim["pid"], signal.SIGKILL)
        held = await settles_to_truth()
        assert held["workers"][1]["pid"] != victim["pid"]
        assert held["workers"][1]["restarts"] == victim["restarts"] + 1
        assert (await asyncio.to_thread(cu.run, "scale", "a", "5")).returncode == 0
        held = await settles_to_truth()
        assert [w["app"] for w in held["workers"]] == ["a"] * 5 + ["b"]
        assert (await asyncio.to_thread(cu.run, "delete", "b")).returncode == 0
        held = await settles_to_truth()
        assert [a["name"] for a in held["apps"]] == ["a"]
        # Sleepers, steady: most ticks' deltas carry no worker row at all (uptime is the
        # subscriber's running sum), while the uptimes held still advance.
        uptime = held["workers"][0]["uptime"]
        del sent[:]
        for _ in range(8):
            held = await next_state()
        assert sent.count(0) >= 4, sent
        assert held["workers"][0]["uptime"] > uptime + 5

    asyncio.run(_stream(cu, checks))
