"""Helpers the benchmarks and the tests share: errors, running clusterui, waiting, free
ports, the machine lock, a control connection, one GET (get) and one HTTP load client
(Load), cleaning up processes, sampling processes' CPU use.

tests/support.py imports the generic ones from here, so each is defined once.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clusterui.core.listener import free_port as free_port  # the one definition

LOCK = "/tmp/clusterui-bench.lock"
ROOT = Path(__file__).resolve().parents[1]
WEB = str(ROOT / "examples" / "web.py")  # answers "hello from web instance I pid P"


class BenchError(Exception):
    """A step failed; the message is one sentence for the user."""


def clusterui_bin() -> str:
    beside = Path(sys.executable).with_name("clusterui")
    if beside.exists():
        return str(beside)
    found = shutil.which("clusterui")
    if not found:
        raise BenchError("clusterui is not installed in this Python; run: pip install -e .")
    return found


def run(argv: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"`{' '.join(argv[:3])}` took longer than {timeout:g} s") from None


def tail(out: subprocess.CompletedProcess) -> str:
    text = (out.stderr or out.stdout or "").strip().splitlines()
    return text[-1] if text else f"exit code {out.returncode}"


class WaitTimeout(BenchError, AssertionError):
    """wait_for's deadline passed: a failed step in a benchmark, a failed check in a test."""


