"""A worker stopped by the kernel (SIGSTOP) is shown as "suspended", not "online" (issue 6).

The status is a display overlay the sampler sets once per tick: dispatch and the restart
policy do not change, and SIGCONT brings the same process back to "online".
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from support import Control, Load, online_rows, wait_for, web_app
from test_chaos import QUEUE_CAP

from clusterui.cli import render

pytestmark = pytest.mark.timeout(150)

SLEEPER = """\
import time
while True:
    time.sleep(3600)
"""


def status_of(cu, app: str, instance: int) -> dict:
    return next(w for w in cu.ls() if w["app"] == app and w["instance"] == instance)


def ls_line(cu, pid: int) -> str:
    """The `clusterui ls` table row of the worker with this pid."""
    out = cu.run("ls", check=True).stdout
    return next((line for line in out.splitlines() if f" {pid} " in line), "")


def test_sigstopped_cluster_worker_is_shown_suspended_and_the_others_serve(cu):
    port = web_app(cu, instances=3)
    before = wait_for(lambda: online_rows(cu, 3, "web"), 20, "3 workers online")
    frozen = before[1]
    others = {w["pid"] for w in before} - {frozen["pid"]}
    # More clients than the frozen worker can swallow (its dispatch queue, and what it had
    # already taken from its channel when stopped), so the others are seen carrying the
    # load rather than every client waiting on the frozen one.
    with Load(port, QUEUE_CAP + 48, timeout=60) as load:
        os.kill(frozen["pid"], signal.SIGSTOP)
        try:
            t_stop = time.monotonic()
            wait_for(
                lambda: status_of(cu, "web", 1)["status"] == "suspended", 10, "suspended in ls"
            )
            t_seen = time.monotonic()
            rows = cu.ls()
            assert {w["instance"]: w["status"] for w in rows} == {
                0: "online",
                1: "suspended",
                2: "online",
            }
            assert "suspended" in ls_line(cu, frozen["pid"]).split()
            described = cu.run("describe", "web:1", check=True).stdout
            assert f"pid {frozen['pid']}  suspended" in described
            # Still suspended a moment later: not a one-tick blip.
            ok_seen = load.ok_count()
            wait_for(lambda: load.ok_count() > ok_seen + 100, 40, "the others to carry on")
            assert status_of(cu, "web", 1)["status"] == "suspended"
            t_cont = time.monotonic()
        finally:
            os.kill(frozen["pid"], signal.SIGCONT)
        t_sigcont = time.monotonic()
        wait_for(lambda: status_of(cu, "web", 1)["status"] == "online", 10, "online again")
        t_resume = time.monotonic()
        wait_for(lambda: frozen["pid"] in load.pids_since(t_resume), 15, "it serves again")
    results = list(load.results)
    while_stopped = [r for r in results if t_stop + 0.2 < r.end < t_cont and r.error is None]
    print(
        f"\nSIGSTOP → suspended in `ls` {t_seen - t_stop:.2f} s, SIGCONT → online "
        f"{t_resume - t_sigcont:.2f} s; {len(while_stopped)} answered by the others in the "
        f"{t_cont - t_stop:.1f} s stopped; {load.ok_count()} ok, {len(load.failures())} failed"
    )
    assert {r.pid for r in while_stopped} == others
    assert len([r for r in while_stopped if r.end > t_seen]) > 100
    assert load.failures() == [], load.failures()[:3]
    after = {w["instance"]: w for w in cu.ls()}
    assert after[1]["pid"] == frozen["pid"]  # the same process, never replaced
    assert [after[i]["restarts"] for i in range(3)] == [0, 0, 0]
    assert "online" in ls_line(cu, frozen["pid"]).split()
    logs = cu.run("logs", "web:1", "--lines", "50", check=True).stdout
    assert f"process {frozen['pid']} is stopped" in logs
    assert f"process {frozen['pid']} runs again" in logs


def test_sigstopped_fork_worker_is_suspended_until_sigcont(cu):
    cu.write("sleeper.py", SLEEPER)
    cu.write(
        "ecosystem.yaml",
        """
        apps:
          - name: sleepy
            script: sleeper.py
            instances: 2
        """,
    )
    r = cu.run("up", "-d")
    assert r.returncode == 0, r.stderr
    before = wait_for(lambda: online_rows(cu, 2, "sleepy"), 20, "2 workers online")
    pid = before[0]["pid"]
    ctl = Control(cu.home)
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: status_of(cu, "sleepy", 0)["status"] == "suspended", 10, "suspended")
        assert status_of(cu, "sleepy", 1)["status"] == "online"
        assert "suspended" in ls_line(cu, pid).split()
        # `up -d` waits for "online": a suspended worker is not, and the reason is given.
        verdicts = ctl.call("wait_started", workers=[before[0]["id"]], timeout=1.5)["result"]
        assert verdicts == {str(before[0]["id"]): "suspended (stopped by a signal)"}
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: status_of(cu, "sleepy", 0)["status"] == "online", 10, "online again")
    after = status_of(cu, "sleepy", 0)
    assert (after["pid"], after["restarts"]) == (pid, 0)
    verdicts = ctl.call("wait_started", workers=[before[0]["id"]], timeout=5)["result"]
    assert verdicts == {str(before[0]["id"]): "ok"}
    ctl.close()


def test_ls_table_colours_suspended_and_survives_unknown_statuses():
    row = {
        "id": 0, "app": "web", "instance": 0, "pid": 42, "restarts": 0, "uptime": 5.0,
        "cpu": 0.0, "memory": 1024, "connections": 0, "active": 0,
    }  # fmt: skip
    table = render.worker_table(
        [{**row, "status": "suspended"}, {**row, "id": 1, "status": "no-such-state"}],
        colour=True,
    )
    assert "\x1b[1;33msuspended" in table
    assert "\x1b[0mno-such-state" in table
    plain = render.worker_table([{**row, "status": "suspended"}])
    assert plain.splitlines()[1].split()[4] == "suspended"
