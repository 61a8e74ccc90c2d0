"""A worker's process tree for the `tree` operation: its children and grandchildren with
their CPU and memory, and what has left it.

Sampled only when a client asks (the dashboard: once a second for the selection, while
its detail pane is open), never in the supervisor's tick. CPU % needs two readings of a
process, so the psutil.Process objects are kept between calls: at most MAX_TRACKED of
them, each dropped once its process is gone or nobody asked about it for FORGET_AFTER
seconds.

What has left the worker, the leak to look for:
- "session": it called setsid(), so a stop signal sent to the worker's process group no
  longer reaches it (every worker is a session and group leader, core/process.py);
- "group": it moved to a process group of its own in the worker's session (a shell's job
  control does this), with the same consequence;
- "orphan": it is in the worker's cgroup (core/cgroups.py) but no longer below the
  worker: its parent exited and it was re-parented (a double-forked daemon).
"""

from __future__ import annotations

import os
import time

import psutil

from clusterui.core.stats import children

MAX_TRACKED = 1024  # psutil.Process objects kept between calls, for all workers together
MAX_PROCESSES = 200  # processes reported per worker; the rest are counted in `more`
FORGET_AFTER = 30.0  # seconds a process not asked about keeps its CPU baseline
CMDLINE_MAX = 300  # characters of a command line sent (the client sanitises them)


class TreeSampler:
    """CPU % and memory of the processes below a worker, between two calls."""

    def __init__(self) -> None:
        self._procs: dict[int, tuple[psutil.Process, float]] = {}  # pid -> (proc, last used)
        self._names_of: dict[int, tuple[str, str]] = {}  # pid -> (name, cmdline), as _procs

    def tree(self, pid: int, cgroup: str | None = None) -> dict:
        """The worker `pid` and what is below it, depth first, as TreeProcess rows, and
        the members of its cgroup that are no longer below it (marked "orphan")."""
        now = time.monotonic()
        order = _walk(pid)
        below = {p for p, _ in order}
        for extra in _cgroup_members(cgroup):
            if extra not in below:
                order.append((extra, 1))
        more = max(0, len(order) - MAX_PROCESSES)
        session, group = _ids(pid)
        rows = []
        for member, depth in order[:MAX_PROCESSES]:
            row = self._row(member, depth, now)
            if row is None:
                continue  # exited while we looked
            if member not in below:
                row["left"] = "orphan"
            elif member != pid and session is not None:
                row["left"] = _left(member, session, group)
            rows.append(row)
        self._prune(now)
        return {"processes": rows, "more": more}

    def _process(self, pid: int, now: float) -> tuple[psutil.Process, bool] | None:
        """The kept Process for pid (and whether it is new), or None if it is gone."""
        kept = self._procs.get(pid)
        if kept is not None and kept[0].is_running():  # is_running: the same process
            self._procs[pid] = (kept[0], now)
            return kept[0], False
        try:
            proc = psutil.Process(pid)
        except psutil.Error:
            self._procs.pop(pid, None)
            return None
        self._procs[pid] = (proc, now)
        return proc, True

    def _row(self, pid: int, depth: int, now: float) -> dict | None:
        got = self._process(pid, now)
        if got is None:
            return None
        proc, new = got
        try:
            with proc.oneshot():
                cpu = proc.cpu_percent(None)  # since the last call; the first sets a baseline
                memory = proc.memory_info().rss
                ppid = proc.ppid()
                status = proc.status()
            name, cmdline = self._names(proc, new)
        except psutil.Error:
            self._procs.pop(pid, None)
            return None
        return {
            "pid": pid,
            "ppid": ppid,
            "depth": depth,
            "name": name,
            "cmdline": cmdline,
            "cpu": None if new else round(cpu, 1),
            "memory": memory,
            "status": status,
            "left": None,
        }

    def _names(self, proc: psutil.Process, new: bool) -> tuple[str, str]:
        """Name and command line, read once per process (an exec changes them: rare, and
        the next new process shows it); a call a second then reads only stat and statm."""
        if not new and proc.pid in self._names_of:
            return self._names_of[proc.pid]
        try:
            cmdline = " ".join(proc.cmdline())[:CMDLINE_MAX]
        except psutil.Error:  # a zombie has none
            cmdline = ""
        names = (proc.name(), cmdline)
        self._names_of[proc.pid] = names
        return names

    def _prune(self, now: float) -> None:
        for pid, (proc, used) in list(self._procs.items()):
            if now - used > FORGET_AFTER or not proc.is_running():
                del self._procs[pid]
        if len(self._procs) > MAX_TRACKED:
            by_use = sorted(self._procs, key=lambda p: self._procs[p][1])
            for pid in by_use[: len(self._procs) - MAX_TRACKED]:
                del self._procs[pid]
        for pid in self._names_of.keys() - self._procs.keys():
            del self._names_of[pid]

    @property
    def tracked(self) -> int:
        return len(self._procs)


def _walk(pid: int) -> list[tuple[int, int]]:
    """(pid, depth) of pid and its descendants, depth first, children in pid order."""
    out: list[tuple[int, int]] = []
    stack = [(pid, 0)]
    seen: set[int] = set()
    while stack and len(out) <= MAX_PROCESSES * 4:  # a fork bomb must not hold the loop
        member, depth = stack.pop()
        if member in seen:
            continue
        seen.add(member)
        out.append((member, depth))
        stack.extend((kid, depth + 1) for kid in sorted(children(member), reverse=True))
    return out


def _cgroup_members(cgroup: str | None) -> list[int]:
    if cgroup is None:
        return []
    try:
        with open(os.path.join(cgroup, "cgroup.procs"), "rb") as f:
            return sorted(int(x) for x in f.read().split())
    except (OSError, ValueError):
        return []


def _ids(pid: int) -> tuple[int | None, int | None]:
    try:
        return os.getsid(pid), os.getpgid(pid)
    except OSError:
        return None, None


def _left(pid: int, session: int, group: int | None) -> str | None:
    try:
        sid, pgid = os.getsid(pid), os.getpgid(pid)
    except OSError:
        return None
    if sid != session:
        return "session"
    if pgid != group:
        return "group"
    return None
