"""SIGHUP detaches: a real terminal (a pty) goes away under a running dashboard."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import signal
import struct
import sys
import termios
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).parent

CHILD = """
import json, sys
sys.path.insert(0, {tests!r})
from fake_client import FakeClient
from clusterui.dashboard.app import run_dashboard

class Recording(FakeClient):
    # each call is on disk at once: a hung-up dashboard leaves without returning
    async def _op(self, op, *args):
        with open({calls!r}, "a") as f:
            f.write(op + "\\n")
        await super()._op(op, *args)

client = Recording()

async def connect():
    return client

code = run_dashboard(connect, file="ecosystem.yaml", started_supervisor=True)
with open({out!r}, "w") as f:
    json.dump({{"code": code, "calls": [c[0] for c in client.calls], "closed": client.closed}}, f)
sys.exit(code)
"""


def _spawn(tmp_path: Path) -> tuple[int, int, Path]:
    out = tmp_path / "result.json"
    script = tmp_path / "child.py"
    calls = tmp_path / "calls.txt"
    script.write_text(CHILD.format(tests=str(TESTS), out=str(out), calls=str(calls)))
    pid, fd = pty.fork()
    if pid == 0:  # the child: a session leader whose controlling terminal is the pty
        try:
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
            env = dict(os.environ, TERM="xterm-256color")
            env.pop("NO_COLOR", None)
            os.execve(sys.executable, [sys.executable, str(script)], env)
        finally:
            os._exit(127)
    return pid, fd, out


def _read_until(fd: int, marker: bytes, timeout: float) -> bytes:
    """Drain the terminal (so the app never blocks writing) until marker shows."""
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{marker!r} never appeared; got {seen[-400:]!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    return seen


def _wait_exit(pid: int, timeout: float, fd: int | None = None) -> int:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            raise AssertionError("the dashboard did not exit")
        if fd is not None:  # keep draining so the app can finish writing
            ready, _, _ = select.select([fd], [], [], 0.05)
            if ready:
                try:
                    os.read(fd, 65536)
                except OSError:
                    fd = None
        else:
            select.select([], [], [], 0.05)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


@pytest.mark.timeout(60)
def test_terminal_hangup_detaches_and_leaves_the_apps(tmp_path: Path) -> None:
    pid, fd, out = _spawn(tmp_path)
    try:
        _read_until(fd, b"processes", timeout=30)
        os.close(fd)  # the SSH connection drops: the kernel sends SIGHUP
        fd = -1
        code = _wait_exit(pid, timeout=20)
        calls = (tmp_path / "calls.txt").read_text().split()
        assert code == 0
        assert "subscribe" in calls and "shutdown" not in calls  # the apps keep running
        # It left at once (os._exit: nothing to restore on a dead terminal), so the
        # socket closed with the process rather than by close().
    finally:
        if fd >= 0:
            os.close(fd)
        _kill(pid)


@pytest.mark.timeout(60)
def test_sighup_with_the_terminal_still_there_detaches(tmp_path: Path) -> None:
    pid, fd, out = _spawn(tmp_path)
    try:
        _read_until(fd, b"processes", timeout=30)
        os.kill(pid, signal.SIGHUP)
        code = _wait_exit(pid, timeout=20, fd=fd)
        result = json.loads(out.read_text())
        assert code == 0 and result["code"] == 0
        assert "shutdown" not in result["calls"] and result["closed"]
    finally:
        os.close(fd)
        _kill(pid)
