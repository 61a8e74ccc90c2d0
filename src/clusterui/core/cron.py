"""`cron_restart`: PM2's scheduled restart (cron syntax, e.g. ``0 3 * * *``), in local
time. Cluster apps with a dispatcher get a rolling reload (no connection is refused);
others restart one instance after another. The clock is injectable for tests.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from clusterui.vocab.exits import OpError

if TYPE_CHECKING:
    from clusterui.core.apps import App

MAX_SLEEP = 60.0  # re-read the clock at least this often (wall clock jumps, DST)


class Clock(Protocol):
    def now(self) -> datetime: ...

    async def sleep(self, seconds: float) -> None: ...


class WallClock:
    def now(self) -> datetime:
        return datetime.now().astimezone()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def check_expression(expr: str) -> str | None:
    """None if expr is a valid cron expression, else why not (one line)."""
    from croniter import croniter

    if not isinstance(expr, str) or not expr.strip():
        return "must be a cron expression such as '0 3 * * *'"
    if len(expr.split()) not in (5, 6) or not croniter.is_valid(expr, second_at_beginning=True):
        return f"{expr!r} is not a valid cron expression (e.g. '0 3 * * *')"
    return None


def next_run(expr: str, after: datetime) -> datetime:
    """The first run after `after`. Six fields put seconds first, as PM2 reads them."""
    from croniter import croniter

    return croniter(expr, after, second_at_beginning=True).get_next(datetime)


class CronRestart:
    def __init__(self, app: App, expr: str, clock: Clock | None = None) -> None:
        self.app = app
        self.expr = expr
        self.clock: Clock = clock or WallClock()
        self.next: datetime | None = None
        self.runs = 0
        self.last_outcome: str | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        task, self.task = self.task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _run(self) -> None:
        while True:
            self.next = next_run(self.expr, self.clock.now())
            while (left := (self.next - self.clock.now()).total_seconds()) > 0:
                await self.clock.sleep(min(left, MAX_SLEEP))
            await self.fire()

    async def fire(self) -> None:
        app = self.app
        if app.removed or not any(s.proc is not None for s in app.slots.values()):
            return  # stopped on purpose: a schedule does not start it
        self.runs += 1
        for slot in app.slots.values():
            app.ctx.logs.emit(slot.id, app.name, slot.instance, f"cron_restart {self.expr!r}")
        try:
            if app.listener is not None and app.spec.dispatch != "shared":
                await app.rolling_reload(reason="cron")
            else:
                await app.fresh_code()
                for slot in [app.slots[i] for i in sorted(app.slots)]:
                    if slot.proc is not None:
                        await app.restart_slot(slot, reason="cron")
            self.last_outcome = "ok"
        except OpError as exc:
            self.last_outcome = exc.message
            app.ctx.notice("error", f"{app.name}: cron_restart failed: {exc.message}")
