"""The process table: one row per worker, grouped under one summary row per app.

Rows are keyed ("app:NAME", "w:ID") and updated cell by cell; rows are only added or
removed when workers appear or go, and the cursor stays on the row it was on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from rich.style import Style
from rich.text import Text
from textual.binding import Binding, BindingType
from textual.coordinate import Coordinate
from textual.widgets import DataTable
from textual.widgets.data_table import RowDoesNotExist

from clusterui.dashboard.model import (
    STATUS_GLYPH,
    History,
    Selection,
    app_key,
    fmt_bytes,
    fmt_cpu,
    fmt_duration,
    fmt_rate,
    mode_label,
    spark,
    sum_series,
    worker_key,
    worker_series,
)
from clusterui.dashboard.style import fg_style

NARROW_STATUS = {"launching": "launch", "waiting-restart": "waiting"}
# A hidden column still takes one cell: a zero-width column makes Textual's NO_COLOR
# filter fail on the empty, unstyled segment it renders.
HIDDEN = " "


class OrderedText(Text):
    """A Text that also carries the row's place in the grouping, for DataTable.sort()."""

    order: tuple[int, int, int]


@dataclass(frozen=True)
class Layout:
    name_w: int
    mode_w: int  # 0: column hidden (one blank cell)
    status_w: int
    sparks: tuple[int, int, int]  # in-cell sparkline widths for cpu, mem, conn/s (0: none)

    @property
    def narrow(self) -> bool:
        return self.mode_w == 0


COLUMNS = (
    "id",
    "name",
    "mode",
    "pid",
    "status",
    "restarts",
    "uptime",
    "cpu",
    "mem",
    "conn",
    "open",
)
MAX_SPARK = 12


def choose_layout(avail: int, name_w: int) -> Layout:
    """Fit the columns to `avail` cells.

    Sparklines shrink first, then the mode column goes; on the narrowest screens the
    room left goes to the CPU sparkline, then conn/s, then memory.
    """
    name_w = max(6, min(name_w, 24))
    # Every cell is one separator space plus its content.
    base = (1 + 3) + (1 + name_w) + (1 + 7) + (1 + 3) + (1 + 6) + 3 * (1 + 6) + (1 + 5)
    wide = base + (1 + 12) + (1 + 11)
    each = (avail - wide) // 3 - 1
    if each >= 6:
        w = min(each, MAX_SPARK)
        return Layout(name_w, 12, 11, (w, w, w))
    extra = avail - (base + 1 + 10 + len(HIDDEN))
    each = extra // 3 - 1
    if each >= 4:
        w = min(each, MAX_SPARK)
        return Layout(name_w, 0, 10, (w, w, w))
    widths = {"cpu": 0, "conn": 0, "mem": 0}
    for kind in ("cpu", "conn", "mem"):
        w = min(extra - 1, 8)
        if w < 4:
            break
        widths[kind] = w
        extra -= w + 1
    return Layout(name_w, 0, 10, (widths["cpu"], widths["mem"], widths["conn"]))


