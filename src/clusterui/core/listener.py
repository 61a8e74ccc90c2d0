"""One cluster-mode listener: the bound socket and the dispatcher process behind it.

The supervisor binds the socket (so a taken port is reported before any worker
starts), then hands it to a dispatcher process (`python -m clusterui.dispatch`)
that owns the accept loop. We talk to the dispatcher over a SEQPACKET control
socket; see clusterui.dispatch for the message set.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import errno
import json
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from clusterui.core.control import OpError
from clusterui.core.process import ExitWatcher, SpawnSpec, signal_group, spawn
from clusterui.core.spec import AppSpec, Listen

MAX_DATAGRAM = 65536


def bind(listen: Listen, backlog: int = 1024) -> socket.socket:
    """Bind and listen, or raise OpError with the reason in one sentence."""
    try:
        if listen.kind == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                if os.path.exists(listen.path):
                    _unlink_stale_unix(listen.path)
                sock.bind(listen.path)
            except BaseException:
                sock.close()
                raise
        else:
            family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((listen.host, listen.port))
            except BaseException:
                sock.close()
                raise
        sock.listen(backlog)
        return sock
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise OpError(f"cannot listen on {listen}: the address is already in use") from None
        if exc.errno == errno.EACCES:
            raise OpError(f"cannot listen on {listen}: permission denied") from None
        raise OpError(f"cannot listen on {listen}: {exc.strerror or exc}") from None


def _unlink_stale_unix(path: str) -> None:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)  # nobody is listening: a leftover from a dead process
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, "in use")


class Listener:
    """The socket plus (for handoff and proxy modes) its dispatcher process."""

    def __init__(
        self,
        spec: AppSpec,
        on_event: Callable[[dict[str, Any]], None],
        on_dispatcher_exit: Callable[[int | None, str | None], None],
    ):
        assert spec.listen is not None
        self.spec = spec
        self.sock = bind(spec.listen)
        self._on_event = on_event
        self._on_exit = on_dispatcher_exit
        self.pid: int | None = None
        self._ctl: socket.socket | None = None
        self._watcher: ExitWatcher | None = None
        self._loop = asyncio.get_running_loop()
        if spec.dispatch != "shared":
            self._start_dispatcher()

    @property
    def address(self) -> str:
        return str(self.spec.listen)

    def _start_dispatcher(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = dict(os.environ)
        env.update(
            CLUSTERUI_LISTEN_FD="3",
            CLUSTERUI_CONTROL_FD="4",
            CLUSTERUI_DISPATCH_MODE=self.spec.dispatch,
            CLUSTERUI_APP=self.spec.name,
        )
        try:
            self.pid = spawn(
                SpawnSpec(
                    argv=[sys.executable, "-m", "clusterui.dispatch", self.spec.dispatch],
                    cwd="/",
                    env=env,
                    stderr=2,
                    fds={3: self.sock.fileno(), 4: theirs.fileno()},
                )
            )
        finally:
            theirs.close()
        ours.setblocking(False)
        self._ctl = ours
        self._loop.add_reader(ours.fileno(), self._read)
        self._watcher = ExitWatcher(self._loop, self.pid, self._dispatcher_exited)

    def _dispatcher_exited(self, code: int | None, sig: str | None) -> None:
        self._watcher = None
        self.pid = None
        self._on_exit(code, sig)

    def _read(self) -> None:
        assert self._ctl is not None
        for _ in range(64):  # bounded: give the rest of the loop its turn
            try:
                data = self._ctl.recv(MAX_DATAGRAM)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._loop.remove_reader(self._ctl.fileno())
                return
            try:
                msg = json.loads(data)
            except ValueError:
                continue
            if isinstance(msg, dict):
                self._on_event(msg)

    def send(self, msg: dict[str, Any], fds: list[int] | None = None) -> bool:
        if self._ctl is None:
            return False
        payload = json.dumps(msg).encode()
        anc = []
        if fds:
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        try:
            self._ctl.sendmsg([payload], anc)
            return True
        except BlockingIOError:
            # The dispatcher is not reading its control socket: wait briefly, it is local.
            self._ctl.setblocking(True)
            self._ctl.settimeout(2.0)
            try:
                self._ctl.sendmsg([payload], anc)
                return True
            except OSError:
                return False
            finally:
                self._ctl.setblocking(False)
        except OSError:
            return False

    def close(self) -> None:
        if self._ctl is not None:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(self._ctl.fileno())
            self._ctl.close()
            self._ctl = None
        if self.pid is not None:
            signal_group(self.pid, signal.SIGKILL)
        if self._watcher is not None:
            # Keep reaping it: the exit callback still fires, and no zombie stays.
            pass
        if self.spec.listen and self.spec.listen.kind == "unix":
            with contextlib.suppress(OSError):
                os.unlink(self.spec.listen.path)
        self.sock.close()
