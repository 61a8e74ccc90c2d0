"""tests/fake_client.py against a real supervisor, field by field and type by type.

The dashboard's tests and snapshots run on the fake; if its snapshots, describes or errors
drift from what the supervisor really sends, those tests prove nothing. Here a real
supervisor runs apps in the states the fake shows (online cluster workers, a crashing
fork app, a worker that cannot start), and every dict the fake returns must have the
same keys as the real one, each holding the same kind of value.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import types
import typing
from collections.abc import Iterable
from typing import Any

import pytest
from fake_client import FakeClient, FakeClientError, demo_snapshot
from support import WEB, Env, free_port, wait_for
from test_chaos import Control

from clusterui.client import Client, ClientError
from clusterui.vocab.events import KINDS, Event
from clusterui.vocab.snapshot import AppRow, Snapshot, WorkerRow, WorkerTree

pytestmark = pytest.mark.timeout(90)


def kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"  # JSON has one number type; 0 and 0.0 are the same to a reader
    return type(value).__name__


def kinds(rows: Iterable[dict[str, Any]]) -> dict[str, set[str]]:
    """Every key seen in `rows`, with the kinds of value it held."""
    out: dict[str, set[str]] = {}
    for row in rows:
        for key, value in row.items():
            out.setdefault(key, set()).add(kind(value))
    return out


def conforms(value: Any, hint: Any, where: str) -> None:
    """`value` is what the typed schema (clusterui.vocab.snapshot) declares at `where`."""
    if typing.is_typeddict(hint):
        assert isinstance(value, dict), where
        hints = typing.get_type_hints(hint)
        assert set(value) <= set(hints) and hint.__required_keys__ <= set(value), (
            f"{where}: keys {sorted(value)} vs {sorted(hints)}"
        )
        for key, item in value.items():
            conforms(item, hints[key], f"{where}.{key}")
        return
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is types.UnionType or origin is typing.Union:
        errors = []
        for option in args:
            try:
                conforms(value, option, where)
                return
            except AssertionError as exc:
                errors.append(str(exc))
        raise AssertionError(f"{where}: {value!r} is none of {hint}")
    if origin is list:
        assert isinstance(value, list), f"{where}: {value!r} is not a list"
        for i, item in enumerate(value):
            conforms(item, args[0], f"{where}[{i}]")
        return
    if origin is dict:
        assert isinstance(value, dict), f"{where}: {value!r} is not a dict"
        for key, item in value.items():
            conforms(key, args[0], f"{where} key")
            conforms(item, args[1], f"{where}[{key!r}]")
        return
    if hint is type(None):
        assert value is None, f"{where}: {value!r} is not None"
    elif hint is float:  # JSON: a whole float may arrive as an int
        assert isinstance(value, int | float) and not isinstance(value, bool), (where, value)
    elif hint is int:
        assert isinstance(value, int) and not isinstance(value, bool), (where, value)
    elif hint is Any:
        return
    else:
        assert isinstance(value, hint), f"{where}: {value!r} is not {hint}"


def same_shape(what: str, fake: list[dict[str, Any]], real: list[dict[str, Any]]) -> None:
    """Same keys; every kind the fake uses is one the real supervisor sends."""
    assert fake and real, what
    fk, rk = kinds(fake), kinds(real)
    assert sorted(fk) == sorted(rk), f"{what}: keys differ: fake {sorted(fk)}, real {sorted(rk)}"
    for key in fk:
        assert fk[key] <= rk[key], f"{what}.{key}: fake sends {fk[key]}, real sends {rk[key]}"


@pytest.fixture
def real(cu: Env) -> Env:
    """Online cluster workers, a crashing fork app, a worker that cannot start, a file-watch
    reload."""
    port = free_port()
    os.symlink(sys.executable, cu.root / "py")
    cu.write("crash.py", "import time\ntime.sleep(1.2)\nraise SystemExit(1)\n")
    cu.write("later.py", "import time\ntime.sleep(600)\n")
    cu.write("src/a.py", "")
    cu.write(
        "ecosystem.yaml",
        f"""
        apps:
          - name: web
            script: {WEB}
            exec_mode: cluster
            instances: 2
            listen: 127.0.0.1:{port}
            env: {{GREETING: hi}}
          - name: jobs
            script: crash.py
            restart_delay: 600000
          - name: gone
            script: later.py
            interpreter: {cu.root / "py"}
          - name: helper
            script: /bin/sh
            args: ["-c", "setsid sleep 600 & exec sleep 601"]
          - name: watched
            script: /bin/sleep
            args: ["600"]
            watch: [{cu.root / "src"}]
            watch_delay: 100
        """,
    )
    assert cu.run("up", "-d").returncode == 0
    # `gone` cannot start again: its interpreter is no more.
    (cu.root / "py").unlink()
    cu.run("restart", "gone")
    assert cu.run("restart", "web:1").returncode == 0  # a restart in its history
    ctl = Control(cu.home)
    try:
        wait_for(
            lambda: {w["app"]: w["status"] for w in ctl.workers()}["jobs"] == "waiting-restart",
            20,
            "jobs to crash",
        )
        wait_for(lambda: ctl.workers("gone")[0]["error"], 20, "gone to fail to start")
        (cu.root / "src" / "a.py").write_text("changed = 1\n")

        def watch_event() -> object:
            apps = ctl.call("state", history=False)["result"]["apps"]
            return next(a for a in apps if a["name"] == "watched")["last_watch_event"]

        wait_for(watch_event, 20, "a file-watch reload")
    finally:
        ctl.close()
    return cu


async def real_answers(env: Env) -> tuple[dict, list[dict], ClientError]:
    client = await Client.connect(env.home)
    try:
        state = await client.state()
        described = [await client.describe(a["name"]) for a in state["apps"]]
        with pytest.raises(ClientError) as err:
            await client.restart(["no-such-app"])
        return state, described, err.value
    finally:
        await client.close()


async def real_ops(env: Env) -> tuple[list[dict], dict, ClientError]:
    """The events of every app, a signal's answer (last: it ends `watched`, which then
    restarts) and a refused signal's error."""
    client = await Client.connect(env.home)
    try:
        timeline = await client.app_events()
        with pytest.raises(ClientError) as err:
            await client.signal("STOP", ["watched"])
        sent = await client.signal("TERM", ["watched"])
        return timeline, sent, err.value
    finally:
        await client.close()


