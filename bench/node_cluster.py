"""One unmodified Express app, three ways to run it as 2 round-robin workers on one port:
clusterui (`clusterui start app.js -i 2`), PM2 cluster mode (`pm2 start app.js -i 2`)
and Node's cluster module (bench/node/cluster_primary.js), side by side in one run.

For each: new connections/s (wrk, `Connection: close`), keep-alive requests/s (wrk),
then failed requests across 3 rolling reloads (`clusterui reload`, `pm2 reload`,
SIGHUP to the cluster primary) under keep-alive load from wrk plus a Python client
opening a new connection per request. Needs wrk, node and npm (Express and PM2 come
from bench/package.json: `npm install --prefix bench`).

    .venv/bin/python bench/node_cluster.py [--seconds 10] [--connections 50]
        [--threads 2] [--reloads 3] [--only clusterui,pm2,node] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import (  # noqa: E402
    BenchError,
    bench_lock,
    clusterui_bin,
    free_port,
    kill_all,
    run,
    tail,
    wait_for,
)
from idle import PM2_BIN, ensure_pm2, family, stop_pm2  # noqa: E402

BENCH = Path(__file__).resolve().parent
APP = BENCH / "node" / "express_hello.js"
PRIMARY = BENCH / "node" / "cluster_primary.js"
WORKERS = 2


@dataclass
class Row:
    manager: str
    new_conn_s: float = 0.0
    new_conn_errors: int = 0
    keepalive_req_s: float = 0.0
    keepalive_errors: int = 0
    reload_requests: int = 0  # wrk + the Python client, during the reloads
    reload_failed: int = 0
    reload_detail: str = ""
    reload_seconds: list[float] = field(default_factory=list)
    new_conn_rounds: list[int] = field(default_factory=list)
    keepalive_rounds: list[int] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)


# ---- load -------------------------------------------------------------------------------


@dataclass
class Wrk:
    requests: int
    seconds: float
    errors: int  # socket errors (connect, read, write, timeout) + non-2xx answers
    detail: str

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def parse_wrk(text: str) -> Wrk:
    m = re.search(r"(\d+) requests in ([\d.]+)(m?s)", text)
    if not m:
        raise BenchError(f"cannot read wrk's output: {text.strip()[-200:]!r}")
    seconds = float(m.group(2)) / (1000 if m.group(3) == "ms" else 1)
    errors = 0
    detail = []
    s = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if s:
        errors += sum(int(x) for x in s.groups())
        detail.append(s.group(0))
    n = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if n:
        errors += int(n.group(1))
        detail.append(n.group(0))
    return Wrk(int(m.group(1)), seconds, errors, "; ".join(detail) or "no errors")


def wrk_argv(port: int, args: argparse.Namespace, seconds: float, close: bool) -> list[str]:
    argv = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{seconds:g}s"]
    if close:
        argv += ["-H", "Connection: close"]
    return [*argv, f"http://127.0.0.1:{port}/"]


def wrk(port: int, args: argparse.Namespace, close: bool, row: Row) -> Wrk:
    argv = wrk_argv(port, args, args.seconds, close)
    command = " ".join(a if " " not in a else repr(a) for a in argv)
    if command not in row.commands:
        row.commands.append(command)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=args.seconds + 60)
    return parse_wrk(out.stdout)


class NewConnClient:
    """Python threads, one new connection per request: counts answers and failures."""

    def __init__(self, port: int, threads: int = 2) -> None:
        self.port = port
        self.ok = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> NewConnClient:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)

    def _run(self) -> None:
        while not self._stop.is_set():
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                conn.request("GET", "/", headers={"Connection": "close"})
                resp = conn.getresponse()
                body = resp.read()
                if resp.status != 200 or b"hello" not in body:
                    raise RuntimeError(f"answer {resp.status} {body[:40]!r}")
                with self._lock:
                    self.ok += 1
            except Exception as exc:
                with self._lock:
                    self.failed.append(repr(exc))
            finally:
                conn.close()


def serving(port: int) -> set[int] | None:
    """The worker pids seen answering (both, or None yet)."""
    pids = set()
    for _ in range(8):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/", headers={"Connection": "close"})
            m = re.search(rb"pid (\d+)", conn.getresponse().read())
            if m:
                pids.add(int(m.group(1)))
        except OSError:
            return None
        finally:
            conn.close()
    return pids if len(pids) == WORKERS else None


# ---- the three managers --------------------------------------------------------------------


@dataclass
class Running:
    port: int
    reload: Callable[[], None]
    commands: list[str]


@contextlib.contextmanager
def clusterui_app(port: int) -> Iterator[Running]:
    home = Path(tempfile.mkdtemp(prefix="cu-nc-", dir="/tmp"))
    env = {**os.environ, "CLUSTERUI_HOME": str(home), "PORT": str(port)}
    cu = clusterui_bin()
    start = [cu, "start", str(APP), "-i", str(WORKERS)]
    try:
        out = run(start, env)
        if out.returncode != 0:
            raise BenchError(f"clusterui start failed: {tail(out)}")

        def reload() -> None:
            out = run([cu, "reload", APP.stem], env, timeout=120)
            if out.returncode != 0:
                raise BenchError(f"clusterui reload failed: {tail(out)}")

        yield Running(port, reload, [" ".join(start), f"{cu} reload {APP.stem}"])
    finally:
        left = family(home / "supervisor.pid")
        with contextlib.suppress(BenchError):
            run([cu, "down"], env, timeout=30)
        kill_all(left)
        shutil.rmtree(home, ignore_errors=True)


@contextlib.contextmanager
def pm2_app(port: int) -> Iterator[Running]:
    home = Path(tempfile.mkdtemp(prefix="pm2-nc-", dir="/tmp"))
    env = {**os.environ, "PM2_HOME": str(home), "PORT": str(port)}
    start = [str(PM2_BIN), "start", str(APP), "-i", str(WORKERS)]
    try:
        out = run(start, env)
        if out.returncode != 0:
            raise BenchError(f"pm2 start failed: {tail(out)}")

        def reload() -> None:
            out = run([str(PM2_BIN), "reload", APP.stem], env, timeout=120)
            if out.returncode != 0:
                raise BenchError(f"pm2 reload failed: {tail(out)}")

        yield Running(port, reload, [" ".join(start), f"{PM2_BIN} reload {APP.stem}"])
    finally:
        stop_pm2(env, home)


@contextlib.contextmanager
def node_cluster_app(port: int) -> Iterator[Running]:
    import psutil

    argv = ["node", str(PRIMARY), str(WORKERS), str(APP)]
    env = {**os.environ, "PORT": str(port)}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
    reader.start()
    try:

        def reload() -> None:
            before = lines.count("reloaded\n")
            proc.send_signal(signal.SIGHUP)
            wait_for(lambda: lines.count("reloaded\n") > before, 120, "the cluster reload")

        yield Running(port, reload, [" ".join(argv), f"kill -HUP {proc.pid}"])
    finally:
        with contextlib.suppress(psutil.Error):
            kill_all([*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)])
        proc.wait(10)


MANAGERS: dict[str, Callable[[int], contextlib.AbstractContextManager[Running]]] = {
    "clusterui": clusterui_app,
    "pm2": pm2_app,
    "node": node_cluster_app,
}
LABELS = {
    "clusterui": "clusterui round-robin",
    "pm2": "PM2 cluster mode",
    "node": "Node cluster (SCHED_RR)",
}


# ---- one manager --------------------------------------------------------------------------


def throughput(rows: dict[str, Row], apps: dict[str, Running], args: argparse.Namespace) -> None:
    """wrk against each manager in turn, `--rounds` times: other load on this shared
    machine comes and goes, and interleaving spreads it over all three alike. The
    figures are the medians of the rounds."""
    closed: dict[str, list[Wrk]] = {n: [] for n in apps}
    kept: dict[str, list[Wrk]] = {n: [] for n in apps}
    for app in apps.values():  # warm-up
        subprocess.run(wrk_argv(app.port, args, 2, False), capture_output=True, timeout=60)
    for _ in range(args.rounds):
        for name, app in apps.items():
            closed[name].append(wrk(app.port, args, True, rows[name]))
            kept[name].append(wrk(app.port, args, False, rows[name]))
    for name, row in rows.items():
        row.new_conn_rounds = [round(w.rate) for w in closed[name]]
        row.keepalive_rounds = [round(w.rate) for w in kept[name]]
        row.new_conn_s = statistics.median(row.new_conn_rounds)
        row.keepalive_req_s = statistics.median(row.keepalive_rounds)
        row.new_conn_errors = sum(w.errors for w in closed[name])
        row.keepalive_errors = sum(w.errors for w in kept[name])


def reloads(row: Row, app: Running, args: argparse.Namespace) -> None:
    port = app.port
    # Reloads under load: wrk keeps connections alive, the Python client opens new ones.
    argv = wrk_argv(port, args, 600, False)
    row.commands.append(" ".join(argv) + "  (stopped with SIGINT after the reloads)")
    load = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        with NewConnClient(port) as client:
            time.sleep(1)
            for _ in range(args.reloads):
                t0 = time.monotonic()
                app.reload()
                row.reload_seconds.append(round(time.monotonic() - t0, 2))
                wait_for(lambda: serving(port), 60, "both workers answering after a reload")
                time.sleep(1)
    finally:
        load.send_signal(signal.SIGINT)
        out, _ = load.communicate(timeout=30)
    during = parse_wrk(out)
    row.reload_requests = during.requests + client.ok + len(client.failed)
    row.reload_failed = during.errors + len(client.failed)
    row.reload_detail = (
        f"wrk: {during.requests} requests, {during.detail}; python new-connection client: "
        f"{client.ok} ok, {len(client.failed)} failed"
        + (f" (first: {client.failed[0]})" if client.failed else "")
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reloads", type=int, default=3)
    parser.add_argument("--only", default="clusterui,pm2,node")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in MANAGERS]
    if unknown:
        parser.error(f"unknown manager(s) {unknown}; pick from {', '.join(MANAGERS)}")
    try:
        if not shutil.which("wrk"):
            raise BenchError("wrk is not installed (Debian: apt-get install wrk)")
        if not (BENCH / "node_modules" / "express").exists() or ensure_pm2():
            raise BenchError("bench's Node packages are missing: npm install --prefix bench")
        rows = {name: Row(LABELS[name]) for name in names}
        with bench_lock(), contextlib.ExitStack() as stack:
            apps: dict[str, Running] = {}
            for name in names:  # all three run side by side; only one is loaded at a time
                apps[name] = stack.enter_context(MANAGERS[name](free_port()))
                rows[name].commands.extend(apps[name].commands)
                wait_for(lambda a=apps[name]: serving(a.port), 60, f"{name} workers answering")
            print(f"throughput: {args.rounds} interleaved rounds ...", flush=True)
            throughput(rows, apps, args)
            for name in names:
                print(f"reloads: {LABELS[name]} ...", flush=True)
                reloads(rows[name], apps[name], args)
    except BenchError as exc:
        print(f"node_cluster.py: {exc}", file=sys.stderr)
        return 1
    report(list(rows.values()), args)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows.values()], indent=2))
    return 0


def report(rows: list[Row], args: argparse.Namespace) -> None:
    print(
        f"\n{WORKERS} workers of bench/node/express_hello.js; wrk -t{args.threads} "
        f"-c{args.connections} -d{args.seconds:g}s, median of {args.rounds} interleaved rounds; "
        f"{args.reloads} rolling reloads under load"
    )
    print(
        f"{'manager':26} {'new conn/s':>11} {'errors':>7} {'keep-alive req/s':>17} "
        f"{'errors':>7} {'reload: requests':>17} {'failed':>7}"
    )
    for r in rows:
        print(
            f"{r.manager:26} {r.new_conn_s:11.0f} {r.new_conn_errors:7d} "
            f"{r.keepalive_req_s:17.0f} {r.keepalive_errors:7d} {r.reload_requests:17d} "
            f"{r.reload_failed:7d}"
        )
    for r in rows:
        print(
            f"\n{r.manager}: new conn/s rounds {r.new_conn_rounds}, keep-alive rounds "
            f"{r.keepalive_rounds}; reloads took {r.reload_seconds} s; {r.reload_detail}"
        )
        for c in r.commands:
            print(f"  $ {c}")
    by = {r.manager: r for r in rows}
    ours, pm2 = by.get(LABELS["clusterui"]), by.get(LABELS["pm2"])
    if ours and pm2 and pm2.new_conn_s and pm2.keepalive_req_s:
        print(
            f"\nclusterui / PM2: new conn/s {ours.new_conn_s / pm2.new_conn_s:.2f}x "
            f"(target >= 1.2), keep-alive {ours.keepalive_req_s / pm2.keepalive_req_s:.2f}x "
            f"(target >= 0.95); failed across reloads: clusterui {ours.reload_failed}, "
            f"PM2 {pm2.reload_failed} (target 0)"
        )


if __name__ == "__main__":
    sys.exit(main())
