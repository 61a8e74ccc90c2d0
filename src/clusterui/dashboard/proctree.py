"""The detail pane's "Processes" section: the selected worker's process tree (or every
worker's, on an app row), as the supervisor's `tree` operation reports it.

The dashboard never reads /proc itself: the app asks the supervisor about once a second
while the detail pane is open (DashboardApp._poll_tree), and this only draws the answer.
Names and command lines are the worker's to choose: drawn with safetext.visible, as Text.
"""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.style import StyleType
from rich.table import Table
from rich.text import Text

from clusterui.dashboard.model import fmt_bytes, fmt_cpu
from clusterui.vocab.safetext import visible

# What a process left, in words for the pane (core/proctree.py says how each is found).
LEFT = {
    "session": "left session",
    "group": "left group",
    "orphan": "orphan",
}
MAX_ROWS = 60  # drawn per answer; the pane scrolls, but a fork bomb needs no 200 rows


def tree_renderable(
    trees: list[dict[str, Any]] | None,
    *,
    app_row: bool,
    error: str | None = None,
    muted: StyleType = "dim",
) -> Group:
    """The section: a heading with the counts, then one row per process, indented by depth."""
    head = Text("Processes", style="bold")
    if error is not None:
        return Group(head, Text(visible(error), style=muted))
    if trees is None:
        head.append("  reading…", style=muted)
        return Group(head)
    rows = [(t, p) for t in trees for p in t.get("processes") or []]
    helpers = sum(1 for _, p in rows if int(p.get("depth") or 0) > 0)
    left = sum(1 for _, p in rows if p.get("left"))
    more = sum(int(t.get("more") or 0) for t in trees)
    if not trees:
        head.append("  no running process", style=muted)
        return Group(head)
    head.append(f"  {helpers} below {'the workers' if app_row else 'the worker'}", style=muted)
    if left:
        head.append(f"  ⚠ {left} left", style="bold")
    grid = Table.grid(padding=(0, 1), expand=True)
    grid.add_column(justify="right", no_wrap=True, min_width=7)  # pid
    grid.add_column(justify="right", no_wrap=True, min_width=5)  # cpu
    grid.add_column(justify="right", no_wrap=True, min_width=5)  # memory
    grid.add_column(overflow="ellipsis", no_wrap=True, ratio=1)  # command
    grid.add_row(*(Text(h, style=muted) for h in ("pid", "cpu", "mem", "command")))
    for tree, proc in rows[:MAX_ROWS]:
        grid.add_row(
            Text(str(proc.get("pid"))),
            Text(fmt_cpu(proc.get("cpu"))),
            Text(fmt_bytes(proc.get("memory"))),
            _command(tree, proc, app_row, muted),
        )
    parts: list[Any] = [head, grid]
    hidden = more + max(0, len(rows) - MAX_ROWS)
    if hidden:
        parts.append(Text(f"… {hidden} more", style=muted))
    return Group(*parts)


def _command(tree: dict[str, Any], proc: dict[str, Any], app_row: bool, muted: StyleType) -> Text:
    depth = int(proc.get("depth") or 0)
    line = Text(no_wrap=True, end="")
    if depth == 0 and app_row:
        line.append(visible(f"{tree.get('app')}:{tree.get('instance')} "), style="bold")
    if depth:
        line.append("  " * (depth - 1) + "└ ", style=muted)
    why = LEFT.get(str(proc.get("left")))
    if why:  # before the command, which the pane's width may cut
        line.append(f"⚠ {why} ", style="bold reverse")
    if proc.get("status") in ("zombie", "stopped"):
        line.append(f"({proc['status']}) ", style=muted)
    command = str(proc.get("cmdline") or "") or f"[{proc.get('name') or '?'}]"
    line.append(visible(command))
    return line
