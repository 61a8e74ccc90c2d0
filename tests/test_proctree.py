"""The `tree` operation on real processes: a worker that starts a child, which starts a
grandchild, and a helper that leaves the worker's session (setsid) and a double-forked
daemon that leaves its tree. The answer has each with its CPU and memory; what exited is
gone from the next answer."""

from __future__ import annotations

import re
import sys
from typing import Any

import pytest
from support import Control, Env, wait_for
from test_fake_client_contract import conforms

from clusterui.vocab.snapshot import WorkerTree

pytestmark = pytest.mark.timeout(120)

# The worker: a child (python) that starts a grandchild (sleep) and exits when the file
# `stop-child` appears, killing its grandchild first; a helper that calls setsid(); and on
# `daemonize`, a double fork whose grandchild outlives its parent.
WORKER = """
import os, subprocess, sys, time
here = os.path.dirname(os.path.abspath(__file__))
child = subprocess.Popen([sys.executable, os.path.join(here, "child.py")])
loner = subprocess.Popen(["sleep", "600"], start_new_session=True)
print("started", child.pid, loner.pid, flush=True)
daemonized = False
while True:
    if child.poll() is None and os.path.exists(os.path.join(here, "stop-child")):
        child.wait()
        print("child gone", flush=True)
    if not daemonized and os.path.exists(os.path.join(here, "daemonize")):
        daemonized = True
        subprocess.run(["sh", "-c", "sleep 601 & exit 0"])
        print("daemonized", flush=True)
    time.sleep(0.05)
"""

CHILD = """
import os, subprocess, time
here = os.path.dirname(os.path.abspath(__file__))
grandchild = subprocess.Popen(["sleep", "600"])
x = 0
while not os.path.exists(os.path.join(here, "stop-child")):
    for i in range(20000):  # a little CPU, so its figure can be more than 0
        x += i
    time.sleep(0.01)
grandchild.kill()
grandchild.wait()
"""


def tree(ctl: Control, target: str = "spawner") -> dict[str, Any]:
    (found,) = ctl.result("tree", target=target)
    conforms(found, WorkerTree, "tree()[0]")
    return found


def start_spawner(cu: Env) -> None:
    """The spawner app (a worker that starts a child and a grandchild), up."""
    cu.write("spawner.py", WORKER)
    cu.write("child.py", CHILD)
    cu.write(
        "ecosystem.yaml",
        f"""
        apps:
          - name: spawner
            script: spawner.py
            interpreter: {sys.executable}
        """,
    )
    assert cu.run("up", "-d").returncode == 0


def test_tree_lists_children_and_grandchildren_with_cpu_and_memory(cu: Env) -> None:
    start_spawner(cu)
    ctl = Control(cu.home)
    try:
        worker_pid = cu.ls()[0]["pid"]

        def whole() -> dict[str, Any] | None:
            found = tree(ctl)
            return found if len(found["processes"]) >= 4 else None

        first = wait_for(whole, 30, "the worker, its child, grandchild and helper")
        procs = first["processes"]
        assert procs[0]["pid"] == worker_pid and procs[0]["depth"] == 0
        child = next(p for p in procs if p["cmdline"].endswith("child.py"))
        assert child["ppid"] == worker_pid and child["depth"] == 1
        grandchild = next(p for p in procs if p["ppid"] == child["pid"])
        assert grandchild["depth"] == 2 and grandchild["cmdline"] == "sleep 600"
        assert grandchild["name"] == "sleep"
        loner = next(p for p in procs if p["depth"] == 1 and p["cmdline"] == "sleep 600")
        assert loner["left"] == "session"  # setsid(): a stop signal to the group misses it
        assert child["left"] is None and grandchild["left"] is None
        # Depth first: the grandchild comes right after its parent.
        assert procs.index(grandchild) == procs.index(child) + 1
        # `describe` lists them under the worker, indented by depth, the leak marked.
        text = cu.run("describe", "spawner", check=True).stdout
        assert "processes  3 below it" in text, text
        assert f"    pid {child['pid']}  cpu " in text and "child.py" in text
        assert f"      pid {grandchild['pid']}  cpu " in text
        assert "sleep 600  [left its session]" in text

        # CPU % needs two readings: the second call has a figure for every process.
        def measured() -> dict[str, Any] | None:
            found = tree(ctl)
            ok = all(isinstance(p["cpu"], float | int) for p in found["processes"])
            return found if ok and len(found["processes"]) >= 4 else None

        second = wait_for(measured, 30, "CPU figures for every process")
        assert all(p["memory"] > 0 for p in second["processes"])
        again = {p["pid"]: p for p in second["processes"]}
        assert again[child["pid"]]["cpu"] >= 0.0

        # The child exits (its grandchild first): both are gone from the next answers.
        (cu.root / "stop-child").write_text("")

        def child_gone() -> bool:
            pids = {p["pid"] for p in tree(ctl)["processes"]}
            return child["pid"] not in pids and grandchild["pid"] not in pids

        wait_for(child_gone, 30, "the child and grandchild to leave the tree")
        pids = {p["pid"] for p in tree(ctl)["processes"]}
        assert {worker_pid, loner["pid"]} <= pids
    finally:
        ctl.close()


