"""What runs beside an app's workers: its health probes and its cron restarts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from clusterui.core.cron import Clock, CronRestart
from clusterui.core.health import HealthMonitor

if TYPE_CHECKING:
    from clusterui.core.apps import App


def attach(app: App, clock: Clock | None = None) -> None:
    spec = app.spec
    if spec.health_check is not None and app.prober is None:
        app.prober = HealthMonitor(app, spec.health_check)
        app.prober.start()
    if spec.cron_restart and app.cron is None:
        app.cron = CronRestart(app, spec.cron_restart, clock)
        app.cron.start()


async def detach(app: App) -> None:
    if app.prober is not None:
        await app.prober.stop()
        app.prober = None
    if app.cron is not None:
        await app.cron.stop()
        app.cron = None


async def refresh(app: App) -> None:
    """After app.spec changed: probes and the schedule as the new spec says."""
    clock = app.cron.clock if app.cron is not None else None
    await detach(app)
    attach(app, clock)


def app_fields(app: App) -> dict[str, Any]:
    """Additions to the snapshot's app row."""
    cron = app.cron
    return {
        "depends_on": dict(app.spec.depends_on),
        "waiting_for": app.waiting_for,
        "cron_restart": app.spec.cron_restart,
        "cron_next": cron.next.timestamp() if cron is not None and cron.next else None,
        "health_check": app.spec.health_check.kind if app.spec.health_check else None,
        "reloads": dict(app.reloads),
        "preload": app.preload.info() if app.preload is not None else None,
    }
