"""Applying an ecosystem file to what runs, and the saved dump (the supervisor's side).

`apply`: PM2's `pm2 reload ecosystem.config.js` / `startOrReload`. Each app in the file is
compared with the loaded app of that name:

- not loaded: started;
- unchanged: left alone (same processes);
- only `instances` changed: scaled;
- `listen`, `exec_mode` or `dispatch` changed: a listener cannot move during a rolling
  reload, so the app is left as it runs and the answer says to restart it
  (`clusterui restart FILE` does, cutting its connections);
- anything else that reaches the process (script, args, env, ...) changed: a rolling
  reload with the new spec (and a scale when `instances` changed too);
- only restart policy or watch settings changed: the new spec is taken, no process is
  replaced.

Apps loaded from the same file but no longer in it are listed, and removed only with
`prune`. Restart counters, worker ids and logs stay with an app that is kept.
"""

from __future__ import annotations

import os
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from clusterui.core import dump, environ, upkeep
from clusterui.core.spec import AppSpec
from clusterui.vocab.exits import Exit, OpError

if TYPE_CHECKING:
    from clusterui.core.apps import App
    from clusterui.core.supervisor import Supervisor

# Bookkeeping, not behaviour.
IGNORED = frozenset({"source", "source_line"})
NEEDS_RESTART = ("listen", "exec_mode", "dispatch", "dispatchers")
WATCH = frozenset({"watch", "ignore_watch", "watch_delay"})
UPKEEP = frozenset({"health_check", "cron_restart"})  # changed without a reload
# Read by the supervisor, not by the process: a new value needs no new process.
POLICY = frozenset(
    {
        "autorestart",
        "max_restarts",
        "min_uptime",
        "restart_delay",
        "exp_backoff_restart_delay",
        "kill_timeout",
        "kill_signal",
        "listen_timeout",
        "max_memory_restart",
    }
)


def changes(old: AppSpec, new: AppSpec, watch_on: bool) -> set[str]:
    """The AppSpec fields that differ (watch also when its on/off state differs)."""
    out = {
        f.name
        for f in fields(AppSpec)
        if f.name not in IGNORED and getattr(old, f.name) != getattr(new, f.name)
    }
    if bool(new.watch) != watch_on:
        out.add("watch")
    return out


def _label(names: set[str]) -> str:
    return ", ".join(sorted(names))


# The lists an apply report has, in the order they are reported.
REPORT_LISTS = (
    "started",
    "reloaded",
    "restarted",
    "scaled",
    "updated",
    "unchanged",
    "needs_restart",
    "not_in_file",
    "removed",
    "errors",
    "warnings",
    "workers",
)


async def apply(
    sup: Supervisor,
    specs: list[AppSpec],
    file: str,
    caller: dict[str, str] | None,
    *,
    update_env: bool = False,
    prune: bool = False,
    restart: bool = False,
    only: list[str] | None = None,
) -> dict[str, Any]:
    """Make the loaded apps match `specs` (from `file`); the answer lists what happened.

    `caller` is the caller's environment: new apps take it; loaded apps keep theirs unless
    `update_env`. `restart` (`restart FILE`) stops and starts every app of the file with its
    new spec, which is also how a changed listen takes effect.
    """
    report: dict[str, Any] = {"apps": [s.name for s in specs]}
    report.update((key, []) for key in REPORT_LISTS)
    for spec in specs:
        app = sup.apps.get(spec.name)
        if caller is not None and (app is None or update_env):
            spec.caller_env = caller
        elif app is not None:
            spec.caller_env = app.spec.caller_env
        report["warnings"] += environ.spec_warnings(spec)
        try:
            if app is None:
                await sup.add_app(spec)
                report["started"].append(spec.name)
                report["workers"] += [s.id for s in sup.apps[spec.name].slots.values()]
            elif restart:
                await _restart(sup, app, spec)
                report["restarted"].append(spec.name)
                report["workers"] += [s.id for s in sup.apps[spec.name].slots.values()]
            else:
                async with app.op_lock:  # one operation on an app at a time (see App)
                    await _apply_one(app, spec, report)
        except OpError as exc:
            report["errors"].append(f"{spec.name}: {exc.message}")
    if not only:
        wanted = {s.name for s in specs}
        gone = [a.name for a in sup.apps.values() if a.spec.source == file and a.name not in wanted]
        if gone and prune:
            await sup.delete_apps(gone)
            report["removed"] = gone
        else:
            report["not_in_file"] = gone
    report["message"] = summary(report)
    return report


