"""A fleet of 2,000 idle workers in 200 apps: the clusterui supervisor against PM2 7, the
same ecosystem file under both, one after the other in one run (issue 18, "Fleets").

Half the apps run tiny Python sleepers (`time.sleep`), half run idle HTTP servers (a
Python socket that listens on its own port and is never called); every worker is the
same interpreter with -S, so start-up costs the same under both managers. Figures, per
manager:

- `up -d` → all online: from launching `clusterui up -d FILE` / `pm2 start FILE` until
  `ls --json` / `pm2 jlist` lists every worker online with a pid (polled, so each figure
  includes up to one poll's latency), and the manager's own CPU time until then (it was
  started by `up`, so all of it is start-up work);
- idle CPU of the manager process only, as % of one core: utime + stime from
  /proc/PID/stat over the window (CPU time, so a busy shared machine inflates it less
  than wall-clock figures), after a settle;
- its RSS (/proc/PID/status) at the end of the window;
- `ls` wall time, the median of several runs (`clusterui ls`, `pm2 ls`);
- `down`: from `clusterui down` / `pm2 kill` until every worker process is gone.

    .venv/bin/python bench/fleet.py [--apps 200] [--per-app 10] [--settle 10]
        [--seconds 20] [--ls-runs 5] [--only clusterui,clusterui-preload,pm2] [--json FILE]

PM2 comes from bench/package.json (`npm install --prefix bench`, done on first use).
Each manager gets a fresh private home under /tmp (CLUSTERUI_HOME, PM2_HOME). Every
process the run starts is stopped at the end, on an error, Ctrl-C, SIGTERM or SIGHUP too
(`clusterui down` / `pm2 kill`, then SIGTERM/SIGKILL to every process of the manager's
tree recorded before). The script prints the host's process count before and after.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from common import (  # noqa: E402
    BenchError,
    bench_lock,
    clusterui_bin,
    cpu_seconds,
    kill_all,
    run,
    tail,
    wait_for,
)
from idle import PM2_BIN, ensure_pm2, family, pm2_version  # noqa: E402

MiB = 1024 * 1024
# Targets from issue 18 (docs/targets.md).
CPU_TARGET = 2.0  # % of one core
RSS_TARGET = 80.0  # MiB
LS_TARGET = 0.100  # s
UP_RATIO_TARGET = 2.0  # PM2's time / clusterui's

SLEEPER = "import time\ntime.sleep(1e9)\n"
# Listens on a port of its own (0: the kernel picks) and answers whoever calls; nobody does.
HTTP_SERVER = """\
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(16)
while True:
    c, _ = s.accept()
    c.recv(65536)
    c.sendall(b"HTTP/1.1 200 OK\\r\\ncontent-length: 5\\r\\nconnection: close\\r\\n\\r\\nidle\\n")
    c.close()
