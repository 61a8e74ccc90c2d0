"""The state snapshot the supervisor serves (`ls --json`, `state`, dashboard ticks)."""

from __future__ import annotations

from clusterui.core import upkeep
from clusterui.core.apps import App, Slot
from clusterui.core.health import display_health, is_unhealthy
from clusterui.vocab import states
from clusterui.vocab.snapshot import AppRow, Snapshot, SupervisorInfo, WorkerRow


def display_status(slot: Slot) -> str:
    """The slot's status, or "suspended" while its live process is stopped (SIGSTOP), or
    "unhealthy" while it is online and failing its health probe."""
    proc = slot.proc
    return states.shown(slot.status, proc is not None and proc.suspended, is_unhealthy(proc))


def worker_row(app: App, slot: Slot, *, history: bool = True) -> WorkerRow:
    proc = slot.proc
    out_file, err_file = app.ctx.logs.paths(app.name, slot.instance, app.spec)
    row: WorkerRow = {
        "id": slot.id,
        "app": app.name,
        "instance": slot.instance,
        "pid": proc.pid if proc else None,
        "status": display_status(slot),
        "restarts": slot.restarts,
        "uptime": round(proc.uptime, 3) if proc else 0,
        "cpu": round(slot.cpu, 1) if proc else 0.0,
        "memory": slot.memory if proc else 0,
        "connections": slot.connections,
        "active": slot.active if proc else 0,
        "conn_rate": round(slot.conn_rate, 2),
        # Requests/s for workers that report it (metrics req_rate), else None.
        "req_rate": slot.req_rate,
        "exit_code": slot.last_exit[0],
        "exit_signal": slot.last_exit[1],
        "error": slot.last_error or slot.diagnosis,
        "metrics": dict(slot.metrics),
        "metrics_dropped": slot.metrics_gate.total_dropped,
        # Older processes of this slot still draining after a reload: alive, so listed.
        "draining_pids": [p.pid for p in slot.retiring],
        # Lines lost to write errors (a full disk) in its two files; the files mark the gap.
        "log_dropped": app.ctx.logs.dropped(out_file) + app.ctx.logs.dropped(err_file),
        "restart_history": list(slot.restart_history),
        "out_file": out_file,
        "err_file": err_file,
        "health": display_health(slot),
    }
    if history:
        row["history"] = slot.history.to_dict()
    return row


def app_row(app: App) -> AppRow:
    spec = app.spec
    return {
        "name": app.name,
        "exec_mode": spec.exec_mode,
        "dispatch": spec.dispatch if spec.listen else None,
        "listen": str(spec.listen) if spec.listen else None,
        "instances": spec.instances,
        "watch": app.watch_on,
        "watch_paths": list(spec.watch),
        "last_watch_event": app.last_watch_event,
        "source": spec.source,
        "script": spec.script,
        "args": list(spec.args),
        "cwd": spec.cwd,
        "interpreter": spec.interpreter,
        "env_names": sorted(spec.env),
        "reloading": app.reload_lock.locked(),
        "listener_pid": app.listener.pid if app.listener else None,
        **upkeep.app_fields(app),
    }


def snapshot(apps: dict[str, App], supervisor: SupervisorInfo, history: bool = True) -> Snapshot:
    return {
        "supervisor": supervisor,
        "apps": [app_row(app) for app in apps.values()],
        "workers": [
            worker_row(app, app.slots[i], history=history)
            for app in apps.values()
            for i in sorted(app.slots)
        ],
    }
