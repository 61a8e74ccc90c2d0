"""Shared helpers for integration tests: a private CLUSTERUI_HOME and the real CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import psutil


def wait_for(cond: Callable[[], object], timeout: float = 10.0, what: str = "condition"):
    """Poll until cond() is truthy (returns it) or fail with `what` after the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


class Env:
    """A temporary home (short path: unix socket paths are limited to 107 bytes)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="cu-", dir="/tmp"))
        self.home = self.root / "home"
        self.env = dict(os.environ, CLUSTERUI_HOME=str(self.home), NO_COLOR="1")
        self.env.pop("CLUSTERUI_CHANNEL_FD", None)

    def run(self, *args: str, timeout: float = 30, check: bool = False, cwd=None):
        proc = subprocess.run(
            [sys.executable, "-m", "clusterui", *args],
            env=self.env,
            cwd=cwd or self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"clusterui {' '.join(args)} exited {proc.returncode}\n"
                f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
            )
        return proc

    def ls(self) -> list[dict]:
        return json.loads(self.run("ls", "--json", check=True).stdout)

    def write(self, name: str, text: str) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    def supervisor_pid(self) -> int | None:
        try:
            return int((self.home / "supervisor.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def supervisor_alive(self) -> bool:
        pid = self.supervisor_pid()
        if not pid:
            return False
        try:
            proc = psutil.Process(pid)
            return proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def cleanup(self) -> None:
        """Stop the supervisor; SIGKILL whatever of ours is left (and fail loudly later)."""
        pid = self.supervisor_pid()
        if self.supervisor_alive():
            self.run("down", timeout=30)
        if pid and self.supervisor_alive():
            os.kill(pid, signal.SIGKILL)
        kill_ours(self.home)
        shutil.rmtree(self.root, ignore_errors=True)


def kill_ours(home: Path) -> list[int]:
    """SIGKILL any process whose environment names this home (the test's leftovers)."""
    killed = []
    needle = f"CLUSTERUI_HOME={home}"
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.pid == os.getpid():
                continue
            env = proc.environ()
        except psutil.Error:
            continue
        if f"CLUSTERUI_HOME={env.get('CLUSTERUI_HOME')}" == needle:
            try:
                proc.kill()
                killed.append(proc.pid)
            except psutil.Error:
                pass
    return killed