def test_a_double_forked_daemon_is_marked_orphan_or_swept(cu: Env) -> None:
    """`sh -c 'sleep 601 &'`: the sleep's parent exits at once. With a cgroup per worker
    it is still the worker's (marked "orphan"); without, the supervisor is its subreaper
    and kills it, so it is not listed at all."""
    start_spawner(cu)
    ctl = Control(cu.home)
    try:
        wait_for(lambda: len(tree(ctl)["processes"]) >= 4, 30, "the worker's tree")
        (cu.root / "daemonize").write_text("")
        wait_for(lambda: "daemonized" in cu.run("logs", "spawner").stdout, 30, "the daemon")
        log = (cu.home / "supervisor.log").read_text()
        if "no cgroup per worker" in log:

            def swept() -> bool:
                found = tree(ctl)["processes"]
                return not any(p["cmdline"] == "sleep 601" for p in found)

            wait_for(swept, 30, "the subreaper to end the daemon")
            assert "left behind by an exited worker" in cu.run("logs", "--lines", "200").stdout
        else:

            def orphan() -> dict[str, Any] | None:
                found = tree(ctl)["processes"]
                return next((p for p in found if p["cmdline"] == "sleep 601"), None)

            daemon = wait_for(orphan, 30, "the daemon in the worker's cgroup")
            assert daemon["left"] == "orphan" and daemon["depth"] == 1
    finally:
        ctl.close()


def test_describe_asked_first_knows_every_childs_cpu(cu: Env) -> None:
    """CPU % takes two readings. Nobody has asked about this worker's tree before, so
    `describe` takes the second itself (op_tree's settle), not showing `cpu -`."""
    import psutil

    start_spawner(cu)
    worker = psutil.Process(cu.ls()[0]["pid"])
    wait_for(lambda: len(worker.children(recursive=True)) >= 3, 30, "the worker's processes")
    text = cu.run("describe", "spawner", check=True).stdout
    below = [line for line in text.splitlines() if line.lstrip().startswith("pid ")]
    assert len(below) >= 3 and all("  cpu -  " not in line for line in below), text
    assert all(re.search(r"  cpu \d+\.\d%  ", line) for line in below), text
    ctl = Control(cu.home)
    try:
        for settle in (-1, 1.5, True, "0.2"):
            bad = ctl.call("tree", target="spawner", settle=settle)
            assert not bad["ok"] and bad["code"] == 2, (settle, bad)
    finally:
        ctl.close()


def test_tree_of_an_app_has_every_running_worker_and_bad_targets_fail(cu: Env) -> None:
    cu.write(
        "ecosystem.yaml",
        """
        apps:
          - name: sleepers
            script: /bin/sleep
            args: ["600"]
            instances: 2
        """,
    )
    assert cu.run("up", "-d").returncode == 0
    ctl = Control(cu.home)
    try:
        found = ctl.result("tree", target="sleepers")
        assert sorted(t["instance"] for t in found) == [0, 1]
        for item in found:
            conforms(item, WorkerTree, "tree()[]")
            assert [p["pid"] for p in item["processes"]] == [item["pid"]]
        bad = ctl.call("tree", target="nope")
        assert not bad["ok"] and "nope" in bad["error"]
        assert cu.run("stop", "sleepers:1").returncode == 0
        assert [t["instance"] for t in ctl.result("tree", target="sleepers")] == [0]
    finally:
        ctl.close()
