"""Chaos benchmark: workers killed (-9) and frozen (SIGSTOP) under HTTP load (docs/targets.md).

Measures, with a real supervisor and examples/web.py workers in cluster mode:

1. Anchor: examples/web.py started alone, exec → first answer. No manager can replace
   a Python worker faster than Python starts it; this is the floor in the same run.
2. kill -9 of a random worker, N times, under Connection: close load, then under
   keep-alive load. Per kill: kill → the supervisor has spawned the replacement (a new
   pid in its state), → the replacement is `online` (it said ready), → the
   replacement has answered an HTTP request. Targets: serving < 300 ms (the design's),
   < 120 ms for examples/web.py (issue 18's, which preload: true is for). Failed
   requests per kill, and whether each was in flight at a kill instant (the only
   failures there should be).
3. SIGSTOP of one worker under load with more clients than it can swallow: answers/s
   of the others while it is frozen against before, how many clients waited for it,
   failures (expected 0: they are answered after SIGCONT).

    .venv/bin/python bench/chaos.py [--kills 100] [--workers 3] [--concurrency 8]
                                    [--stops 3] [--stop-seconds 2] [--anchor 20] [--json FILE]

Holds an exclusive flock on /tmp/clusterui-bench.lock while measuring. Everything it
starts is stopped at the end, on an error or on Ctrl-C; the supervisor gets a private
home under /tmp. bench/soak.py imports the helpers below.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from common import (  # noqa: E402
    PID,
    ROOT,
    WEB,
    Control,
    Load,
    bench_lock,
    free_port,
    wait_for,
)

TARGET_SERVING_MS = 300  # the design's
TARGET_WEB_MS = 120  # examples/web.py (issue 18), with or without preload
QUEUE_CAP = 64  # clusterui.dispatch.core.QUEUE_CAP


class Supervisor:
    """A clusterui supervisor in a private home under /tmp; `close()` leaves nothing."""

    def __init__(self, prefix: str = "cu-chaos-"):
        self.root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        self.home = self.root / "home"
        self.env = dict(os.environ, CLUSTERUI_HOME=str(self.home), NO_COLOR="1")
        self.env.pop("CLUSTERUI_CHANNEL_FD", None)
        self.ctl: Control | None = None

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "clusterui", *args],
            env=self.env,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def write(self, name: str, text: str) -> Path:
        path = self.root / name
        path.write_text(textwrap.dedent(text))
        return path

    def up(self, ecosystem: str) -> Control:
        self.write("ecosystem.yaml", ecosystem)
        r = self.cli("up", "-d")
        if r.returncode != 0:
            raise RuntimeError(f"clusterui up -d failed: {r.stderr.strip()}")
        self.ctl = Control(self.home)
        return self.ctl

    @property
    def pid(self) -> int:
        return int((self.home / "supervisor.pid").read_text())

    def close(self) -> None:
        if self.ctl is not None:
            self.ctl.close()
        with contextlib.suppress(Exception):
            self.cli("down", timeout=60)
        needle = str(self.home)
        for proc in psutil.process_iter(["pid"]):
            with contextlib.suppress(psutil.Error):
                if proc.pid != os.getpid() and proc.environ().get("CLUSTERUI_HOME") == needle:
                    proc.kill()
        shutil.rmtree(self.root, ignore_errors=True)


def web_ecosystem(
    port: int, workers: int, name: str = "web", extra: str = "", preload: bool = False
) -> str:
    return f"""
    apps:
      - name: {name}
        script: {WEB}
        exec_mode: cluster
        instances: {workers}
        listen: 127.0.0.1:{port}
        preload: {str(preload).lower()}
    {extra}
    """


def fastapi_ecosystem(port: int, workers: int, preload: bool = False) -> str:
    """tests/webapps/fastapi_main.py, unmodified, hosted by clusterui (asgi:), as "web"."""
    return f"""
    apps:
      - name: web
        asgi: fastapi_main:app
        cwd: {ROOT / "tests" / "webapps"}
        exec_mode: cluster
        instances: {workers}
        listen: 127.0.0.1:{port}
        listen_timeout: 20s
        args: --no-access-log
        preload: {str(preload).lower()}
    """


def stats_ms(values: list[float]) -> dict[str, float]:
    ms = sorted(v * 1000 for v in values)
    if not ms:
        return {}

    def pct(p: float) -> float:
        return ms[min(len(ms) - 1, int(round(p * (len(ms) - 1))))]

    return {
        "n": len(ms),
        "min": ms[0],
        "median": statistics.median(ms),
        "p90": pct(0.9),
        "p99": pct(0.99),
        "max": ms[-1],
    }


def row(label: str, values: list[float], note: str = "") -> str:
    s = stats_ms(values)
    if not s:
        return f"  {label:<34} (no data)"
    return (
        f"  {label:<34} {s['n']:>4} {s['min']:>7.0f} {s['median']:>7.0f} {s['p90']:>7.0f} "
        f"{s['p99']:>7.0f} {s['max']:>7.0f}  {note}"
    )


HEADER = f"  {'':<34} {'n':>4} {'min':>7} {'median':>7} {'p90':>7} {'p99':>7} {'max':>7}  (ms)"


# ---- the measurements ---------------------------------------------------------------------------


def ask(port: int, timeout: float = 1.0) -> int | None:
    """One Connection: close request; the answering worker's pid, or None."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
    except OSError:
        return None
    found = PID.search(data.decode(errors="replace")) if data.startswith(b"HTTP/1.1 200") else None
    return int(found.group(1)) if found else None


