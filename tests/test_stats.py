"""The sampler reads /proc itself (core/stats.py): its figures against the kernel's and
psutil's on real processes, whole trees, odd process names, stopped and vanished ones."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest
from support import wait_for

from clusterui.core.stats import Sampler, read_stat

pytestmark = pytest.mark.timeout(60)

# A parent that starts a child which allocates 64 MiB, then both sleep; the parent prints
# the child's pid once the child has its memory.
TREE = """\
import os, sys, time
r, w = os.pipe()
kid = os.fork()
if kid == 0:
    block = bytearray(64 * 1024 * 1024)
    os.write(w, b"x")
    time.sleep(600)
    os._exit(0)
os.read(r, 1)
print(kid, flush=True)
time.sleep(600)
"""
# The child is forked by a second thread: its pid is in that thread's children file only.
THREADED = """\
import os, threading, time
r, w = os.pipe()
def start():
    kid = os.fork()
    if kid == 0:
        block = bytearray(64 * 1024 * 1024)
        os.write(w, b"x")
        time.sleep(600)
        os._exit(0)
    os.read(r, 1)
    print(kid, flush=True)
    time.sleep(600)
threading.Thread(target=start, daemon=True).start()
time.sleep(600)
"""
BUSY = "while True: pass\n"
HOLDER = f"""\
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", {BUSY!r}])
time.sleep(600)
"""
# comm may hold spaces and parentheses: /proc/PID/stat must be parsed from the last ')'.
ODD_NAME = """\
import time
with open("/proc/self/comm", "w") as f:
    f.write("a) b (c) d")
print("named", flush=True)
time.sleep(600)
"""


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        for q in psutil.Process(p.pid).children(recursive=True) if p.poll() is None else []:
            q.kill()
        p.kill()
        p.wait()


def python(procs: list[subprocess.Popen], code: str) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    procs.append(p)
    return p


def test_a_tree_is_summed_and_its_rss_matches_psutil(procs):
    parent = python(procs, TREE)
    kid = int(parent.stdout.readline())
    sample = Sampler().sample_all([parent.pid])[parent.pid]
    expected = psutil.Process(parent.pid).memory_info().rss + psutil.Process(kid).memory_info().rss
    # Both sleep; a page or two may still move between the two readings.
    assert abs(sample.memory - expected) < 1024 * 1024, (sample.memory, expected)
    assert sample.memory > 64 * 1024 * 1024
    assert sample.cpu == 0.0  # first sight: only a baseline
    assert not sample.stopped


def test_cpu_of_a_busy_child_shows_in_its_parents_tree(procs):
    holder = python(procs, HOLDER)
    sampler = Sampler()
    tree = wait_for(lambda: psutil.Process(holder.pid).children(), 10, "the busy child to start")
    # Each call is a tick; the busy child uses CPU between any two of them.
    wait_for(
        lambda: sampler.sample_all([holder.pid])[holder.pid].cpu > 0,
        20,
        "CPU of the busy child in the tree",
        step=0.2,
    )
    # The child alone (one thread, no children: the sampler's short path) shows it too.
    busy = tree[0].pid
    wait_for(
        lambda: sampler.sample_all([busy])[busy].cpu > 0, 20, "CPU of the busy child", step=0.2
    )


def test_a_stopped_process_is_seen_and_a_vanished_one_is_zero(procs):
    sleeper = python(procs, "import time; time.sleep(600)")
    sampler = Sampler()
    os.kill(sleeper.pid, signal.SIGSTOP)
    wait_for(lambda: sampler.sample_all([sleeper.pid])[sleeper.pid].stopped, 10, "stopped")
    os.kill(sleeper.pid, signal.SIGCONT)
    wait_for(lambda: not sampler.sample_all([sleeper.pid])[sleeper.pid].stopped, 10, "running")
    sleeper.kill()
    sleeper.wait()
    assert sampler.sample_all([sleeper.pid])[sleeper.pid] == (0.0, 0, False)


def test_a_process_name_with_parentheses_and_spaces_is_parsed(procs):
    odd = python(procs, ODD_NAME)
    assert odd.stdout.readline().strip() == "named"
    st = read_stat(odd.pid)
    assert st is not None
    assert abs(st.rss - psutil.Process(odd.pid).memory_info().rss) < 1024 * 1024
    assert st.start > 0 and st.threads == 1 and st.state in (b"S", b"R")
    assert Sampler().sample_all([odd.pid])[odd.pid].memory == st.rss


def test_host_figures(procs):
    sampler = Sampler()
    host = sampler.host()
    assert host["cpus"] == psutil.cpu_count()
    total = psutil.virtual_memory().total
    assert host["memory_total"] == total
    assert 0 < host["memory_used"] < total
    assert 0.0 <= host["cpu"] <= 100.0


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_kept_files_are_closed_when_their_process_goes_and_the_cap_holds(procs):
    parent = python(procs, TREE)
    kid = int(parent.stdout.readline())
    before = open_fds()
    sampler = Sampler()
    kept = sampler.sample_all([parent.pid])[parent.pid]
    assert open_fds() == before + 4  # stat and children file of each of the two
    assert sampler.sample_all([parent.pid])[parent.pid].memory > 64 * 1024 * 1024
    capped = Sampler()
    capped.max_kept_fds = 0  # nothing kept: every file opened and closed each tick
    assert abs(capped.sample_all([parent.pid])[parent.pid].memory - kept.memory) < 1024 * 1024
    assert open_fds() == before + 4
    os.kill(kid, signal.SIGKILL)
    wait_for(
        lambda: sampler.sample_all([parent.pid])[parent.pid].memory < 64 * 1024 * 1024,
        10,
        "the killed child's memory to leave the tree",
    )
    sampler.sample_all([])  # nothing sampled any more: every kept file is closed
    assert open_fds() == before


def test_a_child_of_a_second_thread_is_found(procs):
    threaded = python(procs, THREADED)
    kid = int(threaded.stdout.readline())
    sampler = Sampler()
    assert sampler.sample_all([threaded.pid])[threaded.pid].memory > 64 * 1024 * 1024, kid


# Sleeps; on SIGUSR1 forks a child holding 64 MiB and prints its pid.
FORKS_ON_SIGNAL = """\
import os, signal, sys, time
def fork(*_):
    r, w = os.pipe()
    if os.fork() == 0:
        block = bytearray(64 * 1024 * 1024)
        os.write(w, b"x")
        time.sleep(600)
        os._exit(0)
    os.read(r, 1)
    print("forked", flush=True)
