"""The tests' helpers, each defined once: a private CLUSTERUI_HOME with the real CLI, a
started web app, a counted batch of requests (close_requests), a request sent as the
user nobody (ask_as_nobody), the source of a make_server HTTP worker (http_worker), a
dashboard run under Textual's Pilot (dashboard), and (from bench/common.py, shared with
the benchmarks) polling, free ports, a control connection, one GET (get) and one HTTP
load client (Load)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import leaks
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from common import (  # noqa: E402  (bench/common.py: shared with the benchmarks)
    PID,
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

if TYPE_CHECKING:  # only the dashboard tests pay for Textual at run time
    from fake_client import FakeClient
    from textual.pilot import Pilot

    from clusterui.dashboard import DashboardApp

__all__ = [
    "PID",
    "WEB",
    "Answer",
    "Control",
    "Env",
    "Load",
    "Result",
    "ask_as_nobody",
    "assert_greys_only",
    "close_requests",
    "online_rows",
    "dashboard",
    "free_port",
    "get",
    "http_worker",
    "kill_ours",
    "pilot_until",
    "wait_for",
    "wait_for_async",
    "web_app",
    "web_wrapper",
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

    def popen(
        self, *args: str, stdout: Any = subprocess.DEVNULL, stderr: Any = subprocess.DEVNULL
    ) -> subprocess.Popen:
        """`clusterui ARGS` started in the background (the caller waits for it)."""
        return subprocess.Popen(
            [sys.executable, "-m", "clusterui", *args],
            env=self.env,
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            text=True,
        )

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
    cu: Env,
    port: int | None = None,
    *,
    name: str = "web",
    instances: int = 2,
    script: str = WEB,
    **keys: object,
) -> int:
    """Start (`up -d`) one cluster app of examples/web.py (or `script`, such as
    web_wrapper's) on 127.0.0.1:PORT (a free port if None) and return the port; more
    ecosystem keys for the app as keyword arguments."""
    port = port or free_port()
    more = "".join(f"\n    {key}: {value}" for key, value in keys.items())
    app = (
        f"  - name: {name}\n    script: {script}\n    exec_mode: cluster\n"
        f"    instances: {instances}\n    listen: 127.0.0.1:{port}{more}\n"
    )
    cu.write("ecosystem.yaml", "apps:\n" + app)
    r = cu.run("up", "-d")
    assert r.returncode == 0, r.stderr
    return port


def web_wrapper(cu: Env, prelude: str) -> str:
    """Write app.py: `prelude` (Python, dedented), then examples/web.py as the worker.
    Returns the script's name for web_app(script=...)."""
    cu.write(
        "app.py",
        textwrap.dedent(prelude)
        + f"import runpy, sys\nsys.argv = [{WEB!r}]\n"
        + f"runpy.run_path({WEB!r}, run_name='__main__')\n",
    )
    return "app.py"


def online_rows(cu: Env, n: int, app: str | None = None) -> list[dict] | None:
    """The `ls` rows (of `app`, or all), if there are n and every one is online."""
    rows = [w for w in cu.ls() if app is None or w["app"] == app]
    return rows if len(rows) == n and all(w["status"] == "online" for w in rows) else None


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


def burst(app: Any, keys: str) -> None:
    """Queue `keys` (characters; "/" and "\r" as the keys they are) all at once, as a
    terminal delivers a fast typist's burst: Pilot.press lets the app settle between
    keys, which hides what happens to the keys read while an earlier one is handled."""
    from textual import events

    names = {"/": "slash", "\r": "enter"}
    for ch in keys:
        app.post_message(events.Key(names.get(ch, ch), ch))


@contextlib.asynccontextmanager
async def dashboard(
    client: FakeClient | None = None, *, size: tuple[int, int] = (160, 48), **kwargs: Any
) -> AsyncIterator[tuple[DashboardApp, Pilot, FakeClient]]:
    """(app, pilot, client): a DashboardApp on `client` (a new FakeClient if None) in UTC,
    running under Pilot at `size`, its first snapshot loaded; more DashboardApp keyword
    arguments as keyword arguments."""
    import datetime as dt

    from fake_client import FakeClient

    from clusterui.dashboard import DashboardApp

    client = client or FakeClient()
    app = DashboardApp(client, tz=dt.UTC, **kwargs)
    async with app.run_test(size=size) as pilot:
        await asyncio.wait_for(app.loaded.wait(), 5)
        await pilot.pause()
        yield app, pilot, client


def assert_greys_only(svg: str) -> None:
    """Every colour in a dashboard screenshot (less the SVG frame's three window buttons)
    is a grey: what NO_COLOR must give, whatever the theme."""
    import re

    colours = set(re.findall(r"#([0-9a-f]{6})", svg)) - {"ff5f57", "febc2e", "28c840"}
    assert colours
    for colour in colours:
        r, g, b = (int(colour[i : i + 2], 16) for i in (0, 2, 4))
        assert max(r, g, b) - min(r, g, b) <= 8, colour


def ask_as_nobody(path: str, request: bytes) -> str:
    """Fork a child that drops to the user nobody, connects to the unix socket `path` and
    sends `request`; returns what it saw: "connected; refused" (closed without an answer),
    "connected; answered: ...", or the exception it met. Needs root (setuid). No exec: our
    interpreter may not be readable by nobody."""
    nobody = pwd.getpwnam("nobody")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(r)
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            os.write(w, b"connected; ")
            try:
                s.sendall(request)
                s.settimeout(5)
                answer = s.recv(100)
                os.write(w, b"refused" if answer == b"" else b"answered: " + answer)
            except (BrokenPipeError, ConnectionResetError):
                os.write(w, b"refused")
        except BaseException as exc:
            os.write(w, repr(exc).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        said = f.read()
    os.waitpid(pid, 0)
    return said


def http_worker(do_get: str) -> str:
    """The source of a worker program: a ThreadingHTTPServer from worker.make_server whose
    GET handler runs the statements `do_get` (any common indentation) that set `body`
    (bytes) and answers 200 with it. It prints "draining" when its drain starts and "drained" once
    serve_forever has returned."""
    return (
        """
import http.server, os, sys, time
from clusterui import worker

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
"""
        + textwrap.indent(textwrap.dedent(do_get).strip("\n") + "\n", " " * 8)
        + """        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass

with worker.make_server(http.server.ThreadingHTTPServer, Handler) as httpd:
    httpd.socket.on_drain(lambda: print("draining", flush=True))
    httpd.serve_forever()
print("drained", flush=True)
"""
    )
