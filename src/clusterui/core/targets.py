"""TARGET strings: an app name, APP:INSTANCE, a worker id, or `all`."""

from __future__ import annotations

from collections.abc import Iterable

from clusterui.core.apps import App, Slot
from clusterui.vocab.exits import OpError


def resolve(apps: dict[str, App], targets: Iterable[str]) -> list[tuple[App, list[Slot]]]:
    """Group the slots each target names by app, keeping app order; OpError if unknown.

    An app named with no instance is returned with all its slots (possibly none).
    """
    picked: dict[str, list[Slot]] = {}
    for raw in targets:
        target = str(raw).strip()
        if target == "all":
            for app in apps.values():
                _add(picked, app, list(app.slots.values()))
            continue
        if target in apps:
            app = apps[target]
            _add(picked, app, list(app.slots.values()))
            continue
        if target.isascii() and target.isdigit():
            slot = _by_id(apps, int(target))
            if slot is None:
                raise OpError(f"no worker with id {target} (see `clusterui ls`)")
            _add(picked, apps[slot.app], [slot])
            continue
        name, sep, inst = target.rpartition(":")
        if sep and name in apps:
            if not (inst.isascii() and inst.isdigit()) or int(inst) not in apps[name].slots:
                have = ", ".join(str(i) for i in sorted(apps[name].slots)) or "none"
                raise OpError(f"{name} has no instance {inst!r} (instances: {have})")
            _add(picked, apps[name], [apps[name].slots[int(inst)]])
            continue
        known = ", ".join(apps) or "none loaded"
        raise OpError(f"no app or worker named {target!r} (apps: {known})")
    return [(apps[name], slots) for name, slots in picked.items()]


def _add(picked: dict[str, list[Slot]], app: App, slots: list[Slot]) -> None:
    have = picked.setdefault(app.name, [])
    for slot in slots:
        if slot not in have:
            have.append(slot)
    have.sort(key=lambda s: s.instance)


def _by_id(apps: dict[str, App], wid: int) -> Slot | None:
    for app in apps.values():
        for slot in app.slots.values():
            if slot.id == wid:
                return slot
    return None
