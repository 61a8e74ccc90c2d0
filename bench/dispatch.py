"""Dispatch benchmark (docs/targets.md): clusterui's dispatcher against the kernel, Node and PM2.

Everything in one run, side by side (absolute figures on these machines mean little;
ratios from the same run mean more), with wrk on loopback:

1. Throughput: new connections/s (``Connection: close``) and keep-alive requests/s for
   - clusterui round-robin, examples/web.py workers (``clusterui up -d``, a real supervisor);
   - the same with ``dispatchers: 2`` (two dispatcher processes on the one listener), and
     its capacity: connections/s per core of dispatcher CPU, against one dispatcher's;
   - with cheap workers (bench/cheap_worker.py: a fixed answer, no asyncio), one
     dispatcher and two, so the dispatchers rather than the workers run out;
   - the same examples/web.py, N copies bound directly with SO_REUSEPORT (the kernel's limit);
   - Node's cluster module, SCHED_RR and SCHED_NONE, with bench/node/http_worker.js;
   - PM2 cluster mode (``pm2 start http_worker.js -i N``);
   - clusterui ``proxy`` and ``shared`` dispatch with the same Node worker.
   Every row names its worker's language: only same-language ratios are apples-to-apples.
2. Fairness of round-robin over at least 10,000 connections (clusterui's own counters).
3. Dispatch rate with and without a 50k lines/s log flood from another app under the
   same supervisor (and, for reference, the same flood writing to /dev/null outside it).
4. Failed requests during 3 rolling reloads under load, keep-alive and close:
   ``clusterui reload web`` against ``pm2 reload web``.

    .venv/bin/python bench/dispatch.py [--duration 3] [--rounds 2] [--workers 2] [--connections 64]

Every measurement holds an exclusive flock on /tmp/clusterui-bench.lock, so benchmarks
from other people (who take the same lock) never overlap with it; the output says when
the host was busy anyway. Every process the run starts is stopped at the end, on an error
or on Ctrl-C too. clusterui and PM2 get private homes under /tmp.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "src"))

from common import (  # noqa: E402
    BenchError,
    clusterui_bin,
    cpu_seconds,
    free_port,
    kill_all,
    wait_for,
)

from clusterui.dispatch import protocol as proto  # noqa: E402
from clusterui.dispatch.core import PURE_ENV  # noqa: E402

WEB = ROOT / "examples" / "web.py"
CHEAP = BENCH / "cheap_worker.py"
ROUND_ROBIN_APPS = ("web", "web2", "cheap1", "cheap2")
NODE_WORKER = BENCH / "node" / "http_worker.js"
NODE_CLUSTER = BENCH / "node" / "cluster_rr.js"
LOCK_PATH = "/tmp/clusterui-bench.lock"

# Targets (docs/targets.md).
CLOSE_VS_REUSEPORT = 0.90
KEEPALIVE_VS_REUSEPORT = 0.95
DISPATCH_US = 8.0  # µs of the dispatcher's CPU per handed connection
CLOSE_VS_NODE_RR = 1.5
FAIRNESS = 1.02
FLOOD_RATIO = 0.90

sys.path.insert(0, str(BENCH))
try:  # bench/idle.py installs PM2 into bench/node_modules; share its installer.
    from idle import PM2_BIN, ensure_pm2
except ImportError:  # pragma: no cover - idle.py moved: do what it does
    PM2_BIN = BENCH / "node_modules" / ".bin" / "pm2"

    def ensure_pm2() -> str | None:
        if PM2_BIN.exists():
            return None
        if not shutil.which("npm"):
            return "npm is not installed (it installs PM2 from bench/package.json)"
        argv = ["npm", "install", "--prefix", str(BENCH), "--no-audit", "--no-fund"]
        out = subprocess.run(argv, capture_output=True, text=True)
        return None if out.returncode == 0 and PM2_BIN.exists() else "npm install failed"


# ---- processes -----------------------------------------------------------------------------


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def wait_port(port: int, timeout: float = 15.0) -> None:
    wait_for(lambda: answers(port), timeout, f"an HTTP answer on port {port}")


def spawn(
    argv: list[str], env: dict[str, str] | None = None, pass_fds=(), stdout=subprocess.DEVNULL
) -> subprocess.Popen:
    full = {k: v for k, v in os.environ.items() if k not in ("CLUSTERUI_CHANNEL_FD", "PORT")}
    full.update(env or {})
    # Own session: one killpg stops the process and everything it started.
    return subprocess.Popen(
        argv,
        env=full,
        pass_fds=pass_fds,
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
    )


def kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run(argv: list[str], env: dict[str, str], timeout: float = 60) -> str:
    """Run a manager's CLI; its stdout, or BenchError with its last line."""
    try:
        out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"`{' '.join(argv[:3])}` took longer than {timeout:g} s") from None
    if out.returncode != 0:
        lines = (out.stderr or out.stdout or "").strip().splitlines()
        last = lines[-1] if lines else f"exit code {out.returncode}"
        raise BenchError(f"`{Path(argv[0]).name} {' '.join(argv[1:3])}` failed: {last}")
    return out.stdout


def family(pid: int) -> list[Any]:
    """A process and its descendants as psutil objects (safe to signal later: no pid reuse)."""
    import psutil

    try:
        top = psutil.Process(pid)
        return [top, *top.children(recursive=True)]
    except psutil.Error:
        return []


def gone(pids: list[int]) -> bool:
    for pid in pids:
        try:
            os.kill(pid, 0)
            return False
        except ProcessLookupError:
            pass
    return True