def wait_for(
    check: Callable[[], Any],
    timeout: float = 10.0,
    what: str | Callable[[], str] = "condition",
    step: float = 0.02,
) -> Any:
    """Poll check() until it returns something truthy (returned), or raise WaitTimeout
    naming what never happened (`what` may be a function describing the state then)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            said = what if isinstance(what, str) else what()
            raise WaitTimeout(f"timed out after {timeout:g} s waiting for {said}")
        time.sleep(step)


async def wait_for_async(
    check: Callable[[], Any],
    timeout: float = 10.0,
    what: str | Callable[[], str] = "condition",
    step: float = 0.005,
    sleep: Callable[[float], Any] = asyncio.sleep,
) -> Any:
    """wait_for for code under an event loop: `sleep` lets it run between checks (a
    Textual test passes its pilot's pause)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            said = what if isinstance(what, str) else what()
            raise WaitTimeout(f"timed out after {timeout:g} s waiting for {said}")
        await sleep(step)


@contextlib.contextmanager
def bench_lock(what: str = "") -> Iterator[None]:
    """Other benchmarks share this 2-core machine: measure only while holding the lock."""
    with open(LOCK, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"  waiting for {LOCK} (another benchmark is running) ...", flush=True)
            fcntl.flock(fh, fcntl.LOCK_EX)
        load = os.getloadavg()[0]
        if what and load > (os.cpu_count() or 1) * 0.5:
            print(f"  note: load average {load:.2f} before {what}: figures may be high", flush=True)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class Control:
    """One connection to the supervisor's control socket (newline-delimited JSON)."""

    def __init__(self, home: Path, timeout: float = 60.0):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(timeout)
        self.sock.connect(str(home / "supervisor.sock"))
        self.file = self.sock.makefile("rwb")
        self.next_id = 0
        self.slowest = 0.0  # the longest a `result` call took, in seconds

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        """The raw answer: {"id", "ok", "result"} or {"id", "ok": false, "error", "code"}."""
        self.next_id += 1
        self.file.write(json.dumps({"id": self.next_id, "op": op, "args": args}).encode() + b"\n")
        self.file.flush()
        while True:
            msg = json.loads(self.file.readline())
            if msg.get("id") == self.next_id:
                return msg

    def result(self, op: str, **args: Any) -> Any:
        """The result of a call that must succeed within the timeout (else AssertionError)."""
        start = time.monotonic()
        try:
            answer = self.call(op, **args)
        except TimeoutError:
            raise AssertionError(
                f"the supervisor did not answer {op} within {self.sock.gettimeout():g} s"
            ) from None
        self.slowest = max(self.slowest, time.monotonic() - start)
        assert answer["ok"], answer
        return answer["result"]

    def state(self) -> dict[str, Any]:
        return self.result("state", history=False)

    def workers(self, app: str | None = None) -> list[dict[str, Any]]:
        return [w for w in self.state()["workers"] if app is None or w["app"] == app]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
            self.sock.close()


class Answer(str):
    """An HTTP answer's body (a str, so `"hello" in get(port)` reads naturally) and its
    status code (`.status`)."""

    status: int

    def __new__(cls, body: str, status: int) -> Answer:
        answer = super().__new__(cls, body)
        answer.status = status
        return answer


def get(
    port: int,
    path: str = "/",
    *,
    close: bool = True,
    timeout: float = 10.0,
    expect: int | None = None,
) -> Answer:
    """One GET on 127.0.0.1:port (with `Connection: close` unless close=False); the body,
    with the status as `.status`. expect=200: any other status is an AssertionError."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)  # no proxy settings
    try:
        conn.request("GET", path, headers={"Connection": "close"} if close else {})
        resp = conn.getresponse()
        answer = Answer(resp.read().decode(errors="replace"), resp.status)
    finally:
        conn.close()
    assert expect is None or answer.status == expect, (answer.status, answer[:80])
    return answer


@dataclass
class Result:
    """One request of a Load: start and end on time.monotonic(), `at` (its end) on
    time.time() for comparing with the supervisor's timestamps; pid None unless answered."""

    start: float
    end: float
    pid: int | None
    error: str | None
    client: int = 0
    at: float = 0.0


PID = re.compile(r"\bpid (\d+)")  # the example apps all answer with their "pid N"


class Load:
    """Client threads sending GET after GET until stopped: every request is counted, none
    retried. A failure is any exception (refused, reset, timeout, short answer), a non-200
    status, or (expect_pid) a body without "pid N".

    keep_alive: one connection per thread, reused until the server says Connection: close;
    otherwise a new connection with `Connection: close` for each request.

    ok, failed (repr of each failure), outcomes ("ok", "refused", the exception's class
    name, or "bad answer"), answers ((sent, answered, pid) when the body named a pid),
    bodies (how often each 200 body came) and closes_seen (keep-alive answers that said
    Connection: close) are read while it runs or after. pause() holds the clients until
    none is in flight; resume() lets them go on.
    """

    def __init__(
        self,
        port: int,
        threads: int = 4,
        *,
        keep_alive: bool = False,
        path: str = "/",
        timeout: float = 10.0,
        warmup: int = 20,
        expect_pid: bool = True,
        interval: float = 0.0,
        refused_pause: float = 0.0,
    ) -> None:
        self.port, self.path, self.keep_alive = port, path, keep_alive
        self.timeout, self.warmup, self.expect_pid = timeout, warmup, expect_pid
        self.interval, self.refused_pause = interval, refused_pause
        self.ok = 0
        self.failed: list[str] = []
        self.outcomes: Counter[str] = Counter()
        self.results: list[Result] = []
        self.bodies: Counter[str] = Counter()
        self.closes_seen = 0
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._gate = threading.Event()
        self._gate.set()
        self._inflight = 0
        self.concurrency = threads
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)
        ]

    @property
    def answers(self) -> list[Result]:
        return [r for r in list(self.results) if r.pid is not None]

    def ok_count(self, since: float = 0.0) -> int:
        """Answers that ended at or after `since` (time.monotonic())."""
        return sum(1 for r in list(self.results) if r.error is None and r.end >= since)

    def failures(self) -> list[Result]:
        return [r for r in list(self.results) if r.error is not None]

    def first_from(self, exclude: set[int], since: float) -> Result | None:
        for r in list(self.results):
            if r.end >= since and r.pid is not None and r.pid not in exclude:
                return r
        return None

    def pids_since(self, since: float) -> set[int]:
        return {r.pid for r in list(self.results) if r.pid is not None and r.end >= since}

    def first_answer_from(self, pids: set[int], since: float) -> Result | None:
        for r in list(self.results):
            if r.pid in pids and r.end >= since:
                return r
        return None

    def pause(self) -> None:
        self._gate.clear()
        wait_for(lambda: self._inflight == 0, what="requests in flight to finish")

    def resume(self) -> None:
        self._gate.set()

    def served_between(self, start: float, end: float) -> list[int]:
        """The pids that answered between two time.time() readings."""
        with self.lock:
            return [r.pid for r in self.results if r.pid is not None and start <= r.at <= end]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        if self.warmup:
            wait_for(lambda: self.ok > self.warmup, 30, "load to get going")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            if t.ident is not None:  # started
                t.join(self.timeout + 5)

    def _run(self, index: int) -> None:
        conn: http.client.HTTPConnection | None = None
        headers = {} if self.keep_alive else {"Connection": "close"}
        while not self._stop.is_set():
            if not self._gate.wait(0.1):
                continue
            with self.lock:
                self._inflight += 1
            sent = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
                conn.request("GET", self.path, headers=headers)
                resp = conn.getresponse()
                body = resp.read().decode(errors="replace")
                closes = resp.will_close
                m = PID.search(body)
                if resp.status != 200 or (self.expect_pid and not m):
                    raise _BadAnswer(f"bad answer {resp.status} {body[:60]!r}")
            except Exception as exc:  # counted: failures are what the callers assert on
                if conn is not None:
                    conn.close()
                conn = None
                refused = isinstance(exc, ConnectionRefusedError)
                outcome = "refused" if refused else type(exc).__name__
                end = time.monotonic()
                with self.lock:
                    self._inflight -= 1
                    self.results.append(Result(sent, end, None, repr(exc), index, time.time()))
                    self.failed.append(repr(exc))
                    self.outcomes["bad answer" if isinstance(exc, _BadAnswer) else outcome] += 1
                if refused and self.refused_pause:
                    time.sleep(self.refused_pause)
                continue
            if closes or not self.keep_alive:
                conn.close()
                conn = None
            with self.lock:
                self._inflight -= 1
                self.ok += 1
                self.outcomes["ok"] += 1
                self.bodies[body] += 1
                pid = int(m.group(1)) if m else None
                self.results.append(Result(sent, time.monotonic(), pid, None, index, time.time()))
                if closes and self.keep_alive:
                    self.closes_seen += 1
            if self.interval:
                time.sleep(self.interval)
        if conn is not None:
            conn.close()


