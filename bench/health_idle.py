"""What health probes cost an idle supervisor: 16 workers, each probed every second.

One run, the same script, the same 16 idle workers (examples/web.py, a cluster app on
round-robin dispatch, so every probe travels through the dispatcher and the worker's
channel as a real connection does), twice: probes off (today's figure), then an http
probe every second on each worker. Over the same window it measures the supervisor
process (and, for information, the dispatcher): CPU as % of one core, user + system
time over wall time.

    .venv/bin/python bench/health_idle.py [--seconds 30] [--workers 16] [--settle 5]

Target: the supervisor stays under 1 % of a core with probes on. Each run has its own
private home under /tmp and is stopped at the end (`clusterui down`, then signals).
The machine may be shared: the figures are noisy; run it again when they look odd.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common import (
    BenchError,
    bench_lock,
    clusterui_bin,
    cpu_seconds,
    free_port,
    kill_all,
    run,
    tail,
    wait_for,
)

ROOT = Path(__file__).resolve().parent.parent
WEB = ROOT / "examples" / "web.py"
TARGET = 1.0  # % of one core


def ecosystem(path: Path, workers: int, probes: bool) -> None:
    probe = (
        "\n    health_check:\n      type: http\n      path: /healthz\n"
        "      interval: 1s\n      timeout: 500ms\n"
        if probes
        else ""
    )
    path.write_text(
        "apps:\n"
        f"  - name: idle\n    script: {WEB}\n    interpreter: {sys.executable}\n"
        f"    instances: {workers}\n    listen: 127.0.0.1:{free_port()}{probe}\n"
    )


@contextlib.contextmanager
def running(workers: int, probes: bool) -> Iterator[tuple[Any, Any, dict[str, str]]]:
    import psutil

    root = Path(tempfile.mkdtemp(prefix="cu-hb-", dir="/tmp"))
    home = root / "home"
    env = dict(os.environ, CLUSTERUI_HOME=str(home), NO_COLOR="1")
    cli = clusterui_bin()
    file = root / "ecosystem.yaml"
    ecosystem(file, workers, probes)
    family: list[Any] = []
    try:
        out = run([cli, "up", "-d", str(file)], env, timeout=120)
        if out.returncode != 0:
            raise BenchError(f"clusterui up -d failed: {tail(out)}")
        supervisor = psutil.Process(int((home / "supervisor.pid").read_text().split()[0]))
        family = [supervisor, *supervisor.children(recursive=True)]
        state = json.loads(run([cli, "describe", "idle", "--json"], env).stdout)
        dispatcher = psutil.Process(state["app"]["listener_pid"])
        yield supervisor, dispatcher, env
    finally:
        with contextlib.suppress(BenchError):
            run([cli, "down"], env, timeout=60)
        kill_all([p for p in family if p.is_running()])
        shutil.rmtree(root, ignore_errors=True)


def measure(workers: int, probes: bool, seconds: float, settle: float) -> dict[str, Any]:
    with running(workers, probes) as (supervisor, dispatcher, env):
        if probes:
            cli = clusterui_bin()

            def probed() -> bool:
                info = json.loads(run([cli, "describe", "idle", "--json"], env).stdout)
                return all((w.get("health") or {}).get("ok") for w in info["workers"])

            wait_for(probed, 30, "every worker probed and passing", step=0.5)
        time.sleep(settle)
        start = time.monotonic()
        s0, d0 = cpu_seconds(supervisor), cpu_seconds(dispatcher)
        time.sleep(seconds)
        wall = time.monotonic() - start
        s1, d1 = cpu_seconds(supervisor), cpu_seconds(dispatcher)
        row: dict[str, Any] = {
            "probes": "http every 1 s" if probes else "off",
            "supervisor_cpu": 100 * (s1 - s0) / wall,
            "dispatcher_cpu": 100 * (d1 - d0) / wall,
            "supervisor_rss_mib": supervisor.memory_info().rss / 2**20,
        }
        if probes:
            info = json.loads(run([clusterui_bin(), "describe", "idle", "--json"], env).stdout)
            health = [w["health"] for w in info["workers"]]
            row["probes_run"] = sum(h["probes"] for h in health)
            row["probes_failed"] = sum(h["failed"] for h in health)
            lat = [r["latency_ms"] for h in health for r in h["recent"]]
            row["median_latency_ms"] = sorted(lat)[len(lat) // 2] if lat else None
        return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--settle", type=float, default=5)
    opts = parser.parse_args()
    try:
        with bench_lock():
            rows = [
                measure(opts.workers, False, opts.seconds, opts.settle),
                measure(opts.workers, True, opts.seconds, opts.settle),
            ]
    except BenchError as exc:
        print(f"health_idle: {exc}", file=sys.stderr)
        return 1
    print(
        f"supervisor idle CPU, {opts.workers} workers, {opts.seconds:g} s window "
        f"(load average {os.getloadavg()[0]:.2f}; the machine may be shared)"
    )
    print(f"{'probes':16} {'supervisor':>11} {'dispatcher':>11} {'sup RSS':>9}  notes")
    for r in rows:
        notes = ""
        if "probes_run" in r:
            notes = (
                f"{r['probes_run']} probes, {r['probes_failed']} failed, "
                f"median latency {r['median_latency_ms']} ms"
            )
        print(
            f"{r['probes']:16} {r['supervisor_cpu']:10.2f}% {r['dispatcher_cpu']:10.2f}% "
            f"{r['supervisor_rss_mib']:7.1f}M  {notes}"
        )
    on = rows[1]["supervisor_cpu"]
    verdict = "under" if on < TARGET else "OVER"
    print(
        f"probes on: {on:.2f}% of a core ({verdict} the {TARGET:g}% target); "
        f"probes off (today's figure): {rows[0]['supervisor_cpu']:.2f}%"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
