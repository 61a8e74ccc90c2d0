"""A tiny watchdog process that kills every worker group if the supervisor dies.

PR_SET_PDEATHSIG reaches only a worker itself, not what the worker started (a
shell script's children, a server's forks). The guardian is forked at supervisor
start; the supervisor tells it over a pipe which process groups it spawned. When
the supervisor dies, however abruptly, the pipe hits EOF and the guardian SIGKILLs
every group still registered, then exits.
"""

from __future__ import annotations

import contextlib
import os
import signal

_pipe_w: int | None = None


def start() -> int:
    """Fork the guardian; returns its pid. Call once, early, from the supervisor."""
    global _pipe_w
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(w)
        try:
            _run(r)
        finally:
            os._exit(0)
    os.close(r)
    _pipe_w = w
    return pid


def _run(r: int) -> None:
    os.setsid()  # a signal aimed at the supervisor's group must not take us too
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    groups: set[int] = set()
    buf = b""
    while True:
        try:
            chunk = os.read(r, 65536)
        except InterruptedError:
            continue
        if not chunk:
            break
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            if line.startswith(b"+"):
                groups.add(int(line[1:]))
            elif line.startswith(b"-"):
                groups.discard(int(line[1:]))
            elif line == b"exit":
                return  # a clean shutdown already stopped everything
    for pgid in groups:
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGKILL)


def _send(message: bytes) -> None:
    if _pipe_w is not None:
        with contextlib.suppress(OSError):
            os.write(_pipe_w, message)


def track(pgid: int) -> None:
    _send(b"+%d\n" % pgid)


def untrack(pgid: int) -> None:
    _send(b"-%d\n" % pgid)


def release() -> None:
    """Clean shutdown: the guardian exits without killing anything."""
    _send(b"exit\n")