def read_pidfile(path: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(path.read_text().split()[0])
    return None


# ---- the exclusive lock and the host's load ---------------------------------------------------


def cpu_busy(seconds: float = 0.5) -> float:
    """Share of all CPUs busy over SECONDS, from /proc/stat (0..100)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        return sum(values) - idle, sum(values)

    busy0, total0 = sample()
    time.sleep(seconds)
    busy1, total1 = sample()
    return 100 * (busy1 - busy0) / max(1, total1 - total0)


MANAGERS: set[int] = set()  # daemons this run started (supervisor, PM2): not our children


def host_busy_seconds() -> float:
    """CPU seconds all CPUs have spent busy since boot."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> dict[int, float]:
    """CPU seconds of every process of this run, by pid.

    Children's times (of reaped children) are included, so a process that exits inside
    a window (wrk, a replaced worker) is still counted, through its parent.
    """
    import psutil

    out: dict[int, float] = {}
    for root in (os.getpid(), *MANAGERS):
        for proc in family(root):
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                out[proc.pid] = t.user + t.system + t.children_user + t.children_system
    return out


@contextlib.contextmanager
def others_cpu() -> Iterator[list[float]]:
    """Yields a list that receives, at the end, the cores used by processes of other people."""
    result: list[float] = []
    busy0, ours0, wall0 = host_busy_seconds(), own_cpu(), time.monotonic()
    yield result
    busy1, ours1, wall1 = host_busy_seconds(), own_cpu(), time.monotonic()
    ours = sum(v - ours0.get(pid, 0.0) for pid, v in ours1.items())
    ours -= sum(v for pid, v in ours0.items() if pid not in ours1)  # counted by their parent
    result.append(max(0.0, (busy1 - busy0) - ours) / max(1e-3, wall1 - wall0))


@dataclass
class HostNote:
    phase: str
    load1: float
    busy: float  # % of the machine busy just before the phase, while this run was idle
    waited: float  # seconds spent waiting for the lock


HOST_NOTES: list[HostNote] = []
START_LOAD = 0.0
OTHERS: list[float] = []  # cores used by others during each wrk run of fixed length
BUSY_LIMIT = 25.0  # % of the machine used by others while we are idle: a noisy figure
NOISY = 0.25  # cores used by others during a run: its figure is not to be trusted


@contextlib.contextmanager
def exclusive(phase: str) -> Iterator[None]:
    """Hold /tmp/clusterui-bench.lock (flock) around one measured section."""
    fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        start = time.monotonic()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"  waiting for {LOCK_PATH} (another benchmark is running) ...", flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        waited = time.monotonic() - start
        note = HostNote(phase, os.getloadavg()[0], cpu_busy(), waited)
        HOST_NOTES.append(note)
        if note.busy > BUSY_LIMIT:
            print(
                f"  note: the host was {note.busy:.0f}% busy before '{phase}' "
                f"(load average {note.load1:.2f}): figures may be low",
                flush=True,
            )
        yield
    finally:
        os.close(fd)  # releases the lock


# ---- wrk ---------------------------------------------------------------------------------------


@dataclass
class Wrk:
    requests: int = 0
    seconds: float = 0.0
    rps: float = 0.0
    connect: int = 0
    read: int = 0
    write: int = 0
    timeout: int = 0
    non2xx: int = 0
    others: float = 0.0  # cores used by other people's processes during the run
    # The dispatcher's CPU (user + system) per request of this run, in µs: in close mode
    # one request is one handed connection. Where the target has a dispatcher process.
    dispatch_us: float | None = None  # dispatcher CPU (all of them) per connection
    dispatch_cores: float | None = None  # cores of dispatcher CPU during the run

    @property
    def errors(self) -> int:
        return self.connect + self.read + self.write + self.timeout + self.non2xx

    def detail(self) -> str:
        return (
            f"connect {self.connect}, read {self.read}, write {self.write}, "
            f"timeout {self.timeout}, non-2xx/3xx {self.non2xx}"
        )


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_wrk(out: str) -> Wrk:
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h),", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m or not rps:
        raise BenchError(f"cannot read wrk's output: {out.strip()[-200:]!r}")
    w = Wrk(int(m.group(1)), float(m.group(2)) * _UNITS[m.group(3)], float(rps.group(1)))
    if e := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        w.connect, w.read, w.write, w.timeout = (int(x) for x in e.groups())
    if e := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        w.non2xx = int(e.group(1))
    return w


def wrk_argv(port: int, seconds: float, opts: argparse.Namespace, close: bool) -> list[str]:
    argv = ["wrk", f"-t{opts.threads}", f"-c{opts.connections}", f"-d{seconds:g}s"]
    if close:
        argv += ["-H", "Connection: close"]
    return [*argv, f"http://127.0.0.1:{port}/"]


def wrk(port: int, seconds: float, opts: argparse.Namespace, close: bool) -> Wrk:
    with others_cpu() as others:
        proc = spawn(wrk_argv(port, seconds, opts, close), stdout=subprocess.PIPE)
        try:
            out, _ = proc.communicate(timeout=seconds + 30)
        finally:
            kill(proc)
    result = parse_wrk(out.decode())
    result.others = others[0]
    OTHERS.append(result.others)
    return result


@contextlib.contextmanager
def wrk_running(port: int, opts: argparse.Namespace, close: bool) -> Iterator[list[Wrk]]:
    """wrk for as long as the block runs (SIGINT makes it print its summary)."""
    proc = spawn(wrk_argv(port, 3600, opts, close), stdout=subprocess.PIPE)
    result: list[Wrk] = []
    try:
        yield result
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        result.append(parse_wrk(out.decode()))
    finally:
        kill(proc)


# ---- clusterui -------------------------------------------------------------------------------

FLOOD = '''\
"""Log flood for bench/dispatch.py: RATE lines/s in batches every 10 ms.

Writes its running total and a CLOCK_MONOTONIC time to COUNTER, so the benchmark
knows the rate really achieved (a full pipe would slow it down).
"""
import os, signal, sys, time

rate, counter = int(sys.argv[1]), sys.argv[2]
signal.signal(signal.SIGINT, lambda *a: sys.exit(0))
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
batch = max(1, rate // 100)
period = batch / rate
n = 0
pad = "x" * 48
next_t = last = time.monotonic()
while True:
    sys.stdout.write("".join(f"flood line {n + i} {pad}\\n" for i in range(batch)))
    sys.stdout.flush()
    n += batch
    now = time.monotonic()
    if now - last >= 0.1:
        with open(counter + ".tmp", "w") as f:
            f.write(f"{n} {now}")
        os.replace(counter + ".tmp", counter)
        last = now
    next_t += period
    delay = next_t - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    elif delay < -0.1:
        next_t = time.monotonic()  # far behind (a full pipe): no catch-up burst
'''


