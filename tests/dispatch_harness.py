"""Run a real dispatcher (`python -m clusterui.dispatch`) and real workers, no supervisor.

The harness plays the supervisor's part of the control protocol: it owns the
listening socket and the control socketpair, creates each worker's channel
socketpair, spawns workers with ``CLUSTERUI_CHANNEL_FD``, and sends ``add``,
``drain`` and ``remove``. Every process gets its own session; ``close()`` kills
every process group it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support import wait_for

from clusterui.dispatch import protocol as proto

ROOT = Path(__file__).resolve().parent.parent
WEB = ROOT / "examples" / "web.py"

# A worker that answers each request line with "<instance> <pid>" (one per connection).
ECHO_WORKER = """
import asyncio, os
from clusterui import worker

async def handle(reader, writer):
    line = await reader.readline()
    if line.startswith(b"slow"):
        await asyncio.sleep(float(line.split()[1]))
    if line.startswith(b"metrics"):
        worker.metrics(requests=7, load=0.5)
    writer.write(f"{worker.instance()} {os.getpid()} {worker.mode()}\\n".encode())
    if line.startswith(b"hold"):
        await writer.drain()
        await reader.read()  # keep the connection open until the client closes it
    writer.close()

async def main():
    server = await worker.start_server(handle)
    await server.serve_forever()
    print("drained", flush=True)

