"""State deltas: what changed between two snapshots, and how a subscriber applies it.

A subscriber that asks for deltas (`subscribe` with `delta: true`, README "Protocol additions")
gets one whole `state` event first, then a `state_delta` event each tick:

    {"supervisor": {...whole...},
     "apps":    {"set": [rows], "drop": [names], "order": [names]},
     "workers": {"set": [rows], "drop": [ids],   "order": [ids]}}

`set` holds the rows that are new (whole) or changed (their key and the changed fields
only); `drop` the keys of rows that are gone; `order` the whole key sequence, present
only when it differs from the last one. A worker's `uptime` is not sent while its pid
stays the same: the subscriber adds the supervisor's own uptime increase to it. The
supervisor keeps a mirror of what its subscribers hold (`Mirror`), so each delta is
made and encoded once for all of them and applying it gives back the snapshot exactly
(a worker's uptime within `UPTIME_SLACK` seconds).

At 2,000 idle workers a whole state event is about 1 MB of JSON each second; a delta
is the few rows that moved.
"""

from __future__ import annotations

from typing import Any

# The event names: a whole snapshot, and what changed since the last event.
WHOLE = "state"
DELTA = "state_delta"
# The two row lists and the field that keys each.
KEYS = {"apps": "name", "workers": "id"}
# How far a worker's uptime may drift from the subscriber's running sum before it is
# sent again. The rows of one snapshot are made over tens of milliseconds at 2,000
# workers, after the supervisor's own uptime, so the sum drifts by that much; at 50 ms
# a thousand rows were sent again every ten-odd ticks. Uptime is shown in seconds.
UPTIME_SLACK = 0.5

Row = dict[str, Any]


def _elapsed(old: Any, new: Any) -> float:
    return float((new or {}).get("uptime") or 0.0) - float((old or {}).get("uptime") or 0.0)


def _drifts(pid: Any, old: Row) -> bool:
    """Whether a row's uptime is the clock's doing since `old`: the same live process."""
    return pid is not None and pid == old.get("pid")


class Mirror:
    """What the delta subscribers hold, on the supervisor's side: `delta(snapshot)` says
    how to go from it to `snapshot`, and moves it there (`apply` is the other side)."""

    def __init__(self) -> None:
        self.supervisor: Row | None = None
        self.rows: dict[str, dict[Any, Row]] = {name: {} for name in KEYS}

    def delta(self, snapshot: dict[str, Any]) -> dict[str, Any]:
        """The snapshot's rows are not changed; the mirror keeps them, or copies."""
        elapsed = _elapsed(self.supervisor, snapshot.get("supervisor"))
        out: dict[str, Any] = {"supervisor": snapshot.get("supervisor")}
        for name, key in KEYS.items():
            out[name] = self._diff(name, key, snapshot.get(name) or [], elapsed)
        self.supervisor = snapshot.get("supervisor")
        return out

    def _diff(self, name: str, key: str, rows: list[Row], elapsed: float) -> dict[str, Any]:
        before = self.rows[name]
        after: dict[Any, Row] = {}
        changed: list[Row] = []
        for row in rows:
            k = row[key]
            old = before.get(k)
            if old is None:
                after[k] = row
                changed.append(row)
                continue
            if name == "workers" and _drifts(row.get("pid"), old):
                old["uptime"] += elapsed  # as the subscriber does (apply)
                if abs(row["uptime"] - old["uptime"]) <= UPTIME_SLACK:
                    row = {**row, "uptime": old["uptime"]}
            after[k] = row
            if row != old:
                part = {f: v for f, v in row.items() if f not in old or old[f] != v}
                part[key] = k
                changed.append(part)
        out: dict[str, Any] = {"set": changed, "drop": [k for k in before if k not in after]}
        if list(before) != list(after):
            out["order"] = list(after)
        self.rows[name] = after
        return out


def apply(held: dict[str, Any] | None, delta: dict[str, Any]) -> dict[str, Any]:
    """The snapshot after `delta`, made from `held` (the last snapshot, whose row dicts
    are updated in place and reused). A delta with nothing held to apply it to raises
    ValueError: the subscriber must then ask for the whole state."""
    if held is None:
        raise ValueError("a state delta came before any whole state")
    elapsed = _elapsed(held.get("supervisor"), delta.get("supervisor"))
    out: dict[str, Any] = {"supervisor": delta.get("supervisor")}
    for name, key in KEYS.items():
        part = delta.get(name) or {}
        rows = {row[key]: row for row in held.get(name) or []}
        for k in part.get("drop") or ():
            rows.pop(k, None)
        changes = {change[key]: change for change in part.get("set") or ()}
        for k, row in rows.items():
            change = changes.get(k)
            if name == "workers" and elapsed:
                pid = change.get("pid", row.get("pid")) if change else row.get("pid")
                if _drifts(pid, row):
                    row["uptime"] += elapsed
            if change:
                row.update(change)
        for k, change in changes.items():
            if k not in rows:
                rows[k] = dict(change)
        order = part.get("order")
        if order is None:
            out[name] = list(rows.values())
        else:
            try:
                out[name] = [rows[k] for k in order]
            except KeyError as exc:
                raise ValueError(f"a state delta orders a row it never sent: {exc}") from None
    return out
