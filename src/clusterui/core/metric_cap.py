"""What a worker may publish as custom metrics: a cap on names, name length and rate.

Metric names are worker data that every state snapshot carries to every dashboard,
which keeps a chart per name. Uncapped, one worker sending 100,000 distinct names
made `attach` use 2 GB and never draw. The gate keeps, per worker slot, at most
MAX_NAMES names of at most MAX_NAME_LEN characters, and takes at most RATE updates a
second (a burst of BURST) per slot; the rest is dropped, with one notice per slot
saying what and how much (`MetricsGate.report`).
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

    def apply(self, current: dict[str, float], values: Any) -> bool:
        """Merge `values` into `current` within the caps; True if something was dropped
        for the first time (the caller then says so, once, with `report`)."""
        if not isinstance(values, dict):
            return False
        now = time.monotonic()
        self.tokens = min(BURST, self.tokens + (now - self.stamp) * RATE)
        self.stamp = now
        before = self.total_dropped
        if self.tokens < 1.0:
            self.dropped_updates += 1
        else:
            self.tokens -= 1.0
            for key, value in values.items():
                if not isinstance(value, int | float) or isinstance(value, bool):
                    continue
                if not math.isfinite(value):
                    continue
                name = str(key)
                if len(name) > MAX_NAME_LEN:
                    self.dropped_long += 1
                elif name in current or len(current) < MAX_NAMES:
                    current[name] = value
                else:
                    self.dropped_names += 1
        if self.total_dropped > before and not self.noticed:
            self.noticed = True
            return True
        return False

    @property
    def total_dropped(self) -> int:
        return self.dropped_names + self.dropped_long + self.dropped_updates

    def report(self) -> str:
        """One sentence for the log and the notice: what was dropped so far, and why."""
        return (
            f"metrics over the cap dropped (at most {MAX_NAMES} names of {MAX_NAME_LEN} "
            f"characters, {RATE:g} updates/s): {self.dropped_names} new name(s), "
            f"{self.dropped_long} long name(s), {self.dropped_updates} update(s) so far; "
            "no further notice"
        )