class ProcessTable(DataTable):
    DEFAULT_CSS = """
    ProcessTable {
        height: auto;
        & > .proc--app { text-style: bold; }
        & > .proc--tree { color: $text-muted; text-style: dim; }
        & > .proc--dim { text-style: dim; }
        & > .proc--online { color: $text-success; }
        & > .proc--launching { color: $text-warning; }
        & > .proc--draining { color: $text-warning; }
        & > .proc--stopping { color: $text-warning; }
        & > .proc--waiting-restart { color: $text-warning; text-style: bold; }
        & > .proc--stopped { color: $text-muted; text-style: dim; }
        & > .proc--errored { color: $text-error; text-style: bold; }
        & > .proc--spark-cpu { color: $text-primary; }
        & > .proc--spark-mem { color: $text-secondary; }
        & > .proc--spark-conn { color: $text-accent; }
    }
    """
    COMPONENT_CLASSES: ClassVar[set[str]] = DataTable.COMPONENT_CLASSES | {
        "proc--app",
        "proc--tree",
        "proc--dim",
        *(f"proc--{s}" for s in STATUS_GLYPH),
        "proc--spark-cpu",
        "proc--spark-mem",
        "proc--spark-conn",
    }
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
        Binding("enter", "app.details", "Details", show=False),
    ]

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes, cursor_type="row", cell_padding=0)
        self._meta: dict[str, Selection] = {}
        self._cells: dict[str, tuple[Text, ...]] = {}
        self._layout = choose_layout(120, 10)
        self._snapshot: dict[str, Any] = {"apps": [], "workers": []}
        self._history = History()

    def on_mount(self) -> None:
        for key in COLUMNS:
            self.add_column(self._label(key), key=key)

    def on_resize(self) -> None:
        self.relayout()

    # -- public ---------------------------------------------------------------

    @property
    def selection(self) -> Selection | None:
        if not self.row_count:
            return None
        row = min(self.cursor_row, self.row_count - 1)
        key = self.coordinate_to_cell_key(Coordinate(row, 0)).row_key.value
        return self._meta.get(key or "")

    @property
    def row_keys(self) -> list[str]:
        """Row keys in display order."""
        return [str(row.key.value) for row in self.ordered_rows]

    def select_key(self, key: str) -> bool:
        try:
            index = self.get_row_index(key)
        except RowDoesNotExist:
            return False
        self.move_cursor(row=index)
        return True

    def update_snapshot(self, snapshot: dict[str, Any], history: History) -> None:
        """Bring the rows in line with a snapshot: add, remove, update by key."""
        self._snapshot = snapshot
        self._history = history
        before = self.selection
        desired = self._desired_rows(snapshot)
        layout = self._fit_layout(desired)
        relayout = layout != self._layout
        self._layout = layout

        gone = [key for key in self._meta if key not in desired]
        for key in gone:
            self.remove_row(key)
            del self._meta[key]
            self._cells.pop(key, None)

        added = False
        for key, (sel, cells_fn) in desired.items():
            cells = cells_fn()
            if key not in self._meta:
                self.add_row(*cells, key=key)
                added = True
            else:
                old = self._cells.get(key, ())
                for col, (new, prev) in enumerate(zip(cells, old, strict=False)):
                    # Text equality ignores the sort order carried by the first cell
                    if new != prev or getattr(new, "order", None) != getattr(prev, "order", None):
                        self.update_cell(key, COLUMNS[col], new)
            self._meta[key] = sel
            self._cells[key] = cells
        if relayout:
            self._relabel()
        if added or gone or relayout or self.row_keys != list(desired):
            self.sort(key=lambda row: row[0].order)
        self._keep_cursor(before, gone)

    def relayout(self) -> None:
        """Re-fit the columns after a resize (cells are re-rendered, rows stay)."""
        if self._snapshot["apps"] or self._snapshot["workers"]:
            self.update_snapshot(self._snapshot, self._history)

    # -- internals ------------------------------------------------------------

    def _fit_layout(self, desired: dict[str, Any]) -> Layout:
        names = [len(sel.target) + 2 for sel, _ in desired.values()]
        avail = self.scrollable_content_region.width or 120
        return choose_layout(avail, max(names, default=8))

    def _relabel(self) -> None:
        for key in COLUMNS:
            self.columns[key].label = self._label(key)  # type: ignore[index]
        # Recompute widths once per column: the first row measures, the others follow.
        first = next(iter(self._cells), None)
        if first is not None:
            for col, cell in enumerate(self._cells[first]):
                self.update_cell(first, COLUMNS[col], cell, update_width=True)
        self.refresh(layout=True)

    def _keep_cursor(self, before: Selection | None, gone: list[str]) -> None:
        if before is None or not self.row_count:
            return
        if before.key in self._meta:
            index = self.get_row_index(before.key)
            if index != self.cursor_row:
                self.move_cursor(row=index, scroll=True)
        elif before.key in gone and app_key(before.app) in self._meta:
            # the worker went (scaled down): land on its app rather than a stranger
            self.move_cursor(row=self.get_row_index(app_key(before.app)))

    def _style(self, name: str) -> Style:
        return fg_style(self, name)

    def _label(self, key: str) -> Text:
        lay = self._layout
        labels = {
            "id": ("id", 3, "right"),
            "name": ("name", lay.name_w, "left"),
            "mode": ("mode", lay.mode_w, "left"),
            "pid": ("pid", 7, "right"),
            "status": ("status", lay.status_w, "left"),
            "restarts": ("↻", 3, "right"),
            "uptime": ("uptime" if not lay.narrow else "up", 6, "right"),
            "cpu": ("cpu", 6 + _plus_one(self._spark_width("cpu")), "left"),
            "mem": ("mem", 6 + _plus_one(self._spark_width("mem")), "left"),
            "conn": ("conn/s", 6 + _plus_one(self._spark_width("conn")), "left"),
            "open": ("open", 5, "right"),
        }
        label, width, justify = labels[key]
        if width == 0:
            return Text(HIDDEN, end="")
        if key in ("cpu", "mem", "conn"):
            # over the figure (right-aligned), not over the sparkline
            return _cell(label.rjust(6), width)
        return _cell(label, width, justify=justify)

    def _desired_rows(
        self, snapshot: dict[str, Any]
    ) -> dict[str, tuple[Selection, Callable[[], tuple[Text, ...]]]]:
        rows: dict[str, tuple[Selection, Callable[[], tuple[Text, ...]]]] = {}
        workers_by_app: dict[str, list[dict[str, Any]]] = {}
        for w in snapshot.get("workers", []):
            workers_by_app.setdefault(w["app"], []).append(w)
        for a_index, app in enumerate(snapshot.get("apps", [])):
            name = app["name"]
            workers = sorted(workers_by_app.get(name, []), key=lambda w: w["instance"])
            rows[app_key(name)] = (
                Selection(name),
                _bind(self._app_cells, app, workers, (a_index, 0, 0)),
            )
            for i, w in enumerate(workers):
                last = i == len(workers) - 1
                rows[worker_key(w["id"])] = (
                    Selection(name, w["id"], w["instance"]),
                    _bind(self._worker_cells, app, w, last, (a_index, 1, w["instance"])),
                )
        return rows

    def _metric_cell(self, value: str, series: list[float], kind: str, top: float | None) -> Text:
        width = self._spark_width(kind)
        text = Text(" " + value.rjust(6), end="")
        if width:
            text.append(" ")
            text.append(spark(series, width, top), self._style(f"proc--spark-{kind}"))
        return text

    def _spark_width(self, kind: str) -> int:
        cpu, mem, conn = self._layout.sparks
        return {"cpu": cpu, "mem": mem, "conn": conn}[kind]

    def _worker_cells(
        self, app: dict[str, Any], w: dict[str, Any], last: bool, order: tuple[int, int, int]
    ) -> tuple[Text, ...]:
        lay = self._layout
        status = w.get("status", "?")
        status_style = self._style(f"proc--{status}") if status in STATUS_GLYPH else Style()
        word = NARROW_STATUS.get(status, status) if lay.narrow else status
        if status == "waiting-restart" and not lay.narrow:
            word = "waiting"
        live = w.get("pid") is not None
        id_cell = _ordered(str(w["id"]), 3, order)
        name = Text(" ", end="")
        name.append("└ " if last else "├ ", self._style("proc--tree"))
        name.append(f"{app['name']}:{w['instance']}")
        name.truncate(lay.name_w + 1, overflow="ellipsis", pad=True)
        cpu_s = worker_series(w, self._history, "cpu")
        mem_s = worker_series(w, self._history, "memory")
        conn_s = worker_series(w, self._history, "conn_rate")
        return (
            id_cell,
            name,
            _cell("", lay.mode_w) if lay.mode_w else Text(HIDDEN, end=""),
            _cell(str(w["pid"]) if live else "—", 7, justify="right"),
            _cell(f"{STATUS_GLYPH.get(status, '?')} {word}", lay.status_w, style=status_style),
            _cell(_count(w.get("restarts", 0)), 3, justify="right"),
            _cell(fmt_duration(w.get("uptime")) if live else "—", 6, justify="right"),
            self._metric_cell(fmt_cpu(w.get("cpu")) if live else "—", cpu_s, "cpu", 100.0),
            self._metric_cell(
                fmt_bytes(w.get("memory")) if live else "—", mem_s, "mem", _headroom(mem_s)
            ),
            self._metric_cell(fmt_rate(w.get("conn_rate")), conn_s, "conn", None),
            _cell(str(w.get("active", 0)) if live else "—", 5, justify="right"),
        )

    def _app_cells(
        self, app: dict[str, Any], workers: list[dict[str, Any]], order: tuple[int, int, int]
    ) -> tuple[Text, ...]:
        lay = self._layout
        bold = self._style("proc--app")
        total = len(workers)
        online = sum(1 for w in workers if w.get("status") == "online")
        if app.get("reloading"):
            status, word = "launching", "reloading"
        elif any(w.get("status") == "errored" for w in workers):
            status, word = "errored", f"{online}/{total} up"
        elif total and online == total:
            status, word = "online", f"{online}/{total} up"
        elif total == 0 or online == 0:
            status, word = "stopped", f"{online}/{total} up"
        else:
            status, word = "launching", f"{online}/{total} up"
        glyph = "↻" if app.get("reloading") else STATUS_GLYPH[status]
        name = _cell(app["name"], lay.name_w, style=bold)
        if app.get("watch"):
            name = Text(" ", end="")
            name.append(app["name"], bold)
            name.append(" ◉", self._style("proc--dim"))
            name.truncate(lay.name_w + 1, overflow="ellipsis", pad=True)
        cpu = sum(float(w.get("cpu") or 0) for w in workers)
        mem = sum(int(w.get("memory") or 0) for w in workers)
        rate = sum(float(w.get("conn_rate") or 0) for w in workers)
        series = {
            kind: sum_series(worker_series(w, self._history, kind) for w in workers)
            for kind in ("cpu", "memory", "conn_rate")
        }
        return (
            _ordered("", 3, order),
            name,
            _cell(mode_label(app), lay.mode_w, style=self._style("proc--dim"))
            if lay.mode_w
            else Text(HIDDEN, end=""),
            _cell("", 7),
            _cell(
                f"{glyph} {word}",
                lay.status_w,
                style=self._style(f"proc--{status}") + Style(bold=True),
            ),
            _cell(_count(sum(int(w.get("restarts") or 0) for w in workers)), 3, justify="right"),
            _cell("", 6),
            self._metric_cell(fmt_cpu(cpu), series["cpu"], "cpu", 100.0),
            self._metric_cell(fmt_bytes(mem), series["memory"], "mem", _headroom(series["memory"])),
            self._metric_cell(fmt_rate(rate), series["conn_rate"], "conn", None),
            _cell(str(sum(int(w.get("active") or 0) for w in workers)), 5, justify="right"),
        )


def _bind(fn: Callable[..., tuple[Text, ...]], *args: Any) -> Callable[[], tuple[Text, ...]]:
    return lambda: fn(*args)


def _plus_one(n: int) -> int:
    return n + 1 if n else 0


def _headroom(series: list[float]) -> float | None:
    """Scale memory a little above its peak so a steady line reads as steady, not full."""
    return max(series) * 1.15 if series else None


def _count(n: int) -> str:
    return str(n) if n < 1000 else "1k+"


def _cell(value: str, width: int, *, justify: str = "left", style: Style | str = "") -> Text:
    """A cell of exactly 1 + width cells: a separator space and the padded value."""
    if width <= 0:
        return Text(HIDDEN, end="")
    body = value if len(value) <= width else value[: max(0, width - 1)] + "…"
    body = body.rjust(width) if justify == "right" else body.ljust(width)
    text = Text(" ", end="")
    text.append(body, style)
    return text


def _ordered(value: str, width: int, order: tuple[int, int, int]) -> OrderedText:
    text = OrderedText(" " + value.rjust(width), end="")
    text.order = order
    return text
