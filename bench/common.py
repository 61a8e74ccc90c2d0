"""Helpers the benchmarks share: errors, running clusterui, waiting, the machine lock,
cleaning up processes."""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

LOCK = "/tmp/clusterui-bench.lock"


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


def wait_for(check: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> Any:
    """Poll check() until it returns something truthy, or fail naming what never happened."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise BenchError(f"{what} did not happen within {timeout:g} s")
        time.sleep(step)


@contextlib.contextmanager
def bench_lock() -> Iterator[None]:
    """Other benchmarks share this 2-core machine: measure only while holding the lock."""
    with open(LOCK, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"  waiting for {LOCK} (another benchmark is running) ...", flush=True)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