def answers(port: int) -> bool:
    return ask(port) is not None


def anchor(runs: int) -> list[float]:
    """examples/web.py alone: exec → first HTTP answer."""
    times = []
    env = {k: v for k, v in os.environ.items() if k not in ("CLUSTERUI_CHANNEL_FD", "PORT")}
    for _ in range(runs):
        port = free_port()
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, WEB, "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_for(lambda p=port: answers(p), 20, "the standalone worker", step=0.002)
            times.append(time.monotonic() - t0)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return times


# What examples/web.py imports before it serves: the split of a standalone start.
WEB_IMPORTS = "import argparse, asyncio, os; from clusterui import worker"


def exec_time(runs: int, code: str) -> list[float]:
    """`python -c CODE` run to its end, `runs` times: exec → exit."""
    times = []
    for _ in range(runs):
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.monotonic() - t0)
    return times


def probe_new_pid(port: int, old: set[int], timeout: float = 30.0) -> float:
    """Fresh connections until a pid not in old answers (keep-alive load opens none);
    returns time.monotonic() of that answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = ask(port, timeout=5)
        if pid is not None and pid not in old:
            return time.monotonic()
        time.sleep(0.003)
    raise TimeoutError("the replacement never answered")


@dataclass
class Kill:
    instance: int
    victim: int
    spawned: float  # seconds after the kill
    online: float
    serving: float
    failed: int = 0  # failed requests that ended after this kill, before the next one
    repeat: int = 0  # clients that failed more than once in that window


def kills(
    sup: Supervisor, port: int, n: int, concurrency: int, keep_alive: bool, rng: random.Random
) -> tuple[list[Kill], Load, int]:
    ctl = sup.ctl
    assert ctl is not None
    out: list[Kill] = []
    instants: list[float] = []
    with Load(port, concurrency, keep_alive=keep_alive) as load:
        for _ in range(n):
            # A victim that has been up past min_uptime (1 s): a crash of a stable worker,
            # so the restart policy does not count an unstable streak.
            rows = wait_for(
                lambda: [
                    w for w in ctl.workers("web") if w["status"] == "online" and w["uptime"] > 1.05
                ],
                30,
                "a stable online worker",
                step=0.05,
            )
            victim = rng.choice(rows)
            pids = {w["pid"] for w in ctl.workers("web")}
            t_kill = time.monotonic()
            instants.append(t_kill)
            os.kill(victim["pid"], signal.SIGKILL)
            spawned = online = None
            while online is None:
                slot = next(w for w in ctl.workers("web") if w["instance"] == victim["instance"])
                now = time.monotonic() - t_kill
                if spawned is None and slot["pid"] not in (None, victim["pid"]):
                    spawned = now
                if spawned is not None and slot["status"] == "online":
                    online = now
                if now > 30:
                    raise TimeoutError("no replacement online within 30 s")
                time.sleep(0.003)
            if keep_alive:
                served = probe_new_pid(port, pids)
            else:
                served = wait_for(
                    lambda t=t_kill, old=pids: load.first_from(old, t), 30, "the replacement"
                ).end
            out.append(Kill(victim["instance"], victim["pid"], spawned, online, served - t_kill))
    failures = load.failures()
    bounds = [*instants, float("inf")]
    for i, k in enumerate(out):
        mine = [r for r in failures if bounds[i] <= r.end < bounds[i + 1]]
        per_client = collections.Counter(r.client for r in mine)
        k.failed = len(mine)
        k.repeat = sum(1 for n in per_client.values() if n > 1)
    # Connection: close: a request fails only if it was in flight at a kill instant.
    # Keep-alive: also the next request on a connection the victim held (it starts
    # after the kill), once per client.
    stray = sum(1 for r in failures if not any(r.start <= t <= r.end for t in instants))
    return out, load, stray


def stops(
    sup: Supervisor, port: int, n: int, seconds: float, rng: random.Random
) -> list[dict[str, Any]]:
    ctl = sup.ctl
    assert ctl is not None
    out = []
    with Load(port, QUEUE_CAP + 40) as load:
        for _ in range(n):
            rows = ctl.workers("web")
            frozen = rng.choice(rows)["pid"]
            others = {w["pid"] for w in rows} - {frozen}
            t0 = time.monotonic()
            wait_for(lambda t=t0: time.monotonic() - t > seconds, seconds + 1, "baseline")
            base_rate = load.ok_count(t0) / seconds
            os.kill(frozen, signal.SIGSTOP)
            t_stop = time.monotonic()
            try:
                wait_for(lambda t=t_stop: time.monotonic() - t > seconds, seconds + 1, "the window")
            finally:
                os.kill(frozen, signal.SIGCONT)
            t_cont = time.monotonic()
            # Its backlog is served first: once it answers a request that started after
            # SIGCONT, every client it held has its answer.
            wait_for(
                lambda t=t_cont, pid=frozen: any(
                    r.pid == pid and r.start > t for r in list(load.results)
                ),
                30,
                "the frozen worker to serve again",
            )
            results = list(load.results)
            during = [r for r in results if t_stop + 0.2 < r.end < t_cont and r.error is None]
            stranded = [r for r in results if r.pid == frozen and r.start < t_cont < r.end]
            out.append(
                {
                    "rate_before": base_rate,
                    "rate_frozen": len(during) / (t_cont - t_stop - 0.2),
                    "answered_by_others_only": {r.pid for r in during} <= others,
                    "stranded": len(stranded),
                    "stranded_after_stop": sum(1 for r in stranded if r.start > t_stop),
                }
            )
        wait_for(lambda: load.ok_count(time.monotonic() - 0.5) > 0, 10, "load after the stops")
    out.append({"failures": len(load.failures())})
    return out


def measure_anchors(port: int, opts: argparse.Namespace, report: dict[str, Any]) -> list[float]:
    """examples/web.py started alone, idle and beside the cluster's load; returns the
    loaded starts (s)."""
    with bench_lock("the anchors"):
        bare = exec_time(opts.anchor, "pass")
        imports = exec_time(opts.anchor, WEB_IMPORTS)
        idle = anchor(opts.anchor)
        # The same start while the cluster is under the kill phase's load: the new
        # worker competes for the CPU with the clients and the other workers.
        with Load(port, opts.concurrency):
            loaded = anchor(opts.anchor)
    report["anchor_idle"], report["anchor_loaded"] = idle, loaded
    print("\nanchor: examples/web.py started alone (no manager), exec → first answer")
    print(HEADER)
    print(row("on an idle host", idle))
    print(row(f"while {opts.concurrency} clients load the cluster", loaded))
    print("  its parts on the idle host, each run to its end (exec → exit):")
    print(row("python -c pass", bare))
    print(row("python -c '<web.py's imports>'", imports))
    report["anchor_bare"], report["anchor_imports"] = bare, imports
    print(
        "  medians: the interpreter alone {:.0f} ms, with web.py's imports {:.0f} ms (both "
        "to exit), the whole start to a first answer {:.0f} ms".format(
            *(1000 * statistics.median(x) for x in (bare, imports, idle))
        )
    )
    return loaded


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=100, help="per load mode")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--stops", type=int, default=3)
    parser.add_argument("--stop-seconds", type=float, default=2.0)
    parser.add_argument("--anchor", type=int, default=20, help="standalone starts to time")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", help="write the raw figures here")
    parser.add_argument(
        "--preload", action="store_true", help="fork the workers from a zygote (preload: true)"
    )
    parser.add_argument(
        "--app",
        choices=("web", "fastapi"),
        default="web",
        help="examples/web.py, or tests/webapps/fastapi_main.py (FastAPI; no anchors)",
    )
    opts = parser.parse_args()
    seed = opts.seed if opts.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    report: dict[str, Any] = {"seed": seed, "workers": opts.workers}
    print(
        f"clusterui chaos: {opts.workers} × "
        f"{'examples/web.py' if opts.app == 'web' else 'FastAPI (tests/webapps)'}, round-robin, "
        f"{'preload (zygote), ' if opts.preload else ''}"
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, seed {seed}"
    )
    sup = Supervisor()
    try:
        port = free_port()
        if opts.app == "fastapi":
            sup.up(fastapi_ecosystem(port, opts.workers, preload=opts.preload))
            loaded: list[float] = []
            print("\nanchors: timed for examples/web.py only; none for --app fastapi")
        else:
            sup.up(web_ecosystem(port, opts.workers, preload=opts.preload))
            loaded = measure_anchors(port, opts, report)
        for keep_alive in (False, True):
            mode = "keep-alive" if keep_alive else "Connection: close"
            with bench_lock(f"kills ({mode})"):
                done, load, stray = kills(sup, port, opts.kills, opts.concurrency, keep_alive, rng)
            failures = [k.failed for k in done]
            report[f"kills_{'keepalive' if keep_alive else 'close'}"] = {
                "kills": [asdict(k) for k in done],
                "ok": load.ok_count(),
                "failed": len(load.failures()),
                "failed_not_at_a_kill": stray,
            }
            serving = [k.serving for k in done]
            median_ms = statistics.median(serving) * 1000
            verdicts = ", ".join(
                f"< {t} ms: {'OK' if median_ms < t else 'MISSED'}"
                for t in (TARGET_SERVING_MS, TARGET_WEB_MS)
            )
            print(f"\nkill -9 of a random worker under load, {opts.concurrency} clients, {mode}")
            print(HEADER)
            print(row("kill → replacement spawned", [k.spawned for k in done]))
            print(row("kill → replacement online (ready)", [k.online for k in done]))
            print(
                row(
                    "kill → replacement serving",
                    serving,
                    f"targets (median) {verdicts}",
                )
            )
            if loaded:
                ratio = median_ms / (statistics.median(loaded) * 1000)
                print(f"  serving median / loaded standalone start median: {ratio:.2f}×")
            print(
                f"  requests: {load.ok_count()} ok, {len(load.failures())} failed"
                f" in {len(done)} kills; "
                f"per kill: max {max(failures)}, mean {statistics.mean(failures):.2f} "
                f"(bound: the connections the victim held, at most {opts.concurrency})"
            )
            print(
                f"  clients failing twice after one kill: {sum(k.repeat for k in done)}; "
                f"failures not in flight at a kill instant: {stray}"
                + (" (keep-alive: the next request on a dead connection)" if keep_alive else "")
            )
        with bench_lock("stops"):
            frozen = stops(sup, port, opts.stops, opts.stop_seconds, rng)
        report["stops"] = frozen
        print(
            f"\nSIGSTOP of one worker for {opts.stop_seconds:g} s under load, "
            f"{QUEUE_CAP + 40} clients (Connection: close), {opts.stops} times"
        )
        for i, s in enumerate(frozen[:-1], 1):
            print(
                f"  stop {i}: answers/s {s['rate_before']:.0f} before, {s['rate_frozen']:.0f} "
                f"while frozen ({s['rate_frozen'] / max(s['rate_before'], 1):.2f}×); "
                f"{s['stranded']} clients waited for the frozen worker, "
                f"{s['stranded_after_stop']} of them came after the stop (cap {QUEUE_CAP}); "
                f"answered by the others only: {s['answered_by_others_only']}"
            )
        print(f"  failed requests over all stops: {frozen[-1]['failures']}")
        rows = sup.ctl.workers("web") if sup.ctl else []
        print(
            f"\nafter it all: {len(rows)} workers, statuses {sorted({w['status'] for w in rows})}, "
            f"restarts {sum(w['restarts'] for w in rows)}"
        )
    finally:
        sup.close()
    if opts.json:
        Path(opts.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(1))
    sys.exit(main())
