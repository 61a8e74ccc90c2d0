"""Idle-cost benchmark (docs/targets.md): the clusterui supervisor against PM2's God daemon.

Both managers run the SAME 16 idle workers (bench/node/idle_server.js: an HTTP server
nobody calls and a 1 s timer), from the SAME ecosystem YAML file, in fork mode, one
after the other in one run. Over the same window it measures the manager process only:
CPU (user + system time over wall time, as % of one core), and at the end RSS, USS
(pages only this process has: its honest cost) and PSS. A third row runs the supervisor
with 16 idle Python workers, for information.

    .venv/bin/python bench/idle.py [--seconds 30] [--workers 16] [--settle 5]

PM2 comes from bench/package.json (installed into bench/node_modules on first use,
with npm); without npm or node, its row is skipped with a message. Every process the
run starts is stopped at the end, on an error or on Ctrl-C too (`clusterui down`,
`pm2 kill`, then signals as a last resort). Each manager gets a fresh private home
under /tmp, so nothing touches ~/.clusterui or ~/.pm2.

`python bench/idle.py --worker` is the Python idle worker itself (kept in this file so
the Python row needs nothing else).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common import BenchError, clusterui_bin, kill_all, run, sample_cpu, tail, wait_for  # noqa: E402

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
NODE_WORKER = BENCH / "node" / "idle_server.js"
PM2_BIN = BENCH / "node_modules" / ".bin" / "pm2"
MiB = 1024 * 1024
CLUSTERUI_CPU_TARGET = 1.0  # % of one core (docs/targets.md)
CLUSTERUI_RSS_TARGET = 40.0  # MiB
PM2_RSS_REFERENCE = 55.0  # MiB, docs/targets.md's figure for PM2's daemon


# ---- the Python idle worker ------------------------------------------------------------


def idle_worker() -> None:
    """The Python twin of idle_server.js: an idle HTTP listener and a 1 s timer."""
    import asyncio

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nidle\n")
        await writer.drain()
        writer.close()

    async def main() -> None:
        port = int(os.environ.get("PORT") or 0)
        server = await asyncio.start_server(answer, "127.0.0.1", port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        ticks = 0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            ticks += 1
        server.close()

    asyncio.run(main())


# ---- measuring one process ----------------------------------------------------------------


@dataclass
class Row:
    manager: str
    workers: str
    cpu: float = 0.0  # % of one core, averaged over the window
    peak: float = 0.0  # busiest 1 s inside the window, % of one core
    rss: float = 0.0  # MiB at the end of the window
    uss: float = 0.0
    pss: float = 0.0
    notes: list[str] = field(default_factory=list)
    skipped: str = ""


def measure(procs: dict[str, Any], seconds: float) -> dict[str, Row]:
    """Watch several processes over the same window; one Row (figures only) each."""
    rows = {}
    for key, (cpu, peak) in sample_cpu(procs, seconds).items():
        mem = procs[key].memory_full_info()
        rows[key] = Row(
            manager=key,
            workers="",
            cpu=cpu,
            peak=peak,
            rss=mem.rss / MiB,
            uss=mem.uss / MiB,
            pss=getattr(mem, "pss", 0) / MiB,
        )
    return rows


def write_ecosystem(
    directory: Path, name: str, workers: int, node: bool, mode: str = "fork"
) -> Path:
    """One YAML file with PM2's keys only, so PM2 and clusterui read the very same file."""
    if node:
        app = (
            f"  - name: {name}\n"
            f"    script: {NODE_WORKER}\n"
            f"    interpreter: node\n"
            f"    exec_mode: {mode}\n"
            f"    instances: {workers}\n"
        )
    else:
        app = (
            f"  - name: {name}\n"
            f"    script: {Path(__file__).resolve()}\n"
            f"    args: [--worker]\n"
            f"    exec_mode: fork\n"
            f"    instances: {workers}\n"
        )
    path = directory / f"{name}.yaml"
    path.write_text("apps:\n" + app)
    return path


def private_home(prefix: str) -> Path:
    # Short on purpose: unix socket paths are limited to 108 bytes.
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


# ---- clusterui ---------------------------------------------------------------------------


