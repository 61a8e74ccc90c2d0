"""Processes a test left running fail that test, by name.

Every test runs with CLUSTERUI_TEST_OWNER=<test id> in its environment (conftest.py), so
everything it starts, and everything those start (a supervisor, its workers and
dispatchers, a harness's processes), carries the mark. After the test's fixtures have
cleaned up, whatever still carries it is killed and named in the failure. A supervisor's
home is checked the same way when its Env is cleaned up (tests/support.py).
"""

from __future__ import annotations

import contextlib
import os
import time

import psutil

OWNER = "CLUSTERUI_TEST_OWNER"


def running(key: str, value: str) -> list[psutil.Process]:
    """Live processes (not zombies, not this one) with KEY=VALUE in their environment.

    Reads /proc directly: this runs after every test, and psutil's per-process objects
    cost ten times as much."""
    needle = f"\0{key}={value}\0".encode()
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = b"\0" + f.read() + b"\0"
            if needle not in env:
                continue
            proc = psutil.Process(int(entry))
            if proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (OSError, psutil.Error):
            continue
    return found


def describe(proc: psutil.Process) -> str:
    try:
        cmd = " ".join(proc.cmdline()) or proc.name()
    except psutil.Error:
        cmd = "?"
    return f"pid {proc.pid} ({cmd[:160]})"


def reap(match: tuple[str, str], grace: float = 5.0) -> list[str]:
    """Give the processes with this (key, value) in their environment `grace` seconds to
    finish exiting (a clean-up may still be under way), then SIGKILL the rest; returns
    their descriptions (empty: nothing leaked)."""
    deadline = time.monotonic() + grace
    while True:
        left = running(*match)
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    names = [describe(p) for p in left]
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    return names


def owned_by(test_id: str) -> tuple[str, str]:
    return OWNER, test_id


def home_is(home: object) -> tuple[str, str]:
    return "CLUSTERUI_HOME", str(home)


def fail_if_leaked(names: list[str], where: str) -> None:
    if names:
        raise AssertionError(
            f"{where} left {len(names)} process(es) running (killed now): " + "; ".join(names)
        )
