"""Helpers the benchmarks share: errors, running clusterui, cleaning up processes."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any


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
