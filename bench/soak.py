"""Soak: minutes of random operations under HTTP load, watching the supervisor's RSS and fds.

1. Soak (--minutes, default 10): a supervisor runs
     web    cluster mode, examples/web.py, 3 instances, under HTTP load (half the clients
            Connection: close, half keep-alive, paced to about --rate requests/s);
     burst  a fork-mode app that prints --burst-lines lines each time it starts;
     churn  a cluster-mode app of 4 shell workers (cheap to restart).
   Every 0.5-3 s one random operation: scale web to 1-5, restart web or one instance,
   rolling reload of web, stop + start one instance, kill -9 of a web worker, a log burst
   (restart burst), restart churn. Every --sample seconds (10) it samples the supervisor
   (RSS, fds, children) and the web dispatcher (RSS, fds); at the end it prints the
   series, first/last/max, the operations done, and the failed requests per operation
   kind (a failure is charged to the operation running when it ended).
2. Fd check: from a quiet baseline, --restarts restarts (1,000) of churn's workers through
   the control socket and --connections handed-off connections (100,000, by wrk) to web,
   then the fd counts of the supervisor, the dispatchers and the web workers against
   the baseline.

    .venv/bin/python bench/soak.py [--minutes 10] [--rate 300] [--sample 10]
                                   [--restarts 1000] [--connections 100000] [--seed N]
                                   [--json FILE]

It holds /tmp/clusterui-bench.lock for the whole run (other benchmarks wait). Everything
it starts is stopped at the end, on an error or on Ctrl-C.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from chaos import Supervisor  # noqa: E402
from common import WEB, Control, Load, bench_lock, free_port, wait_for  # noqa: E402

READY_SH = """\
printf '{"t":"ready"}' >&"$CLUSTERUI_CHANNEL_FD"
exec sleep 100000
"""
BURST_PY = """\
import os, sys, time
line = "burst line %d " + "x" * 80 + "\\n"
out = sys.stdout
for i in range(int(os.environ["LINES"])):
    out.write(line % i)