signal.signal(signal.SIGUSR1, fork)
print("ready", flush=True)
while True:
    time.sleep(600)
"""


def asleep(pid: int) -> None:
    """Wait until pid sleeps for good: asleep (S), its schedstat (time run, time waiting
    to run, times run) the same 50 ms apart. Right after printing "ready" it may still be
    running, or waiting for a CPU on a busy machine, and every tick would see it move."""

    def schedstat() -> bytes:
        with open(f"/proc/{pid}/schedstat", "rb") as f:
            return f.read()

    def settled() -> bool:
        before = schedstat()
        time.sleep(0.05)
        return read_stat(pid).state == b"S" and schedstat() == before

    wait_for(settled, 10, f"process {pid} to sleep")


def spy_reads(monkeypatch) -> list[str]:
    """The names of the files the sampler and the cgroup reader pread, in order (every
    os.pread of this process, which is theirs here)."""
    read: list[str] = []
    real_pread = os.pread

    def spy(fd: int, n: int, offset: int) -> bytes:
        read.append(os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1])
        return real_pread(fd, n, offset)

    monkeypatch.setattr(os, "pread", spy)
    return read


def test_an_idle_process_costs_one_schedstat_read_and_any_change_is_seen_at_once(
    procs, monkeypatch
):
    """The short path for idle processes (Sampler._alone): while the process does not run
    only /proc/PID/schedstat is read; a stop, a continue or a fork makes it run, and the
    very next tick reads everything again."""
    import clusterui.core.stats as stats

    proc = python(procs, FORKS_ON_SIGNAL)
    assert proc.stdout.readline().strip() == "ready"
    asleep(proc.pid)
    read = spy_reads(monkeypatch)
    sampler = Sampler()
    pid = proc.pid
    # The first periodic full read falls FULL_READ_EVERY - pid % FULL_READ_EVERY quiet
    # ticks in: as few as one for some pids. Here it falls 100 ticks in, whatever the pid.
    every = stats.FULL_READ_EVERY
    monkeypatch.setattr(stats, "FULL_READ_EVERY", pid + 100)

    def tick() -> stats.Sample:
        read.clear()
        return sampler.sample_all([pid])[pid]

    # First sight; the schedstat file is kept; its figure is known; then idle.
    for _ in range(4):
        first = tick()
    assert read == ["schedstat"], read
    assert tick() == (0.0, first.memory, False) and read == ["schedstat"]

    os.kill(pid, signal.SIGSTOP)
    wait_for(lambda: read_stat(pid).state == b"T", 10, "the stop")
    assert tick().stopped and "stat" in read  # no wait for a periodic full read
    assert tick().stopped and "stat" in read  # read in full while stopped
    os.kill(pid, signal.SIGCONT)
    wait_for(lambda: read_stat(pid).state != b"T", 10, "the continue")
    assert not tick().stopped

    os.kill(pid, signal.SIGUSR1)
    assert proc.stdout.readline().strip() == "forked"
    assert tick().memory > 64 * 1024 * 1024  # the child is found on the next tick

    # An idle process is still read in full every FULL_READ_EVERY ticks, the first time
    # sooner by its pid (so that workers started together spread their full reads).
    monkeypatch.setattr(stats, "FULL_READ_EVERY", every)
    sleeper = python(procs, "import time; print('ready', flush=True); time.sleep(600)")
    assert sleeper.stdout.readline().strip() == "ready"
    sleeper = sleeper.pid
    asleep(sleeper)
    quiet = Sampler()
    full = []
    for _ in range(3 + 3 * (stats.FULL_READ_EVERY + 1)):
        read.clear()
        quiet.sample_all([sleeper])
        full.append("stat" in read)
    at = [i for i, was in enumerate(full) if was and i >= 3]
    first = stats.FULL_READ_EVERY - sleeper % stats.FULL_READ_EVERY
    assert at[0] == 3 + first, (at, sleeper)
    assert [b - a for a, b in itertools.pairwise(at)] == [stats.FULL_READ_EVERY + 1] * (len(at) - 1)
    assert len(at) >= 2, at


def test_an_idle_app_folder_skips_the_schedstat_read_until_something_runs_in_it(procs, monkeypatch):
    """With worker cgroups, a tick first asks whether anything ran in each app's folder
    (core/cgroups.py CpuUse): an idle worker in a still folder is not read at all; a
    stop makes it run, the folder moves, and that very tick reads it again."""
    import clusterui.core.stats as stats
    from clusterui.core import cgroups

    if os.geteuid() != 0 or cgroups.cgroup2_mount() is None:
        pytest.skip("worker cgroups need root and cgroup v2 here")
    tree, why = cgroups.CgroupTree.open(os.getpid())
    assert tree is not None, why
    try:
        folder = tree.create(1, "app")
        assert folder is not None and os.path.dirname(folder) == tree.app_folder("app")
        proc = subprocess.Popen(
            [sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(600)"],
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: cgroups.enter(folder),
        )
        procs.append(proc)
        assert proc.stdout.readline().strip() == "ready"
        asleep(proc.pid)
        read = spy_reads(monkeypatch)
        monkeypatch.setattr(stats, "FULL_READ_EVERY", proc.pid + 100)
        use, sampler = cgroups.CpuUse(), Sampler()

        def tick() -> tuple[bool, stats.Sample]:
            read.clear()
            still = use.still(tree.app_folder("app"))
            return still, sampler.sample_all([proc.pid], {proc.pid} if still else ())[proc.pid]

        for _ in range(4):
            still, first = tick()
        assert still and read == ["cpu.stat"], read  # the folder's figure only
        assert tick() == (True, (0.0, first.memory, False)) and read == ["cpu.stat"]

        os.kill(proc.pid, signal.SIGSTOP)
        wait_for(lambda: read_stat(proc.pid).state == b"T", 10, "the stop")
        still, sample = tick()
        assert not still and sample.stopped and "stat" in read
        os.kill(proc.pid, signal.SIGCONT)
        wait_for(lambda: read_stat(proc.pid).state != b"T", 10, "the continue")
        # Continued, it may not have run yet (runnable, not running): its folder may
        # still be still, but a process seen stopped is read in full until it is not.
        still, sample = tick()
        assert not sample.stopped and "stat" in read
    finally:
        for p in procs:
            p.kill()
            p.wait()
        procs.clear()
        tree.close()
        assert not os.path.exists(tree.root)
