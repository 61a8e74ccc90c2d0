"""Python web apps: clusterui's asgi/wsgi hosts against uvicorn and gunicorn, with wrk.

Everything in one run, side by side, two workers each, on 127.0.0.1:

1. FastAPI (tests/webapps/fastapi_main.py), ``/`` (hello) and ``/sleep?ms=5`` (an
   ``await asyncio.sleep(0.005)``), wrk keep-alive and ``Connection: close``, under
   - clusterui ``asgi: fastapi_main:app`` (round-robin, 2 instances);
   - ``uvicorn fastapi_main:app --workers 2``;
   - ``gunicorn -k uvicorn.workers.UvicornWorker -w 2 fastapi_main:app``.
2. Flask (tests/webapps/flask_app.py) ``/`` under clusterui ``wsgi: flask_app:app``
   (10 threads per worker) and ``gunicorn -k gthread --threads 10 -w 2``.
3. Failed requests and latency p99 across 3 reloads under load (keep-alive and close):
   ``clusterui reload`` against gunicorn's ``kill -HUP`` (FastAPI /sleep, Flask /).

All servers of a group run at once and are measured in turn, ``--rounds`` times over;
each figure is the best round (the background load drifts). Access logs are off.
Ratios print against ``uvicorn --workers 2`` (FastAPI) and gunicorn gthread (Flask).
The targets from issue 13: keep-alive req/s >= 1.0x, new conn/s >= 0.9x, zero failed
requests across reloads, p99 under reload <= 2x steady.

    .venv/bin/python bench/web.py [--duration 8] [--connections 64] [--threads 2] [--rounds 2]

Holds /tmp/clusterui-bench.lock while measuring. Every process it starts is stopped at
the end (also on an error or Ctrl-C); clusterui gets a private home under /tmp.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).parent))
from common import BenchError, bench_lock, clusterui_bin, free_port, kill_all, run, wait_for

ROOT = Path(__file__).resolve().parents[1]
APPS = ROOT / "tests" / "webapps"
BIN = Path(sys.executable).parent


@dataclass
class Wrk:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    detail: str


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise BenchError(f"cannot read a wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> Wrk:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    if not (rps and p50 and p99):
        raise BenchError(f"cannot read wrk's output: {out.strip()[-300:]!r}")
    errors, detail = 0, []
    if e := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(x) for x in e.groups())
        detail.append(e.group(0))
    if e := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(e.group(1))
        detail.append(e.group(0))
    return Wrk(float(rps.group(1)), _ms(p50.group(1)), _ms(p99.group(1)), errors, "; ".join(detail))


def wrk_argv(url: str, seconds: float, opts: argparse.Namespace, close: bool) -> list[str]:
    argv = ["wrk", f"-t{opts.threads}", f"-c{opts.connections}", f"-d{seconds:g}s", "--latency"]
    if close:
        argv += ["-H", "Connection: close"]
    return [*argv, url]


def wrk(url: str, seconds: float, opts: argparse.Namespace, close: bool) -> Wrk:
    out = run(wrk_argv(url, seconds, opts, close), dict(os.environ), timeout=seconds + 60)
    return parse_wrk(out.stdout)


# ---- servers -------------------------------------------------------------------------


class Server:
    """One contender: started in __enter__, stopped (with every child) in __exit__."""

    label = ""

    def __init__(self, workdir: Path, port: int) -> None:
        self.workdir, self.port = workdir, port
        self.procs: list[psutil.Process] = []

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_serving(self) -> None:
        def answers() -> bool:
            try:
                with urllib.request.urlopen(self.url("/"), timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_for(answers, 60, f"{self.label} answering on port {self.port}")

    def reload(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        kill_all(self.procs)


class Clusterui(Server):
    def __init__(self, workdir: Path, port: int, kind: str, target: str) -> None:
        super().__init__(workdir, port)
        self.label = f"clusterui {kind}"
        self.home = Path(tempfile.mkdtemp(prefix="cu-web-", dir="/tmp"))
        self.env = dict(os.environ, CLUSTERUI_HOME=str(self.home))
        self.cu = clusterui_bin()
        (workdir / f"{kind}.yaml").write_text(
            "apps:\n  - name: web\n"
            f"    {kind}: {target}\n    instances: 2\n    listen: 127.0.0.1:{port}\n"
            "    listen_timeout: 30s\n    args: --no-access-log\n"
        )
        self.file = workdir / f"{kind}.yaml"

    def __enter__(self) -> Server:
        out = run([self.cu, "up", "-d", str(self.file)], self.env, timeout=90)
        if out.returncode != 0:
            raise BenchError(f"clusterui up failed: {out.stderr.strip()[-300:]}")
        self.wait_serving()
        return self

    def reload(self) -> None:
        out = run([self.cu, "reload", "web"], self.env, timeout=90)
        if out.returncode != 0:
            raise BenchError(f"clusterui reload failed: {out.stderr.strip()}")

    def __exit__(self, *exc: object) -> None:
        run([self.cu, "down"], self.env, timeout=60)
        shutil.rmtree(self.home, ignore_errors=True)


class Command(Server):
    """uvicorn or gunicorn, started from the apps' directory."""

    def __init__(self, workdir: Path, port: int, label: str, argv: list[str]) -> None:
        super().__init__(workdir, port)
        self.label = label
        self.argv = argv
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Server:
        self.proc = subprocess.Popen(
            self.argv,
            cwd=self.workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.procs.append(psutil.Process(self.proc.pid))
        self.wait_serving()
        return self

    def children(self) -> set[int]:
        assert self.proc is not None
        return {c.pid for c in psutil.Process(self.proc.pid).children()}

    def reload(self) -> None:
        """gunicorn's graceful reload: HUP, then wait until every worker is new."""
        assert self.proc is not None
        before = self.children()
        os.kill(self.proc.pid, signal.SIGHUP)
        wait_for(
            lambda: len(self.children()) >= 2 and not (self.children() & before),
            60,
            f"{self.label} replacing its workers",
        )

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def contenders(workdir: Path) -> dict[str, list]:
    uvicorn, gunicorn = str(BIN / "uvicorn"), str(BIN / "gunicorn")

    def fastapi() -> list[Server]:
        p1, p2, p3 = free_port(), free_port(), free_port()
        return [
            Clusterui(workdir, p1, "asgi", "fastapi_main:app"),
            Command(
                workdir,
                p2,
                "uvicorn --workers 2",
                [uvicorn, "fastapi_main:app", "--workers", "2", "--port", str(p2)]
                + ["--no-access-log"],
            ),
            Command(
                workdir,
                p3,
                "gunicorn UvicornWorker",
                [gunicorn, "-k", "uvicorn.workers.UvicornWorker", "-w", "2"]
                + ["-b", f"127.0.0.1:{p3}", "fastapi_main:app"],
            ),
        ]

    def flask() -> list[Server]:
        p1, p2 = free_port(), free_port()
        return [
            Clusterui(workdir, p1, "wsgi", "flask_app:app"),
            Command(
                workdir,
                p2,
                "gunicorn gthread",
                [gunicorn, "-k", "gthread", "--threads", "10", "-w", "2"]
                + ["-b", f"127.0.0.1:{p2}", "flask_app:app"],
            ),
        ]

    return {"fastapi": fastapi(), "flask": flask()}


@contextlib.contextmanager
def started(server: Server) -> Iterator[Server]:
    with server:
        time.sleep(1)  # let the workers settle after their imports
        yield server


# ---- the runs ------------------------------------------------------------------------


def throughput(server: Server, path: str, opts: argparse.Namespace) -> dict[str, Wrk]:
    url = server.url(path)
    wrk(url, 2, opts, close=False)  # warm-up
    return {
        "keep-alive": wrk(url, opts.duration, opts, close=False),
        "close": wrk(url, opts.duration, opts, close=True),
    }


def under_reloads(server: Server, path: str, opts: argparse.Namespace, close: bool) -> Wrk:
    """wrk while the server is reloaded 3 times, a few seconds apart."""
    seconds = opts.reload_gap * 4
    proc = subprocess.Popen(
        wrk_argv(server.url(path), seconds, opts, close),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(3):
            time.sleep(opts.reload_gap)
            server.reload()
        out, _ = proc.communicate(timeout=seconds + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return parse_wrk(out)


def row(label: str, w: Wrk, base: Wrk | None) -> str:
    ratio = f"{w.rps / base.rps:5.2f}x" if base and base.rps else "     "
    return (
        f"  {label:<34} {w.rps:>9.0f} req/s {ratio}  p50 {w.p50_ms:7.2f} ms"
        f"  p99 {w.p99_ms:7.2f} ms  errors {w.errors}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2, help="wrk threads")
    ap.add_argument("--reload-gap", type=float, default=4.0, help="seconds between reloads")
    ap.add_argument(
        "--rounds", type=int, default=2, help="rounds over all servers; the best run counts"
    )
    opts = ap.parse_args()
    for tool in ("wrk",):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} is not installed (Debian: apt-get install {tool})")
    for exe in ("uvicorn", "gunicorn"):
        if not (BIN / exe).exists():
            raise BenchError(f"{exe} is not in {BIN}; run: pip install -e '.[test]'")
    workdir = Path(tempfile.mkdtemp(prefix="cu-webbench-", dir="/tmp"))
    for name in ("fastapi_main.py", "flask_app.py"):
        shutil.copy(APPS / name, workdir / name)
    print(f"bench/web.py: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start")
    print(
        f"wrk -t{opts.threads} -c{opts.connections} -d{opts.duration:g}s --latency "
        f"[-H 'Connection: close'], best of {opts.rounds} rounds\n"
    )
    steady: dict[tuple[str, str, str], Wrk] = {}
    try:
        with bench_lock():
            servers = contenders(workdir)
            for group, paths in (("fastapi", ("/", "/sleep?ms=5")), ("flask", ("/",))):
                results: dict[str, dict[str, dict[str, Wrk]]] = {}
                with contextlib.ExitStack() as stack:
                    # All of a group up at once, measured in turn, round after round: the
                    # background load drifts, and every server sees each phase of it.
                    live = [stack.enter_context(started(server)) for server in servers[group]]
                    for _ in range(opts.rounds):
                        for server in live:
                            for p in paths:
                                got = throughput(server, p, opts)
                                best = results.setdefault(server.label, {}).setdefault(p, got)
                                for mode, w in got.items():
                                    if w.rps > best[mode].rps:
                                        best[mode] = w
                base_label = "uvicorn --workers 2" if group == "fastapi" else "gunicorn gthread"
                for path in paths:
                    for mode in ("keep-alive", "close"):
                        print(f"{group} {path} {mode}:")
                        base = results[base_label][path][mode]
                        for label, by_path in results.items():
                            w = by_path[path][mode]
                            steady[(label, path, mode)] = w
                            print(row(label, w, base))
                    print()
            print("3 reloads under load (clusterui reload / gunicorn kill -HUP):")
            fresh = contenders(workdir)
            for group, path, picks in (
                ("fastapi", "/sleep?ms=5", ("clusterui asgi", "gunicorn UvicornWorker")),
                ("flask", "/", ("clusterui wsgi", "gunicorn gthread")),
            ):
                for server in fresh[group]:
                    if server.label not in picks:
                        continue
                    with started(server):
                        for mode in ("keep-alive", "close"):
                            w = under_reloads(server, path, opts, close=mode == "close")
                            base = steady[(server.label, path, mode)]
                            print(
                                row(f"{server.label} {path} {mode}", w, None)
                                + f"  p99 vs steady {w.p99_ms / base.p99_ms:4.2f}x"
                                + (f"  ({w.detail})" if w.detail else "")
                            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end (the machine is shared)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench/web.py: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