asyncio.run(main())
"""

# Sends ready, then never reads its channel: whatever is handed to it stays queued.
LAZY_WORKER = """
import os, socket, time
chan = socket.socket(fileno=int(os.environ["CLUSTERUI_CHANNEL_FD"]))
chan.send(b'{"t":"ready"}')
time.sleep(3600)
"""

# Never says ready.
SILENT_WORKER = """
import time
time.sleep(3600)
"""


def kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        proc.wait(timeout=5)


class Harness:
    """A listener on 127.0.0.1 with a dispatcher process behind it."""

    def __init__(
        self, mode: str = "round-robin", tmp: Path | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.mode = mode
        self.tmp = tmp
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(1024)
        self.address = self.lsock.getsockname()
        self.ctl, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.ctl.setblocking(False)
        dispatcher_env = dict(os.environ)
        dispatcher_env.update(
            CLUSTERUI_LISTEN_FD=str(self.lsock.fileno()),
            CLUSTERUI_CONTROL_FD=str(theirs.fileno()),
            **(env or {}),
        )
        self.dispatcher = subprocess.Popen(
            [sys.executable, "-m", "clusterui.dispatch", mode],
            env=dispatcher_env,
            pass_fds=(self.lsock.fileno(), theirs.fileno()),
            start_new_session=True,
        )
        # The same numbers in the dispatcher (pass_fds keeps them).
        self.listen_fd, self.control_fd = self.lsock.fileno(), theirs.fileno()
        theirs.close()
        self.workers: dict[Any, subprocess.Popen] = {}
        self.events: list[dict[str, Any]] = []
        self._scripts: dict[str, Path] = {}

    # ---- processes ---------------------------------------------------------------

    def script(self, source: str) -> Path:
        """Write a worker script (once per source) and return its path."""
        if source not in self._scripts:
            assert self.tmp is not None, "Harness(tmp=...) is needed for inline scripts"
            path = self.tmp / f"worker{len(self._scripts)}.py"
            path.write_text(textwrap.dedent(source))
            self._scripts[source] = path
        return self._scripts[source]

    def spawn(
        self,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        pass_fds: tuple[int, ...] = (),
        stdout: int | None = None,
    ) -> subprocess.Popen:
        full_env = dict(os.environ)
        for key in ("CLUSTERUI_CHANNEL_FD", "LISTEN_FDS", "LISTEN_PID", "PORT"):
            full_env.pop(key, None)
        full_env.update(env or {})
        return subprocess.Popen(
            argv,
            env=full_env,
            pass_fds=pass_fds,
            start_new_session=True,
            stdout=stdout,
            cwd=self.tmp or ROOT,
        )

    def add_worker(
        self,
        wid: int,
        argv: list[str] | None = None,
        *,
        source: str | None = None,
        env: dict[str, str] | None = None,
        stdout: int | None = None,
    ) -> subprocess.Popen:
        """Spawn a handoff worker (web.py unless told otherwise) and announce it."""
        if argv is None:
            argv = [sys.executable, str(self.script(source) if source else WEB)]
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        worker_env = {
            "CLUSTERUI_CHANNEL_FD": str(theirs.fileno()),
            "CLUSTERUI_INSTANCE": str(wid),
            "NODE_APP_INSTANCE": str(wid),
            **(env or {}),
        }
        try:
            proc = self.spawn(argv, env=worker_env, pass_fds=(theirs.fileno(),), stdout=stdout)
            self.workers[wid] = proc
            self.send({"t": "add", "id": wid}, [ours.fileno(), theirs.fileno()])
        finally:
            ours.close()
            theirs.close()
        return proc

    def add_node_worker(self, wid: int, source: str, stdout: int | None = None) -> subprocess.Popen:
        """Spawn a worker that speaks Node's IPC framing (dispatch/node.py) on a stream
        socket at NODE_CHANNEL_FD, as the Node preload does, and announce it."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = {"NODE_CHANNEL_FD": str(theirs.fileno()), "CLUSTERUI_INSTANCE": str(wid)}
        try:
            proc = self.spawn(
                [sys.executable, str(self.script(source))],
                env=env,
                pass_fds=(theirs.fileno(),),
                stdout=stdout,
            )
            self.workers[wid] = proc
            self.send({"t": "add", "id": wid, "framing": "node"}, [ours.fileno(), theirs.fileno()])
        finally:
            ours.close()
            theirs.close()
        return proc

    def add_proxy_worker(self, wid: int, argv: list[str], port: int) -> subprocess.Popen:
        proc = self.spawn(argv, env={"PORT": str(port), "CLUSTERUI_INSTANCE": str(wid)})
        self.workers[wid] = proc
        self.send({"t": "add", "id": wid, "port": port})
        return proc

    def close(self) -> None:
        for proc in self.workers.values():
            kill_group(proc)
        kill_group(self.dispatcher)
        self.ctl.close()
        self.lsock.close()

    def watched(self) -> dict[int, int] | None:
        """What the dispatcher's epoll set watches: {fd: event mask} from its
        /proc/PID/fdinfo (the mask has EPOLLIN while it wants to read that fd); None once
        the dispatcher has exited."""
        watched: dict[int, int] = {}
        try:
            for name in os.listdir(f"/proc/{self.dispatcher.pid}/fdinfo"):
                with contextlib.suppress(OSError):
                    info = Path(f"/proc/{self.dispatcher.pid}/fdinfo/{name}").read_text()
                    for line in info.splitlines():
                        if line.startswith("tfd:"):
                            fields = line.split()
                            watched[int(fields[1])] = int(fields[3], 16)
        except OSError:
            return None
        return None if self.dispatcher.poll() is not None else watched

    # ---- control -----------------------------------------------------------------

    def send(self, msg: dict[str, Any], fds: list[int] | None = None) -> None:
        proto.send(self.ctl, msg, fds or [], block=True)

    def drain(self, wid: int) -> None:
        self.send({"t": "drain", "id": wid})

    def remove(self, wid: int) -> None:
        self.send({"t": "remove", "id": wid})

    def read_events(self) -> list[dict[str, Any]]:
        while True:
            try:
                data = self.ctl.recv(proto.MAX_MESSAGE + 1)
            except BlockingIOError:
                break
            if not data:
                break
            self.events.append(json.loads(data))
        return self.events

    def wait_event(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float = 10.0, what: str = "event"
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            self.read_events()
            for event in self.events[seen:]:
                if pred(event):
                    return event
            seen = len(self.events)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {what}; got {self.events[-20:]}")
            select.select([self.ctl], [], [], min(remaining, 0.5))

    def wait_ready(self, wid: int, timeout: float = 10.0) -> None:
        self.wait_event(lambda e: e == {"t": "ready", "id": wid}, timeout, f"worker {wid} ready")

    def stats(self, timeout: float = 5.0) -> dict[str, Any]:
        """Ask for stats and return the next stats message."""
        start = len(self.read_events())
        self.send({"t": "stats"})
        deadline = time.monotonic() + timeout
        while True:
            for event in self.read_events()[start:]:
                if event.get("t") == "stats":
                    return event
            if time.monotonic() > deadline:
                raise AssertionError("no stats answer")
            select.select([self.ctl], [], [], 0.2)

    def wait_stats(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> dict:
        last: dict[str, Any] = {}

        def check() -> bool:
            nonlocal last
            last = self.stats()
            return pred(last)

        try:
            wait_for(check, timeout, "stats")
        except AssertionError:
            raise AssertionError(f"stats never matched; last: {last}") from None
        return last

    # ---- clients -----------------------------------------------------------------

    def connect(self, timeout: float = 10.0) -> socket.socket:
        sock = socket.create_connection(self.address, timeout=timeout)
        return sock

    def ask(self, line: bytes = b"hi\n", timeout: float = 10.0) -> str:
        """One connection, one line to an ECHO_WORKER; its answer."""
        with self.connect(timeout) as sock:
            sock.sendall(line)
            return read_all(sock).decode()

    def get(self, path: str = "/", timeout: float = 10.0) -> str:
        """One HTTP/1.0-style request (Connection: close); the response body."""
        with self.connect(timeout) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            response = read_all(sock).decode()
        head, _, body = response.partition("\r\n\r\n")
        assert head.startswith("HTTP/1."), response
        return body


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def instance_of(answer: str) -> int:
    """The instance number in an ECHO_WORKER or web.py answer."""
    words = answer.split()
    if "instance" in words:
        return int(words[words.index("instance") + 1])
    return int(words[0])
