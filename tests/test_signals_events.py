"""`clusterui signal` / `sendSignal` and the events timeline, on a real supervisor with
real workers and real signals (issue 17)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import psutil
import pytest
from support import WEB, Control, Env, free_port, wait_for

pytestmark = pytest.mark.timeout(120)

# Traps USR1 (and USR2) and writes what it got; spawns a helper in its own process group
# that traps USR1 too, to show the signal goes to the worker's process, not its group.
TRAPPER = """
import os, signal, subprocess, sys, time
out = os.path.join(os.environ["OUT"], os.environ["CLUSTERUI_INSTANCE"])
def got(sig, frame):
    with open(out, "a") as f:
        f.write(f"{signal.Signals(sig).name} {os.getpid()}\\n")
signal.signal(signal.SIGUSR1, got)
signal.signal(signal.SIGUSR2, got)
helper = subprocess.Popen([sys.executable, os.environ["HELPER"], out + ".helper"])
while not os.path.exists(out + ".helper"):
    time.sleep(0.01)
with open(out + ".ready", "w") as f:
    f.write(f"{os.getpid()} {helper.pid}\\n")
while True:
    time.sleep(1)
"""
HELPER = """
import os, signal, sys, time
out = sys.argv[1]
def got(sig, frame):
    with open(out, "a") as f:
        f.write(f"{signal.Signals(sig).name}\\n")
signal.signal(signal.SIGUSR1, got)
signal.signal(signal.SIGUSR2, got)
open(out, "a").close()
while True:
    time.sleep(1)
"""


def lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


@pytest.fixture
def trap(cu: Env) -> Env:
    """App `trap`: two fork workers that trap USR1, each with a helper child."""
    out = cu.root / "out"
    out.mkdir()
    cu.write("trapper.py", TRAPPER)
    cu.write("helper.py", HELPER)
    cu.write(
        "ecosystem.yaml",
        f"""
        apps:
          - name: trap
            script: trapper.py
            instances: 2
            env: {{OUT: {out}, HELPER: {cu.root / "helper.py"}}}
        """,
    )
    assert cu.run("up", "-d").returncode == 0
    for i in (0, 1):
        wait_for(lambda i=i: lines(out / f"{i}.ready"), 20, f"trap:{i} to trap USR1")
    return cu


def ready(cu: Env, instance: int) -> tuple[int, int]:
    """(worker pid, helper pid) of the instance's latest process."""
    pid, helper = lines(cu.root / "out" / f"{instance}.ready")[-1].split()
    return int(pid), int(helper)