class _BadAnswer(Exception):
    """A non-200 status, or no pid where one was expected."""


def kill_all(procs: list[Any], grace: float = 3.0) -> None:
    import psutil

    alive = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
            alive.append(proc)
    _, alive = psutil.wait_procs(alive, timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=grace)


def cpu_seconds(proc: Any) -> float:
    """The CPU time a process has used so far, user and system, in seconds: `proc` is a
    psutil.Process, or a pid (read from /proc/PID/stat, fields 14 and 15: no psutil)."""
    if isinstance(proc, int):
        with open(f"/proc/{proc}/stat", "rb") as f:
            data = f.read()
        fields = data[data.rindex(b")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    t = proc.cpu_times()
    return t.user + t.system


def sample_cpu(procs: dict[str, Any], seconds: float) -> dict[str, tuple[float, float]]:
    """Watch several psutil.Processes over the same `seconds`; for each key, (its CPU use
    over the whole window, its busiest slice of about 1 s), both in % of one core."""
    start_wall = last_wall = time.monotonic()
    start = {k: cpu_seconds(p) for k, p in procs.items()}
    last = dict(start)
    peak = dict.fromkeys(procs, 0.0)
    end_wall = start_wall + seconds
    while (now := time.monotonic()) < end_wall:
        time.sleep(min(1.0, end_wall - now))
        wall = time.monotonic()
        for key, proc in procs.items():
            used = cpu_seconds(proc)
            peak[key] = max(peak[key], 100 * (used - last[key]) / (wall - last_wall))
            last[key] = used
        last_wall = wall
    return {k: (100 * (last[k] - start[k]) / (last_wall - start_wall), peak[k]) for k in procs}