class Clusterui:
    """One private supervisor holding every clusterui app of the run.

    Apps: web (examples/web.py, round-robin), node-proxy and node-shared (the Node
    worker), flood (the log flood). Only the app being measured runs at a time.
    """

    def __init__(self, workdir: Path, opts: argparse.Namespace):
        self.cli = clusterui_bin()
        # Short on purpose: the control socket's path must fit in 108 bytes.
        self.home = Path(tempfile.mkdtemp(prefix="cu-bench-d-", dir="/tmp"))
        self.env = {**os.environ, "CLUSTERUI_HOME": str(self.home)}
        self.ports = {
            "web": free_port(),
            "web2": free_port(),
            "cheap1": free_port(),
            "cheap2": free_port(),
            "node-proxy": free_port(),
            "node-shared": free_port(),
        }
        self.counter = workdir / "flood.count"
        (workdir / "flood.py").write_text(FLOOD)
        self.flood_script = workdir / "flood.py"
        q = json.dumps  # a JSON string is a YAML string
        n = opts.workers
        apps = [
            f"  - name: web\n    script: {q(str(WEB))}\n    exec_mode: cluster\n"
            f"    instances: {n}\n    listen: 127.0.0.1:{self.ports['web']}\n"
            f"    dispatch: round-robin\n",
            f"  - name: web2\n    script: {q(str(WEB))}\n    exec_mode: cluster\n"
            f"    instances: {n}\n    listen: 127.0.0.1:{self.ports['web2']}\n"
            f"    dispatch: round-robin\n    dispatchers: 2\n",
            *(
                f"  - name: cheap{d}\n    script: {q(str(CHEAP))}\n    exec_mode: cluster\n"
                f"    instances: {n}\n    listen: 127.0.0.1:{self.ports[f'cheap{d}']}\n"
                f"    dispatchers: {d}\n"
                for d in (1, 2)
            ),
            f"  - name: flood\n    script: {q(str(self.flood_script))}\n"
            f"    args: [{q(str(opts.flood_rate))}, {q(str(self.counter))}]\n"
            f"    exec_mode: fork\n    instances: 1\n",
        ]
        if opts.node:
            for mode in ("proxy", "shared"):
                apps.append(
                    f"  - name: node-{mode}\n    script: {q(str(NODE_WORKER))}\n"
                    f"    interpreter: node\n    exec_mode: cluster\n    instances: {n}\n"
                    f"    listen: 127.0.0.1:{self.ports['node-' + mode]}\n"
                    f"    dispatch: {mode}\n"
                )
        self.file = workdir / "ecosystem.yaml"
        self.file.write_text("apps:\n" + "".join(apps))
        node_apps = ["node-proxy", "node-shared"] if opts.node else []
        self.apps = [*ROUND_ROBIN_APPS, "flood", *node_apps]
        self.workers = n
        self.pid: int | None = None

    def __enter__(self) -> Clusterui:
        try:
            run([self.cli, "up", "-d", str(self.file)], self.env)
            self.pid = read_pidfile(self.home / "supervisor.pid")
            if self.pid:
                MANAGERS.add(self.pid)
            self.clu("stop", *self.apps)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def clu(self, *args: str) -> str:
        return run([self.cli, *args], self.env)

    def ls(self) -> list[dict]:
        return json.loads(self.clu("ls", "--json"))

    def online(self, app: str) -> list[dict]:
        return [w for w in self.ls() if w["app"] == app and w["status"] == "online" and w["pid"]]

    def start(self, app: str) -> None:
        self.clu("start", app)
        want = 1 if app == "flood" else self.workers
        wait_for(lambda: len(self.online(app)) == want, 20, f"{app}: {want} online", 0.2)
        if app in self.ports:
            wait_port(self.ports[app])

    def stop(self, app: str) -> None:
        self.clu("stop", app)

    def counts(self, app: str) -> dict[str, int]:
        """Connections handed to each instance so far, once the dispatcher's figures settle.

        The dispatcher reports about once a second: read until two reads agree.
        """
        last: dict[str, int] | None = None
        for _ in range(10):
            now = {str(w["instance"]): w["connections"] for w in self.ls() if w["app"] == app}
            if now == last:
                return now
            last = now
            time.sleep(1.2)
        return last or {}

    def dispatcher_pids(self, app: str) -> list[int]:
        """The pids of the app's dispatcher processes (the snapshot's `dispatchers`)."""
        from clusterui.client import Client

        async def ask() -> list[int]:
            client = await Client.connect(self.home)
            try:
                state = await client.state(history=False)
            finally:
                await client.close()
            row = next((a for a in state["apps"] if a["name"] == app), None)
            return [d["pid"] for d in row["dispatchers"]] if row else []

        return asyncio.run(ask())

    def supervisor_cpu(self) -> float:
        """CPU seconds the supervisor has used (user + system, all threads)."""
        import psutil

        with contextlib.suppress(psutil.Error, TypeError):
            t = psutil.Process(self.pid).cpu_times()
            return t.user + t.system
        return 0.0

    def flood_count(self) -> tuple[int, float]:
        with contextlib.suppress(OSError, ValueError):
            n, t = self.counter.read_text().split()
            return int(n), float(t)
        return 0, time.monotonic()

    def close(self) -> None:
        left = family(self.pid) if self.pid else []
        MANAGERS.discard(self.pid or 0)
        with contextlib.suppress(BenchError):
            run([self.cli, "down"], self.env, timeout=30)
        kill_all(left)  # only what `down` did not stop
        shutil.rmtree(self.home, ignore_errors=True)


# ---- PM2 ---------------------------------------------------------------------------------------