out.flush()
time.sleep(100000)
"""


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def dispatchers(sup_pid: int) -> dict[int, str]:
    out = {}
    for child in psutil.Process(sup_pid).children():
        try:
            cmd = child.cmdline()
        except psutil.Error:
            continue
        if "clusterui.dispatch" in cmd:
            out[child.pid] = cmd[-1]
    return out


class Sampler(threading.Thread):
    def __init__(self, sup_pid: int, every: float, loads: list[Load]):
        super().__init__(daemon=True)
        self.sup = psutil.Process(sup_pid)
        self.every = every
        self.loads = loads
        self.rows: list[dict[str, Any]] = []
        self.stop = threading.Event()
        self.t0 = time.monotonic()

    def sample(self) -> None:
        with self.sup.oneshot():
            rss = self.sup.memory_info().rss
            fds = self.sup.num_fds()
        kids = self.sup.children()
        disp = [k for k in kids if k.pid in dispatchers(self.sup.pid)]
        d_rss = sum(k.memory_info().rss for k in disp)
        d_fds = sum(k.num_fds() for k in disp)
        self.rows.append(
            {
                "t": round(time.monotonic() - self.t0),
                "rss": rss,
                "fds": fds,
                "children": len(kids),
                "disp_rss": d_rss,
                "disp_fds": d_fds,
                "ok": sum(load.ok_count() for load in self.loads),
                "failed": sum(len(load.failures()) for load in self.loads),
            }
        )

    def run(self) -> None:
        while not self.stop.wait(self.every):
            try:
                self.sample()
            except psutil.Error:
                continue


class Soak:
    def __init__(self, sup: Supervisor, ctl: Control, rng: random.Random):
        self.sup = sup
        self.ctl = ctl
        self.rng = rng
        self.done: collections.Counter[str] = collections.Counter()
        self.refused: list[str] = []
        self.timeline: list[tuple[float, str]] = []  # (start, kind)

    def call(self, kind: str, op: str, **args: Any) -> None:
        answer = self.ctl.call(op, **args)
        if not answer["ok"]:
            self.refused.append(f"{kind}: {op} {args}: {answer['error']}")

    def web(self) -> list[dict[str, Any]]:
        return self.ctl.workers("web")

    def step(self) -> str:
        rows = self.web()
        instances = [w["instance"] for w in rows]
        kind = self.rng.choice(
            ["scale", "restart", "reload", "stop-start", "kill", "burst", "churn"]
        )
        self.timeline.append((time.monotonic(), kind))
        if kind == "scale":
            self.call(kind, "scale", app="web", count=str(self.rng.randint(1, 5)))
        elif kind == "restart":
            target = self.rng.choice(["web", f"web:{self.rng.choice(instances)}"])
            self.call(kind, "restart", targets=[target])
        elif kind == "reload":
            self.call(kind, "reload", targets=["web"])
        elif kind == "stop-start":
            target = f"web:{self.rng.choice(instances)}"
            self.call(kind, "stop", targets=[target])
            self.call(kind, "start", targets=[target])
        elif kind == "kill":
            online = [w for w in rows if w["status"] == "online" and w["pid"]]
            if online:
                os.kill(self.rng.choice(online)["pid"], signal.SIGKILL)
        elif kind == "burst":
            self.call(kind, "restart", targets=["burst"])
        elif kind == "churn":
            self.call(kind, "restart", targets=["churn"])
        self.done[kind] += 1
        return kind

    def charge(self, failures: list[Any]) -> collections.Counter[str]:
        """Failed requests per operation kind: the last operation begun before it ended."""
        out: collections.Counter[str] = collections.Counter()
        starts = [t for t, _ in self.timeline]
        for r in failures:
            i = sum(1 for t in starts if t <= r.end) - 1
            out[self.timeline[i][1] if i >= 0 else "(before any)"] += 1
        return out


def settle(ctl: Control, app: str, n: int | None = None) -> list[dict[str, Any]]:
    def ok() -> list[dict[str, Any]]:
        rows = ctl.workers(app)
        good = rows and all(w["status"] == "online" for w in rows)
        return rows if good and (n is None or len(rows) == n) else []

    return wait_for(ok, 60, f"{app} online", step=0.05)


def mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def print_series(rows: list[dict[str, Any]]) -> None:
    print(
        f"  {'t s':>5} {'sup RSS MiB':>11} {'sup fds':>8} {'children':>9} "
        f"{'disp RSS MiB':>12} {'disp fds':>9} {'ok req':>9} {'failed':>7}"
    )
    for r in rows:
        print(
            f"  {r['t']:>5} {mib(r['rss']):>11} {r['fds']:>8} {r['children']:>9} "
            f"{mib(r['disp_rss']):>12} {r['disp_fds']:>9} {r['ok']:>9} {r['failed']:>7}"
        )
    if not rows:
        return
    print()
    for key, label, fmt in (
        ("rss", "supervisor RSS MiB", mib),
        ("fds", "supervisor fds", str),
        ("children", "supervisor children", str),
        ("disp_rss", "dispatcher RSS MiB", mib),
        ("disp_fds", "dispatcher fds", str),
    ):
        values = [r[key] for r in rows]
        print(
            f"  {label:<22} first {fmt(values[0]):>7}  last {fmt(values[-1]):>7}  "
            f"max {fmt(max(values)):>7}"
        )


def wrk_connections(port: int, count: int) -> int:
    """Hand `count` Connection: close connections to the port (wrk, else Python)."""
    done = 0
    if shutil.which("wrk"):
        while done < count:
            run = subprocess.run(
                [
                    "wrk",
                    "-t1",
                    "-c16",
                    "-d5s",
                    "-H",
                    "Connection: close",
                    f"http://127.0.0.1:{port}/",
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            done += int(re.search(r"(\d+) requests in", run.stdout).group(1))
        return done
    request = b"GET / HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n"
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(request)
            while s.recv(65536):
                pass
    return count


def fd_check(sup: Supervisor, ctl: Control, port: int, restarts: int, connections: int) -> dict:
    settle(ctl, "web")
    settle(ctl, "churn", 4)
    pid = sup.pid
    disp = dispatchers(pid)
    web = [w["pid"] for w in ctl.workers("web")]
    base = {"supervisor": fd_count(pid)} | {f"dispatcher {d}": fd_count(d) for d in disp}
    base |= {f"web worker {w}": fd_count(w) for w in web}
    print(f"\nfd check: baseline {base}")
    t0 = time.monotonic()
    for _ in range(restarts // 4):
        answer = ctl.call("restart", targets=["churn"])
        assert answer["ok"], answer
    settle(ctl, "churn", 4)
    t_restarts = time.monotonic() - t0
    after_restarts = {"supervisor": fd_count(pid)} | {f"dispatcher {d}": fd_count(d) for d in disp}
    print(
        f"  {restarts // 4 * 4} restarts in {t_restarts:.1f} s: "
        f"supervisor fds {base['supervisor']} → {after_restarts['supervisor']}"
    )
    handed_before = sum(w["connections"] for w in ctl.workers("web"))
    t0 = time.monotonic()
    sent = wrk_connections(port, connections)
    t_conn = time.monotonic() - t0

    def counted() -> int:
        return sum(w["connections"] for w in ctl.workers("web")) - handed_before

    # The dispatcher pushes its counters at most once a second: wait for them to stop.
    previous = -1
    while (handed := counted()) != previous:
        previous = handed
        time.sleep(1.5)

    def current() -> dict[str, int]:
        now = {"supervisor": fd_count(pid)} | {f"dispatcher {d}": fd_count(d) for d in disp}
        return now | {f"web worker {w}": fd_count(w) for w in web}

    # Counts settle once the last connections are closed and reported.
    with contextlib.suppress(TimeoutError):  # a leak: reported below
        wait_for(lambda: all(current()[k] <= base[k] + 2 for k in base), 20, "fds to settle")
    final = current()
    print(
        f"  {sent} requests ({handed} connections handed off by the dispatcher's count) "
        f"in {t_conn:.1f} s"
    )
    worst = max(final[k] - base[k] for k in base)
    for k in base:
        print(f"  {k:<28} {base[k]:>5} → {final[k]:>5}")
    print(f"  largest growth: {worst:+d} fds {'(OK)' if worst <= 2 else '(LEAK?)'}")
    same = [w["pid"] for w in ctl.workers("web")] == web
    print(f"  web workers unchanged through it (no crash): {same}")
    return {"base": base, "after_restarts": after_restarts, "final": final, "handed": handed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=300.0, help="HTTP requests/s, about")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--burst-lines", type=int, default=20_000)
    parser.add_argument("--restarts", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", help="write the raw figures here")
    opts = parser.parse_args()
    seed = opts.seed if opts.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    port = free_port()
    sup = Supervisor(prefix="cu-soak-")
    report: dict[str, Any] = {"seed": seed}
    try:
        sup.write("ready.sh", READY_SH)
        sup.write("burst.py", BURST_PY)
        ctl = sup.up(
            f"""
            apps:
              - name: web
                script: {WEB}
                exec_mode: cluster
                instances: 3
                listen: 127.0.0.1:{port}
              - name: burst
                script: burst.py
                env: {{LINES: "{opts.burst_lines}"}}
              - name: churn
                script: ready.sh
                exec_mode: cluster
                instances: 4
                listen: 127.0.0.1:{free_port()}
            """
        )
        print(
            f"clusterui soak: {opts.minutes:g} min, ~{opts.rate:g} requests/s, seed {seed}, "
            f"supervisor pid {sup.pid}, {os.cpu_count()} CPUs"
        )
        with bench_lock("the soak"):
            clients = 8
            pause = clients / opts.rate
            loads = [
                Load(port, clients // 2, keep_alive=False, interval=pause),
                Load(port, clients // 2, keep_alive=True, interval=pause),
            ]
            soak = Soak(sup, ctl, rng)
            sampler = Sampler(sup.pid, opts.sample, loads)
            for load in loads:
                load.__enter__()
            sampler.sample()
            sampler.start()
            deadline = time.monotonic() + opts.minutes * 60
            try:
                while time.monotonic() < deadline:
                    soak.step()
                    time.sleep(rng.uniform(0.5, 3.0))
                settle(ctl, "web")
            finally:
                sampler.stop.set()
                sampler.join()
                for load in loads:
                    load.__exit__(None, None, None)
            sampler.sample()
            failures = [r for load in loads for r in load.failures()]
            print(f"\nseries (every {opts.sample:g} s):")
            print_series(sampler.rows)
            print(f"\noperations: {dict(soak.done)}")
            print(f"refused operations: {len(soak.refused)}")
            for line in soak.refused[:10]:
                print(f"  {line}")
            ok = sum(load.ok_count() for load in loads)
            print(
                f"requests: {ok} ok, {len(failures)} failed; failed by the operation under "
                f"way: {dict(soak.charge(failures))}"
            )
            report["series"] = sampler.rows
            report["operations"] = dict(soak.done)
            report["refused"] = soak.refused
            report["failed_by_op"] = dict(soak.charge(failures))
            ctl.call("scale", app="web", count="3")
            report["fd_check"] = fd_check(sup, ctl, port, opts.restarts, opts.connections)
    finally:
        sup.close()
    if opts.json:
        Path(opts.json).write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(1))
    sys.exit(main())