@contextlib.contextmanager
def clusterui_running(file: Path, workers: int) -> Iterator[tuple[Any, list[int], dict]]:
    """Start FILE's apps under a fresh supervisor; yield (supervisor, worker pids, env)."""
    import psutil

    home = private_home("cu-idle-")
    env = {**os.environ, "CLUSTERUI_HOME": str(home)}
    cli = clusterui_bin()
    try:
        out = run([cli, "up", "-d", str(file)], env)
        if out.returncode != 0:
            raise BenchError(f"clusterui up -d failed: {tail(out)}")
        pids = wait_for(lambda: clusterui_online(cli, env, workers), 30, f"{workers} online")
        supervisor = psutil.Process(int((home / "supervisor.pid").read_text().split()[0]))
        yield supervisor, pids, env
    finally:
        stop_clusterui(cli, env, home)


def clusterui_online(cli: str, env: dict[str, str], workers: int) -> list[int] | None:
    out = run([cli, "ls", "--json"], env)
    if out.returncode != 0:
        raise BenchError(f"clusterui ls failed: {tail(out)}")
    rows = [r for r in json.loads(out.stdout) if r["status"] == "online" and r["pid"]]
    return [r["pid"] for r in rows] if len(rows) == workers else None


def clusterui_restarts(cli: str, env: dict[str, str]) -> int:
    out = run([cli, "ls", "--json"], env)
    return sum(r["restarts"] for r in json.loads(out.stdout)) if out.returncode == 0 else -1


def stop_clusterui(cli: str, env: dict[str, str], home: Path) -> None:
    left = family(home / "supervisor.pid")
    with contextlib.suppress(BenchError):
        run([cli, "down"], env, timeout=30)
    kill_all(left)  # only what `down` did not stop
    shutil.rmtree(home, ignore_errors=True)


# ---- PM2 ------------------------------------------------------------------------------------


def ensure_pm2() -> str | None:
    """Path to bench's own PM2, installing it with npm if need be; else why not (a str)."""
    if PM2_BIN.exists():
        return None
    if not shutil.which("node"):
        return "node is not installed"
    npm = shutil.which("npm")
    if not npm:
        return "npm is not installed (it installs PM2 from bench/package.json)"
    print("installing PM2 into bench/node_modules (npm install --prefix bench) ...", flush=True)
    argv = [npm, "install", "--prefix", str(BENCH), "--no-audit", "--no-fund", "--loglevel=error"]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return "npm install pm2 took longer than 300 s"
    if out.returncode != 0 or not PM2_BIN.exists():
        return f"npm install failed: {tail(out)}"
    return None


@contextlib.contextmanager
def pm2_running(file: Path, workers: int) -> Iterator[tuple[Any, list[int], dict]]:
    """Start FILE's apps under a fresh PM2 daemon; yield (God daemon, worker pids, env)."""
    import psutil

    home = private_home("pm2-idle-")
    env = {**os.environ, "PM2_HOME": str(home)}
    try:
        out = run([str(PM2_BIN), "start", str(file)], env)
        if out.returncode != 0:
            raise BenchError(f"pm2 start failed: {tail(out)}")
        pids = wait_for(lambda: pm2_online(env, workers), 30, f"{workers} PM2 workers online")
        daemon = psutil.Process(int((home / "pm2.pid").read_text().strip()))
        if "God Daemon" not in " ".join(daemon.cmdline()):
            raise BenchError(f"pid {daemon.pid} in {home}/pm2.pid is not PM2's God daemon")
        yield daemon, pids, env
    finally:
        stop_pm2(env, home)


def pm2_list(env: dict[str, str]) -> list[dict]:
    out = run([str(PM2_BIN), "jlist"], env)
    if out.returncode != 0:
        raise BenchError(f"pm2 jlist failed: {tail(out)}")
    # jlist prints the JSON on its last line (notices may come first).
    return json.loads(out.stdout.strip().splitlines()[-1])


def pm2_online(env: dict[str, str], workers: int) -> list[int] | None:
    rows = [p for p in pm2_list(env) if p["pm2_env"]["status"] == "online" and p["pid"]]
    return [p["pid"] for p in rows] if len(rows) == workers else None


def pm2_restarts(env: dict[str, str]) -> int:
    with contextlib.suppress(BenchError, ValueError, IndexError):
        return sum(p["pm2_env"].get("restart_time", 0) for p in pm2_list(env))
    return -1


def stop_pm2(env: dict[str, str], home: Path) -> None:
    left = family(home / "pm2.pid")
    with contextlib.suppress(BenchError):
        run([str(PM2_BIN), "kill"], env, timeout=30)
    kill_all(left)  # only what `pm2 kill` did not stop
    shutil.rmtree(home, ignore_errors=True)


# ---- last-resort clean-up ------------------------------------------------------------------


