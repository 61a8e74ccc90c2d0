"""The fallback where no cgroup per worker is possible: the supervisor is a child
subreaper (PR_SET_CHILD_SUBREAPER), so a worker's descendants that outlive it (a
setsid() daemon, a double fork) are re-parented to the supervisor instead of init,
and `sweep` kills and reaps every child the supervisor did not start itself.

Limits (documented in RELIABILITY.md): a descendant is only caught once the worker
it came from has exited; and a supervisor killed with SIGKILL cannot sweep, so what
escaped the process groups then survives (with cgroups, the guardian kills it).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from collections.abc import Iterable

_PR_SET_CHILD_SUBREAPER = 36
_active = False
# With cgroups the subreaper is only there to adopt zygote-forked workers (core.zygote):
# what else is re-parented to us lives on in its worker's cgroup, which ends it with the
# worker, so the sweep then only reaps the children that have exited.
_kill_orphans = True
# Short-lived children of the supervisor's own (exec health probes): never swept.
_spared: set[int] = set()


def spare(pid: int) -> None:
    _spared.add(pid)


def unspare(pid: int) -> None:
    _spared.discard(pid)


def kills_orphans() -> bool:
    """Whether the sweep kills what it adopts (the fallback without cgroups)."""
    return _active and _kill_orphans


def become_subreaper(kill_orphans: bool = True) -> bool:
    """kill_orphans: the fallback without cgroups (sweep kills what it adopts); else only
    adopt, and reap what exits."""
    global _active, _kill_orphans
    libc = ctypes.CDLL(None, use_errno=True)
    _active = libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    _kill_orphans = kill_orphans
    return _active


def active() -> bool:
    return _active


def children(pid: int | None = None) -> set[int]:
    """The pids whose parent is `pid` (default: us), from /proc/PID/task/*/children."""
    pid = pid or os.getpid()
    found: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/children") as f:
            found.update(int(p) for p in f.read().split())
    return found


def sweep(known: Iterable[int]) -> list[int]:
    """SIGKILL (with its group) and reap every child of ours not in `known`; returns them.
    Adopting only (cgroups): reap those of them that have exited, and return none."""
    keep = set(known) | _spared
    killed = []
    for pid in children() - keep:
        if not _kill_orphans:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
            continue
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, 0)  # SIGKILLed: returns at once
        killed.append(pid)
    return killed
