"""Resource sampling with persistent psutil.Process objects (cpu_percent needs them)."""

from __future__ import annotations

import os
from typing import NamedTuple

import psutil

# Kernel states of a process that will not run until SIGCONT (or the tracer lets go):
# /proc state 'T' (SIGSTOP, SIGTSTP, SIGTTIN/OU) and 't' (stopped under ptrace).
STOPPED = frozenset({psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP})


class Sample(NamedTuple):
    cpu: float  # % of one CPU, the whole process tree
    memory: int  # RSS bytes, the whole process tree
    stopped: bool  # the worker's own process is stopped (its children are not looked at)


def children(pid: int) -> list[int]:
    """Direct children, from /proc/PID/task/*/children: no scan of the whole table."""
    kids: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                kids.extend(int(x) for x in f.read().split())
        except (OSError, ValueError):
            continue
    return kids


class Sampler:
    """CPU % and RSS per worker process tree, sampled once per tick."""

    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}
        psutil.cpu_percent(None)  # prime the host figure

    def _process(self, pid: int) -> psutil.Process | None:
        proc = self._procs.get(pid)
        if proc is None:
            try:
                proc = psutil.Process(pid)
                proc.cpu_percent(None)  # the first call only sets the baseline
            except psutil.Error:
                return None
            self._procs[pid] = proc
        return proc

    def sample_all(self, pids: list[int]) -> dict[int, Sample]:
        """{pid: Sample} for each pid and its descendants together."""
        seen: set[int] = set()
        out = {}
        for pid in pids:
            out[pid] = self._sample_tree(pid, seen)
        for pid in list(self._procs):
            if pid not in seen:  # exited since the last tick
                del self._procs[pid]
        return out

    def _sample_tree(self, pid: int, seen: set[int]) -> Sample:
        family = [pid]
        for member in family:  # grows as we go: a breadth-first walk of the tree
            family.extend(k for k in children(member) if k not in family)
        cpu = 0.0
        rss = 0
        stopped = False
        for member in family:
            proc = self._process(member)
            if proc is None:
                continue
            seen.add(member)
            try:
                with proc.oneshot():
                    cpu += proc.cpu_percent(None)
                    rss += proc.memory_info().rss
                    if member == pid:  # status() reads the same /proc/PID/stat: no extra I/O
                        stopped = proc.status() in STOPPED
            except psutil.Error:
                continue
        return Sample(cpu, rss, stopped)

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

    @staticmethod
    def host() -> dict[str, float | int]:
        mem = psutil.virtual_memory()
        return {
            "cpu": psutil.cpu_percent(None),
            "memory_used": mem.total - mem.available,
            "memory_total": mem.total,
            "cpus": psutil.cpu_count() or 1,
        }