async def _apply_one(app: App, new: AppSpec, report: dict[str, Any]) -> None:
    old = app.spec
    diff = changes(old, new, app.watch_on)
    name = new.name
    if not diff:
        # A file loaded again keeps the app; it now comes from this file.
        old.source, old.source_line = new.source, new.source_line
        report["unchanged"].append(name)
        return
    moved = [k for k in NEEDS_RESTART if k in diff]
    if moved:
        was = ", ".join(f"{k} {_show(getattr(old, k))} -> {_show(getattr(new, k))}" for k in moved)
        report["needs_restart"].append(
            f"{name}: {was} needs a restart of {name} (a rolling reload cannot move its"
            f" listener): `clusterui restart {os.path.basename(new.source) or 'FILE'}`"
            f" restarts the file's apps with the new spec; {name} runs unchanged until then"
        )
        return
    target = new.instances
    new.instances = old.instances  # the slots change below, by scale
    process = diff - POLICY - WATCH - UPKEEP - {"instances", "depends_on"}
    if diff & WATCH:
        await app.set_watch(False)
    app.spec = new
    if app.listener is not None:
        app.listener.spec = new
    if diff & UPKEEP:  # probes and the cron schedule follow the new spec
        await upkeep.refresh(app)
    if target < len(app.slots):
        await app.scale(target)
    if process:
        await app.rolling_reload(reason="file")
    if target > len(app.slots):
        await app.scale(target)
    app.spec.instances = target
    if diff & WATCH and new.watch:
        await app.set_watch(True)
    if process:
        report["reloaded"].append(f"{name} ({_label(process)})")
    if "instances" in diff:
        report["scaled"].append(f"{name} ({old.instances} -> {target})")
    if not process and "instances" not in diff:
        report["updated"].append(f"{name} ({_label(diff)})")


async def _restart(sup: Supervisor, app: App, new: AppSpec) -> None:
    """Stop the app and start it again with the new spec (same name, ids and logs)."""
    await sup.delete_apps([app.name], forget_logs=False)
    await sup.add_app(new)


def _show(value: Any) -> str:
    return "none" if value is None else str(value)


def summary(report: dict[str, Any]) -> str:
    parts = []
    for key, verb in (
        ("started", "started"),
        ("restarted", "restarted"),
        ("reloaded", "reloaded"),
        ("scaled", "scaled"),
        ("updated", "updated"),
        ("unchanged", "unchanged"),
        ("removed", "removed"),
    ):
        if report.get(key):
            parts.append(f"{verb} {', '.join(report[key])}")
    if report.get("not_in_file"):
        parts.append(
            f"no longer in the file (kept; --prune removes): {', '.join(report['not_in_file'])}"
        )
    return "; ".join(parts) or "nothing to do"


# ---- save / resurrect ------------------------------------------------------------------


def save(sup: Supervisor) -> dict[str, Any]:
    apps = [(a.spec, a.watch_on, a.spec.instances) for a in sup.apps.values()]
    path = sup.home.root / dump.DUMP_NAME
    dump.write(path, dump.render(apps))
    names = [spec.name for spec, _w, _n in apps]
    return {
        "path": str(path),
        "apps": names,
        "message": f"saved {len(names)} app(s) to {path}"
        + (f": {', '.join(names)}" if names else ""),
    }


async def resurrect(sup: Supervisor, caller: dict[str, str] | None) -> dict[str, Any]:
    """Start the apps of CLUSTERUI_HOME/dump.yaml that are not running (never twice)."""
    from clusterui.core import config

    path = sup.home.root / dump.DUMP_NAME
    if not path.exists():
        message = f"nothing to resurrect: no {path} (see `clusterui save`)"
        empty: dict[str, Any] = {k: [] for k in ("apps", "started", "kept", "errors", "warnings")}
        return {**empty, "workers": [], "message": message}
    try:
        result = config.load_ecosystem(path)
    except config.ConfigError as exc:
        raise OpError(f"{exc} (the dump is refused; nothing was started)", Exit.USAGE) from None
    text = path.read_text(encoding="utf-8")
    try:
        saved = dump.read_meta(path, text, [s.name for s in result.apps])
    except dump.DumpError as exc:
        raise OpError(str(exc), Exit.USAGE) from None
    started, kept, errors, warnings = [], [], [], []
    for spec in result.apps:
        meta = saved[spec.name]
        if spec.name in sup.apps:
            kept.append(spec.name)
            continue
        spec.caller_env = meta.caller_env if meta.caller_env or caller is None else caller
        if meta.source:
            spec.source = meta.source
        if meta.instances is not None:
            spec.instances = meta.instances
        warnings += environ.spec_warnings(spec)
        try:
            await sup.add_app(spec)
            started.append(spec.name)
        except OpError as exc:
            errors.append(f"{spec.name}: {exc.message}")
    message = f"resurrected {', '.join(started) or 'nothing new'} from {path}"
    return {
        "apps": [s.name for s in result.apps],
        "started": started,
        "kept": kept,
        "errors": errors,
        "warnings": warnings + [str(w) for w in result.warnings],
        "workers": [s.id for n in started for s in sup.apps[n].slots.values()],
        "message": message,
    }
