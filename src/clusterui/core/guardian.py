"""A tiny watchdog process that kills every worker group if the supervisor dies.

PR_SET_PDEATHSIG reaches only a worker itself, not what the worker started (a
shell script's children, a server's forks). The guardian is forked at supervisor
start; the supervisor tells it over a pipe which process groups it spawned. When
the supervisor dies, however abruptly, the pipe hits EOF and the guardian SIGKILLs
every group still registered, then exits. A group registered with a grace (workers on
a socket handed in from outside, which finish their connections while the next
supervisor takes the socket over) is killed that much later, unless it is gone by then.

The supervisor must never block on the guardian (a stopped or slow guardian would
freeze every app): its end of the pipe is non-blocking, and what does not fit waits
in memory and goes out when the pipe is writable again. That backlog is bounded:
past a limit it is replaced by the whole current set ("reset" and one "+pgid" per
group), so it never holds more than the live groups and one limit's worth of lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import time

from clusterui.vocab.exits import Exit

# Each write is whole lines and at most PIPE_BUF bytes, so the kernel takes all of it
# or nothing: the pipe never holds half a line that a reset would then corrupt.
PIPE_BUF = select.PIPE_BUF
# Backlog (bytes) past which it is replaced by a snapshot of the tracked set.
BACKLOG_LIMIT = 16 * 1024
RELEASE_TIMEOUT = 1.0  # a clean shutdown waits this long for a stopped guardian

_pipe_w: int | None = None
_pid: int | None = None
# The groups the guardian must kill if we die → how long they may outlive us (ms).
_tracked: dict[int, int] = {}
_backlog = bytearray()  # whole lines not yet written
_writer_loop: asyncio.AbstractEventLoop | None = None  # where a flush is scheduled


def start(cgroup_root: str | None = None) -> int:
    """Fork the guardian; returns its pid. Call once, early, from the supervisor.

    cgroup_root: the supervisor's folder of worker cgroups (core/cgroups.py); if the
    supervisor dies, everything in it is killed too, whatever group or session it is in.
    """
    global _pipe_w, _pid
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(w)
        # Hold nothing of the supervisor's (its pidfile lock, listening sockets): while
        # workers finish their grace, a new supervisor must be able to start.
        os.closerange(3, r)
        os.closerange(r + 1, 1 << 20)
        try:
            _run(r, cgroup_root)
        finally:
            os._exit(Exit.OK)
    os.close(r)
    os.set_blocking(w, False)
    _pipe_w, _pid = w, pid
    _tracked.clear()
    _backlog.clear()
    return pid


def _run(r: int, cgroup_root: str | None = None) -> None:
    os.setsid()  # a signal aimed at the supervisor's group must not take us too
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    groups: dict[int, int] = {}  # pgid → grace in ms
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
                pgid, _, grace = line[1:].partition(b" ")
                groups[int(pgid)] = int(grace or 0)
            elif line.startswith(b"-"):
                groups.pop(int(line[1:]), None)
            elif line == b"reset":
                groups.clear()  # the whole set follows
            elif line == b"exit":
                return  # a clean shutdown already stopped everything
    _kill_after_grace(groups)
    if cgroup_root is not None:
        # After the graces: what left its group (setsid) but cannot leave its cgroup.
        _kill_cgroups(cgroup_root)


def _kill_cgroups(root: str) -> None:
    """Kill the whole tree of worker cgroups, then remove its folders once empty."""
    from clusterui.core.cgroups import CgroupTree

    CgroupTree.kill(root)
    # Killed processes leave the cgroup once reaped; with their parent (the supervisor)
    # gone that is init's job, which may take a while. A next supervisor removes what
    # is still left then (CgroupTree.open).
    deadline = time.monotonic() + 30
    while CgroupTree.populated(root) and time.monotonic() < deadline:
        time.sleep(0.05)
    CgroupTree(root).close()


def _kill_after_grace(groups: dict[int, int]) -> None:
    """SIGKILL each group once its grace is over (at once for most). A group that is
    gone before then is forgotten, so its number, if reused, is not killed."""
    start = time.monotonic()
    while groups:
        now = time.monotonic()
        for pgid, grace in list(groups.items()):
            if now - start >= grace / 1000:
                with contextlib.suppress(OSError):
                    os.killpg(pgid, signal.SIGKILL)
                del groups[pgid]
                continue
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                del groups[pgid]
            except OSError:
                pass
        if groups:
            time.sleep(0.05)


def _flush() -> bool:
    """Write what the pipe takes now; True once the backlog is empty."""
    global _pipe_w
    while _backlog and _pipe_w is not None:
        end = len(_backlog) if len(_backlog) <= PIPE_BUF else _backlog.rindex(b"\n", 0, PIPE_BUF)
        if end < len(_backlog):
            end += 1  # up to and including the last whole line that fits
        try:
            os.write(_pipe_w, _backlog[:end])
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            # The guardian is gone (EPIPE): nothing can be delivered any more.
            _backlog.clear()
            return True
        del _backlog[:end]
    return True


def _on_writable() -> None:
    global _writer_loop
    if _flush() and _writer_loop is not None:
        with contextlib.suppress(ValueError, OSError, RuntimeError):
            _writer_loop.remove_writer(_pipe_w)
        _writer_loop = None


def _send(message: bytes) -> None:
    global _writer_loop
    if _pipe_w is None:
        return
    if _backlog and len(_backlog) + len(message) > max(BACKLOG_LIMIT, 16 * len(_tracked)):
        # The guardian is not reading: keep only what it will need, the current set.
        _backlog[:] = b"reset\n" + b"".join(_add_line(p, g) for p, g in sorted(_tracked.items()))
        if message == b"exit\n":
            _backlog.extend(message)
    else:
        _backlog.extend(message)
    if _flush() or _writer_loop is not None:
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return  # no loop (start-up or shutdown): the next message flushes, or release()
    loop.add_writer(_pipe_w, _on_writable)
    _writer_loop = loop


def _add_line(pgid: int, grace_ms: int) -> bytes:
    return b"+%d %d\n" % (pgid, grace_ms) if grace_ms else b"+%d\n" % pgid


def track(pgid: int, grace: float = 0.0) -> None:
    """Kill this group if the supervisor dies: at once, or `grace` seconds later."""
    grace_ms = max(0, int(grace * 1000))
    _tracked[pgid] = grace_ms
    _send(_add_line(pgid, grace_ms))


def untrack(pgid: int) -> None:
    _tracked.pop(pgid, None)
    _send(b"-%d\n" % pgid)


def pid() -> int | None:
    """The guardian's pid (it is our child, and must not be taken for a stray one)."""
    return _pid


def pending() -> int:
    """Bytes waiting for the guardian to read them (for tests and diagnostics)."""
    return len(_backlog)


def release() -> None:
    """Clean shutdown: the guardian exits without killing anything.

    Every worker is already stopped. A guardian that does not take the message
    within RELEASE_TIMEOUT (it is stopped) is killed: left to find EOF later, it
    would kill groups whose numbers may have been reused by then.
    """
    global _pipe_w, _writer_loop
    if _pipe_w is None:
        return
    if _writer_loop is not None:
        with contextlib.suppress(ValueError, OSError, RuntimeError):
            _writer_loop.remove_writer(_pipe_w)
        _writer_loop = None
    _send(b"exit\n")
    deadline = time.monotonic() + RELEASE_TIMEOUT
    while not _flush():
        left = deadline - time.monotonic()
        if left <= 0:
            if _pid is not None:
                with contextlib.suppress(OSError):
                    os.kill(_pid, signal.SIGKILL)
            break
        select.select([], [_pipe_w], [], left)
    os.close(_pipe_w)
    _pipe_w = None
