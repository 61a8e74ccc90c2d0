"""Listening sockets handed in from outside (systemd's LISTEN_FDS), and a supervisor
SIGKILLed under load on such a socket: no connection refused, none lost.

`systemd-socket-activate` binds the socket and starts `clusterui up` with it. Two
ways back: the supervisor alone is killed and `up` starts a new one on the socket it
still holds; or `up` is killed with it and tests/restart_always.py, playing systemd's
Restart=always (it keeps the socket, as systemd does), starts `up` again. The load
is a plain Python client (one new connection per request, 16 at a time), no wrk.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
from support import PID, WEB, Env, Load, free_port, get, wait_for

from clusterui.core import inherit
from clusterui.core.spec import parse_listen

RESTART_ALWAYS = str(Path(__file__).with_name("restart_always.py"))
CLIENTS = 16

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None,
    reason="systemd-socket-activate is not installed",
)


CASES = {
    "round-robin, up restarts the supervisor": ("round-robin", "up"),
    "shared, up restarts the supervisor": ("shared", "up"),
    "round-robin, systemd restarts up": ("round-robin", "systemd"),
}


@pytest.fixture(params=list(CASES))
def activated(request):
    """`clusterui up` (restarted whenever it exits) on a socket systemd-socket-activate holds."""
    dispatch, restarter = CASES[request.param]
    env = Env()
    port = free_port()
    eco = env.write(
        "ecosystem.yaml",
        f"""
        apps:
          - name: web
            script: {WEB}
            exec_mode: cluster
            instances: 2
            listen: 127.0.0.1:{port}
            dispatch: {dispatch}
        """,
    )
    log = open(env.root / "activate.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            "systemd-socket-activate",
            "-l",
            f"127.0.0.1:{port}",
            "--fdname=web",
            "-E",
            "CLUSTERUI_HOME",
            "-E",
            "NO_COLOR",
            *([sys.executable, RESTART_ALWAYS] if restarter == "systemd" else []),
            sys.executable,
            "-m",
            "clusterui",
            "up",
            str(eco),
        ],
        env=env.env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield env, port, proc, restarter, dispatch
    finally:
        proc.send_signal(signal.SIGTERM)  # restart_always passes it on: a graceful stop
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        env.cleanup()


def test_supervisor_killed_under_load_loses_no_connection(activated) -> None:
    env, port, proc, restarter, dispatch = activated
    # The first answer also proves the supervisor took the socket: binding the same
    # address again would have failed (systemd-socket-activate holds it, no SO_REUSEPORT).
    wait_for(lambda: _answers(port), timeout=60, what="the first answer")
    first = env.supervisor_pid()
    assert first is not None
    with Load(port, CLIENTS, timeout=30, warmup=0) as load, ThreadPoolExecutor(1) as pool:
        wait_for(lambda: load.outcomes["ok"] > 200, timeout=30, what="load under way")
        # Every worker the first supervisor ran, not only those seen answering: in shared
        # mode one worker may have taken every connection so far.
        old_workers = {a.pid for a in load.answers} | {w["pid"] for w in env.ls()}
        if restarter == "systemd":  # the whole service died: `up` too
            up = psutil.Process(proc.pid).children()[0]
            up.kill()
        os.kill(first, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(lambda: not psutil.pid_exists(first) or _zombie(first), what="the kill")
        # A connection of our own, made once the supervisor is gone: the load's clients
        # may all be waiting in the socket's queue already, and then make none now.
        probe_at = time.monotonic()
        probe = pool.submit(get, port, timeout=30)

        def new_workers_answered() -> int:
            with load.lock:
                return sum(1 for a in load.answers if a.pid not in old_workers)

        wait_for(lambda: new_workers_answered() > 200, timeout=60, what="the new supervisor")
    second = env.supervisor_pid()
    assert second and second != first
    assert proc.poll() is None  # the socket's holder stayed up throughout

    out = dict(load.outcomes)
    assert out.get("refused", 0) == 0, out
    assert set(out) == {"ok"}, out  # no reset, no timeout, no short answer
    # A connection made while no supervisor ran was answered. In round-robin it waited
    # in the socket's queue for the next supervisor's workers, or the old dispatcher
    # took it in the moment before it saw its supervisor go and handed it to an old
    # worker (both outlive the supervisor by kill_timeout here). In shared mode the
    # old workers, which accept for themselves, may still take it.
    first_new = min(a.end for a in load.answers if a.pid not in old_workers)
    answer = probe.result(timeout=30)
    assert answer.status == 200, answer
    assert probe_at < first_new, "the probe was made after the new supervisor served"
    by = "an old" if int(PID.search(answer).group(1)) in old_workers else "a new"
    queued = [
        a for a in load.answers if a.pid not in old_workers and killed_at < a.start < first_new
    ]
    print(
        f"{out} probe made {first_new - probe_at:.2f}s before the first new answer, "
        f"answered by {by} worker; "
        f"{len(queued)} load connections made in the gap; restart={first_new - killed_at:.2f}s"
    )


def _answers(port: int) -> bool:
    try:
        return get(port, timeout=5).status == 200
    except (OSError, http.client.HTTPException):
        return False


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


# ---- matching handed-in sockets to apps ----------------------------------------------


@pytest.fixture
def handed():
    socks = []

    def make(family: int, address: object, name: str) -> tuple[int, str]:
        s = socket.socket(family, socket.SOCK_STREAM)
        s.bind(address)
        s.listen()
        socks.append(s)
        return os.dup(s.fileno()), name

    yield make
    inherit.reset()
    for s in socks:
        s.close()


def _port(fd: int) -> int:
    with socket.socket(fileno=os.dup(fd)) as s:
        return s.getsockname()[1]


def test_matched_by_name_then_by_address(handed, tmp_path: Path) -> None:
    by_name = handed(socket.AF_INET, ("127.0.0.1", 0), "api")
    by_addr = handed(socket.AF_INET, ("127.0.0.1", 0), "something-else")
    unix_path = str(tmp_path / "u.sock")
    by_path = handed(socket.AF_UNIX, unix_path, "")
    assert inherit.install([by_name, by_addr, by_path]) == []
    port_b = _port(by_addr[0])
    # The name wins whatever the address says.
    got = inherit.take("api", parse_listen("127.0.0.1:1"))
    assert got is not None and got.getsockname()[1] != 1
    got.close()
    got = inherit.take("web", parse_listen(f"127.0.0.1:{port_b}"))
    assert got is not None and got.getsockname()[1] == port_b
    got.close()
    got = inherit.take("sock", parse_listen(f"unix:{unix_path}"))
    assert got is not None and got.getsockname() == unix_path
    got.close()
    assert inherit.take("other", parse_listen("127.0.0.1:9")) is None
    assert inherit.unused() == []


def test_ipv6_any_serves_a_port_only_listen(handed) -> None:
    fd, name = handed(socket.AF_INET6, ("::", 0), "")
    inherit.install([(fd, name)])
    port = _port(fd)
    got = inherit.take("web", parse_listen(port))  # `listen: PORT` is 0.0.0.0:PORT
    assert got is not None
    got.close()


def test_from_systemd_checks_the_pid_and_unsets(tmp_path: Path) -> None:
    env = {"LISTEN_FDS": "1", "LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDNAMES": "web"}
    assert inherit.from_systemd(env) == []  # meant for another process
    assert env == {}  # and gone, so no child takes them for its own
    r, w = os.pipe()
    placed = False
    try:
        try:
            os.fstat(3)  # systemd passes fds from 3 on; make sure one is there
        except OSError:
            os.dup2(r, 3)
            placed = True
        env = {"LISTEN_FDS": "1", "LISTEN_PID": str(os.getpid()), "LISTEN_FDNAMES": "web"}
        assert inherit.from_systemd(env) == [(3, "web")]
        with pytest.raises(inherit.InheritError, match="not a number"):
            inherit.from_systemd({"LISTEN_FDS": "x", "LISTEN_PID": str(os.getpid())})
    finally:
        if placed:
            os.close(3)
        os.close(r)
        os.close(w)


def test_not_a_listening_socket_is_refused(handed) -> None:
    a, b = socket.socketpair()
    try:
        problems = inherit.install([(os.dup(a.fileno()), "web")])
        assert problems and "not a listening stream socket" in problems[0]
        assert inherit.take("web", parse_listen(1)) is None
    finally:
        a.close()
        b.close()
