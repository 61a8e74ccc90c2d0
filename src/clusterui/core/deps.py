"""`depends_on`: start an app once its dependencies meet their conditions; stop in reverse.

Conditions (spec.DEPENDENCY_CONDITIONS):

- ``started``: every instance of the dependency has a process;
- ``online``: every instance is online (ready, when the app signals readiness);
- ``healthy``: every instance passed its latest health probe (needs a `health_check`);
- ``completed``: every instance exited with code 0 (a one-shot job, e.g. a migration).

While it waits, an app's workers show ``pending`` and the app says why, e.g.
``waiting for db: healthy (db:0 is unhealthy)``. A dependency that fails keeps it waiting
(it never starts anyway); starting it by hand (`clusterui start`) ends the wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from clusterui.core.health import is_healthy
from clusterui.vocab import states

if TYPE_CHECKING:
    from clusterui.core.apps import App

POLL = 0.1  # seconds between looks at the dependencies while waiting


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """A dependency cycle as [a, b, ..., a], or None. Names missing from graph are leaves."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for dep in graph.get(name, ()):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and dep in graph:
                found = visit(dep)
                if found:
                    return found
        path.pop()
        state[name] = 2
        return None

    for name in graph:
        if name not in state:
            found = visit(name)
            if found:
                return found
    return None


def unmet(app_of: Callable[[str], App | None], name: str, condition: str) -> str | None:
    """Why `name` does not meet `condition` yet (None when it does)."""
    dep = app_of(name)
    if dep is None:
        return f"{name} is not loaded"
    slots = [dep.slots[i] for i in sorted(dep.slots)]
    if not slots:
        return f"{name} has no instances"
    for slot in slots:
        label = f"{name}:{slot.instance}"
        proc = slot.proc
        if condition == "completed":
            if proc is not None:
                return f"{label} is still running"
            code, sig = slot.last_exit
            if sig is not None:
                return f"{label} was killed by {sig}"
            if code is None:
                return f"{label} has not run yet"
            if code != 0:
                return f"{label} exited with code {code}"
            continue
        if proc is None:
            why = slot.last_error or slot.status
            return f"{label} is {why}"
        if condition == "started":
            continue
        if proc.status != states.ONLINE:
            return f"{label} is {proc.status}"
        if condition == "healthy" and not is_healthy(proc):
            if proc.probe is None:
                return f"{label} has not passed a health probe yet"
            return f"{label} is unhealthy"
    return None


def first_unmet(app: App, app_of: Callable[[str], App | None]) -> str | None:
    for name, condition in app.spec.depends_on.items():
        why = unmet(app_of, name, condition)
        if why is not None:
            return f"waiting for {name}: {condition} ({why})"
    return None


def blocked(
    app: App, app_of: Callable[[str], App | None], seen: frozenset[str] = frozenset()
) -> str | None:
    """app's wait message when the wait cannot end by itself: a dependency has errored,
    or a job it needs to complete failed; None while it still may."""
    for name, condition in app.spec.depends_on.items():
        if unmet(app_of, name, condition) is None:
            continue
        dep = app_of(name)
        if dep is None or name in seen:
            return None
        if dep.waiting_for:
            if blocked(dep, app_of, seen | {app.name}) is None:
                return None
            return first_unmet(app, app_of)
        slots = list(dep.slots.values())
        if any(s.proc is None and s.idle.value == states.ERRORED for s in slots):
            return first_unmet(app, app_of)
        if (
            condition == "completed"
            and all(s.proc is None and s.idle.value == states.STOPPED for s in slots)
            and any(s.last_exit not in ((0, None), (None, None)) for s in slots)
        ):
            return first_unmet(app, app_of)
    return None


async def start_when_ready(
    app: App, app_of: Callable[[str], App | None], start: Callable[[], Awaitable[Any]]
) -> None:
    """Hold app's workers in `pending` until every dependency meets its condition and,
    with `preload`, its zygote has imported the app."""
    slots = app.ensure_slots(app.spec.instances)
    for slot in slots:
        if slot.proc is None:
            slot.idle.to(states.PENDING)
    while True:
        if _taken_over(app):
            app.waiting_for = None
            return
        why = first_unmet(app, app_of)
        if why is None:
            break
        if why != app.waiting_for:
            app.waiting_for = why
            for slot in app.slots.values():
                app.ctx.logs.emit(slot.id, app.name, slot.instance, why)
        await asyncio.sleep(POLL)
    if app.preload is not None:  # apps in one file do this side by side
        app.waiting_for = "preloading the app's modules"
        await app.fresh_code()
    app.waiting_for = None
    if _taken_over(app):
        return
    for slot in app.slots.values():
        if slot.idle.value == states.PENDING:
            slot.idle.to(states.STOPPED)
    await start()


def _taken_over(app: App) -> bool:
    """Deleted, started or stopped by hand while it waited."""
    return app.removed or any(
        s.proc is not None or s.idle.value != states.PENDING for s in app.slots.values()
    )


def stop_layers(apps: Mapping[str, App]) -> list[list[App]]:
    """Apps grouped for stopping: those nothing depends on first, their dependencies
    after them (reverse start order); an app's layer is its longest dependency chain."""
    depth: dict[str, int] = {}

    def level(name: str, seen: frozenset[str]) -> int:
        if name in depth:
            return depth[name]
        app = apps[name]
        deps = [d for d in app.spec.depends_on if d in apps and d not in seen]
        depth[name] = 1 + max((level(d, seen | {name}) for d in deps), default=-1)
        return depth[name]

    for name in apps:
        level(name, frozenset())
    layers: dict[int, list[App]] = {}
    for name, d in depth.items():
        layers.setdefault(d, []).append(apps[name])
    return [layers[d] for d in sorted(layers, reverse=True)]
