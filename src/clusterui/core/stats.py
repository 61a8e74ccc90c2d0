"""Resource sampling straight from /proc, once per tick for every worker's process tree.

Each process costs one read of /proc/PID/stat (CPU ticks, state, thread count, start
time and RSS are all in it) and, to find its children, one read of
/proc/PID/task/PID/children (a directory listing of /proc/PID/task only when it has more
than one thread). A single-threaded process without children that has not run since the
last tick costs one read of /proc/PID/schedstat instead (see Sampler._alone): in a fleet
that is most workers. psutil.Process objects did the same with about four opens, a listing
and far more Python per process: at 2,000 workers that was most of the supervisor's idle
CPU (issue 18; bench/fleet.py measures it).

CPU % is the change in utime + stime since the previous tick over the wall time between
them, as psutil's cpu_percent computes it; a process seen for the first time contributes
0 (its baseline), and a pid reused by a new process (another start time) starts afresh.
"""

from __future__ import annotations

import contextlib
import os
import resource
import time
from collections.abc import Container
from typing import NamedTuple

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
# Kernel states of a process that will not run until SIGCONT (or the tracer lets go):
# /proc state 'T' (SIGSTOP, SIGTSTP, SIGTTIN/OU) and 't' (stopped under ptrace).
STOPPED = frozenset({b"T", b"t"})
# An idle process's figures are read in full at least this often (ticks; see _alone):
# for what the kernel changes without the process running (reclaimed pages).
FULL_READ_EVERY = 30


class Sample(NamedTuple):
    cpu: float  # % of one CPU, the whole process tree
    memory: int  # RSS bytes, the whole process tree
    stopped: bool  # the worker's own process is stopped (its children are not looked at)


class ProcStat(NamedTuple):
    """The fields of /proc/PID/stat the sampler uses."""

    state: bytes
    ticks: int  # utime + stime, in clock ticks
    threads: int
    start: int  # starttime: tells a reused pid from the process seen before
    rss: int  # bytes


