"""The tests' helpers, each defined once: a private CLUSTERUI_HOME with the real CLI, a
started web app, a counted batch of requests (close_requests), and (from bench/common.py,
shared with the benchmarks) polling, free ports, a control connection, one GET (get) and
one HTTP load client (Load)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import leaks
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from common import (  # noqa: E402  (bench/common.py: shared with the benchmarks)
    WEB,
    Answer,
    Control,
    Load,
    Result,
    free_port,
    get,
    wait_for,
    wait_for_async,
)

__all__ = [
    "WEB",
    "Answer",
    "Control",
    "Env",
    "Load",
    "Result",
    "close_requests",
    "free_port",
    "get",
    "kill_ours",
    "pilot_until",
    "wait_for",
    "wait_for_async",
    "web_app",
]


class Env:
    """A temporary home (short path: unix socket paths are limited to 107 bytes)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="cu-", dir="/tmp"))
        self.home = self.root / "home"
        self.env = dict(os.environ, CLUSTERUI_HOME=str(self.home), NO_COLOR="1")
        self.env.pop("CLUSTERUI_CHANNEL_FD", None)

    def run(self, *args: str, timeout: float = 30, check: bool = False, cwd=None):
        proc = subprocess.run(
            [sys.executable, "-m", "clusterui", *args],
            env=self.env,
            cwd=cwd or self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"clusterui {' '.join(args)} exited {proc.returncode}\n"
                f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
            )
        return proc

    def ls(self) -> list[dict]:
        return json.loads(self.run("ls", "--json", check=True).stdout)

    def write(self, name: str, text: str) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    def supervisor_pid(self) -> int | None:
        try:
            return int((self.home / "supervisor.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def supervisor_alive(self) -> bool:
        pid = self.supervisor_pid()
        if not pid:
            return False
        try:
            proc = psutil.Process(pid)
            return proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def cleanup(self) -> None:
        """Stop the supervisor (`down`); then whatever still runs with this home is killed
        and named in an AssertionError: `down` must leave nothing behind."""
        if self.supervisor_alive():
            self.run("down", timeout=30)
        left = leaks.reap(leaks.home_is(self.home))
        shutil.rmtree(self.root, ignore_errors=True)
        leaks.fail_if_leaked(left, f"clusterui (CLUSTERUI_HOME={self.home}) after `down`")


def kill_ours(home: Path) -> list[int]:
    """SIGKILL any process whose environment names this home (the test's leftovers)."""
    killed = []
    needle = f"CLUSTERUI_HOME={home}"
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.pid == os.getpid():
                continue
            env = proc.environ()
        except psutil.Error:
            continue
        if f"CLUSTERUI_HOME={env.get('CLUSTERUI_HOME')}" == needle:
            try:
                proc.kill()
                killed.append(proc.pid)
            except psutil.Error:
                pass
    return killed


def web_app(
    cu: Env, port: int | None = None, *, name: str = "web", instances: int = 2, **keys: object
) -> int:
    """Start (`up -d`) one cluster app of examples/web.py on 127.0.0.1:PORT (a free port if
    None) and return the port; more ecosystem keys for the app as keyword arguments."""
    port = port or free_port()
    more = "".join(f"\n    {key}: {value}" for key, value in keys.items())
    app = (
        f"  - name: {name}\n    script: {WEB}\n    exec_mode: cluster\n"
        f"    instances: {instances}\n    listen: 127.0.0.1:{port}{more}\n"
    )
    cu.write("ecosystem.yaml", "apps:\n" + app)
    r = cu.run("up", "-d")
    assert r.returncode == 0, r.stderr
    return port


def close_requests(port: int, count: int, concurrency: int = 16) -> str:
    """`count` GET requests with Connection: close, `concurrency` at a time (a Python load
    client: no wrk needed); returns a one-line summary. Every request must be answered
    with 200 (AssertionError naming the failures otherwise)."""
    request = b"GET / HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n"
    left = count
    lock = threading.Lock()
    errors: list[str] = []

    def client() -> None:
        nonlocal left
        while True:
            with lock:
                if left <= 0:
                    return
                left -= 1
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                    s.sendall(request)
                    answer = b""
                    while chunk := s.recv(65536):
                        answer += chunk
                if not answer.startswith(b"HTTP/1.1 200"):
                    raise OSError(f"answer {answer[:40]!r}")
            except OSError as exc:
                with lock:
                    errors.append(repr(exc))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, f"{len(errors)} of {count} requests failed, e.g. {errors[:3]}"
    return f"python {count} requests"


async def pilot_until(
    pilot: Any, cond: Callable[[], Any], timeout: float = 5.0, what: str = "condition"
) -> Any:
    """wait_for in a Textual test: the app runs (pilot.pause) while we wait."""
    return await wait_for_async(cond, timeout, what, step=0.01, sleep=pilot.pause)