def family(pidfile: Path) -> list[Any]:
    """The manager named in PIDFILE and its descendants, as psutil objects.

    Taken before the polite stop: psutil.Process remembers each process's start time,
    so signalling one later never hits a new process that reused the pid.
    """
    import psutil

    try:
        manager = psutil.Process(int(pidfile.read_text().split()[0]))
        return [manager, *manager.children(recursive=True)]
    except (OSError, ValueError, IndexError, psutil.Error):
        return []


def pm2_version() -> str:
    with contextlib.suppress(OSError, ValueError, KeyError):
        meta = json.loads((BENCH / "node_modules" / "pm2" / "package.json").read_text())
        return meta["version"]
    return "?"


# ---- the runs ------------------------------------------------------------------------------


def settle_and_measure(
    procs: dict[str, Any], pids: list[int], settle: float, seconds: float
) -> dict[str, Row]:
    time.sleep(settle)  # let the start-up burst pass: we want the steady idle cost
    rows = measure(procs, seconds)
    import psutil

    gone = [p for p in pids if not psutil.pid_exists(p)]
    if gone:
        for row in rows.values():
            row.notes.append(f"{len(gone)} worker(s) exited during the window")
    return rows


def bench_clusterui(file: Path, workers: int, label: str, opts: argparse.Namespace) -> list[Row]:
    with clusterui_running(file, workers) as (supervisor, pids, env):
        procs = {"supervisor": supervisor}
        # Its other children are the guardian (a fork of the supervisor) and, in cluster
        # mode, dispatchers; here (fork mode) we expect the guardian only.
        extras = [c for c in supervisor.children() if c.pid not in set(pids)]
        for child in extras:
            name = "guardian" if child.cmdline() == supervisor.cmdline() else child.name()
            procs[name] = child
        rows = settle_and_measure(procs, pids, opts.settle, opts.seconds)
        restarts = clusterui_restarts(clusterui_bin(), env)
    out = []
    for key, row in rows.items():
        if key == "supervisor":
            row.manager, row.workers = "clusterui supervisor", label
        else:
            row.manager, row.workers = f"  └ {key} (its child)", ""
        if restarts and key == "supervisor":
            row.notes.append(f"{restarts} restart(s) so far")
        out.append(row)
    return out


def bench_pm2(file: Path, workers: int, label: str, opts: argparse.Namespace) -> list[Row]:
    version = pm2_version()
    with pm2_running(file, workers) as (daemon, pids, env):
        procs = {"daemon": daemon}
        extras = [c for c in daemon.children() if c.pid not in set(pids)]
        for child in extras:  # a PM2 module (pm2-logrotate, sysmonit) would show up here
            procs[" ".join(child.cmdline())[:30]] = child
        rows = settle_and_measure(procs, pids, opts.settle, opts.seconds)
        restarts = pm2_restarts(env)
    out = []
    for key, row in rows.items():
        if key == "daemon":
            row.manager, row.workers = f"PM2 v{version} God Daemon", label
            if restarts:
                row.notes.append(f"{restarts} restart(s) so far")
        else:
            row.manager = f"  └ {key}"
        out.append(row)
    return out