async def real_trees(env: Env) -> list[dict]:
    """Two rounds of tree() on every app: the first has no CPU figures, the second has."""
    client = await Client.connect(env.home)
    try:
        deadline = time.monotonic() + 20
        while len((trees := await client.tree("helper"))[0]["processes"]) < 2:
            assert time.monotonic() < deadline, f"the helper's setsid child: {trees}"
            await asyncio.sleep(0.05)
        return [t for _ in range(2) for t in await client.tree("all")]
    finally:
        await client.close()


async def fake_answers() -> tuple[dict, list[dict], FakeClientError]:
    fake = FakeClient(demo_snapshot(api_workers=3))
    state = await fake.state()
    described = [await fake.describe(a["name"]) for a in state["apps"]]
    fake.fail("restart", "no app or worker named 'no-such-app'")
    with pytest.raises(FakeClientError) as err:
        await fake.restart(["no-such-app"])
    return state, described, err.value


async def fake_ops() -> tuple[list[dict], dict, FakeClientError]:
    fake = FakeClient(demo_snapshot(api_workers=3))
    timeline = await fake.app_events()
    with pytest.raises(FakeClientError) as err:
        await fake.signal("STOP", ["web"])
    sent = await fake.signal("TERM", ["web:0"])
    return timeline, sent, err.value


async def test_the_fake_clients_events_and_signal_answers_have_the_real_shape(real: Env) -> None:
    r_events, r_sent, r_err = await real_ops(real)
    f_events, f_sent, f_err = await fake_ops()
    # The real timeline has what the fake shows: a worker's restart, an app-wide event.
    assert {"restart", "watch"} <= {e["kind"] for e in r_events}, r_events
    for side, timeline in (("fake", f_events), ("real", r_events)):
        for e in timeline:
            conforms(e, Event, f"{side} events[]")
            assert e["kind"] in KINDS, e
        times = [e["time"] for e in timeline]
        assert times == sorted(times), f"{side}: events oldest first"
    same_shape("events[]", f_events, r_events)
    same_shape("signal", [f_sent], [r_sent])
    same_shape("signal.sent[]", f_sent["sent"], r_sent["sent"])
    assert f_sent["signal"] == r_sent["signal"] == "SIGTERM"
    assert f_err.message == r_err.message and f_err.code == r_err.code == 2