def _read(path: str) -> bytes | None:
    """The whole file, or None if it cannot be opened (the process is gone)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        chunks = [os.read(fd, 4096)]
        while len(chunks[-1]) == 4096:  # a long children list; stat is always shorter
            chunks.append(os.read(fd, 4096))
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def _parse_stat(data: bytes) -> ProcStat | None:
    # Field 2 (comm) is in parentheses and may hold spaces and ')': count from the last.
    f = data[data.rfind(b")") + 2 :].split(None, 22)  # the fields after rss stay unsplit
    try:  # f[0] is field 3 (state); field N of proc(5) is f[N - 3]
        return ProcStat(f[0], int(f[11]) + int(f[12]), int(f[17]), int(f[19]), int(f[21]) * _PAGE)
    except (IndexError, ValueError):
        return None


def read_stat(pid: int) -> ProcStat | None:
    data = _read(f"/proc/{pid}/stat")
    return _parse_stat(data) if data else None


def children(pid: int, threads: int = 0) -> list[int]:
    """Direct children, from /proc/PID/task/*/children: no scan of the whole table.
    With a single thread (threads == 1) its one task is read without listing the folder."""
    kids: list[int] = []
    for tid in _tasks(pid, threads):
        data = _read(f"/proc/{pid}/task/{tid}/children")
        if data:
            kids.extend(int(x) for x in data.split())
    return kids


def _read_kids(pid: int) -> bytes:
    """The children file of a single-threaded process's one task; OSError if gone."""
    data = _read(f"/proc/{pid}/task/{pid}/children")
    if data is None:
        raise OSError(f"/proc/{pid} is gone")
    return data


def _tasks(pid: int, threads: int) -> list[str]:
    if threads == 1:
        return [str(pid)]
    try:
        return os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []


def _pread(fd: int) -> bytes | None:
    """A kept /proc file read again from its start (the kernel renders it anew); None
    once its process (or thread) has exited: the fd never follows a reused pid."""
    try:
        chunks = [os.pread(fd, 4096, 0)]
        while len(chunks[-1]) == 4096:
            chunks.append(os.pread(fd, 4096, 4096 * len(chunks)))
    except OSError:
        return None
    return b"".join(chunks)


class _Kept:
    """The open /proc files of one process: its stat and its threads' children lists
    (by thread id). Opening a /proc file costs about three times what reading it again
    does.

    For a single-threaded process without children also its schedstat, and what the
    last full read found (`Sampler._alone`)."""

    __slots__ = ("kids", "last_full", "quiet", "sched", "sched_line", "stat")

    def __init__(self, stat: int) -> None:
        self.stat = stat
        self.kids: dict[str, int] = {}
        self.sched = -1  # /proc/PID/schedstat, once the process is seen alone
        self.sched_line = b""  # what it read just before the last full read
        # The figures of the last full read while they may stand for a tick without one
        # (alone and not stopped); None: read in full.
        self.quiet: Sample | None = None
        self.last_full = 0  # ticks since then

    def fds(self) -> int:
        return 1 + len(self.kids) + (self.sched >= 0)

    def close(self) -> None:
        for fd in (self.stat, *self.kids.values()):
            os.close(fd)
        if self.sched >= 0:
            os.close(self.sched)
            self.sched = -1
        self.kids = {}


class Sampler:
    """CPU % and RSS per worker process tree, sampled once per tick.

    The /proc files of sampled processes are kept open between ticks (up to a quarter of
    the fd limit; beyond it, files are opened and closed each tick) and closed once their
    process is no longer sampled.
    """

    def __init__(self) -> None:
        # pid -> (start time, CPU ticks, monotonic time) at the previous tick.
        self._last: dict[int, tuple[int, int, float]] = {}
        self._kept: dict[int, _Kept] = {}
        self._kept_fds = 0
        self.max_kept_fds = resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 4
        self._schedstat = True  # False once the kernel is seen without /proc/PID/schedstat
        self._host_cpu = _host_cpu_times()

    def sample_all(self, pids: list[int], still: Container[int] = ()) -> dict[int, Sample]:
        """{pid: Sample} for each pid and its descendants together. `still`: pids whose
        cgroup nothing has run in since the last call (core/cgroups.py CpuUse): an idle
        one among them is taken as idle without reading its schedstat."""
        now = time.monotonic()
        seen: dict[int, tuple[int, int, float]] = {}
        out: dict[int, Sample] = {}
        last, kept_of, pread = self._last, self._kept, os.pread
        for pid in pids:
            # An idle worker that has not run since the last look (see _alone), inline:
            # at 2,000 workers this loop is most of the supervisor's idle CPU.
            kept = kept_of.get(pid)
            line = None
            if kept is not None and kept.quiet is not None:
                try:
                    line = kept.sched_line if pid in still else pread(kept.sched, 64, 0)
                except OSError:
                    line = None
                if line == kept.sched_line and kept.last_full < FULL_READ_EVERY:
                    prev = last.get(pid)
                    if prev is not None:
                        kept.last_full += 1
                        seen[pid] = (prev[0], prev[1], now)
                        out[pid] = kept.quiet
                        continue
            out[pid] = self._sample_tree(pid, now, seen, line)
        self._last = seen  # what exited since the last tick is forgotten
        for pid in [p for p in self._kept if p not in seen]:
            self._forget(pid)
        return out

    def close(self) -> None:
        for pid in list(self._kept):
            self._forget(pid)

    def _sample_tree(
        self,
        pid: int,
        now: float,
        seen: dict[int, tuple[int, int, float]],
        line: bytes | None = None,
    ) -> Sample:
        quick = self._alone(pid, now, seen, line)
        if quick is not None:
            return quick
        last = self._last
        family = [pid]
        members = {pid}
        cpu = 0.0
        rss = 0
        stopped = False
        for member in family:  # grows as we go: a breadth-first walk of the tree
            st, kids = self._read(member)
            if st is None:
                continue
            seen[member] = (st.start, st.ticks, now)
            prev = last.get(member)
            if prev is not None and prev[0] == st.start and now > prev[2]:
                cpu += 100 * (st.ticks - prev[1]) / _CLOCK_TICKS / (now - prev[2])
            rss += st.rss
            if member == pid:
                stopped = st.state in STOPPED
            for kid in kids:
                if kid not in members:
                    members.add(kid)
                    family.append(kid)
        return Sample(cpu, rss, stopped)

    def _alone(
        self,
        pid: int,
        now: float,
        seen: dict[int, tuple[int, int, float]],
        line: bytes | None = None,
    ) -> Sample | None:
        """The common case in one go, without the general walk's calls: a process seen
        before, single-threaded then and now, with no children. None: not that case.

        Most workers of a large fleet sit idle. /proc/PID/schedstat (time on a CPU, time
        waiting for one, times run: a quarter of the cost of reading /proc/PID/stat)
        unchanged since the last full read means the process has not run since. Then
        nothing in its stat moved: not its CPU time, nor its RSS (only running code maps
        pages, give or take the kernel reclaiming some), nor its state or children, since
        stopping on a signal, a fork or a new thread all need the process to run. So
        sample_all lets the last figures stand (`quiet`), with a full read at least every
        FULL_READ_EVERY ticks (spread over the ticks by pid). A stopped process is read in
        full each tick: SIGCONT makes it runnable before it runs. `line`: schedstat as
        sample_all just read it.
        """
        kept = self._kept.get(pid)
        if kept is None or len(kept.kids) > 1 or (not kept.kids and kept.sched < 0):
            return None
        kept.quiet = None
        if line is None and kept.sched >= 0:
            try:
                line = os.pread(kept.sched, 64, 0)
            except OSError:
                return None
        kids_fd = kept.kids.get(str(pid))
        try:
            data = os.pread(kept.stat, 4096, 0)
            kids = os.pread(kids_fd, 4096, 0) if kids_fd is not None else _read_kids(pid)
        except OSError:
            return None
        f = data[data.rfind(b")") + 2 :].split(None, 22)
        if kids or len(f) < 22 or f[17] != b"1":
            return None
        try:
            ticks, start, rss = int(f[11]) + int(f[12]), int(f[19]), int(f[21]) * _PAGE
        except ValueError:
            return None
        seen[pid] = (start, ticks, now)
        prev = self._last.get(pid)
        cpu = 0.0
        if prev is not None and prev[0] == start and now > prev[2]:
            cpu = 100 * (ticks - prev[1]) / _CLOCK_TICKS / (now - prev[2])
        stopped = f[0] in STOPPED
        if kept.sched < 0:
            self._keep_sched(pid, kept)
        elif line is not None and not stopped:
            # Read before the stat: if it ran in between, the next look reads again. The
            # first time, the countdown starts at a point set by the pid, so the periodic
            # full reads of workers started together do not all fall on one tick.
            first = kept.sched_line == b""
            kept.sched_line, kept.quiet = line, Sample(0.0, rss, False)
            kept.last_full = pid % FULL_READ_EVERY if first else 0
        return Sample(cpu, rss, stopped)

    def _keep_sched(self, pid: int, kept: _Kept) -> None:
        """Keep its schedstat open instead of its children file, which is read only on a
        full read from now on: two files per idle worker, not three (at 2,000 workers
        the kept files are a quarter of the fd limit)."""
        if not self._schedstat:
            return
        try:
            sched = os.open(f"/proc/{pid}/schedstat", os.O_RDONLY)
        except FileNotFoundError:  # a kernel without schedstat: always the full read
            self._schedstat = os.path.exists(f"/proc/{pid}")  # or the process just went
            return
        except OSError:
            return
        kept.sched = sched
        kids = kept.kids.pop(str(pid), None)
        if kids is not None:
            os.close(kids)
        else:
            self._kept_fds += 1

    def _read(self, pid: int) -> tuple[ProcStat | None, list[int]]:
        """pid's stat and children, from its kept files (opened on first sight)."""
        kept = self._kept.get(pid)
        if kept is not None:
            data = _pread(kept.stat)
            if not data:  # exited (a zombie still reads); a new process may have its pid
                self._forget(pid)
                kept = None
        if kept is None:
            kept = self._keep(pid)
            if kept is None:  # gone, or too many files kept already
                st = read_stat(pid)
                return st, (children(pid, st.threads) if st else [])
            data = _pread(kept.stat)
        st = _parse_stat(data) if data else None
        if st is None:
            return None, []
        return st, self._kids(pid, kept, st.threads)

    def _kids(self, pid: int, kept: _Kept, threads: int) -> list[int]:
        """Children from the kept children file of each thread (the thread list is read
        only when there is more than one: a file of an exited thread just reads empty)."""
        tids = _tasks(pid, threads)
        for tid in [t for t in kept.kids if t not in tids]:  # exited threads
            os.close(kept.kids.pop(tid))
            self._kept_fds -= 1
        out: list[int] = []
        for tid in tids:
            fd = kept.kids.get(tid)
            if fd is None and self._kept_fds < self.max_kept_fds:
                with contextlib.suppress(OSError):
                    fd = kept.kids[tid] = os.open(f"/proc/{pid}/task/{tid}/children", os.O_RDONLY)
                    self._kept_fds += 1
            data = _pread(fd) if fd is not None else _read(f"/proc/{pid}/task/{tid}/children")
            if data:
                out.extend(int(x) for x in data.split())
        return out

    def _keep(self, pid: int) -> _Kept | None:
        if self._kept_fds >= self.max_kept_fds:
            return None
        try:
            kept = _Kept(os.open(f"/proc/{pid}/stat", os.O_RDONLY))
        except OSError:
            return None
        self._kept[pid] = kept
        self._kept_fds += 1
        return kept

    def _forget(self, pid: int) -> None:
        kept = self._kept.pop(pid)
        self._kept_fds -= kept.fds()
        kept.close()

    @staticmethod
    def pss_tree(pid: int) -> int:
        """PSS bytes of pid and its descendants: shared pages are divided among the
        processes sharing them, so a forked tree is not counted once per fork (as RSS
        is). Costs a page-table walk per process; max_memory_restart calls it only when
        the tree's RSS is over the limit (PSS is never more than RSS)."""
        family = [pid]
        for member in family:
            family.extend(k for k in children(member) if k not in family)
        total = 0
        for member in family:
            try:
                with open(f"/proc/{member}/smaps_rollup", "rb") as f:
                    for line in f:
                        if line.startswith(b"Pss:"):
                            total += int(line.split()[1]) * 1024
                            break
            except (OSError, ValueError, IndexError):
                continue
        return total

    def host(self) -> dict[str, float | int]:
        """The host's CPU % since the previous call (as psutil.cpu_percent(None)) and
        memory in use (total - MemAvailable, as psutil.virtual_memory)."""
        before, self._host_cpu = self._host_cpu, _host_cpu_times()
        busy = (self._host_cpu[0] - before[0]) if before else 0
        total = (self._host_cpu[1] - before[1]) if before else 0
        mem = _meminfo()
        return {
            "cpu": round(100 * busy / total, 1) if total > 0 else 0.0,
            "memory_used": mem.get(b"MemTotal:", 0) - mem.get(b"MemAvailable:", 0),
            "memory_total": mem.get(b"MemTotal:", 0),
            "cpus": os.cpu_count() or 1,
        }


def _host_cpu_times() -> tuple[int, int] | None:
    """(busy, total) ticks from the first line of /proc/stat; guest time is already in
    user and nice, and idle and iowait are not busy (psutil's reckoning)."""
    data = _read("/proc/stat")
    if not data:
        return None
    try:
        t = [int(x) for x in data.split(b"\n", 1)[0].split()[1:]]
        total = sum(t[:8])  # user nice system idle iowait irq softirq steal
        return total - t[3] - t[4], total
    except (IndexError, ValueError):
        return None


def _meminfo() -> dict[bytes, int]:
    """/proc/meminfo's figures in bytes, by their label ('MemTotal:')."""
    out = {}
    for line in (_read("/proc/meminfo") or b"").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1]) * (1024 if parts[2:] == [b"kB"] else 1)
    return out
