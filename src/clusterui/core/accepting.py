"""Shared mode: is a worker accepting on the listening socket yet? Read from /proc.

In `shared` mode every worker inherits the one listening socket as fd 3, so "it has
the socket" says nothing: gunicorn's master or an app still importing holds it
without serving. A process *accepts* once it waits for connections on it, which
Linux shows in two places:

- an epoll instance whose interest list has the socket (``tfd:`` lines in
  /proc/PID/fdinfo/EPOLLFD): asyncio, uvloop, libuv (Node), gunicorn's gthread,
  gevent and eventlet workers;
- a thread blocked in accept()/accept4() on it (/proc/PID/task/TID/syscall).

A server that waits in select()/poll() shows neither; such a worker counts as ready
at listen_timeout, as with PM2's wait_ready.
"""

from __future__ import annotations

import contextlib
import os
import platform

# accept, accept4 syscall numbers.
_ACCEPT_SYSCALLS = {
    "x86_64": (43, 288),
    "aarch64": (202, 242),
}.get(platform.machine(), ())


def socket_inode(fd: int) -> int:
    return os.fstat(fd).st_ino


def _session(sid: int) -> list[int]:
    """Processes whose session is `sid` (the worker and everything it forked)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # Fields after the command (which may contain spaces): state ppid pgrp session.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 3 and int(fields[3]) == sid:
            pids.append(int(entry))
    return pids


def _process_accepts(pid: int, target: str) -> bool:
    base = f"/proc/{pid}"
    sock_fds: set[int] = set()
    epolls: list[str] = []
    try:
        names = os.listdir(f"{base}/fd")
    except OSError:
        return False
    for name in names:
        try:
            link = os.readlink(f"{base}/fd/{name}")
        except OSError:
            continue
        if link == target:
            sock_fds.add(int(name))
        elif link == "anon_inode:[eventpoll]":
            epolls.append(name)
    if not sock_fds:
        return False
    for name in epolls:
        with contextlib.suppress(OSError), open(f"{base}/fdinfo/{name}") as f:
            for line in f:
                if line.startswith("tfd:") and int(line.split()[1]) in sock_fds:
                    return True
    if _ACCEPT_SYSCALLS:
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"{base}/task"):
                with contextlib.suppress(OSError, ValueError, IndexError):
                    with open(f"{base}/task/{tid}/syscall") as f:
                        parts = f.read().split()
                    if int(parts[0]) in _ACCEPT_SYSCALLS and int(parts[1], 16) in sock_fds:
                        return True
    return False


def accepting(worker_pid: int, inode: int) -> bool:
    """True once the worker, or a process it started, waits for connections on the socket."""
    target = f"socket:[{inode}]"
    return any(_process_accepts(pid, target) for pid in _session(worker_pid))
