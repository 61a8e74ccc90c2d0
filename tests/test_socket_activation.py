"""Listening sockets handed in from outside (systemd's LISTEN_FDS), and a supervisor
SIGKILLed under load on such a socket: no connection refused, none lost.

`systemd-socket-activate` binds the socket and starts `clusterui up` with it. Two
ways back: the supervisor alone is killed and `up` starts a new one on the socket it
still holds; or `up` is killed with it and tests/restart_always.py, playing systemd's
Restart=always (it keeps the socket, as systemd does), starts `up` again. The load
is a plain Python client (one new connection per request, 16 at a time), no wrk.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from support import WEB, Env, free_port, wait_for

from clusterui.core import inherit
from clusterui.core.spec import parse_listen

RESTART_ALWAYS = str(Path(__file__).with_name("restart_always.py"))
CLIENTS = 16

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None,
    reason="systemd-socket-activate is not installed",
)


def get(port: int, timeout: float = 30.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return data


class Load:
    """CLIENTS threads doing request after request; every outcome is counted."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.answers: list[tuple[float, float, int]] = []  # (sent, answered, worker pid)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run) for _ in range(CLIENTS)]

    def _run(self) -> None:
        while not self.stop.is_set():
            sent = time.monotonic()
            try:
                data = get(self.port)
            except ConnectionRefusedError:
                outcome, pid = "refused", 0
            except OSError as exc:
                outcome, pid = type(exc).__name__, 0
            else:
                m = re.search(rb"pid (\d+)\n$", data)
                ok = data.startswith(b"HTTP/1.1 200") and m
                outcome, pid = ("ok", int(m.group(1))) if ok else (f"bad {data[:30]!r}", 0)
            with self.lock:
                self.outcomes[outcome] += 1
                if pid:
                    self.answers.append((sent, time.monotonic(), pid))

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


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
        yield env, port, proc, restarter
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
    env, port, proc, restarter = activated
    # The first answer also proves the supervisor took the socket: binding the same
    # address again would have failed (systemd-socket-activate holds it, no SO_REUSEPORT).
    wait_for(lambda: _answers(port), timeout=60, what="the first answer")
    first = env.supervisor_pid()
    assert first is not None
    with Load(port) as load:
        wait_for(lambda: load.outcomes["ok"] > 200, timeout=30, what="load under way")
        old_workers = {pid for _s, _a, pid in load.answers}
        if restarter == "systemd":  # the whole service died: `up` too
            up = psutil.Process(proc.pid).children()[0]
            up.kill()
        os.kill(first, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(lambda: not psutil.pid_exists(first) or _zombie(first), what="the kill")

        def new_workers_answered() -> int:
            with load.lock:
                return sum(1 for _s, _a, pid in load.answers if pid not in old_workers)

        wait_for(lambda: new_workers_answered() > 200, timeout=60, what="the new supervisor")
    second = env.supervisor_pid()
    assert second and second != first
    assert proc.poll() is None  # the socket's holder stayed up throughout

    out = dict(load.outcomes)
    assert out.get("refused", 0) == 0, out
    assert set(out) == {"ok"}, out  # no reset, no timeout, no short answer
    # Connections made while no supervisor ran waited in the socket's queue and were
    # answered by the next one's workers.
    first_new = min(a for _s, a, pid in load.answers if pid not in old_workers)
    queued = [
        (s, a) for s, a, pid in load.answers if pid not in old_workers and killed_at < s < first_new
    ]
    assert queued, "no connection was made during the restart"
    print(f"{out} queued={len(queued)} restart={first_new - killed_at:.2f}s")


def _answers(port: int) -> bool:
    try:
        return get(port, timeout=5).startswith(b"HTTP/1.1 200")
    except OSError:
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
