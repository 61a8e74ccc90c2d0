"""Foreground `clusterui up`: logs until SIGTERM/SIGINT, then a graceful stop.

This is also what a container's PID 1 has to do (the job of tini or pm2-runtime):

- reap every orphan the kernel hands to PID 1 (a worker's child whose parent died),
  so no zombie piles up;
- take SIGTERM/SIGINT (PID 1 gets no default action for them) and stop every app
  gracefully: each worker gets its kill_signal and kill_timeout, then SIGKILL; we
  exit once the supervisor is gone, since PID 1 exiting kills the whole namespace;
- logs on stdout (the workers' stdout) and stderr (their stderr and clusterui's own
  lines), each prefixed `app:instance`, or the workers' text alone with --raw.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

from clusterui.cli import render
from clusterui.client import Client, supervisor_pid
from clusterui.core.home import Home
from clusterui.vocab.safetext import escape

# After the shutdown request the supervisor stops the apps in parallel, each within its
# kill_timeout, and then closes our connection; this only bounds a supervisor that hangs.
STOP_WAIT = 300.0
# Then its exit (pidfile released, sockets closed) takes a moment more.
EXIT_WAIT = 10.0
# Supervisors replaced on handed-in sockets within the window before we give up (exit 1,
# and whatever runs us decides: systemd's Restart=, a container's restart policy).
RESTART_LIMIT = 5
RESTART_WINDOW = 60.0


def reap_orphans() -> int:
    """Collect every child that has exited; returns how many."""
    n = 0
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return n
        if pid == 0:
            return n
        n += 1


class Output:
    def __init__(self, raw: bool) -> None:
        self.raw = raw
        self.colour = {id(s): render.use_colour(s) for s in (sys.stdout, sys.stderr)}
        self.tty = {id(s): s.isatty() for s in (sys.stdout, sys.stderr)}

    def line(self, line: dict[str, Any]) -> TextIO:
        stream = sys.stdout if line["stream"] == "out" else sys.stderr
        if self.tty[id(stream)]:
            # Worker bytes for a terminal: control characters shown, not obeyed.
            line = dict(line, text=escape(line["text"]))
        if self.raw and line["stream"] != "sys":
            text = line["text"]
        else:
            text = render.log_line(line, self.colour[id(stream)])
        stream.write(text + "\n")
        return stream


Started = tuple[Client, dict[str, Any], bool]  # client, the load's result, we started it


async def run(
    start: Callable[[], Awaitable[Started]],
    home: Home,
    *,
    raw: bool = False,
    restart: bool = False,
) -> int:
    """Start (via `start`), follow until a stop signal, stop. With `restart` (sockets
    handed in from outside), a supervisor that dies is replaced on the same sockets,
    RESTART_LIMIT times per RESTART_WINDOW: its workers finish what they hold, new
    connections wait in the sockets' queues, and whoever runs us sees no failure."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    if os.getpid() == 1:
        loop.add_signal_handler(signal.SIGCHLD, reap_orphans)
        reap_orphans()  # what exited before the handler was in place
    out = Output(raw)
    restarts: list[float] = []
    client, result, started = await start()
    try:
        while True:
            if await follow(client, result, started, home, out, stop):
                return 0
            now = time.monotonic()
            restarts = [t for t in restarts if now - t < RESTART_WINDOW]
            if stop.is_set() or not restart or len(restarts) >= RESTART_LIMIT:
                print("clusterui: lost the connection to the supervisor", file=sys.stderr)
                return 1
            restarts.append(now)
            print(
                "clusterui: the supervisor died; starting a new one on the sockets handed in",
                file=sys.stderr,
                flush=True,
            )
            await client.close()
            client, result, started = await start()
    finally:
        await client.close()


async def follow(
    client: Client,
    result: dict[str, Any],
    started: bool,
    home: Home,
    out: Output,
    stop: asyncio.Event,
) -> bool:
    """Print logs until `stop` (then stop everything: True) or the supervisor is lost
    (False)."""
    pid = supervisor_pid(home) if started else None

    async def pump() -> None:
        async for event in client.events():
            if event["event"] == "logs":
                touched = {out.line(line) for line in event["lines"]}
                for stream in touched:
                    stream.flush()
            elif event["event"] == "notice":
                print(f"clusterui: {escape(str(event['message']))}", file=sys.stderr, flush=True)

    task = asyncio.ensure_future(pump())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if not stop.is_set():
        stopped.cancel()
        return False  # the connection ended: the supervisor is gone
    print("clusterui: stopping...", file=sys.stderr, flush=True)
    names = result["started"]
    if started:
        await client.shutdown()
        # Keep printing what the workers say while they stop; the supervisor closes
        # the connection when it is done.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), timeout=STOP_WAIT)
        await _gone(pid, deadline=time.monotonic() + EXIT_WAIT)
    elif names:
        await client.delete(names)
    task.cancel()
    return True


async def _gone(pid: int | None, deadline: float) -> None:
    """Wait until the supervisor has exited (as PID 1, our exit would SIGKILL it)."""
    while pid and time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        await asyncio.sleep(0.05)
