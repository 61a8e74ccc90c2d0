"""`clusterui up` as a container's PID 1, in a new PID namespace (unshare, as root):
orphans are reaped, SIGTERM stops every app gracefully within kill_timeout, logs go
to stdout/stderr prefixed app:instance (or raw with --raw)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from support import Env, kill_ours, wait_for

KILL_TIMEOUT_MS = 2000
# The machine is shared: the bound is about correctness (kill_timeout, not a hang or
# the 300 s fallback), with room for a slow start of the stop.
STOP_SLACK = 8.0

POLITE = """
import signal, sys, time
def bye(sig, frame):
    open(sys.argv[1], "w").write("SIGTERM")
    print("polite: stopping", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, bye)
print("polite ready", flush=True)
print("polite on stderr", file=sys.stderr, flush=True)
while True:
    time.sleep(1)
"""

STUBBORN = """
import signal, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("stubborn ready", flush=True)
while True:
    time.sleep(1)
"""

# Forks a child that forks a grandchild and exits at once: the grandchild (in a
# session of its own, out of reach of the group kill) is an orphan, handed to PID 1.
ORPHANER = """
import os, sys, time
child = os.fork()
if child == 0:
    if os.fork() == 0:
        os.setsid()
        os.execvp("sleep", ["sleep", "1.5"])
    os._exit(0)
os.waitpid(child, 0)
print("orphaner ready", flush=True)
while True:
    time.sleep(1)
"""


def namespaces_work() -> bool:
    try:
        probe = ["unshare", "--pid", "--fork", "--mount-proc", "true"]
        return subprocess.run(probe, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


needs_namespaces = pytest.mark.skipif(
    not namespaces_work(), reason="cannot make a PID namespace here (needs root and unshare)"
)


def ecosystem(env: Env) -> str:
    marker = env.root / "polite.marker"
    scripts = {"polite": POLITE, "stubborn": STUBBORN, "orphaner": ORPHANER}
    apps = []
    for name, text in scripts.items():
        path = env.write(f"{name}.py", text)
        args = f"\n    args: ['{marker}']" if name == "polite" else ""
        apps.append(
            f"  - name: {name}\n    script: {path}{args}\n"
            f"    kill_signal: SIGTERM\n    kill_timeout: {KILL_TIMEOUT_MS}\n"
        )
    return str(env.write("ecosystem.yaml", "apps:\n" + "".join(apps)))


@pytest.fixture
def env():
    e = Env()
    try:
        yield e
    finally:
        e.cleanup()


def _tree(root: psutil.Process) -> list[psutil.Process]:
    try:
        return root.children(recursive=True)
    except psutil.Error:
        return []


@needs_namespaces
def test_pid1_reaps_orphans_and_stops_gracefully_on_sigterm(env: Env) -> None:
    eco = ecosystem(env)
    proc = subprocess.Popen(
        # --kill-child: if the test dies, so does the namespace, with everything in it.
        ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", sys.executable]
        + ["-m", "clusterui", "up", eco],
        env=env.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        unshare = psutil.Process(proc.pid)
        pid1 = wait_for(lambda: unshare.children(), what="PID 1")[0]  # `clusterui up`
        wait_for(
            lambda: online(env) >= {"polite", "stubborn", "orphaner"},
            timeout=30,
            what="the apps online",
        )

        # The orphaned grandchild is PID 1's now...
        def orphan() -> psutil.Process | None:
            return next((p for p in pid1.children() if p.name() == "sleep"), None)

        grandchild = wait_for(orphan, timeout=10, what="the orphan handed to PID 1")

        # ...and once it exits it is reaped, not left a zombie.
        def reaped() -> bool:
            try:
                grandchild.status()  # a zombie still answers: only a reaped one is gone
            except psutil.NoSuchProcess:
                return True
            return False

        wait_for(reaped, timeout=10, what="the orphan reaped")
        assert not [p for p in _tree(unshare) if _zombie(p)]

        started = time.monotonic()
        pid1.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=KILL_TIMEOUT_MS / 1000 + STOP_SLACK + 30)
        elapsed = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    print(f"SIGTERM to everything stopped: {elapsed:.2f} s (kill_timeout {KILL_TIMEOUT_MS} ms)")
    assert elapsed < KILL_TIMEOUT_MS / 1000 + STOP_SLACK, f"stopping took {elapsed:.1f}s"
    assert (env.root / "polite.marker").read_text() == "SIGTERM"  # graceful first
    # The stubborn one ignored SIGTERM: SIGKILLed at kill_timeout.
    assert "stubborn:0 * stopped" in err and "SIGKILL" in err, err
    # Logs: stdout lines on stdout, stderr lines on stderr, prefixed app:instance.
    assert "polite:0 | polite ready" in out
    assert "polite:0 | polite: stopping" in out
    assert "polite:0 ! polite on stderr" in err
    assert kill_ours(env.home) == []  # nothing outlived the namespace


@needs_namespaces
@pytest.mark.skipif(os.geteuid() != 0, reason="worker cgroups need root here")
def test_a_supervisor_in_a_pid_namespace_leaves_other_supervisors_workers_alone(
    env: Env, cu: Env
) -> None:
    """A container's supervisor shares our cgroup but sees none of our pids: it must not
    take the other supervisors' worker cgroups for stale ones and kill them (it did,
    when they were named by pid alone)."""
    cu.write("ecosystem.yaml", "apps:\n  - name: host\n    script: /bin/sleep\n    args: ['600']\n")
    cu.run("up", "-d", check=True)
    [before] = cu.ls()
    assert before["status"] == "online"
    proc = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", sys.executable]
        + ["-m", "clusterui", "up", ecosystem(env)],
        env=env.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(lambda: "polite" in online(env), timeout=30, what="the namespaced apps")
        time.sleep(1.5)  # a killed worker would be restarted by now: its pid would differ
        [after] = cu.ls()
        psutil.Process(proc.pid).children()[0].send_signal(signal.SIGTERM)  # its PID 1
        proc.wait(timeout=KILL_TIMEOUT_MS / 1000 + STOP_SLACK + 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert psutil.pid_exists(before["pid"])
    assert (after["pid"], after["restarts"], after["status"]) == (before["pid"], 0, "online")


def online(env: Env) -> set[str]:
    """Apps with a worker online; none while the supervisor is still starting."""
    r = env.run("ls", "--json")
    if r.returncode != 0:
        return set()
    return {w["app"] for w in json.loads(r.stdout) if w["status"] == "online"}


def _zombie(p: psutil.Process) -> bool:
    try:
        return p.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_raw_output_without_prefixes(env: Env) -> None:
    eco = ecosystem(env)
    proc = subprocess.Popen(
        [sys.executable, "-m", "clusterui", "up", "--raw", eco],
        env=env.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_for(lambda: "polite" in online(env), timeout=30, what="polite online")
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert "polite ready" in lines  # exactly what the worker wrote
    assert "polite on stderr" in err.splitlines()
    assert "stubborn:0 * stopped" in err  # clusterui's own lines keep their prefix
