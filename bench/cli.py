"""How fast the CLI answers: `clusterui ls` against `pm2 ls`, 4 workers under each.

    .venv/bin/python bench/cli.py [--runs 40] [--warmup 5] [--workers 4] [--no-hyperfine]

Both managers run the same YAML file (4 x bench/node/idle_server.js, fork mode) at
the same time, each in a private home under /tmp (CLUSTERUI_HOME, PM2_HOME). Then
`clusterui ls` and `pm2 ls` are timed in one run: by hyperfine (`-N`, no shell) when
it is installed, else by this script's own loop, which alternates the two commands.
Printed: mean wall time of each with its spread, mean CPU (user + system) of each,
and the ratio pm2 / clusterui; `python -c pass` (the same Python) is timed with them
as the floor, what any Python command costs before it does anything. Both managers
are stopped (`down`, `pm2 kill`) after.

clusterui's bytecode is compiled first (compileall), so an environment with
PYTHONDONTWRITEBYTECODE does not time compiling it on every call.

Wall time on a shared, loaded machine is mostly waiting for a core; the CPU figure is
what each command itself costs. The load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BenchError, bench_lock, clusterui_bin  # noqa: E402
from idle import (  # noqa: E402
    PM2_BIN,
    clusterui_running,
    ensure_pm2,
    pm2_running,
    pm2_version,
    write_ecosystem,
)


def by_hyperfine(commands: dict[str, tuple[list[str], dict]], runs: int, warmup: int) -> dict:
    """{label: (mean wall s, stddev s, mean cpu s)} from one hyperfine run of all commands."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        argv = ["hyperfine", "-N", "--warmup", str(warmup), "--runs", str(runs)]
        argv += ["--export-json", out.name, "--style", "basic"]
        env: dict[str, str] = {}
        for cmd, own in commands.values():
            argv.append(" ".join(cmd))
            env |= own  # one environment for all: each reads its own home's variable
        subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
        results = json.loads(Path(out.name).read_text())["results"]
    return {
        label: (r["mean"], r["stddev"] or 0.0, r["user"] + r["system"])
        for label, r in zip(commands, results, strict=True)
    }


def by_loop(commands: dict[str, tuple[list[str], dict]], runs: int, warmup: int) -> dict:
    """The same figures from this script's own loop, the commands alternating."""
    walls: dict[str, list[float]] = {k: [] for k in commands}
    cpus: dict[str, list[float]] = {k: [] for k in commands}
    for i in range(warmup + runs):
        for label, (cmd, env) in commands.items():
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, check=True)
            wall = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if i >= warmup:
                walls[label].append(wall)
                cpus[label].append(
                    after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
                )
    return {
        k: (statistics.mean(walls[k]), statistics.stdev(walls[k]), statistics.mean(cpus[k]))
        for k in commands
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--no-hyperfine", action="store_true", help="time with this script's loop")
    opts = p.parse_args()
    if opts.runs < 2:
        p.error("--runs takes 2 or more")
    why_not = ensure_pm2()
    if why_not:
        raise BenchError(f"PM2 is needed for the comparison: {why_not}")
    hyperfine = None if opts.no_hyperfine else shutil.which("hyperfine")
    cli = clusterui_bin()
    # With PYTHONDONTWRITEBYTECODE set (as on some CI and shared machines) an editable
    # install never caches bytecode, and every call would time compiling clusterui's
    # modules: cache it first, as any installed package has it.
    import clusterui

    compileall.compile_dir(Path(clusterui.__file__).parent, quiet=1)
    with bench_lock("cli"):
        directory = Path(tempfile.mkdtemp(prefix="cu-cli-", dir="/tmp"))
        try:
            file = write_ecosystem(directory, "idle", opts.workers, node=True)
            with (
                clusterui_running(file, opts.workers) as (_s, _p, cu_env),
                pm2_running(file, opts.workers) as (_d, _p2, pm2_env),
            ):
                commands = {
                    "clusterui ls": ([cli, "ls"], cu_env),
                    "pm2 ls": ([str(PM2_BIN), "ls"], pm2_env),
                    # The floor: the interpreter's own start-up, nothing of clusterui.
                    "python -c pass": ([sys.executable, "-c", "pass"], cu_env),
                }
                measure = by_hyperfine if hyperfine else by_loop
                figures = measure(commands, opts.runs, opts.warmup)
                load = os.getloadavg()
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    how = "hyperfine -N" if hyperfine else "own loop, alternating"
    print(f"CLI latency, {opts.workers} idle workers under each manager, {opts.runs} runs ({how})")
    print(f"PM2 {pm2_version()}; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print(f"on {os.cpu_count()} cores")
    print()
    print(f"{'command':<16} {'wall mean':>10} {'± sd':>9} {'cpu mean':>10}")
    for label, (mean, sd, cpu) in figures.items():
        print(f"{label:<16} {mean * 1e3:8.1f} ms {sd * 1e3:6.1f} ms {cpu * 1e3:7.1f} ms")
    cu, pm = figures["clusterui ls"], figures["pm2 ls"]
    print()
    print(f"pm2 ls / clusterui ls: {pm[0] / cu[0]:.2f}x wall, {pm[2] / cu[2]:.2f}x cpu")
    print("target: clusterui ls <= 40 ms mean wall, >= 3x faster than pm2 ls")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench/cli.py: {exc}", file=sys.stderr)
        sys.exit(1)