def print_table(rows: list[Row]) -> None:
    head = (
        f"{'manager':<28} {'workers':<16} {'CPU % core':>10} {'peak 1 s':>9} "
        f"{'RSS MiB':>8} {'USS MiB':>8} {'PSS MiB':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        if r.skipped:
            print(f"{r.manager:<28} {r.workers:<16} skipped: {r.skipped}")
            continue
        line = (
            f"{r.manager:<28} {r.workers:<16} {r.cpu:>10.2f} {r.peak:>9.1f} "
            f"{r.rss:>8.1f} {r.uss:>8.1f} {r.pss:>8.1f}"
        )
        print(line + (f"   ({'; '.join(r.notes)})" if r.notes else ""))


def print_verdicts(rows: list[Row], workers: int) -> None:
    def find(manager: str, label: str) -> Row | None:
        for r in rows:
            if r.manager.startswith(manager) and r.workers == label and not r.skipped:
                return r
        return None

    node = f"{workers} node"
    cu = find("clusterui supervisor", node)
    pm2 = find("PM2", node)
    guardian = next((r for r in rows if "guardian" in r.manager and not r.skipped), None)
    print()
    if cu and pm2:

        def ratio(a: float, b: float) -> str:
            return f"{a / b:.2f}x" if b > 0 else "n/a (PM2 used none)"

        print(f"clusterui / PM2, same {node} workers, same file:")
        print(f"  idle CPU {ratio(cu.cpu, pm2.cpu)}   RSS {ratio(cu.rss, pm2.rss)}", end="")
        print(f"   USS {ratio(cu.uss, pm2.uss)}", end="")
        if guardian:
            both = cu.uss + guardian.uss
            print(f"   USS with the guardian's {ratio(both, pm2.uss)} ({both:.1f} MiB)")
        else:
            print()
    if cu:

        def mark(ok: bool) -> str:
            return "ok" if ok else "MISSED"

        print("targets (docs/targets.md), clusterui supervisor with", node, "workers:")
        print(
            f"  idle CPU < {CLUSTERUI_CPU_TARGET:g}% of a core: {cu.cpu:.2f}%"
            f"  {mark(cu.cpu < CLUSTERUI_CPU_TARGET)}"
        )
        print(
            f"  RSS < {CLUSTERUI_RSS_TARGET:g} MiB: {cu.rss:.1f} MiB"
            f"  {mark(cu.rss < CLUSTERUI_RSS_TARGET)}"
        )
    if pm2:
        print(f"  PM2's daemon, reference ~{PM2_RSS_REFERENCE:g} MiB: {pm2.rss:.1f} MiB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30, help="measuring window (s)")
    parser.add_argument("--workers", type=int, default=16, help="idle workers per manager")
    parser.add_argument("--settle", type=float, default=5, help="wait after start-up (s)")
    parser.add_argument("--no-pm2", action="store_true", help="skip the PM2 row")
    parser.add_argument("--no-python", action="store_true", help="skip the Python-worker row")
    parser.add_argument(
        "--pm2-cluster",
        action="store_true",
        help="add a row for PM2 in cluster mode (its daemon then is the Node cluster primary)",
    )
    parser.add_argument(
        "--host-procs",
        type=int,
        default=0,
        metavar="N",
        help="first start N sleeping processes, to look like a busier host (a laptop has 300+)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.worker:
        idle_worker()
        return 0
    if opts.workers < 1 or opts.seconds <= 0 or opts.settle < 0:
        parser.error("--workers must be at least 1, --seconds positive, --settle not negative")
    try:
        import psutil  # noqa: F401
    except ImportError:
        print("psutil is missing: run this with .venv/bin/python", file=sys.stderr)
        return 2

    # A terminal closing or a `kill` must still run every finally: below.
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)

    n = opts.workers
    rows: list[Row] = []
    workdir = Path(tempfile.mkdtemp(prefix="idle-bench-"))
    sleepers: list[subprocess.Popen] = []
    try:
        for _ in range(max(0, opts.host_procs)):
            sleepers.append(subprocess.Popen(["sleep", "infinity"], stdin=subprocess.DEVNULL))
        import psutil

        print(
            f"idle managers, {n} idle workers each, fork mode, {opts.seconds:g} s window after "
            f"{opts.settle:g} s settle; {os.cpu_count()} CPUs, {len(psutil.pids())} processes "
            f"on the host; {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}",
            flush=True,
        )
        node_file = write_ecosystem(workdir, "idle-node", n, node=True)
        py_file = write_ecosystem(workdir, "idle-python", n, node=False)
        node_missing = None if shutil.which("node") else "node is not installed"
        label = f"{n} node"
        print(f"- clusterui, {label} ...", flush=True)
        if node_missing:
            rows.append(Row("clusterui supervisor", label, skipped=node_missing))
        else:
            rows += bench_clusterui(node_file, n, label, opts)
        print(f"- PM2, {label} ...", flush=True)
        if opts.no_pm2:
            rows.append(Row("PM2 God Daemon", label, skipped="--no-pm2"))
        elif why := ensure_pm2():
            print(f"  PM2 skipped: {why}", flush=True)
            rows.append(Row("PM2 God Daemon", label, skipped=why))
        else:
            rows += bench_pm2(node_file, n, label, opts)
            if opts.pm2_cluster:
                print(f"- PM2 cluster mode, {n} node (for information) ...", flush=True)
                cluster_file = write_ecosystem(workdir, "idle-node-c", n, node=True, mode="cluster")
                rows += bench_pm2(cluster_file, n, f"{n} node cluster", opts)
        if not opts.no_python:
            label = f"{n} python"
            print(f"- clusterui, {label} (for information) ...", flush=True)
            rows += bench_clusterui(py_file, n, label, opts)
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        for proc in sleepers:
            proc.kill()
        for proc in sleepers:
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    print_table(rows)
    print_verdicts(rows, n)
    if opts.json:
        Path(opts.json).write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
