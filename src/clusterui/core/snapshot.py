"""The state snapshot the supervisor serves (`ls --json`, `state`, dashboard ticks)."""

from __future__ import annotations

from typing import Any

from clusterui.core import upkeep
from clusterui.core.apps import App, Slot
from clusterui.core.health import display_health, is_unhealthy
from clusterui.vocab import states
from clusterui.vocab.lsfields import LS_JSON_KEYS
from clusterui.vocab.snapshot import AppRow, Snapshot, SupervisorInfo, WorkerRow


def display_status(slot: Slot) -> str:
    """The slot's status, or "suspended" while its live process is stopped (SIGSTOP), or
    "unhealthy" while it is online and failing its health probe."""
    proc = slot.proc
    return states.shown(slot.status, proc is not None and proc.suspended, is_unhealthy(proc))


def worker_row(
    app: App, slot: Slot, *, history: bool = True, fields: frozenset[str] | None = None
) -> WorkerRow:
    """One worker's row; with `fields`, only those keys (any others asked for are left
    out: a newer client may know more than this supervisor)."""
    proc = slot.proc
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
        # Older processes of this slot still draining after a reload: alive, so listed.
        "draining_pids": [p.pid for p in slot.retiring],
    }
    if fields is not None and fields <= _LS_FIELDS:
        # `clusterui ls` at 2,000 workers: the rest (paths, health, history) costs as
        # much again to build and to send.
        return row if fields == _LS_FIELDS else _only(row, fields)
    out_file, err_file = app.ctx.logs.paths(app.name, slot.instance, app.spec)
    row["metrics_dropped"] = slot.metrics_gate.total_dropped
    # Lines lost to write errors (a full disk) in its two files; the files mark the gap.
    row["log_dropped"] = app.ctx.logs.dropped(out_file) + app.ctx.logs.dropped(err_file)
    row["restart_history"] = list(slot.restart_history)
    row["out_file"] = out_file
    row["err_file"] = err_file
    row["health"] = display_health(slot)
    if history:
        row["history"] = slot.history.to_dict()
    return row if fields is None else _only(row, fields)


_LS_FIELDS = frozenset(LS_JSON_KEYS)


def _only(row: WorkerRow, fields: frozenset[str]) -> WorkerRow:
    return {k: v for k, v in row.items() if k in fields}  # type: ignore[return-value]


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
        "dispatchers": app.listener.dispatchers() if app.listener else [],
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


_WORKER_FIELDS = WorkerRow.__required_keys__ | WorkerRow.__optional_keys__


def worker_table(apps: dict[str, App], columns: list[str]) -> dict[str, Any]:
    """The workers as a table of the asked columns, in the asked order, leaving out
    names this supervisor does not know (a newer client may ask for more)."""
    known = [c for c in dict.fromkeys(columns) if c in _WORKER_FIELDS]
    wanted = frozenset(known)
    rows = []
    for app in apps.values():
        for i in sorted(app.slots):
            row = worker_row(app, app.slots[i], history="history" in wanted, fields=wanted)
            rows.append([row[c] for c in known])
    return {"columns": known, "rows": rows}