async def test_the_fake_clients_trees_have_the_real_supervisors_shape(real: Env) -> None:
    real_side = await real_trees(real)
    fake_side = await FakeClient(demo_snapshot(api_workers=3)).tree("all")
    for side, trees in (("fake", fake_side), ("real", real_side)):
        for t in trees:
            conforms(t, WorkerTree, f"{side} tree()[]")
    same_shape("tree()[]", fake_side, real_side)
    same_shape(
        "tree()[].processes[]",
        [p for t in fake_side for p in t["processes"]],
        [p for t in real_side for p in t["processes"]],
    )
    assert {p["left"] for t in real_side for p in t["processes"]} >= {None, "session"}


async def test_the_fake_clients_answers_have_the_real_supervisors_shape(real: Env) -> None:
    r_state, r_desc, r_err = await real_answers(real)
    f_state, f_desc, f_err = await fake_answers()
    # The real side shows what the fake shows: live, crashed and failed workers.
    statuses = {w["status"] for w in r_state["workers"]}
    assert {"online", "waiting-restart"} <= statuses, statuses
    assert any(isinstance(w["error"], str) for w in r_state["workers"]), r_state["workers"]
    assert any(w["restart_history"] for w in r_state["workers"]), r_state["workers"]

    # Both conform to the typed schema, value by value.
    conforms(f_state, Snapshot, "fake state")
    conforms(r_state, Snapshot, "real state")
    for side, described in (("fake", f_desc), ("real", r_desc)):
        for d in described:
            conforms(d["app"], AppRow, f"{side} describe().app")
            for w in d["workers"]:
                conforms(w, WorkerRow, f"{side} describe().workers[]")

    # The snapshot: supervisor, host, apps, workers and what they nest.
    assert sorted(f_state) == sorted(r_state) == ["apps", "supervisor", "workers"]
    same_shape("supervisor", [f_state["supervisor"]], [r_state["supervisor"]])
    same_shape("supervisor.host", [f_state["supervisor"]["host"]], [r_state["supervisor"]["host"]])
    same_shape("apps[]", f_state["apps"], r_state["apps"])
    same_shape("workers[]", f_state["workers"], r_state["workers"])
    same_shape(
        "workers[].history",
        [w["history"] for w in f_state["workers"]],
        [w["history"] for w in r_state["workers"]],
    )
    for series in ("cpu", "memory", "conn_rate", "time"):
        f_vals = {kind(v) for w in f_state["workers"] for v in w["history"][series]}
        r_vals = {kind(v) for w in r_state["workers"] for v in w["history"][series]}
        assert f_vals <= r_vals, (series, f_vals, r_vals)
    same_shape(
        "workers[].restart_history[]",
        [h for w in f_state["workers"] for h in w["restart_history"]],
        [h for w in r_state["workers"] for h in w["restart_history"]],
    )

    # describe: the app row, the spec (env names only) and its workers.
    for d in (*f_desc, *r_desc):
        assert sorted(d) == ["app", "spec", "workers"]
    for part in ("app", "spec"):
        same_shape(f"describe().{part}", [d[part] for d in f_desc], [d[part] for d in r_desc])
    same_shape(
        "describe().workers[]",
        [w for d in f_desc for w in d["workers"]],
        [w for d in r_desc for w in d["workers"]],
    )
    for f, r in zip(f_desc, r_desc, strict=False):  # the same workers as the snapshot
        assert f["app"] == next(a for a in f_state["apps"] if a["name"] == f["app"]["name"])
        assert r["app"]["name"] == r["spec"]["name"]
    assert all(isinstance(n, str) for d in f_desc for n in d["spec"]["env"])
    web = next(d for d in r_desc if d["app"]["name"] == "web")
    assert web["spec"]["env"] == ["GREETING"]  # names only: values may be secrets

    # Errors: one sentence and an exit code, under the same attribute names.
    for err in (f_err, r_err):
        assert isinstance(err.message, str) and isinstance(err.code, int)
        assert str(err) == err.message and "\n" not in err.message
    assert r_err.message.startswith(f_err.message)  # the real one lists the apps after it
    assert f_err.code == r_err.code == 1  # fail()'s default code is the real one's
