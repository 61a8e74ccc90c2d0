"""What a worker may publish as custom metrics: a cap on names, name length and rate.

Metric names are worker data that every state snapshot carries to every dashboard,
which keeps a chart per name. Uncapped, one worker sending 100,000 distinct names
made `attach` use 2 GB and never draw. The gate keeps, per worker slot, at most
MAX_NAMES names of at most MAX_NAME_LEN characters, and takes at most RATE updates a
second (a burst of BURST) per slot. Updates over the rate are held, newest value per
name, and applied when the rate allows (at the latest on the supervisor's next tick):
the values in between are dropped, never the last one, so a gauge never stays stale.
What is dropped gets one notice per slot saying what and how much
(`MetricsGate.report`).
"""

from __future__ import annotations

import math
import time
from typing import Any

from clusterui.dispatch.protocol import METRIC_NAME_LEN_MAX as MAX_NAME_LEN
from clusterui.dispatch.protocol import METRIC_NAMES_MAX as MAX_NAMES

RATE = 20.0  # updates (messages) a second per slot, on average
BURST = 40.0


class MetricsGate:
    """Filters one slot's metric updates in place; counts what it drops."""

    def __init__(self) -> None:
        self.tokens = BURST
        self.stamp = time.monotonic()
        self.dropped_names = 0  # new names past MAX_NAMES
        self.dropped_long = 0  # names longer than MAX_NAME_LEN
        self.dropped_updates = 0  # whole messages over the rate
        self.noticed = False
        self.held: dict[str, float] = {}  # the newest values that came over the rate

    def apply(self, current: dict[str, float], values: Any) -> bool:
        """Merge `values` into `current` within the caps; True if something was dropped
        for the first time (the caller then says so, once, with `report`)."""
        if not isinstance(values, dict):
            return False
        self._refill()
        before = self.total_dropped
        if self.tokens < 1.0:
            self.dropped_updates += 1
            self._merge(self.held, values, current)
        else:
            self.tokens -= 1.0
            self._release(current)
            self._merge(current, values, current)
        if self.total_dropped > before and not self.noticed:
            self.noticed = True
            return True
        return False

    def settle(self, current: dict[str, float]) -> None:
        """Apply held values if the rate allows by now (the supervisor calls it each tick)."""
        if not self.held:
            return
        self._refill()
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            self._release(current)

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(BURST, self.tokens + (now - self.stamp) * RATE)
        self.stamp = now

    def _release(self, current: dict[str, float]) -> None:
        current.update(self.held)  # every held name already passed the caps
        self.held.clear()

    def _merge(self, into: dict[str, float], values: dict, current: dict[str, float]) -> None:
        for key, value in values.items():
            if not isinstance(value, int | float) or isinstance(value, bool):
                continue
            if not math.isfinite(value):
                continue
            name = str(key)
            if len(name) > MAX_NAME_LEN:
                self.dropped_long += 1
            elif name in current or name in into or self._room(current):
                into[name] = value
            else:
                self.dropped_names += 1

    def _room(self, current: dict[str, float]) -> bool:
        return len(current) + sum(1 for n in self.held if n not in current) < MAX_NAMES

    @property
    def total_dropped(self) -> int:
        return self.dropped_names + self.dropped_long + self.dropped_updates

    def report(self) -> str:
        """One sentence for the log and the notice: what was dropped so far, and why."""
        return (
            f"metrics over the cap dropped (at most {MAX_NAMES} names of {MAX_NAME_LEN} "
            f"characters, {RATE:g} updates/s): {self.dropped_names} new name(s), "
            f"{self.dropped_long} long name(s), {self.dropped_updates} update(s) over the "
            "rate so far (only their newest values are kept); no further notice"
        )
