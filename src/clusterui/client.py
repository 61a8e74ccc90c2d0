"""The client API: what the CLI verbs and the dashboard use to talk to the supervisor.

Newline-delimited JSON over CLUSTERUI_HOME/supervisor.sock (see core/control.py).
`ensure_supervisor` starts one in the background when none is running.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from clusterui.core import environ, inherit
from clusterui.core.control import MAX_REQUEST, encode
from clusterui.core.home import Home
from clusterui.core.safefs import UnsafePath
from clusterui.core.silence import CALL_TIMEOUT, silent_reason
from clusterui.vocab.exits import ClientError, Exit
from clusterui.vocab.snapshot import Snapshot, WorkerTree

__all__ = ["Client", "ClientError", "ensure_supervisor", "supervisor_pid"]

START_TIMEOUT = 10.0
CONNECT_RETRY = 5.0  # how long a connect waits out a full backlog (EAGAIN)
# CALL_TIMEOUT (core/silence): how long a call waits before giving up (exit 3). A stopped
# (SIGSTOP) or wedged supervisor still accepts connections: without it every command hangs.


def caller_env() -> dict[str, str]:
    """This process's environment as a caller sends it with the apps it starts or applies
    (the names clusterui owns are left out: core.environ.capture)."""
    env, _refused = environ.capture(os.environ)
    return env


class Client:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        timeout: float | None = CALL_TIMEOUT,
        home: Home | None = None,
    ):
        self._reader = reader
        self._writer = writer
        self.timeout = timeout or None  # seconds per call; None or 0 waits for ever
        self._home = home
        self._pending: dict[int, asyncio.Future] = {}
        self._events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._next = 0
        self._closed = False
        self._task = asyncio.ensure_future(self._read_loop())

    @classmethod
    async def connect(
        cls, home: Home | Path | str | None = None, timeout: float | None = CALL_TIMEOUT
    ) -> Client:
        home = home if isinstance(home, Home) else Home.from_env(home)
        try:
            sock = await _connect_unix(str(home.socket))
            reader, writer = await asyncio.open_unix_connection(sock=sock, limit=64 * MAX_REQUEST)
        except (FileNotFoundError, ConnectionRefusedError):
            raise ClientError(
                f"no supervisor is running (home {home.root})", Exit.NO_SUPERVISOR
            ) from None
        except OSError as exc:
            raise ClientError(
                f"cannot reach the supervisor: {exc.strerror or exc}", Exit.NO_SUPERVISOR
            ) from None
        return cls(reader, writer, timeout=timeout, home=home)

    async def _read_loop(self) -> None:
        try:
            while True:
                line = await self._reader.readline()
                if not line:
                    break
                msg = json.loads(line)
                if "event" in msg:
                    self._events.put_nowait(msg)
                    continue
                fut = self._pending.pop(msg.get("id"), None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        except (ConnectionError, OSError, ValueError, asyncio.LimitOverrunError):
            pass
        finally:
            self._closed = True
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(ClientError("lost the connection to the supervisor", 3))
            self._pending.clear()
            self._events.put_nowait(None)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()

    async def call(self, op: str, _timeout: float | None | bool = False, **args: Any) -> Any:
        """Send one request and wait for its answer (at most `_timeout` s if given, else the
        client's timeout); ClientError with the supervisor's message if it failed."""
        timeout = self.timeout if _timeout is False else (_timeout or None)
        if self._closed:
            raise ClientError("lost the connection to the supervisor", Exit.NO_SUPERVISOR)
        self._next += 1
        rid = self._next
        fut = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            self._writer.write(encode({"id": rid, "op": op, "args": args}))
            await self._writer.drain()
        except (ConnectionError, OSError) as err:
            self._pending.pop(rid, None)
            raise ClientError("lost the connection to the supervisor", 3) from err
        while True:
            try:
                msg = await asyncio.wait_for(asyncio.shield(fut), timeout)
                break
            except TimeoutError:
                # A supervisor still answering pings is busy with a long operation (a
                # rolling reload of many workers), not stuck: keep waiting for it.
                if op != "ping" and await self._answers_ping(timeout):
                    continue
                self._pending.pop(rid, None)
                fut.cancel()
                reason = self._silent_reason(op, timeout or 0)
                raise ClientError(reason, Exit.NO_SUPERVISOR) from None
        if not msg.get("ok"):
            raise ClientError(
                msg.get("error") or "the operation failed", int(msg.get("code", Exit.FAILED))
            )
        return msg.get("result")

    async def _answers_ping(self, timeout: float | None) -> bool:
        try:
            await self.call("ping", _timeout=timeout)
        except ClientError:
            return False
        return True

    def _silent_reason(self, op: str, timeout: float) -> str:
        pid = supervisor_pid(self._home) if self._home is not None else None
        return silent_reason(pid, op, timeout)

    # ---- convenience ---------------------------------------------------------------------

    async def state(self, history: bool = True) -> Snapshot:
        return await self.call("state", history=history)

    async def load(
        self,
        file: str,
        env: str | None = None,
        only: list[str] | None = None,
        caller_env: dict[str, str] | None = None,
        **more: Any,
    ) -> dict[str, Any]:
        """`caller_env`: the environment the file's apps start with (core/environ.py)."""
        args: dict[str, Any] = {"file": str(Path(file).absolute()), "env": env, "only": only}
        if caller_env is not None:
            args["caller_env"] = caller_env
        return await self.call("load", **args, **more)

    async def apply(
        self, file: str, caller_env: dict[str, str] | None = None, prune: bool = False
    ) -> dict[str, Any]:
        """`reload FILE`: make the loaded apps match the file (core/fileops.py)."""
        return await self.load(file, caller_env=caller_env, apply=True, prune=prune)

    async def start(self, targets: list[str]) -> dict[str, Any]:
        return await self.call("start", targets=list(targets))

    async def stop(self, targets: list[str]) -> dict[str, Any]:
        return await self.call("stop", targets=list(targets))

    async def restart(
        self, targets: list[str], caller_env: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """`caller_env` (PM2's --update-env): the apps take it before restarting."""
        more = {} if caller_env is None else {"caller_env": caller_env}
        return await self.call("restart", targets=list(targets), **more)

    async def reload(
        self, targets: list[str], caller_env: dict[str, str] | None = None
    ) -> dict[str, Any]:
        more = {} if caller_env is None else {"caller_env": caller_env}
        return await self.call("reload", targets=list(targets), **more)

    async def delete(self, targets: list[str]) -> dict[str, Any]:
        return await self.call("delete", targets=list(targets))

    async def scale(self, app: str, count: str) -> dict[str, Any]:
        return await self.call("scale", app=app, count=str(count))

    async def watch(self, app: str, on: bool | None = None) -> dict[str, Any]:
        return await self.call("watch", app=app, on=on)

    async def signal(self, sig: str, targets: list[str]) -> dict[str, Any]:
        """Send a signal (vocab.signals: HUP, USR1, USR2, INT, TERM, KILL) to each targeted
        worker's process; the supervisor sends it, never the caller."""
        return await self.call("signal", sig=sig, targets=list(targets))

    async def app_events(
        self, app: str | None = None, instance: int | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """The `events` op: an app's timeline (vocab.events), oldest first. Not `events`:
        that name is the subscription's event stream."""
        return await self.call("events", app=app, instance=instance, limit=limit)

    async def logs(self, target: str | None = None, lines: int = 15) -> list[dict[str, Any]]:
        return await self.call("logs", target=target, lines=lines)

    async def describe(self, target: str) -> dict[str, Any]:
        return await self.call("describe", target=target)

    async def tree(self, target: str, settle: float = 0.0) -> list[WorkerTree]:
        """Each running worker of `target` with the processes below it (core/proctree.py);
        `settle`: see Supervisor.op_tree."""
        if settle:
            return await self.call("tree", target=target, settle=settle)
        return await self.call("tree", target=target)

    async def shutdown(self) -> None:
        await self.call("shutdown")

    async def subscribe(
        self,
        state: bool = True,
        logs: bool = True,
        live_lines: int | None = None,
        history: bool = True,
        delta: bool = False,
    ) -> None:
        """history=False: state events without the workers' series (call state() once for
        them). delta=True (with history=False): `state_delta` events after the first
        whole one (apply them with vocab.delta.apply). A supervisor too old to know
        either sends whole events with the series anyway."""
        args: dict[str, Any] = {"state": state, "logs": logs}
        if live_lines is not None:
            args["live_lines"] = live_lines
        tries = [{"history": False, "delta": True}] if delta and not history else []
        tries += [{"history": False}] if not history else []
        for extra in tries:
            try:
                await self.call("subscribe", **args, **extra)
                return
            except ClientError as exc:
                if exc.code != Exit.USAGE:
                    raise
        await self.call("subscribe", **args)

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            event = await self._events.get()
            if event is None:
                return
            yield event


async def _connect_unix(path: str) -> socket.socket:
    """Connect without blocking the loop, waiting out a full listen backlog.

    A non-blocking connect to a unix socket whose backlog is full fails with EAGAIN
    at once (it is not "in progress" as for TCP; asyncio would take it for connected).
    The supervisor is alive, just busy accepting a burst: try again for a while.
    """
    deadline = time.monotonic() + CONNECT_RETRY
    delay = 0.002
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(path)
            return sock
        except (BlockingIOError, InterruptedError):
            sock.close()
            if time.monotonic() >= deadline:
                raise OSError(errno.EAGAIN, "its socket's backlog stayed full") from None
        except BaseException:
            sock.close()
            raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


def supervisor_pid(home: Home) -> int | None:
    try:
        return int(home.pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def ensure_supervisor(home: Home, inherited: list[tuple[int, str]] | None = None) -> bool:
    """Start a supervisor for `home` unless one answers; True if we started it.

    `inherited`: listening sockets handed to us (systemd's LISTEN_FDS) that the new
    supervisor is to use instead of binding; ClientError if one is running already.
    """
    if _answers(home):
        if inherited:
            raise ClientError(
                f"a supervisor is already running for {home.root}; it cannot take the "
                "sockets handed to this command (use a CLUSTERUI_HOME of its own)",
                Exit.FAILED,
            )
        return False
    try:
        home.ensure()
        log = home.open_file(home.supervisor_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    except UnsafePath as exc:
        raise ClientError(f"refusing to use {home.root}: {exc}", Exit.FAILED) from None
    except OSError as exc:
        raise ClientError(f"cannot use {home.root}: {exc.strerror or exc}", Exit.FAILED) from None
    r, w = os.pipe()
    env = {k: v for k, v in os.environ.items() if k != "CLUSTERUI_CHANNEL_FD"}
    if inherited:
        env[inherit.ENV] = inherit.to_env(inherited)
    try:
        launcher = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "clusterui.core.supervisor",
                "--home",
                str(home.root),
                "--ready-fd",
                str(w),
                "--daemonize",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            pass_fds=(w, *(fd for fd, _name in inherited or ())),
            start_new_session=True,
            env=env,
        )
    finally:
        os.close(w)
        os.close(log)
    launcher.wait()
    message = _read_ready(r, START_TIMEOUT)
    if message == "ok":
        return True
    if message == "":
        tail = _tail(home.supervisor_log)
        raise ClientError(f"the supervisor did not start{': ' + tail if tail else ''}", Exit.FAILED)
    if message is None:
        raise ClientError(f"the supervisor did not start within {START_TIMEOUT:g} s", Exit.FAILED)
    if message.startswith("another supervisor") and _answers(home):
        return False  # a concurrent start won the race: fine
    raise ClientError(f"the supervisor could not start: {message}", Exit.FAILED)


def _answers(home: Home) -> bool:
    if not home.socket.exists():
        return False
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(2.0)
        s.connect(str(home.socket))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _read_ready(fd: int, timeout: float) -> str | None:
    """The supervisor's first line on the ready pipe; '' on EOF, None on timeout."""
    deadline = time.monotonic() + timeout
    data = b""
    try:
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    return data.decode(errors="replace").strip()


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""
