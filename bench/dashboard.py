"""Dashboard benchmark (docs/targets.md): idle CPU, and key press → action under a log flood.

The real dashboard (`clusterui attach`) runs in a real terminal: a private tmux
server, 200×60, on a supervisor with a private CLUSTERUI_HOME.

(a) Idle cost. 16 idle Python workers in fork mode, the dashboard attached; after a
    settle time, over a window, the CPU of the dashboard process (found as the tmux
    pane's process), of the supervisor and, for information, of the tmux server
    (the terminal drawing what the dashboard sends). Target: dashboard < 5% of a core.

(b) Key latency. The cursor is on the first row of the table, the `idle` app's group
    row. `+` is sent with `tmux send-keys`, and the clock stops when the supervisor
    has forked the new worker: its children (/proc/PID/task/*/children) are polled
    every 2 ms. Then `-`, timed to the moment the supervisor has stopped and reaped
    that worker. Pairs of presses first with no other load, then while another app
    (`flood`) prints ~20,000 lines/s (rate limited) that the supervisor captures and
    streams to the dashboard. Target: < 100 ms under the flood.

    .venv/bin/python bench/dashboard.py [--workers 16] [--seconds 20] [--presses 10]
                                        [--flood-rate 20000] [--screens]

`python bench/dashboard.py --worker idle|flood` is the workers themselves (kept here
so the benchmark needs nothing else). Every process it starts is stopped at the end,
on an error, on Ctrl-C or SIGTERM (tmux kill-server, `clusterui down`, then signals to
whatever is left); the temporary folder and the private home are removed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import json
import os
import platform
import random
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from common import (  # noqa: E402
    BenchError,
    bench_lock,
    clusterui_bin,
    cpu_seconds,
    kill_all,
    run,
    sample_cpu,
    tail,
    wait_for,
)

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without `pip install -e`

CPU_TARGET = 5.0  # % of one core, the dashboard at idle with 16 workers
FLEET_CPU_TARGET = 8.0  # the same with 2,000 rows (issue 18), any --fleet
KEY_TARGET_MS = 100.0
FILLER = "the quick brown fox jumps over the lazy dog"


# ---- the workers --------------------------------------------------------------------------


def idle_worker() -> None:
    # Exit at once on the stop signal: the `-` timing then measures the supervisor, not
    # an interpreter's shutdown.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: os._exit(0))
    while True:
        time.sleep(1)


def flood_worker(rate: int) -> None:
    """~rate lines/s on stdout, numbered, paced every 5 ms; catches up at most 100 ms."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: os._exit(0))
    start = time.monotonic()
    written = 0
    cap = max(1, rate // 10)
    while True:
        due = int((time.monotonic() - start) * rate)
        n = min(due - written, cap)
        if n > 0:
            chunk = "".join(f"flood {written + i:010d} {FILLER}\n" for i in range(n)).encode()
            view = memoryview(chunk)
            while view:
                view = view[os.write(1, view) :]
            written += n
        time.sleep(0.005)


# ---- helpers -----------------------------------------------------------------------------


def children(pid: int) -> set[int]:
    """pid's child processes, straight from the kernel (cheap enough to poll every 2 ms)."""
    out: set[int] = set()
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        with contextlib.suppress(OSError), open(path) as fh:
            out.update(int(p) for p in fh.read().split())
    return out


class Supervisor:
    """A synchronous view of the client API (one private event loop, one connection)."""

    def __init__(self, home: Path):
        from clusterui.client import Client

        self.loop = asyncio.new_event_loop()
        self.client = self.loop.run_until_complete(Client.connect(home))

    def state(self) -> dict[str, Any]:
        return self.loop.run_until_complete(self.client.state(history=False))

    def workers(self, app: str) -> list[dict[str, Any]]:
        return [w for w in self.state()["workers"] if w["app"] == app]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.run_until_complete(self.client.close())
        self.loop.close()


# What a fleet worker runs (write_ecosystem's `fleet`): a Python that sleeps.
SLEEPER = str(Path(__file__).resolve().parent / "sleeper.py")


def all_online(sup: Supervisor, app: str, n: int) -> list[dict[str, Any]] | None:
    ws = sup.workers(app)
    return ws if len(ws) == n and all(w["status"] == "online" for w in ws) else None


@dataclass
class Usage:
    cpu: float = 0.0  # % of one core over the window
    peak: float = 0.0  # busiest 1 s slice
    rss: float = 0.0  # MiB at the end


def measure(procs: dict[str, Any], seconds: float) -> dict[str, Usage]:
    return {
        k: Usage(cpu=cpu, peak=peak, rss=procs[k].memory_info().rss / 2**20)
        for k, (cpu, peak) in sample_cpu(procs, seconds).items()
    }


class HostBusy:
    """How busy the whole host was (all cores, %), over the same window: noise to read by."""

    def __init__(self) -> None:
        import psutil

        self.start = psutil.cpu_times()

    def done(self) -> float:
        import psutil

        end = psutil.cpu_times()
        total = sum(end) - sum(self.start)
        idle = (end.idle + getattr(end, "iowait", 0)) - (
            self.start.idle + getattr(self.start, "iowait", 0)
        )
        return 100 * (1 - idle / total) if total > 0 else 0.0


class CpuSince:
    """CPU % of several processes since construction (for the key-latency blocks)."""

    def __init__(self, procs: dict[str, Any]):
        self.procs = procs
        self.wall = time.monotonic()
        self.start = {k: cpu_seconds(p) for k, p in procs.items()}

    def done(self) -> dict[str, float]:
        wall = time.monotonic() - self.wall
        return {k: 100 * (cpu_seconds(p) - self.start[k]) / wall for k, p in self.procs.items()}


# ---- the terminal --------------------------------------------------------------------------


class Terminal:
    """A private tmux server running the dashboard in one 200×60 pane."""

    def __init__(self, workdir: Path):
        self.sock = str(workdir / "tmux.sock")
        self.base = ["tmux", "-S", self.sock, "-f", "/dev/null"]

    def start(self, command: str, width: int, height: int) -> None:
        out = subprocess.run(
            [*self.base, "new-session", "-d", "-s", "bench", "-x", str(width), "-y", str(height)]
            + [f"exec {command}"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        if out.returncode != 0:
            raise BenchError(f"tmux new-session failed: {tail(out)}")

    def tmux(self, *args: str) -> str:
        out = subprocess.run([*self.base, *args], capture_output=True, text=True, timeout=20)
        if out.returncode != 0:
            raise BenchError(f"tmux {args[0]} failed: {tail(out)}")
        return out.stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "bench")

    def pane_pid(self) -> int:
        return int(self.tmux("list-panes", "-t", "bench", "-F", "#{pane_pid}").split()[0])

    def server_pid(self) -> int:
        return int(self.tmux("display-message", "-p", "-t", "bench", "#{pid}").strip())

    def send(self, key: str) -> subprocess.Popen:
        """Type one key (literally); returns the running tmux client."""
        return subprocess.Popen(
            [*self.base, "send-keys", "-t", "bench", "-l", key],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def kill(self) -> None:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(
                [*self.base, "kill-server"], capture_output=True, timeout=10, check=False
            )


def find_dashboard(pane_pid: int) -> Any:
    import psutil

    top = psutil.Process(pane_pid)
    for proc in [top, *top.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            cmd = " ".join(proc.cmdline())
            if "clusterui" in cmd and "attach" in cmd:
                return proc
    raise BenchError(f"no `clusterui attach` process under the tmux pane (pid {pane_pid})")


# ---- the benchmark ------------------------------------------------------------------------


@dataclass
class Presses:
    label: str
    key: str
    ms: list[float] = field(default_factory=list)  # key sent → action seen
    send_ms: list[float] = field(default_factory=list)  # the tmux client's own run time
    missed: int = 0  # presses with no action within the timeout
    cpu: dict[str, float] = field(default_factory=dict)
    flood_rate: float | None = None
    host: float = 0.0  # % busy, all cores, over the block


@dataclass
class Result:
    idle: dict[str, Usage] = field(default_factory=dict)
    idle_host: float = 0.0
    presses: list[Presses] = field(default_factory=list)
    screens: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def write_ecosystem(
    path: Path, app: str, instances: int, args: list[str], fleet: int = 0, **extra: Any
) -> Path:
    """`app` (the one the key presses scale), and `fleet` more idle workers, in apps of
    10 tiny sleepers each (`python -S`), for a table of thousands of rows."""
    lines = [
        "apps:",
        f"  - name: {app}",
        f"    script: {Path(__file__).resolve()}",
        f"    args: [{', '.join(json.dumps(a) for a in args)}]",
        "    exec_mode: fork",
        f"    instances: {instances}",
    ]
    lines += [f"    {k}: {v}" for k, v in extra.items()]
    for i in range(0, fleet, 10):
        lines += [
            f"  - name: fleet{i // 10:03d}",
            f"    script: {json.dumps(SLEEPER)}",
            f"    interpreter: {sys.executable}",
            "    interpreter_args: -S",
            f"    instances: {min(10, fleet - i)}",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


def press(
    term: Terminal, key: str, sup_pid: int, before: set[int], timeout: float, added: bool
) -> tuple[float | None, float | None, set[int]]:
    """Send key; poll the supervisor's children every 2 ms until one appears (added) or
    one of `before` goes. Returns (ms or None, the tmux client's ms, children after)."""
    t0 = time.monotonic()
    client = term.send(key)
    sent_ms: float | None = None
    deadline = t0 + timeout
    while True:
        now_children = children(sup_pid)
        now = time.monotonic()
        if sent_ms is None and client.poll() is not None:
            sent_ms = (now - t0) * 1000
        changed = (now_children - before) if added else (before - now_children)
        if changed or now > deadline:
            if sent_ms is None:
                client.wait()
                sent_ms = (time.monotonic() - t0) * 1000
            return ((now - t0) * 1000 if changed else None), sent_ms, now_children
        time.sleep(0.002)


def call(
    sup: Supervisor, key: str, sup_pid: int, before: set[int], timeout: float, added: bool
) -> tuple[float | None, float | None, set[int]]:
    """The same action through the client API (no dashboard, no terminal), same clock."""

    async def timed() -> tuple[float | None, float | None, set[int]]:
        t0 = time.monotonic()
        task = asyncio.ensure_future(sup.client.scale("idle", "+1" if added else "-1"))
        while True:
            now_children = children(sup_pid)
            now = time.monotonic()
            changed = (now_children - before) if added else (before - now_children)
            if changed or now > t0 + timeout:
                break
            await asyncio.sleep(0.002)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 30)
        return ((now - t0) * 1000 if changed else None), None, now_children

    return sup.loop.run_until_complete(timed())


def key_block(
    act: Any,
    sup: Supervisor,
    sup_pid: int,
    label: str,
    opts: argparse.Namespace,
    cpu_procs: dict[str, Any],
) -> tuple[Presses, Presses]:
    """opts.presses pairs of (+, -) done by act(key, sup_pid, before, timeout, added)."""
    plus, minus = Presses(label, "+"), Presses(label, "-")
    n = opts.workers
    meter = CpuSince(cpu_procs)
    host = HostBusy()
    for i in range(opts.presses):
        wait_for(lambda: all_online(sup, "idle", n), _slack(n, 20), f"{n} idle workers online")
        before = children(sup_pid)
        # Land anywhere in the supervisor's and the dashboard's 1 s tick.
        time.sleep(random.uniform(0.2, 0.7))
        ms, sent, after = act("+", sup_pid, before, opts.key_timeout, True)
        if ms is None:
            plus.missed += 1
            # The press may still land late: wait for whatever it did, then go on.
            with contextlib.suppress(BenchError):
                wait_for(lambda: len(sup.workers("idle")) == n + 1, 10, "a late scale")
        else:
            plus.ms.append(ms)
        if sent is not None:
            plus.send_ms.append(sent)
        if len(sup.workers("idle")) != n + 1:
            continue  # nothing to scale down
        wait_for(
            lambda: all_online(sup, "idle", n + 1), _slack(n, 20), f"{n + 1} idle workers online"
        )
        new = after - before
        time.sleep(random.uniform(0.2, 0.7))
        ms, sent, _ = act("-", sup_pid, new or after, opts.key_timeout, False)
        if ms is None:
            minus.missed += 1
        else:
            minus.ms.append(ms)
        if sent is not None:
            minus.send_ms.append(sent)
        print(
            f"  {label}: pair {i + 1}/{opts.presses}: + {_ms(plus.ms[-1:] or None)}"
            f"  - {_ms(minus.ms[-1:] or None)}",
            flush=True,
        )
    wait_for(lambda: all_online(sup, "idle", n), _slack(n, 20), f"{n} idle workers online")
    plus.cpu = minus.cpu = meter.done()
    plus.host = minus.host = host.done()
    return plus, minus


def _slack(workers: int, seconds: float) -> float:
    """A wait's limit, longer for a fleet (`--workers 2000`: starting them takes minutes)."""
    return seconds * max(1.0, workers / 100)


def _ms(values: list[float] | None) -> str:
    return f"{values[0]:.1f} ms" if values else "missed"


def flood_position(out_file: str) -> tuple[float, int] | None:
    """(now, the last line number in the flood's log file), from its last few KiB."""
    try:
        with open(out_file, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 8192))
            lines = fh.read().splitlines()
    except OSError:
        return None
    now = time.monotonic()
    for line in reversed(lines):
        parts = line.split()
        with contextlib.suppress(ValueError, IndexError):
            at = parts.index(b"flood")
            return now, int(parts[at + 1])
    return None


def screen_position(term: Terminal) -> int | None:
    """The newest flood line number the dashboard's log pane shows right now."""
    numbers = [int(m) for m in re.findall(r"flood (\d{10})", term.screen())]
    return max(numbers) if numbers else None


def log_pane_check(term: Terminal, out_file: str, rate: float, result: Result) -> None:
    """Is the log pane keeping up with the flood? Two looks, 1 s apart."""
    first = screen_position(term)
    time.sleep(1.0)
    shown = screen_position(term)
    in_file = flood_position(out_file)
    if shown is None:
        result.notes.append("the log pane shows no flood line at all")
    elif first is not None and shown <= first:
        result.notes.append(
            f"the log pane is NOT updating: it shows flood line {shown} and did not move in "
            f"1 s, while the log file is at line {in_file[1] if in_file else '?'}"
        )
    elif in_file and rate > 0:
        behind = max(0, in_file[1] - shown) / rate
        result.notes.append(
            f"the log pane shows flood line {shown}, the log file is at {in_file[1]}: "
            f"{behind:.1f} s behind"
        )


def bench(opts: argparse.Namespace, result: Result) -> None:
    import psutil

    workdir = Path(tempfile.mkdtemp(prefix="cu-dash-", dir="/tmp"))
    home = workdir / "h"  # short: unix socket paths are limited to 108 bytes
    env = {**os.environ, "CLUSTERUI_HOME": str(home)}
    cli = clusterui_bin()
    term: Terminal | None = None
    sup: Supervisor | None = None
    family: list[Any] = []
    dashboard: Any = None
    try:
        idle_file = write_ecosystem(
            workdir / "idle.yaml", "idle", opts.workers, ["--worker", "idle"], fleet=opts.fleet
        )
        out = run([cli, "up", "-d", str(idle_file)], env)
        if out.returncode != 0:
            raise BenchError(f"clusterui up -d failed: {tail(out)}")
        supervisor = psutil.Process(int((home / "supervisor.pid").read_text().split()[0]))
        family = [supervisor, *supervisor.children(recursive=True)]
        sup = Supervisor(home)
        everyone = opts.workers + opts.fleet
        wait_for(
            lambda: (
                (ws := sup.state()["workers"])
                and len(ws) == everyone
                and all(w["status"] == "online" for w in ws)
            ),
            _slack(everyone, 30),
            "every worker online",
        )

        command = shlex.join(["env", f"CLUSTERUI_HOME={home}", cli, "attach"])
        term = Terminal(workdir)
        term.start(command, opts.width, opts.height)
        dashboard = find_dashboard(term.pane_pid())
        tmux_server = psutil.Process(term.server_pid())
        # Drawn: the idle app's group row shows every worker up.
        wait_for(
            lambda: f"{opts.workers}/{opts.workers} up" in term.screen(),
            _slack(everyone, 30),
            "the dashboard showing the idle app",
            step=0.2,
        )
        procs = {"dashboard": dashboard, "supervisor": supervisor, "tmux server": tmux_server}

        # (a) idle CPU
        print(f"- (a) idle: settle {opts.settle:g} s, measure {opts.seconds:g} s ...", flush=True)
        time.sleep(opts.settle)
        with bench_lock():
            host = HostBusy()
            result.idle = measure(procs, opts.seconds)
            result.idle_host = host.done()
        result.screens["idle"] = term.screen()
        if not dashboard.is_running():
            raise BenchError("the dashboard exited during the idle window")

        # (b) key latency, quiet then flooded, in one run
        sup_pid = supervisor.pid
        if not children(sup_pid):
            raise BenchError(f"cannot read /proc/{sup_pid}/task/*/children on this kernel")
        first_row = term.screen()
        if "idle" not in first_row:
            raise BenchError("the idle app is not on the screen")
        by_key = partial(press, term)
        by_call = partial(call, sup)
        print(f"- (b) quiet: {opts.presses} × (+, -) ...", flush=True)
        with bench_lock():
            result.presses += key_block(by_key, sup, sup_pid, "quiet", opts, procs)
            result.screens["quiet"] = term.screen()
            if not opts.no_client:
                result.presses += key_block(by_call, sup, sup_pid, "quiet, client", opts, procs)
        if opts.no_flood:
            return
        flood_file = write_ecosystem(
            workdir / "flood.yaml",
            "flood",
            1,
            ["--worker", "flood", "--rate", str(opts.flood_rate)],
        )
        out = run([cli, "up", "-d", str(flood_file)], env)
        if out.returncode != 0:
            raise BenchError(f"clusterui up -d (the flood app) failed: {tail(out)}")
        family += [c for c in supervisor.children(recursive=True) if c not in family]
        flood = wait_for(lambda: all_online(sup, "flood", 1), 20, "the flood app online")[0]
        time.sleep(opts.settle)  # the flood reaches its pace and the screen fills
        label = f"flood {opts.flood_rate // 1000}k/s"
        print(f"- (b) {label}: {opts.presses} × (+, -) ...", flush=True)
        with bench_lock():
            start = flood_position(flood["out_file"])
            flood_procs = {**procs, "flood app": psutil.Process(flood["pid"])}
            blocks = [key_block(by_key, sup, sup_pid, label, opts, flood_procs)]
            result.screens["flood"] = term.screen()
            log_pane_check(term, flood["out_file"], opts.flood_rate, result)
            if not opts.no_client:
                blocks.append(
                    key_block(by_call, sup, sup_pid, f"{label}, client", opts, flood_procs)
                )
            end = flood_position(flood["out_file"])
        for block in blocks:
            for p in block:
                if start and end and end[0] > start[0]:
                    p.flood_rate = (end[1] - start[1]) / (end[0] - start[0])
                result.presses.append(p)
        if not dashboard.is_running():
            raise BenchError("the dashboard exited during the flood")
    finally:
        if term is not None:
            term.kill()
        if dashboard is not None:
            kill_all([dashboard])
        if sup is not None:
            sup.close()
        if (home / "supervisor.pid").exists():
            with contextlib.suppress(psutil.Error, OSError, ValueError):
                top = psutil.Process(int((home / "supervisor.pid").read_text().split()[0]))
                family += [top, *top.children(recursive=True)]
        with contextlib.suppress(BenchError):
            run([cli, "down"], env, timeout=30)
        kill_all(list({p.pid: p for p in family}.values()))  # only what `down` left
        shutil.rmtree(workdir, ignore_errors=True)


def print_report(result: Result, opts: argparse.Namespace) -> None:
    print()
    print(
        f"(a) idle, {opts.workers} idle python workers (fork mode) and {opts.fleet} in apps "
        f"of 10, {opts.seconds:g} s window; "
        f"host {result.idle_host:.0f}% busy ({os.cpu_count()} cores, all processes)"
    )
    head = f"{'process':<14} {'CPU % core':>10} {'peak 1 s':>9} {'RSS MiB':>8}"
    print(head)
    print("-" * len(head))
    for name, u in result.idle.items():
        print(f"{name:<14} {u.cpu:>10.2f} {u.peak:>9.1f} {u.rss:>8.1f}")
    print()
    print("(b) key press → action: `tmux send-keys` (or a client call) → the supervisor has")
    print("    forked the new worker (+) / stopped and reaped it (-); CPU over the whole block")
    head = (
        f"{'condition':<20} {'key':<3} {'n':>3} {'median ms':>9} {'p90 ms':>7} {'max ms':>7} "
        f"{'send-keys ms':>12} {'dash CPU%':>9} {'sup CPU%':>8} {'tmux CPU%':>9} {'lines/s':>8} "
        f"{'host busy%':>10}"
    )
    print(head)
    print("-" * len(head))
    for p in result.presses:
        if p.ms:
            ordered = sorted(p.ms)
            p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
            figs = f"{statistics.median(p.ms):>9.1f} {p90:>7.1f} {max(p.ms):>7.1f}"
        else:
            figs = f"{'-':>9} {'-':>7} {'-':>7}"
        send = f"{statistics.median(p.send_ms):.1f}" if p.send_ms else "-"
        rate = f"{p.flood_rate:,.0f}" if p.flood_rate else "-"
        line = (
            f"{p.label:<20} {p.key:<3} {len(p.ms):>3} {figs} {send:>12} "
            f"{p.cpu.get('dashboard', 0):>9.1f} {p.cpu.get('supervisor', 0):>8.1f} "
            f"{p.cpu.get('tmux server', 0):>9.1f} {rate:>8} {p.host:>10.0f}"
        )
        print(line + (f"   ({p.missed} press(es) with no action)" if p.missed else ""))
    print(
        "    send-keys ms: the tmux client's own run, part of every dashboard figure; host busy%:"
        " all cores, every process (the measured ones too): high means noisy figures"
    )
    for note in result.notes:
        print(f"note: {note}")
    print()
    print("targets (docs/targets.md):")
    dash = result.idle.get("dashboard")
    if dash:
        target = FLEET_CPU_TARGET if opts.fleet else CPU_TARGET
        ok = dash.cpu < target
        print(
            f"  dashboard idle CPU < {target:g}% of a core, "
            f"{opts.workers + opts.fleet} workers: {dash.cpu:.2f}%  {'ok' if ok else 'MISSED'}"
        )
    groups = (
        ("under the flood", lambda label: label.startswith("flood") and "client" not in label),
        ("quiet, for comparison", lambda label: label == "quiet"),
        (
            "under the flood, client API (no dashboard)",
            lambda label: label.startswith("flood") and "client" in label,
        ),
    )
    for name, wanted in groups:
        group = [p for p in result.presses if wanted(p.label)]
        times = [t for p in group for t in p.ms]
        missed = sum(p.missed for p in group)
        if not group:
            continue
        if not times:
            print(f"  key → action < {KEY_TARGET_MS:g} ms {name}: no press landed  MISSED")
            continue
        ok = max(times) < KEY_TARGET_MS and not missed
        print(
            f"  key → action < {KEY_TARGET_MS:g} ms {name}: median "
            f"{statistics.median(times):.1f} ms, max {max(times):.1f} ms"
            + (f", {missed} missed" if missed else "")
            + f"  {'ok' if ok else 'MISSED'}"
        )
    if opts.screens:
        for name, text in result.screens.items():
            print(f"\n--- the dashboard's screen, end of {name} ---")
            print(text.rstrip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=16, help="idle workers (default 16)")
    parser.add_argument(
        "--fleet", type=int, default=0, help="more idle workers, in apps of 10 (rows to draw)"
    )
    parser.add_argument("--seconds", type=float, default=20, help="idle CPU window (s)")
    parser.add_argument("--settle", type=float, default=5, help="wait before measuring (s)")
    parser.add_argument("--presses", type=int, default=10, help="(+, -) pairs per condition")
    parser.add_argument("--flood-rate", type=int, default=20000, help="flood lines/s")
    parser.add_argument("--no-flood", action="store_true", help="skip the flooded block")
    parser.add_argument(
        "--no-client", action="store_true", help="skip the client-API rows (no dashboard)"
    )
    parser.add_argument("--key-timeout", type=float, default=5.0, help="give up on a press (s)")
    parser.add_argument("--width", type=int, default=200)
    parser.add_argument("--height", type=int, default=60)
    parser.add_argument("--screens", action="store_true", help="print the dashboard's screens")
    parser.add_argument("--worker", choices=["idle", "flood"], help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=int, default=20000, help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.worker == "idle":
        idle_worker()
        return 0
    if opts.worker == "flood":
        flood_worker(opts.rate)
        return 0
    if (
        opts.workers < 1
        or opts.fleet < 0
        or opts.seconds <= 0
        or opts.presses < 1
        or opts.flood_rate < 1
    ):
        parser.error("--workers, --seconds, --presses and --flood-rate must be positive")
    if not shutil.which("tmux"):
        print("tmux is not installed (Debian: apt-get install tmux)", file=sys.stderr)
        return 2
    try:
        import psutil  # noqa: F401

        import clusterui.client  # noqa: F401
    except ImportError as exc:
        print(f"{exc.name} is missing: run this with .venv/bin/python", file=sys.stderr)
        return 2

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)
    print(
        f"dashboard in tmux {opts.width}x{opts.height}, {opts.workers} idle workers; "
        f"{os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}",
        flush=True,
    )
    result = Result()
    try:
        bench(opts, result)
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if result.idle or result.presses:
            print_report(result, opts)
        return 1
    print_report(result, opts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
