"""The events timeline: what happened to an app and why, kept by the supervisor.

Each app keeps its newest `KEPT` events (core.apps.App.record_event); the `events` op
answers them (not the per-tick snapshot: a fleet of 200 apps would send them every
second for nothing). Each kind is recorded at the one place where the thing happens:

- restart: core.apps.App.record_restart (crash, manual, watch, memory, cron, health, reload)
- exit: a worker exited unexpectedly and is not restarted (errored, autorestart off, ...)
- reload / reload-failed: core.apps.App.rolling_reload
- scale: core.apps.App.scale
- watch: core.apps.App (a file change triggered a reload; watch paused, broken, re-armed)
- health: core.health (a worker's probe starts failing, or passes again)
- signal: core.supervisor.Supervisor.op_signal (a signal a user sent)

`reason` is built partly from what workers control (exit codes, file names, probe
output): show it through clusterui.vocab.safetext, never as markup.
"""

from __future__ import annotations

from typing import TypedDict

KEPT = 100  # events kept per app (older ones drop off)

RESTART = "restart"
EXIT = "exit"
RELOAD = "reload"
RELOAD_FAILED = "reload-failed"
SCALE = "scale"
WATCH = "watch"
HEALTH = "health"
SIGNAL = "signal"

KINDS: tuple[str, ...] = (RESTART, EXIT, RELOAD, RELOAD_FAILED, SCALE, WATCH, HEALTH, SIGNAL)
# Kinds that mean something went wrong (the dashboard shows them as errors).
BAD: frozenset[str] = frozenset({EXIT, RELOAD_FAILED})


class Event(TypedDict):
    time: float  # epoch seconds (wall clock)
    kind: str  # one of KINDS
    app: str
    instance: int | None  # None: the whole app (a reload, a scale, a watch trigger)
    reason: str


def from_json(data: object) -> Event | None:
    """`data` as an Event when it has an event's keys and types (core.eventlog reads
    events back from a file), else None."""
    if not isinstance(data, dict):
        return None
    when, kind, app = data.get("time"), data.get("kind"), data.get("app")
    instance, reason = data.get("instance"), data.get("reason")
    if isinstance(when, bool) or not isinstance(when, int | float) or kind not in KINDS:
        return None
    if not 0 <= when < 1e11:  # an epoch time (to the year 5138): not NaN, inf or a huge int
        return None
    if not isinstance(app, str) or not app or not isinstance(reason, str):
        return None
    if instance is not None and (isinstance(instance, bool) or not isinstance(instance, int)):
        return None
    return {"time": float(when), "kind": kind, "app": app, "instance": instance, "reason": reason}


def exit_text(code: int | None, sig: str | None) -> str:
    """How a process ended: "killed by SIGKILL", "exit code 1"."""
    if sig:
        return f"killed by {sig}"
    return f"exit code {code}" if code is not None else "exited"


# A restart's reason (core.apps: restart_history's "reason") as the timeline says it.
RESTART_REASONS: dict[str, str] = {
    "crashed": "crashed",
    "manual": "manual restart",
    "watch": "file change (watch)",
    "memory": "memory over max_memory_restart",
    "cron": "cron_restart",
    "reload": "rolling reload",
    "file": "ecosystem file changed",
}
# What started a rolling reload (rolling_reload's reason), as the timeline says it.
RELOAD_TRIGGERS: dict[str, str] = {
    "reload": "manual",
    "watch": "file change",
    "cron": "cron_restart",
    "file": "ecosystem file changed",
}