class Pm2:
    """A private PM2 daemon (PM2_HOME under /tmp) running http_worker.js in cluster mode."""

    def __init__(self, workers: int):
        self.home = Path(tempfile.mkdtemp(prefix="pm2-bd-", dir="/tmp"))
        self.port = free_port()
        self.env = {**os.environ, "PM2_HOME": str(self.home), "PORT": str(self.port)}
        self.workers = workers
        self.pid: int | None = None

    def __enter__(self) -> Pm2:
        try:
            self.pm2("start", str(NODE_WORKER), "-i", str(self.workers), "--name", "web")
            self.pid = read_pidfile(self.home / "pm2.pid")
            if self.pid:
                MANAGERS.add(self.pid)
            wait_for(lambda: len(self.pids()) == self.workers, 20, "PM2 workers online", 0.2)
            wait_port(self.port)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def pm2(self, *args: str) -> str:
        return run([str(PM2_BIN), *args], self.env)

    def pids(self) -> list[int]:
        # jlist prints its JSON on the last line (notices may come first).
        rows = json.loads(self.pm2("jlist").strip().splitlines()[-1])
        return [p["pid"] for p in rows if p["pm2_env"]["status"] == "online" and p["pid"]]

    def close(self) -> None:
        pid = read_pidfile(self.home / "pm2.pid")
        left = family(pid) if pid else []
        MANAGERS.discard(pid or 0)
        with contextlib.suppress(BenchError):
            run([str(PM2_BIN), "kill"], self.env, timeout=30)
        kill_all(left)  # only what `pm2 kill` did not stop
        shutil.rmtree(self.home, ignore_errors=True)


# ---- throughput targets --------------------------------------------------------------------------


@dataclass
class Target:
    """Something answering HTTP on 127.0.0.1:port with N workers behind it."""

    name: str
    worker: str  # the worker's language: python | node
    port: int = 0
    procs: list[subprocess.Popen] = field(default_factory=list)
    # Per-worker connections so far, where a round-robin dispatcher counts them (fairness).
    counts: Callable[[], dict[str, int]] | None = None
    # The pids of the processes that accept and hand connections on (round-robin rows).
    dispatchers: Callable[[], list[int]] | None = None

    def start(self, workers: int) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        for p in self.procs:
            kill(p)


class ClusteruiApp(Target):
    """An app of the run's supervisor, started for its measurement only."""

    def __init__(self, name: str, worker: str, cu: Clusterui, app: str):
        super().__init__(name, worker)
        self.cu, self.app = cu, app

    def start(self, workers: int) -> None:
        self.port = self.cu.ports[self.app]
        self.cu.start(self.app)
        if self.app in ROUND_ROBIN_APPS:  # fairness from the supervisor's counters
            self.counts = lambda: self.cu.counts(self.app)
            self.dispatchers = lambda: self.cu.dispatcher_pids(self.app)

    def stop(self) -> None:
        self.cu.stop(self.app)


def bare_listener() -> tuple[socket.socket, int]:
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(4096)
    return lsock, lsock.getsockname()[1]


def channel_worker(script: Path, wid: int) -> tuple[socket.socket, socket.socket, subprocess.Popen]:
    """A protocol v1 worker on a new channel: (our end, its end, the process)."""
    ours, wend = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    proc = spawn(
        [sys.executable, str(script)],
        {"CLUSTERUI_CHANNEL_FD": str(wend.fileno()), "CLUSTERUI_INSTANCE": str(wid)},
        pass_fds=(wend.fileno(),),
    )
    return ours, wend, proc


class Dispatched(Target):
    """The dispatcher process alone, no supervisor (`--bare`): exactly as the supervisor
    runs it, with `script` workers and `env` (the Python path: PURE_ENV)."""

    def __init__(
        self, name: str, worker: str, script: Path = WEB, env: dict[str, str] | None = None
    ):
        super().__init__(name, worker)
        self.script, self.env = script, env or {}

    def start(self, workers: int) -> None:
        self.lsock, self.port = bare_listener()
        self.ctl, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.procs.append(
            spawn(
                [sys.executable, "-m", "clusterui.dispatch", "round-robin"],
                {
                    "CLUSTERUI_LISTEN_FD": str(self.lsock.fileno()),
                    "CLUSTERUI_CONTROL_FD": str(theirs.fileno()),
                    **self.env,
                },
                pass_fds=(self.lsock.fileno(), theirs.fileno()),
            )
        )
        theirs.close()
        for wid in range(workers):
            ours, wend, proc = channel_worker(self.script, wid)
            self.procs.append(proc)
            proto.send(
                self.ctl, {"t": "add", "id": wid}, [ours.fileno(), wend.fileno()], block=True
            )
            ours.close()
            wend.close()
        ready = set()
        deadline = time.monotonic() + 15
        while len(ready) < workers:
            if time.monotonic() > deadline:
                raise BenchError("the bare dispatcher's workers never became ready")
            if not select.select([self.ctl], [], [], 1)[0]:
                continue
            msg = json.loads(self.ctl.recv(proto.MAX_MESSAGE))
            if msg.get("t") == "ready":
                ready.add(msg["id"])
        self.counts = self._counts
        self.dispatchers = lambda: [self.procs[0].pid]

    def _counts(self) -> dict[str, int]:
        self.ctl.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while self.ctl.recv(proto.MAX_MESSAGE):
                pass  # stale pushed messages
        self.ctl.setblocking(True)
        proto.send(self.ctl, {"t": "stats"}, block=True)
        while True:
            msg = json.loads(self.ctl.recv(proto.MAX_MESSAGE))
            if msg.get("t") == "stats":
                return {k: v["handed"] for k, v in msg["workers"].items()}

    def stop(self) -> None:
        super().stop()
        self.ctl.close()
        self.lsock.close()


class Floor(Target):
    """bench/handoff_floor.c: the kernel's floor for handing connections over (no
    bookkeeping at all), with the same workers; compiled with gcc for the run."""

    def __init__(self, name: str, worker: str, binary: Path, script: Path = CHEAP):
        super().__init__(name, worker)
        self.binary, self.script = binary, script

    def start(self, workers: int) -> None:
        self.lsock, self.port = bare_listener()
        self.ends: list[socket.socket] = []
        for wid in range(workers):
            ours, wend, proc = channel_worker(self.script, wid)
            self.procs.append(proc)
            wend.close()
            ours.settimeout(15)
            if proto.decode(ours.recv(proto.MAX_MESSAGE)).get("t") != "ready":
                raise BenchError("a floor worker did not say ready first")
            ours.settimeout(None)
            self.ends.append(ours)
        fds = [self.lsock.fileno(), *(e.fileno() for e in self.ends)]
        self.procs.insert(0, spawn([str(self.binary), *map(str, fds)], pass_fds=fds))
        self.dispatchers = lambda: [self.procs[0].pid]
        wait_port(self.port)

    def stop(self) -> None:
        super().stop()
        for e in self.ends:
            e.close()
        self.lsock.close()