def events_json(cu: Env, *args: str) -> list[dict[str, Any]]:
    r = cu.run("events", *args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_usr1_reaches_the_worker_process_and_not_its_helpers(trap: Env) -> None:
    cu, out = trap, trap.root / "out"
    pid0, helper0 = ready(cu, 0)
    r = cu.run("signal", "USR1", "trap:0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "sent SIGUSR1 to 1 worker(s)"
    wait_for(lambda: lines(out / "0") == [f"SIGUSR1 {pid0}"], 10, "trap:0 to get USR1")
    # The helper is in the worker's process group. Once it has handled a USR2 sent to it
    # directly, a USR1 sent to the group would have been handled too (signals pending
    # together are handled lowest number first): it never got one.
    os.kill(helper0, signal.SIGUSR2)
    wait_for(lambda: lines(out / "0.helper"), 10, "the helper to get USR2")
    assert lines(out / "0.helper") == ["SIGUSR2"]

    # PM2's spelling, the SIG prefix, lower case, the whole app, --json.
    r = cu.run("sendSignal", "sigusr1", "trap", "--json")
    assert r.returncode == 0, r.stderr
    answer = json.loads(r.stdout)
    assert answer["signal"] == "SIGUSR1" and answer["skipped"] == []
    assert sorted(s["instance"] for s in answer["sent"]) == [0, 1]
    pid1, _ = ready(cu, 1)
    wait_for(lambda: len(lines(out / "0")) == 2, 10, "trap:0 to get a second USR1")
    wait_for(lambda: lines(out / "1") == [f"SIGUSR1 {pid1}"], 10, "trap:1 to get USR1")
    rows = {w["instance"]: w for w in cu.ls()}
    assert rows[0]["pid"] == pid0 and rows[0]["restarts"] == 0  # handled: nothing restarted

    timeline = events_json(cu, "trap:0")
    assert [(e["kind"], e["instance"], e["reason"]) for e in timeline] == [
        ("signal", 0, f"SIGUSR1 sent to pid {pid0}"),
        ("signal", 0, f"SIGUSR1 sent to pid {pid0}"),
    ]


def test_kill_through_signal_is_a_crash_the_worker_restarts_from(trap: Env) -> None:
    cu = trap
    pid0, helper0 = ready(cu, 0)
    ids = {w["instance"]: w["id"] for w in cu.ls()}
    r = cu.run("signal", "KILL", str(ids[0]))  # a worker id, as other verbs take
    assert r.returncode == 0, r.stderr

    def restarted() -> dict[str, Any] | None:
        row = next(w for w in cu.ls() if w["instance"] == 0)
        return row if row["restarts"] == 1 and row["status"] == "online" else None

    row = wait_for(restarted, 30, "trap:0 to restart after SIGKILL")
    assert row["pid"] != pid0 and row["exit_signal"] == "SIGKILL"
    # Its helper went with it (the group and cgroup are cleaned up on exit).
    wait_for(lambda: not psutil.pid_exists(helper0), 10, "the old helper to be gone")
    timeline = events_json(cu, "trap")
    assert [(e["kind"], e["instance"], e["reason"]) for e in timeline] == [
        ("signal", 0, f"SIGKILL sent to pid {pid0}"),
        ("restart", 0, "crashed (killed by SIGKILL)"),
    ]
    text = cu.run("events", "trap").stdout.splitlines()
    assert text[-1].endswith("trap:0  restart        crashed (killed by SIGKILL)"), text


def test_bad_signals_and_stopped_workers_are_one_line_errors(trap: Env) -> None:
    cu = trap
    r = cu.run("signal", "STOP", "trap")
    assert r.returncode == 2
    assert (
        r.stderr.strip()
        .splitlines()[-1]
        .endswith("cannot send 'STOP': the signals are HUP, USR1, USR2, INT, TERM, KILL")
    )
    ctl = Control(cu.home)
    try:  # the supervisor checks the list itself, whoever asks
        for bad in ("9", "SIGSTOP", "", None):
            answer = ctl.call("signal", sig=bad, targets=["trap"])
            assert not answer["ok"] and answer["code"] == 2, answer
            assert "\n" not in answer["error"] and "the signals are" in answer["error"]
    finally:
        ctl.close()
    assert cu.run("stop", "trap:1").returncode == 0
    r = cu.run("signal", "HUP", "trap:1")
    assert r.returncode == 1
    assert r.stderr.strip() == "clusterui: no running worker to signal (trap:1 not running)"
    r = cu.run("signal", "USR2", "trap")  # the running one gets it; the other is named
    assert r.returncode == 0
    assert r.stdout.strip() == "sent SIGUSR2 to 1 worker(s); not running: trap:1"
    r = cu.run("signal", "USR1", "nope")
    assert r.returncode == 1 and "no app or worker named 'nope'" in r.stderr


def test_restarts_reloads_scales_and_watch_triggers_are_recorded(cu: Env) -> None:
    port = free_port()
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
          - name: watched
            script: /bin/sleep
            args: ["600"]
            watch: [{cu.root / "src"}]
            watch_delay: 100
        """,
    )
    assert cu.run("up", "-d").returncode == 0
    assert cu.run("restart", "web:1").returncode == 0
    assert cu.run("reload", "web").returncode == 0
    assert cu.run("scale", "web", "3").returncode == 0
    web = [(e["kind"], e["instance"], e["reason"]) for e in events_json(cu, "web")]
    assert web == [
        ("restart", 1, "manual restart"),
        ("restart", 0, "rolling reload"),
        ("restart", 1, "rolling reload"),
        ("reload", None, "manual: reloaded 2 worker(s)"),
        ("scale", None, "2 -> 3 instance(s)"),
    ]
    # A worker's view: its own events and the app-wide ones; --lines keeps the newest.
    mine = [(e["kind"], e["instance"]) for e in events_json(cu, "web:0")]
    assert mine == [("restart", 0), ("reload", None), ("scale", None)]
    assert [e["kind"] for e in events_json(cu, "web", "--lines", "2")] == ["reload", "scale"]

    (cu.root / "src" / "a.py").write_text("changed = 1\n")

    def watch_restart() -> list[tuple[str, Any, str]]:
        got = [(e["kind"], e["instance"], e["reason"]) for e in events_json(cu, "watched")]
        return got if ("restart", 0, "file change (watch)") in got else []

    got = wait_for(watch_restart, 30, "a file-watch restart of watched:0")
    assert got[0] == ("watch", None, "src/a.py changed: reloading"), got
    # Every app, merged by time (the web events came first).
    everything = events_json(cu)
    assert [e["app"] for e in everything] == ["web"] * 5 + ["watched"] * len(got)
    times = [e["time"] for e in everything]
    assert times == sorted(times)


def test_the_events_op_checks_its_arguments(cu: Env) -> None:
    cu.write("ecosystem.yaml", "apps:\n  - name: s\n    script: /bin/sleep\n    args: ['600']\n")
    assert cu.run("up", "-d").returncode == 0
    ctl = Control(cu.home)
    try:
        assert ctl.result("events", app="s") == []
        for args in ({"app": "s", "limit": -1}, {"app": "s", "instance": "0"}, {"app": 3}):
            answer = ctl.call("events", **args)
            assert not answer["ok"] and answer["code"] == 2, (args, answer)
        answer = ctl.call("events", app="nope")
        assert not answer["ok"] and "no app named 'nope'" in answer["error"]
    finally:
        ctl.close()
    assert cu.run("events", "s").stdout.strip() == "no events yet for s"


def test_the_timeline_outlives_the_supervisor(cu: Env) -> None:
    """`down` then `up`: each app's timeline comes back from events.jsonl (0600, in the
    home), older events first, and new ones follow."""
    cu.write(
        "ecosystem.yaml",
        "apps:\n  - name: s\n    script: /bin/sleep\n    args: ['600']\n"
        "  - name: t\n    script: /bin/sleep\n    args: ['600']\n",
    )
    assert cu.run("up", "-d").returncode == 0
    assert cu.run("restart", "s").returncode == 0
    assert cu.run("scale", "t", "2").returncode == 0
    before = events_json(cu)
    assert [(e["app"], e["kind"]) for e in before] == [("s", "restart"), ("t", "scale")]
    assert cu.run("down").returncode == 0
    path = cu.home / "events.jsonl"
    assert path.stat().st_mode & 0o777 == 0o600

    assert cu.run("up", "-d").returncode == 0  # a new supervisor
    assert events_json(cu) == before
    assert cu.run("restart", "t").returncode == 0  # one worker again: the file says 1
    after = events_json(cu, "t")
    assert after[0] == before[1] and [e["kind"] for e in after] == ["scale", "restart"]
    assert after[1]["time"] > before[1]["time"]


def test_the_event_file_is_bounded_and_bad_lines_are_skipped(tmp_path: Path) -> None:
    from clusterui.core import eventlog
    from clusterui.vocab import events

    notices: list[tuple[str, str]] = []
    path = tmp_path / "events.jsonl"
    good = {"time": 1.5, "kind": "restart", "app": "a", "instance": 0, "reason": "crashed"}
    path.write_text(
        "\n".join(
            [
                json.dumps(good),
                '{"time": 2, "kind": "restart", "app": "a", "inst',  # a crash's half line
                json.dumps({**good, "kind": "no-such-kind"}),
                json.dumps({**good, "instance": "0"}),
                json.dumps({**good, "time": True}),
                json.dumps([1, 2]),
                "\xff not json",
                "[" * 5000 + "]" * 5000,  # deeper than json can go
                '{"time": NaN, "kind": "restart", "app": "a", "instance": 0, "reason": ""}',
                json.dumps({**good, "time": 10**400}),
                json.dumps({**good, "app": "b", "instance": None, "time": 3}),
            ]
        )
        + "\n"
    )
    log = eventlog.EventLog(path, lambda level, text: notices.append((level, text)))
    past = log.past()
    assert {app: list(kept) for app, kept in past.items()} == {
        "a": [good],
        "b": [{**good, "app": "b", "instance": None, "time": 3.0}],
    }
    # Appending past MAX_BYTES moves the file to events.jsonl.1: never more than two.
    event: events.Event = {**good, "reason": "x" * 1000}  # type: ignore[typeddict-item]
    i, rotations, after = 0, 0, 0
    while rotations < 2 or after < 30:  # two rotations, then 30 events in the new file
        size = path.stat().st_size if path.exists() else 0
        log.append({**event, "time": float(i)})
        if path.stat().st_size < size:
            rotations, after = rotations + 1, 0
        after += 1
        i += 1
    log.close()
    assert path.stat().st_size <= eventlog.MAX_BYTES
    assert (tmp_path / "events.jsonl.1").stat().st_size <= eventlog.MAX_BYTES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.jsonl", "events.jsonl.1"]
    # The newest KEPT of each app come back, in order, across the two files (the last 30
    # from events.jsonl, the 70 before from events.jsonl.1).
    kept = list(eventlog.EventLog(path, print).past()["a"])
    assert [e["time"] for e in kept] == [float(t) for t in range(i - events.KEPT, i)]
    assert notices == []


def test_a_half_line_is_ended_and_an_oversized_file_is_read_from_its_tail(tmp_path: Path) -> None:
    from clusterui.core import eventlog

    path = tmp_path / "events.jsonl"
    event = {"time": 5.0, "kind": "scale", "app": "a", "instance": None, "reason": "1 → 2"}
    path.write_text(json.dumps({**event, "time": 4.0}) + "\n" + '{"time": 4.5, "kin')
    log = eventlog.EventLog(path, print)
    log.append(event)  # type: ignore[arg-type]
    log.close()
    assert [e["time"] for e in eventlog.EventLog(path, print).past()["a"]] == [4.0, 5.0]

    # A file far past what we write (not ours whole): its newest part is what counts.
    n = 3 * eventlog.MAX_BYTES // 250
    path.write_text(
        "".join(json.dumps({**event, "time": t, "reason": "y" * 170}) + "\n" for t in range(n))
    )
    assert path.stat().st_size > 2 * eventlog.MAX_BYTES
    past = eventlog.EventLog(path, print).past()["a"]
    assert [e["time"] for e in past] == [float(t) for t in range(n - 100, n)]


def test_an_unwritable_event_file_is_said_once_and_the_timeline_goes_on(tmp_path: Path) -> None:
    from clusterui.core import eventlog

    notices: list[tuple[str, str]] = []
    (tmp_path / "events.jsonl").mkdir()  # cannot be opened as a file
    log = eventlog.EventLog(tmp_path / "events.jsonl", lambda *n: notices.append(n))
    event = {"time": 1.0, "kind": "scale", "app": "a", "instance": None, "reason": "1 → 2"}
    log.append(event)  # type: ignore[arg-type]
    log.append(event)  # type: ignore[arg-type]
    assert len(notices) == 1 and notices[0][0] == "warning", notices
    assert "events timeline not saved to" in notices[0][1]
