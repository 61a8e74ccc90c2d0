"""Listening sockets handed in from outside, the way systemd passes them.

systemd (or `systemd-socket-activate`) binds the socket and starts us with it open
from fd 3 on: ``LISTEN_FDS`` (how many), ``LISTEN_PID`` (the pid they are meant for)
and ``LISTEN_FDNAMES`` (colon-separated names, ``FileDescriptorName=``). Such a socket
outlives any one clusterui: when the supervisor is killed or restarted, new
connections wait in the kernel's accept queue and the next supervisor serves them.

The foreground `clusterui up` takes them (`from_systemd`) and hands them to the
supervisor it starts, under ``CLUSTERUI_INHERITED_FDS`` (the supervisor's pid is not
LISTEN_PID). The supervisor matches each to an app by name (the fd name is the app's
name) or else by address, and a Listener uses a copy instead of binding.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
from collections.abc import MutableMapping
from dataclasses import dataclass

from clusterui.core.spec import Listen

SD_LISTEN_FDS_START = 3
ENV = "CLUSTERUI_INHERITED_FDS"  # JSON [[fd, name], ...], for the supervisor
SYSTEMD_VARS = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")
MAX_FDS = 1024


class InheritError(Exception):
    """The handed-in sockets are unusable; one sentence."""


def from_systemd(environ: MutableMapping[str, str] | None = None) -> list[tuple[int, str]]:
    """The (fd, name) pairs systemd passed to this process; [] if none or not for us.

    Like sd_listen_fds(unset_environment=1): the variables are removed either way, so
    no child takes them for its own.
    """
    environ = os.environ if environ is None else environ
    count, pid, names = (environ.pop(k, None) for k in SYSTEMD_VARS)
    if not count:
        return []
    if pid is None or pid.strip() != str(os.getpid()):
        return []  # meant for another process (a parent that exec'd a wrapper)
    try:
        n = int(count)
    except ValueError:
        raise InheritError(f"LISTEN_FDS={count!r} is not a number") from None
    if not 0 < n <= MAX_FDS:
        raise InheritError(f"LISTEN_FDS={count!r} is out of range")
    labels = names.split(":") if names else []
    fds = []
    for i in range(n):
        fd = SD_LISTEN_FDS_START + i
        try:
            os.fstat(fd)
        except OSError:
            raise InheritError(f"LISTEN_FDS={n} but fd {fd} is not open") from None
        fds.append((fd, labels[i] if i < len(labels) else ""))
    return fds


def to_env(fds: list[tuple[int, str]]) -> str:
    return json.dumps([[fd, name] for fd, name in fds])


def from_env(environ: MutableMapping[str, str] | None = None) -> list[tuple[int, str]]:
    """What `clusterui up` handed the supervisor (removed from the environment)."""
    environ = os.environ if environ is None else environ
    text = environ.pop(ENV, None)
    if not text:
        return []
    try:
        pairs = json.loads(text)
        return [(int(fd), str(name)) for fd, name in pairs]
    except (ValueError, TypeError):
        raise InheritError(f"{ENV} is malformed") from None


@dataclass
class Inherited:
    sock: socket.socket
    name: str
    used_by: str | None = None

    @property
    def address(self) -> str:
        addr = self.sock.getsockname()
        if self.sock.family == socket.AF_UNIX:
            return f"unix:{addr.decode() if isinstance(addr, bytes) else addr}"
        host = f"[{addr[0]}]" if self.sock.family == socket.AF_INET6 else addr[0]
        return f"{host}:{addr[1]}"

    def matches(self, listen: Listen) -> bool:
        addr = self.sock.getsockname()
        if listen.kind == "unix":
            if self.sock.family != socket.AF_UNIX:
                return False
            path = addr.decode() if isinstance(addr, bytes) else addr
            return path == listen.path
        if self.sock.family not in (socket.AF_INET, socket.AF_INET6) or addr[1] != listen.port:
            return False
        try:
            want, have = ipaddress.ip_address(listen.host), ipaddress.ip_address(addr[0])
        except ValueError:
            return False
        if want == have:
            return True
        # `ListenStream=8000` binds [::]:8000 for IPv4 too: it serves `listen: 8000`.
        return want.is_unspecified and have.is_unspecified


_sockets: list[Inherited] = []


def install(fds: list[tuple[int, str]]) -> list[str]:
    """Take ownership of the handed-in fds (not inherited by our children); returns
    problems worth a warning (an fd that is not a listening stream socket)."""
    problems = []
    for fd, name in fds:
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            problems.append(f"inherited fd {fd} ({name or 'no name'}): {exc.strerror or exc}")
            continue
        os.set_inheritable(fd, False)
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        if sock.type != socket.SOCK_STREAM or not listening:
            problems.append(f"inherited fd {fd} ({name or 'no name'}) is not a listening "
                            "stream socket; ignored")  # fmt: skip
            sock.close()
            continue
        _sockets.append(Inherited(sock, name))
    return problems


def take(app: str, listen: Listen) -> socket.socket | None:
    """A copy of the inherited socket for this app (by name, else by address), or None.

    The original stays with us: an app deleted and started again gets it again.
    """
    found = next((s for s in _sockets if s.name and s.name == app), None)
    if found is None:
        free = (s for s in _sockets if s.used_by in (None, app))
        found = next((s for s in free if s.matches(listen)), None)
    if found is None:
        return None
    found.used_by = app
    dup = found.sock.dup()
    dup.setblocking(True)
    return dup


def unused() -> list[str]:
    return [f"{s.name or 'no name'} ({s.address})" for s in _sockets if s.used_by is None]


def reset() -> None:
    """Close every inherited socket (tests; the supervisor keeps them until it exits)."""
    for s in _sockets:
        with contextlib.suppress(OSError):
            s.sock.close()
    _sockets.clear()