def build_floor(workdir: Path) -> Path | str:
    """Compile bench/handoff_floor.c: its path, or why not."""
    binary = workdir / "handoff_floor"
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return "no C compiler"
    done = subprocess.run(
        [cc, "-O2", "-o", str(binary), str(BENCH / "handoff_floor.c")],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        return f"cannot compile bench/handoff_floor.c: {done.stderr.strip()[-200:]}"
    return binary


class ReusePort(Target):
    def start(self, workers: int) -> None:
        self.port = free_port()
        for wid in range(workers):
            self.procs.append(
                spawn(
                    [sys.executable, str(WEB), "--reuseport", "--host", "127.0.0.1"],
                    {"PORT": str(self.port), "CLUSTERUI_INSTANCE": str(wid)},
                )
            )
        wait_port(self.port)
        # No signal says every copy has bound; the kernel only spreads over those that have.
        time.sleep(0.5)


class NodeCluster(Target):
    """bench/node/cluster_rr.js: Node's cluster module, SCHED_RR or SCHED_NONE."""

    def __init__(self, name: str, policy: str):
        super().__init__(name, "node")
        self.policy = policy

    def start(self, workers: int) -> None:
        self.port = free_port()
        proc = spawn(
            ["node", str(NODE_CLUSTER), str(workers), self.policy],
            {"PORT": str(self.port)},
            stdout=subprocess.PIPE,
        )
        self.procs.append(proc)
        assert proc.stdout is not None
        # The primary prints "ready" once every worker listens.
        if not select.select([proc.stdout], [], [], 15)[0]:
            raise BenchError("Node's cluster primary did not report its workers listening")
        if not proc.stdout.readline().startswith(b"ready"):
            raise BenchError("Node's cluster primary exited before its workers listened")
        wait_port(self.port)


class Pm2Cluster(Target):
    pm2: Pm2 | None = None

    def start(self, workers: int) -> None:
        pm2 = Pm2(workers)
        pm2.__enter__()  # on failure it has cleaned up after itself
        self.pm2, self.port = pm2, pm2.port

    def stop(self) -> None:
        if self.pm2 is not None:
            self.pm2.close()


# ---- the phases ----------------------------------------------------------------------------------


@dataclass
class Row:
    target: str
    worker: str
    close: list[Wrk] = field(default_factory=list)
    keepalive: list[Wrk] = field(default_factory=list)
    skipped: str = ""


def best(rs: list[Wrk]) -> Wrk:
    return max(rs, key=lambda r: r.rps)


Counts = dict[str, int]


def add_counts(fairness: dict[str, Counts], name: str, counts: Counts) -> None:
    old = fairness.get(name, {})
    fairness[name] = {k: old.get(k, 0) + counts.get(k, 0) for k in {*old, *counts}}


def measure_throughput(
    make: Callable[[], Target], rows: dict[str, Row], fairness: dict[str, Counts], opts
) -> None:
    target = make()
    print(f"- {target.name} ({target.worker}) ...", flush=True)
    row = rows.setdefault(target.name, Row(target.name, target.worker))
    with exclusive(target.name):
        try:
            target.start(opts.workers)
            wrk(target.port, 1, opts, False)  # warm up
            before = target.counts() if target.counts else None
            pids = target.dispatchers() if target.dispatchers else []
            cpu0 = sum(cpu_seconds(p) for p in pids)
            result = wrk(target.port, opts.duration, opts, True)
            if pids and result.requests:
                used = sum(cpu_seconds(p) for p in pids) - cpu0
                result.dispatch_us = used / result.requests * 1e6
                result.dispatch_cores = used / opts.duration
            row.close.append(result)
            if before is not None and target.counts:
                after = target.counts()
                add_counts(fairness, target.name, {k: after[k] - before.get(k, 0) for k in after})
            row.keepalive.append(wrk(target.port, opts.duration, opts, False))
        finally:
            target.stop()


def top_up_fairness(cu: Clusterui, fairness: dict[str, Counts], opts) -> None:
    """More `Connection: close` load on round-robin until enough connections are counted."""
    total = sum(fairness.get(RR, {}).values())
    if total >= opts.fairness_connections:
        return
    print("- more connections for the fairness figure ...", flush=True)
    with exclusive("fairness"):
        cu.start("web")
        try:
            before = cu.counts("web")
            while True:
                wrk(cu.ports["web"], opts.duration, opts, True)
                after = cu.counts("web")
                counts = {k: after[k] - before.get(k, 0) for k in after}
                if sum(counts.values()) + total >= opts.fairness_connections:
                    break
            add_counts(fairness, RR, counts)
        finally:
            cu.stop("web")


@dataclass
class FloodResult:
    label: str
    run: Wrk
    lines_per_s: float | None = None
    supervisor_cpu: float | None = None  # % of one core during the wrk run


def measure_flood(cu: Clusterui, opts) -> list[FloodResult]:
    print("- round-robin under a log flood ...", flush=True)
    port = cu.ports["web"]
    out: dict[str, FloodResult] = {}

    def keep(result: FloodResult) -> None:  # best of the rounds, as for throughput
        if result.label not in out or result.run.rps > out[result.label].run.rps:
            out[result.label] = result

    def timed(label: str) -> FloodResult:
        """One wrk run, with the supervisor's CPU use over it."""
        c0, w0 = cu.supervisor_cpu(), time.monotonic()
        result = wrk(port, opts.duration, opts, True)
        c1, w1 = cu.supervisor_cpu(), time.monotonic()
        return FloodResult(label, result, None, 100 * (c1 - c0) / (w1 - w0))

    def flooded(label: str, start: Callable[[], Any], stop: Callable[[Any], None]) -> None:
        handle = start()
        try:
            time.sleep(1)  # steady state: the flood's output path is busy
            n0, t0 = cu.flood_count()
            result = timed(label)
            n1, t1 = cu.flood_count()
        finally:
            stop(handle)
        result.lines_per_s = (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0
        keep(result)

    with exclusive("log flood"):
        cu.start("web")
        try:
            wrk(port, 1, opts, True)  # warm up
            for _ in range(opts.rounds):
                keep(timed("no flood"))
                flooded(
                    "flood app under the same supervisor",
                    lambda: cu.start("flood"),
                    lambda _: cu.stop("flood"),
                )
                # Reference: the same flood program, its output to /dev/null, outside
                # clusterui: what the flood's own CPU costs here, log capture aside.
                argv = [sys.executable, str(cu.flood_script), str(opts.flood_rate), str(cu.counter)]
                flooded("same flood outside it (to /dev/null)", lambda a=argv: spawn(a), kill)
        finally:
            cu.stop("web")
    return list(out.values())


@dataclass
class ReloadResult:
    manager: str
    load: str  # keep-alive | close
    run: Wrk | None = None
    reloads: list[float] = field(default_factory=list)  # seconds until the old workers were gone
    skipped: str = ""


def reload_under_load(
    manager: str,
    port: int,
    close: bool,
    reload: Callable[[], object],
    pids: Callable[[], list[int]],
    opts,
) -> ReloadResult:
    result = ReloadResult(manager, "close" if close else "keep-alive")
    with wrk_running(port, opts, close) as done:
        time.sleep(opts.reload_gap)
        for _ in range(opts.reloads):
            old = pids()
            start = time.monotonic()
            reload()
            wait_for(lambda o=old: gone(o), 30, f"{manager}: the old workers exiting")
            result.reloads.append(time.monotonic() - start)
            time.sleep(opts.reload_gap)
    result.run = done[0]
    return result


def measure_reloads(cu: Clusterui | None, opts) -> list[ReloadResult]:
    out: list[ReloadResult] = []
    if cu is not None:
        print(f"- {opts.reloads} rolling reloads under load, clusterui ...", flush=True)
        with exclusive("clusterui reloads"):
            cu.start("web")
            try:

                def cu_pids() -> list[int]:
                    return [w["pid"] for w in cu.online("web")]

                for close in (False, True):
                    out.append(
                        reload_under_load(
                            "clusterui",
                            cu.ports["web"],
                            close,
                            lambda: cu.clu("reload", "web"),
                            cu_pids,
                            opts,
                        )
                    )
            finally:
                cu.stop("web")
    why = pm2_unavailable(opts)
    if why:
        out += [ReloadResult("PM2", load, skipped=why) for load in ("keep-alive", "close")]
        return out
    print(f"- {opts.reloads} rolling reloads under load, PM2 ...", flush=True)
    with exclusive("PM2 reloads"), Pm2(opts.workers) as pm2:
        for close in (False, True):
            out.append(
                reload_under_load(
                    "PM2", pm2.port, close, lambda: pm2.pm2("reload", "web"), pm2.pids, opts
                )
            )
    return out


_PM2_WHY: dict[str, str | None] = {}


def pm2_unavailable(opts) -> str | None:
    if opts.no_pm2:
        return "--no-pm2"
    if not opts.node:
        return "node is not installed" if not shutil.which("node") else "--no-node"
    if "why" not in _PM2_WHY:
        _PM2_WHY["why"] = ensure_pm2()
    return _PM2_WHY["why"]


# ---- the report ------------------------------------------------------------------------------


def mark(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def print_throughput(rows: dict[str, Row], opts) -> None:
    print()
    print(
        f"{opts.workers} workers per target, wrk -t{opts.threads} -c{opts.connections}, "
        f"{opts.duration:g} s per run, best of {opts.rounds}, {os.cpu_count()} CPUs, loopback"
    )
    print()
    head = (
        f"{'target':<36} {'worker':<7} {'new conn/s (close)':>18} {'errors':>6} {'others':>6} "
        f"{'keep-alive req/s':>17} {'errors':>6} {'others':>6}"
    )
    print(head)
    print("-" * len(head))
    for r in rows.values():
        if r.skipped or not r.close:
            print(f"{r.target:<36} {r.worker:<7} skipped: {r.skipped or 'no result'}")
            continue
        c, k = best(r.close), best(r.keepalive)
        print(
            f"{r.target:<36} {r.worker:<7} {c.rps:>18,.0f} {c.errors:>6} {c.others:>6.2f} "
            f"{k.rps:>17,.0f} {k.errors:>6} {k.others:>6.2f}"
        )
    print(
        "others = CPU cores used by processes outside this run during that wrk run "
        f"(of {os.cpu_count()}); above {NOISY:g} the figure is unreliable"
    )
    print()
    for r in rows.values():
        if r.skipped or not r.close:
            continue
        costs = [w.dispatch_us for w in r.close if w.dispatch_us is not None]
        if costs:
            c = best(r.close)
            print(
                f"dispatcher CPU per handed connection, {r.target}: {min(costs):.1f} µs "
                f"(rounds: {', '.join(f'{x:.1f}' for x in costs)}; {c.rps:,.0f} conn/s in the "
                f"best round)  target <= {DISPATCH_US:g} µs  {mark(min(costs) <= DISPATCH_US)}"
            )
            # Capacity: what one core of dispatcher CPU hands per second, and how many
            # cores the dispatchers used in the best round (2 dispatchers can use 2).
            print(
                f"  capacity {1e6 / min(costs):,.0f} conn/s per dispatcher-core; "
                f"dispatchers used {c.dispatch_cores or 0:.2f} core(s) in the best round"
            )

    def get(name: str) -> Row | None:
        r = rows.get(name)
        return r if r and r.close and not r.skipped else None

    def cost(name: str) -> float | None:
        r = get(name)
        costs = [w.dispatch_us for w in r.close if w.dispatch_us is not None] if r else []
        return min(costs) if costs else None

    if (floor := cost(FLOOR)) is not None:
        print()
        print(
            f"dispatcher CPU per connection against the floor ({FLOOR}: {floor:.1f} µs, "
            f"itself {'under' if floor <= DISPATCH_US else 'over'} the {DISPATCH_US:g} µs target):"
        )
        for name in (CHEAP1, BARE_CHEAP_C, BARE_CHEAP_PY):
            if (mine := cost(name)) is not None:
                print(f"  {name}: {mine:.1f} µs = {mine / floor:.2f}× the floor")
    elif FLOOR in rows:
        print(f"\n{FLOOR}: skipped: {rows[FLOOR].skipped}")

    def ratio(a: str, b: str, kind: str) -> float | None:
        ra, rb = get(a), get(b)
        if not ra or not rb:
            return None
        return best(getattr(ra, kind)).rps / best(getattr(rb, kind)).rps

    def noisy(a: str, b: str, kind: str) -> str:
        runs = [best(getattr(r, kind)) for r in (get(a), get(b)) if r]
        return "  NOISY: others used CPU" if any(w.others > NOISY for w in runs) else ""

    print()
    print("ratios (same run):")
    checks = [
        (RR, REUSE, "close", CLOSE_VS_REUSEPORT, "python / python: apples-to-apples"),
        (RR, REUSE, "keepalive", KEEPALIVE_VS_REUSEPORT, "python / python: apples-to-apples"),
        (RR2, REUSE, "close", CLOSE_VS_REUSEPORT, "python / python: 2 dispatchers"),
        (
            RR,
            NODE_RR,
            "close",
            CLOSE_VS_NODE_RR,
            "python / node: the target's figure, mixes languages",
        ),
    ]
    for a, b, kind, target, note in checks:
        value = ratio(a, b, kind)
        what = "new conn/s" if kind == "close" else "keep-alive req/s"
        if value is None:
            print(f"  {what:<16} {a} / {b}: n/a")
            continue
        print(
            f"  {what:<16} {a} / {b}: {value:.2f}  target >= {target:g}  {mark(value >= target)}"
            f"  ({note}){noisy(a, b, kind)}"
        )
    info = [
        (NODE_RR, NODE_NONE, "node / node: Node's own round-robin against its kernel spread"),
        (CU_PROXY, NODE_RR, "node / node: same worker, clusterui proxy vs Node round-robin"),
        (CU_SHARED, NODE_NONE, "node / node: same worker, both let the kernel spread"),
        (PM2, NODE_RR, "node / node: PM2's cluster mode is Node's cluster module"),
    ]
    if get(BARE):
        info.insert(0, (RR, BARE, "python / python: the supervisor around the dispatcher"))
    info.insert(0, (RR2, RR, "python / python: 2 dispatchers against 1, same workers"))
    info.insert(1, (CHEAP2, CHEAP1, "the same with cheap workers: the dispatchers' share"))
    for a, b, note in info:
        for kind, what in (("close", "new conn/s"), ("keepalive", "keep-alive req/s")):
            value = ratio(a, b, kind)
            if value is not None:
                print(f"  {what:<16} {a} / {b}: {value:.2f}  ({note}){noisy(a, b, kind)}")


def print_fairness(fairness: dict[str, Counts], opts) -> None:
    for name, counts in fairness.items():
        if not counts:
            continue
        total = sum(counts.values())
        spread = max(counts.values()) / max(1, min(counts.values()))
        enough = "" if total >= opts.fairness_connections else "  (fewer than asked)"
        print()
        print(
            f"fairness, {name}, over {total:,} connections: busiest / idlest = {spread:.3f}  "
            f"target <= {FAIRNESS:g}  {mark(spread <= FAIRNESS)}{enough}"
        )
        print(f"  connections per worker instance: {dict(sorted(counts.items()))}")


def print_flood(flood: list[FloodResult], opts) -> None:
    print()
    print(f"{RR}, new conn/s (close), log flood of {opts.flood_rate:,} lines/s asked:")
    print(
        f"  {'':<38} {'conn/s':>8} {'errors':>7} {'lines/s':>8} {'supervisor CPU':>15} "
        f"{'others':>6}"
    )
    for f in flood:
        lines = f"{f.lines_per_s:,.0f}" if f.lines_per_s is not None else "-"
        cpu = f"{f.supervisor_cpu:.0f}% core" if f.supervisor_cpu is not None else "-"
        print(
            f"  {f.label:<38} {f.run.rps:>8,.0f} {f.run.errors:>7} {lines:>8} {cpu:>15} "
            f"{f.run.others:>6.2f}"
        )
    base = flood[0].run.rps
    value = flood[1].run.rps / base if base else 0.0
    noisy = any(f.run.others > NOISY for f in flood[:2])
    print(
        f"  flood / no flood: {value:.2f}  target >= {FLOOD_RATIO:g}  {mark(value >= FLOOD_RATIO)}"
        + ("  NOISY: others used CPU" if noisy else "")
    )
    if len(flood) > 2 and flood[2].run.rps:
        print(
            f"  flood under the supervisor / flood to /dev/null: "
            f"{flood[1].run.rps / flood[2].run.rps:.2f}  (the log path's own cost; "
            f"the flood's CPU is in both)"
        )


def print_reloads(reloads: list[ReloadResult], opts) -> None:
    print()
    print(
        f"failed requests during {opts.reloads} rolling reloads under load "
        "(failed = non-2xx/3xx + socket errors):"
    )
    head = (
        f"  {'manager':<10} {'load':<11} {'requests':>10} {'failed':>7} {'per reload':>10}  "
        f"{'reload -> old gone (s)':<24} detail"
    )
    print(head)
    for r in reloads:
        if r.skipped or r.run is None:
            print(f"  {r.manager:<10} {r.load:<11} skipped: {r.skipped}")
            continue
        times = " ".join(f"{t:.1f}" for t in r.reloads)
        print(
            f"  {r.manager:<10} {r.load:<11} {r.run.requests:>10,} {r.run.errors:>7} "
            f"{r.run.errors / max(1, len(r.reloads)):>10.1f}  {times:<24} {r.run.detail()}"
        )
    mine = [r for r in reloads if r.manager == "clusterui" and r.run]
    if mine:
        failed = sum(r.run.errors for r in mine)
        print(f"  clusterui failed requests: {failed}  target 0  {mark(failed == 0)}")


def print_host() -> None:
    print()
    ncpu = os.cpu_count() or 1
    busy = [n for n in HOST_NOTES if n.busy > BUSY_LIMIT]
    loads = [n.load1 for n in HOST_NOTES]
    waited = sum(n.waited for n in HOST_NOTES)
    if loads:
        print(
            f"host: load average (1 min) at the phases' start {min(loads):.2f} .. {max(loads):.2f} "
            f"on {ncpu} CPUs (this run's own load included); waited {waited:.0f} s for the lock"
        )
    if busy:
        print(
            f"host: BUSY with other work (others used {min(n.busy for n in busy):.0f} .. "
            f"{max(n.busy for n in busy):.0f}% of the machine) before {len(busy)} of "
            f"{len(HOST_NOTES)} phases: {', '.join(dict.fromkeys(n.phase for n in busy))}"
        )
    elif HOST_NOTES:
        print(f"host: quiet before every phase (others used < {BUSY_LIMIT:g}% of the machine)")
    if ncpu < START_LOAD:
        print(f"host: load average was HIGH ({START_LOAD:.2f}) when the run started")
    if OTHERS:
        noisy = sum(1 for o in OTHERS if o > NOISY)
        print(
            f"host: during the wrk runs other people's processes used {min(OTHERS):.2f} .. "
            f"{max(OTHERS):.2f} cores of {ncpu}; {noisy} of {len(OTHERS)} runs above {NOISY:g}"
        )


def print_report(
    rows: dict[str, Row],
    fairness: dict[str, Counts],
    flood: list[FloodResult],
    reloads: list[ReloadResult],
    opts,
) -> None:
    if rows:
        print_throughput(rows, opts)
    print_fairness(fairness, opts)
    if flood:
        print_flood(flood, opts)
    if reloads:
        print_reloads(reloads, opts)
    print_host()


RR = "clusterui round-robin"
RR2 = "clusterui round-robin, 2 dispatchers"
CHEAP1 = "clusterui rr, cheap workers, 1 disp."
CHEAP2 = "clusterui rr, cheap workers, 2 disp."
BARE_CHEAP_C = "dispatcher alone, cheap workers, C path"
BARE_CHEAP_PY = "dispatcher alone, cheap workers, Python path"
FLOOR = "hand-off loop in C alone (the floor)"
BARE = "clusterui dispatcher alone (--bare)"
REUSE = "direct SO_REUSEPORT"
NODE_RR = "Node cluster SCHED_RR"
NODE_NONE = "Node cluster SCHED_NONE (shared fd)"
PM2 = "PM2 cluster mode"
CU_PROXY = "clusterui proxy"
CU_SHARED = "clusterui shared (fd 3)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3, help="seconds per wrk run")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=64, help="wrk -c")
    parser.add_argument("--threads", type=int, default=1, help="wrk -t")
    parser.add_argument(
        "--rounds", type=int, default=2, help="throughput and flood: best of this many runs"
    )
    parser.add_argument("--reloads", type=int, default=3, help="rolling reloads per wrk run")
    parser.add_argument(
        "--reload-gap", type=float, default=1.0, help="seconds of plain load around each reload"
    )
    parser.add_argument("--flood-rate", type=int, default=50_000, help="log lines/s")
    parser.add_argument(
        "--fairness-connections", type=int, default=10_000, help="at least this many"
    )
    parser.add_argument("--no-node", dest="node", action="store_false", help="skip Node rows")
    parser.add_argument("--no-pm2", action="store_true", help="skip PM2 rows")
    parser.add_argument("--bare", action="store_true", help="add the dispatcher without supervisor")
    parser.add_argument(
        "--skip",
        default="",
        help="comma-separated phases to skip: throughput, flood, reload",
    )
    opts = parser.parse_args(argv)
    skip = {s.strip() for s in opts.skip.split(",") if s.strip()}
    if unknown := skip - {"throughput", "flood", "reload"}:
        parser.error(f"unknown phase(s) for --skip: {', '.join(sorted(unknown))}")
    if not shutil.which("wrk"):
        print("wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    if opts.node and not shutil.which("node"):
        print("node is not installed: the Node and PM2 rows are skipped", flush=True)
        opts.node = False

    # A closed terminal or a `kill` must still run every finally: below.
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)  # even when started with SIGINT ignored (`&`)
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)

    rows: dict[str, Row] = {}
    fairness: dict[str, Counts] = {}
    flood: list[FloodResult] = []
    reloads: list[ReloadResult] = []
    workdir = Path(tempfile.mkdtemp(prefix="bd-"))
    global START_LOAD
    START_LOAD = os.getloadavg()[0]
    print(f"dispatch benchmark: {opts.workers} workers, load average {START_LOAD:.2f}", flush=True)
    try:
        with Clusterui(workdir, opts) as cu:
            makers: list[Callable[[], Target]] = [
                lambda: ClusteruiApp(RR, "python", cu, "web"),
                lambda: ClusteruiApp(RR2, "python", cu, "web2"),
                lambda: ClusteruiApp(CHEAP1, "python", cu, "cheap1"),
                lambda: ClusteruiApp(CHEAP2, "python", cu, "cheap2"),
                lambda: ReusePort(REUSE, "python"),
            ]
            if opts.bare:
                pure = {PURE_ENV: "1"}
                makers += [
                    lambda: Dispatched(BARE, "python"),
                    lambda: Dispatched(BARE_CHEAP_C, "python", CHEAP),
                    lambda: Dispatched(BARE_CHEAP_PY, "python", CHEAP, pure),
                ]
                floor = build_floor(workdir)
                if isinstance(floor, Path):
                    makers.append(lambda: Floor(FLOOR, "python", floor))
                else:
                    rows[FLOOR] = Row(FLOOR, "python", skipped=floor)
            if opts.node:
                makers += [
                    lambda: NodeCluster(NODE_RR, "rr"),
                    lambda: NodeCluster(NODE_NONE, "none"),
                    lambda: ClusteruiApp(CU_PROXY, "node", cu, "node-proxy"),
                    lambda: ClusteruiApp(CU_SHARED, "node", cu, "node-shared"),
                ]
            if "throughput" not in skip:
                why = pm2_unavailable(opts)
                if why is None:
                    makers.append(lambda: Pm2Cluster(PM2, "node"))
                for round_ in range(opts.rounds):
                    # Every other round backwards, so a slow drift favours nobody.
                    for make in makers if round_ % 2 == 0 else makers[::-1]:
                        measure_throughput(make, rows, fairness, opts)
                if why is not None:
                    rows[PM2] = Row(PM2, "node", skipped=why)
                top_up_fairness(cu, fairness, opts)
            if "flood" not in skip:
                flood = measure_flood(cu, opts)
            if "reload" not in skip:
                reloads = measure_reloads(cu, opts)
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print_report(rows, fairness, flood, reloads, opts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
