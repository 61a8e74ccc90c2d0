"""PM2's restart policy as pure logic: given an exit, what happens next.

No clock and no processes here: the caller passes the uptime, so tests can script
whole histories of exits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from clusterui.core.spec import AppSpec

BACKOFF_FACTOR = 1.5
BACKOFF_CAP_MS = 15_000
BACKOFF_RESET_MS = 30_000  # PM2's EXP_BACKOFF_RESET_TIMER


@dataclass(frozen=True)
class Decision:
    action: Literal["restart", "stop", "errored"]
    delay_ms: int = 0
    reason: str = ""


@dataclass
class RestartTracker:
    """Per worker slot: counts consecutive unstable restarts and the backoff delay."""

    unstable_restarts: int = 0
    prev_backoff_ms: int = 0

    def on_exit(self, spec: AppSpec, uptime_ms: float) -> Decision:
        """An unrequested exit after `uptime_ms` of running."""
        if not spec.autorestart:
            return Decision("stop", reason="autorestart is off")
        if uptime_ms < spec.min_uptime:
            self.unstable_restarts += 1
        else:
            # A stable run ends the streak, as PM2's "consecutive unstable restarts".
            self.unstable_restarts = 0
        if self.unstable_restarts >= spec.max_restarts > 0 or spec.max_restarts == 0:
            return Decision(
                "errored",
                reason=f"{self.unstable_restarts} unstable restarts "
                f"(each up less than {spec.min_uptime} ms)",
            )
        return Decision("restart", self._delay(spec, uptime_ms))

    def _delay(self, spec: AppSpec, uptime_ms: float) -> int:
        if not spec.exp_backoff_restart_delay:
            return spec.restart_delay
        if uptime_ms >= BACKOFF_RESET_MS or not self.prev_backoff_ms:
            self.prev_backoff_ms = spec.exp_backoff_restart_delay
        else:
            self.prev_backoff_ms = int(min(BACKOFF_CAP_MS, self.prev_backoff_ms * BACKOFF_FACTOR))
        return self.prev_backoff_ms

    def reset(self) -> None:
        """A manual start/restart forgives the history (PM2 does the same)."""
        self.unstable_restarts = 0
        self.prev_backoff_ms = 0