"""


@dataclass
class Row:
    manager: str
    up: float = 0.0  # s, launch → all online
    up_cpu: float = 0.0  # s of the manager's CPU time from its start until all online
    cpu: float = 0.0  # % of one core over the window
    rss: float = 0.0  # MiB
    ls: float = 0.0  # s, median
    ls_runs: list[float] = field(default_factory=list)
    down: float = 0.0  # s, down command → every worker gone
    notes: list[str] = field(default_factory=list)


PRELOAD = "clusterui-preload"  # the same apps with `preload: true` (core.zygote)
MANAGERS = ("clusterui", PRELOAD, "pm2")


def write_ecosystem(directory: Path, apps: int, per_app: int, preload: bool = False) -> Path:
    """One YAML file with PM2's keys only, so both managers read the very same file
    (`preload`: the same with clusterui's `preload: true` on every app)."""
    sleeper = directory / "sleeper.py"
    server = directory / "idle_http.py"
    sleeper.write_text(SLEEPER)
    server.write_text(HTTP_SERVER)
    lines = ["apps:"]
    for i in range(apps):
        script, kind = (sleeper, "sleep") if i % 2 == 0 else (server, "http")
        lines += [
            f"  - name: {kind}-{i:03d}",
            f"    script: {script}",
            f"    interpreter: {sys.executable}",
            "    interpreter_args: [-S]",
            "    exec_mode: fork",
            f"    instances: {per_app}",
            "    autorestart: true",
            *(["    preload: true"] if preload else []),
        ]
    path = directory / ("fleet-preload.yaml" if preload else "fleet.yaml")
    path.write_text("\n".join(lines) + "\n")
    return path


# ---- measuring one process ---------------------------------------------------------------


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def idle_cpu(pid: int, seconds: float) -> float:
    start_wall, start = time.monotonic(), cpu_seconds(pid)
    time.sleep(seconds)
    return 100 * (cpu_seconds(pid) - start) / (time.monotonic() - start_wall)


def median_wall(argv: list[str], env: dict[str, str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.monotonic()
        out = run(argv, env, timeout=120)
        times.append(time.monotonic() - start)
        if out.returncode != 0:
            raise BenchError(f"`{' '.join(argv[-1:])}` failed: {tail(out)}")
    return times


def gone_after(procs: list[Any], timeout: float) -> float:
    """Wait until every process in procs has exited; seconds it took from now."""
    import psutil

    start = time.monotonic()
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    if alive:
        raise BenchError(f"{len(alive)} process(es) still running {timeout:g} s after down")
    return time.monotonic() - start


# ---- the two managers ---------------------------------------------------------------------


@dataclass
class Manager:
    """How to drive one manager: its commands, its pid file, how to count online workers."""

    name: str
    home: Path
    env: dict[str, str]
    up: list[str]
    ls: list[str]
    down: list[str]
    pidfile: Path
    online: Callable[[], int]

    def pid(self) -> int:
        return int(self.pidfile.read_text().split()[0])


def clusterui_manager(home: Path, file: Path, profile: bool = False) -> Manager:
    cli = clusterui_bin()
    env = {**os.environ, "CLUSTERUI_HOME": str(home)}
    if profile:  # read by core/supervisor.py's tick loop
        env["CLUSTERUI_PROFILE_TICK"] = str(home / "tick.prof")

    def online() -> int:
        out = run([cli, "--timeout", "120", "ls", "--json"], env, timeout=120)
        if out.returncode != 0:
            raise BenchError(f"clusterui ls failed: {tail(out)}")
        return sum(1 for r in json.loads(out.stdout) if r["status"] == "online" and r["pid"])

    return Manager(
        "clusterui",
        home,
        env,
        [cli, "--timeout", "600", "up", "-d", str(file)],
        [cli, "--timeout", "120", "ls"],
        [cli, "--timeout", "300", "down"],
        home / "supervisor.pid",
        online,
    )


def pm2_manager(home: Path, file: Path) -> Manager:
    env = {**os.environ, "PM2_HOME": str(home)}
    pm2 = str(PM2_BIN)

    def online() -> int:
        out = run([pm2, "jlist"], env, timeout=120)
        if out.returncode != 0:
            raise BenchError(f"pm2 jlist failed: {tail(out)}")
        rows = json.loads(out.stdout.strip().splitlines()[-1])
        return sum(1 for p in rows if p["pm2_env"]["status"] == "online" and p["pid"])

    return Manager(
        f"PM2 {pm2_version()}",
        home,
        env,
        [pm2, "start", str(file)],
        [pm2, "ls"],
        [pm2, "kill"],
        home / "pm2.pid",
        online,
    )


@contextlib.contextmanager
def cleanup(manager: Manager) -> Iterator[list[Any]]:
    """Yields a list the caller fills with the manager's process tree once it is up;
    on the way out, stops whatever of it is still running (after down, nothing is)."""
    tree: list[Any] = []
    try:
        yield tree
    finally:
        tree += family(manager.pidfile)  # anything started after the caller's record
        with contextlib.suppress(BenchError):
            if any(p.is_running() for p in tree):
                run(manager.down, manager.env, timeout=120)
        kill_all([p for p in tree if p.is_running()])
        shutil.rmtree(manager.home, ignore_errors=True)


def bench_one(manager: Manager, workers: int, opts: argparse.Namespace) -> Row:
    row = Row(manager.name)
    with cleanup(manager) as tree:
        start = time.monotonic()
        out = run(manager.up, manager.env, timeout=600)
        if out.returncode != 0:
            raise BenchError(f"{manager.name} up failed: {tail(out)}")
        wait_for(lambda: manager.online() >= workers, 600, f"{workers} online", step=opts.poll)
        row.up = time.monotonic() - start
        pid = manager.pid()
        row.up_cpu = cpu_seconds(pid)  # the manager was started by `up`: all of it is start-up
        tree += family(manager.pidfile)
        if len(tree) < workers + 1:
            row.notes.append(f"only {len(tree) - 1} processes under the manager")
        time.sleep(opts.settle)  # let the start-up burst pass: we want the steady idle cost
        row.cpu = idle_cpu(pid, opts.seconds)
        row.rss = rss_mib(pid)
        if opts.profile and (manager.home / "tick.prof").exists():
            print_profile(manager.home / "tick.prof")
        row.ls_runs = median_wall(manager.ls, manager.env, opts.ls_runs)
        row.ls = statistics.median(row.ls_runs)
        still = manager.online()
        if still != workers:
            row.notes.append(f"{workers - still} worker(s) not online at the end")
        workers_procs = [p for p in tree if p.pid != pid]
        start = time.monotonic()
        try:
            out = run(manager.down, manager.env, timeout=opts.down_limit)
            if out.returncode != 0:
                row.notes.append(f"down: {tail(out)}")
            gone_after(workers_procs, max(1.0, opts.down_limit - (time.monotonic() - start)))
        except BenchError:  # the figure is then "more than the limit"; cleanup stops the rest
            row.notes.append(f"down not done after {opts.down_limit:g} s (the figure)")
        row.down = time.monotonic() - start
    return row


def print_profile(path: Path) -> None:
    import pstats

    print(f"  the supervisor's ticks so far, by own time ({path.name}):")
    pstats.Stats(str(path), stream=sys.stdout).sort_stats("tottime").print_stats(15)


# ---- output -------------------------------------------------------------------------------


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "n/a"


def print_table(rows: list[Row], workers: int, apps: int) -> None:
    print()
    print(f"{workers} idle workers in {apps} apps (half sleepers, half idle HTTP servers)")
    head = (
        f"{'':<16} {'up→online s':>12} {'its CPU s':>10} {'idle CPU %':>11} {'RSS MiB':>8} "
        f"{'ls ms':>7} {'down s':>7}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r.manager:<16} {r.up:>12.1f} {r.up_cpu:>10.1f} {r.cpu:>11.2f} {r.rss:>8.1f} "
            f"{r.ls * 1e3:>7.0f} {r.down:>7.1f}" + (f"   ({'; '.join(r.notes)})" if r.notes else "")
        )
    pm = next((r for r in rows if not r.manager.startswith("clusterui")), None)
    ours = [r for r in rows if r.manager.startswith("clusterui")]
    if pm is not None:
        for cu in ours:
            print(
                f"{cu.manager + ' / PM2':<16} {ratio(cu.up, pm.up):>12} "
                f"{ratio(cu.up_cpu, pm.up_cpu):>10} {ratio(cu.cpu, pm.cpu):>11} "
                f"{ratio(cu.rss, pm.rss):>8} {ratio(cu.ls, pm.ls):>7} {ratio(cu.down, pm.down):>7}"
            )

    def mark(ok: bool) -> str:
        return "ok" if ok else "MISSED"

    for cu in ours:
        print(f"targets (issue 18), {cu.manager}:")
        print(
            f"  supervisor idle CPU < {CPU_TARGET:g}% of a core: {cu.cpu:.2f}%  {mark(cu.cpu < 2)}"
        )
        print(f"  supervisor RSS < {RSS_TARGET:g} MiB: {cu.rss:.1f}  {mark(cu.rss < RSS_TARGET)}")
        print(f"  ls < {LS_TARGET * 1e3:g} ms: {cu.ls * 1e3:.0f} ms  {mark(cu.ls < LS_TARGET)}")
        if pm is not None:
            speed = pm.up / cu.up if cu.up else 0.0
            print(
                f"  up→online >= {UP_RATIO_TARGET:g}x faster than PM2: {speed:.2f}x  "
                f"{mark(speed >= UP_RATIO_TARGET)}"
            )
            down = f"{cu.down:.1f} s vs {pm.down:.1f} s"
            print(f"  down ahead of PM2: {down}  {mark(cu.down < pm.down)}")


def host_processes() -> int:
    return sum(1 for name in os.listdir("/proc") if name.isdigit())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--apps", type=int, default=200)
    parser.add_argument("--per-app", type=int, default=10, help="instances per app")
    parser.add_argument("--settle", type=float, default=10, help="wait after all online (s)")
    parser.add_argument("--seconds", type=float, default=20, help="idle CPU window (s)")
    parser.add_argument("--ls-runs", type=int, default=5)
    parser.add_argument("--poll", type=float, default=0.2, help="online poll interval (s)")
    parser.add_argument(
        "--down-limit", type=float, default=300, help="give up timing down after (s)"
    )
    parser.add_argument(
        "--only",
        default="clusterui,pm2",
        help=f"which of {','.join(MANAGERS)} to run, in that order",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run the supervisor's tick under cProfile and print where its time goes",
    )
    opts = parser.parse_args(argv)
    which = [w.strip() for w in opts.only.split(",") if w.strip()]
    if not which or set(which) - set(MANAGERS):
        parser.error(f"--only takes some of {', '.join(MANAGERS)}")
    if "pm2" in which and (why := ensure_pm2()):
        raise BenchError(f"PM2 is needed for its row: {why}")

    def interrupt(signum: int, frame: Any) -> None:  # every finally: below still runs
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)
    workers = opts.apps * opts.per_app
    before = host_processes()
    print(f"{os.cpu_count()} CPUs, {before} processes on the host before; load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    workdir = Path(tempfile.mkdtemp(prefix="fleet-", dir="/tmp"))
    rows: list[Row] = []
    try:
        file = write_ecosystem(workdir, opts.apps, opts.per_app)
        with bench_lock("fleet"):
            for name in which:
                home = Path(tempfile.mkdtemp(prefix=f"{name[:3]}-fleet-", dir="/tmp"))
                if name == "clusterui":
                    manager = clusterui_manager(home, file, opts.profile)
                elif name == PRELOAD:
                    preloaded = write_ecosystem(workdir, opts.apps, opts.per_app, preload=True)
                    manager = clusterui_manager(home, preloaded, opts.profile)
                    manager.name = PRELOAD
                else:
                    manager = pm2_manager(home, file)
                print(f"- {name}: {workers} workers ...", flush=True)
                rows.append(row := bench_one(manager, workers, opts))
                load = os.getloadavg()[0]
                print(f"  done; load average {load:.1f}; {asdict(row)}", flush=True)
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        print(f"{host_processes()} processes on the host after ({before} before)", flush=True)
    print_table(rows, workers, opts.apps)
    if opts.json:
        Path(opts.json).write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench/fleet.py: {exc}", file=sys.stderr)
        sys.exit(1)
