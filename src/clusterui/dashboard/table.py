"""The process table: one row per worker, grouped under one summary row per app.

Rows are keyed ("app:NAME", "w:ID") and updated in place; rows are only added or removed
when workers appear or go (or a row filter hides them), and the cursor stays on the row
it was on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from clusterui.dashboard.model import (
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
from clusterui.dashboard.style import StyleCache
from clusterui.vocab import states

# A hidden column still takes one cell: a zero-width column makes Textual's NO_COLOR
# filter fail on the empty, unstyled segment it renders.
HIDDEN = " "


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
# `o` cycles these: "" is the ecosystem file's order. Largest first, as htop and k9s do.
SORTS = ("", "cpu", "mem", "conn", "restarts", "uptime")
SORT_MARK = "▼"


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


class _RowMessage(Message):
    def __init__(self, table: ProcessTable, key: str | None) -> None:
        super().__init__()
        self.table = table
        self.key = key

    @property
    def control(self) -> ProcessTable:
        return self.table


class ProcessTable(ScrollView, can_focus=True):
    """The rows drawn with the Line API: each row is one Text rendered once into a Strip
    and kept until its cells change, so a tick repaints only the rows that changed.
    """

    DEFAULT_CSS = """
    ProcessTable {
        height: auto;
        background: $surface;
        color: $foreground;
        & > .proc--header { text-style: bold; background: $panel; color: $foreground; }
        & > .proc--cursor {
            background: $block-cursor-blurred-background;
            color: $block-cursor-blurred-foreground;
            text-style: $block-cursor-blurred-text-style;
        }
        &:focus > .proc--cursor {
            background: $block-cursor-background;
            color: $block-cursor-foreground;
            text-style: $block-cursor-text-style;
        }
        & > .proc--app { text-style: bold; }
        & > .proc--tree { color: $text-muted; text-style: dim; }
        & > .proc--dim { text-style: dim; }
        & > .proc--good { color: $text-success; }
        & > .proc--starting { color: $text-warning; }
        & > .proc--busy { color: $text-warning; }
        & > .proc--waiting { color: $text-warning; text-style: bold; }
        & > .proc--alert { color: $text-warning; text-style: bold; }
        & > .proc--failing { color: $text-accent; text-style: bold reverse; }
        & > .proc--held { color: $text-secondary; }
        & > .proc--idle { color: $text-muted; }
        & > .proc--bad { color: $text-error; text-style: bold; }
        & > .proc--spark-cpu { color: $text-primary; }
        & > .proc--spark-mem { color: $text-secondary; }
        & > .proc--spark-conn { color: $text-accent; }
    }
    """
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "proc--header",
        "proc--cursor",
        "proc--app",
        "proc--tree",
        "proc--dim",
        *(f"proc--{tone}" for tone in states.TONES),
        "proc--spark-cpu",
        "proc--spark-mem",
        "proc--spark-conn",
    }
    # The component styles the cells hold (the header and the cursor are applied apart).
    _CELL_STYLES: ClassVar[frozenset[str]] = frozenset(COMPONENT_CLASSES) - {
        "proc--header",
        "proc--cursor",
    }
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up,k", "cursor_up", "Up", show=False),
        Binding("down,j", "cursor_down", "Down", show=False),
        Binding("pageup", "page_up", "Page up", show=False),
        Binding("pagedown", "page_down", "Page down", show=False),
        Binding("home", "first", "First", show=False),
        Binding("end", "last", "Last", show=False),
        Binding("enter", "app.details", "Details", show=False),
    ]

    class RowHighlighted(_RowMessage):
        """The cursor moved to another row (or the row under it changed)."""

    class RowSelected(_RowMessage):
        """The row under the cursor was clicked."""

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._order: list[str] = []  # row keys in display order
        self._index: dict[str, int] = {}
        self._meta: dict[str, Selection] = {}
        self._cells: dict[str, tuple[Text, ...]] = {}
        # Rows off-screen at the last update: how to make their cells, made only once the
        # row is drawn or asked for (a fleet's table has thousands of rows, a screen 50).
        self._lazy: dict[str, Callable[[], tuple[Text, ...]]] = {}
        self._strips: dict[tuple[str, bool], Strip] = {}  # (key, is cursor row) -> strip
        self._header: Strip | None = None
        self._labels_of: tuple[Layout, tuple[Text, ...]] | None = None
        # "req/s" once a worker reports requests (asgi/wsgi hosts), else "conn/s".
        self._rate_label = "conn/s"
        self._styles = StyleCache(self)
        self._cursor = 0
        self._highlighted: str | None = None
        self._layout = choose_layout(120, 10)
        self._snapshot: dict[str, Any] = {"apps": [], "workers": []}
        self._history = History()
        self.sort_by = ""  # one of SORTS
        self.filter_text = ""  # rows shown: see row_matches()
        self._counts = (0, 0)  # workers shown, workers in the snapshot
        self._lost: str | None = None  # the row a filter took the cursor from
        self._look: tuple[Style, ...] = ()  # the cell styles the cells were made with
        # The last update's rows and what they were made from (`_shape`).
        self._last_shape: tuple[Any, ...] | None = None
        self._last_desired: dict[str, tuple[Selection, Callable[[], tuple[Text, ...]]]] = {}

    def set_filter(self, text: str) -> None:
        """Show only the rows matching `text` (see row_matches); "" shows them all.

        The cursor stays on its row while that row is shown. A row the filter hides leaves
        the cursor on its app's row if that is shown, else on the first row, and the
        cursor goes back to it when a later filter (or none) shows it again, unless the
        user moved the cursor in between.
        """
        if text == self.filter_text:
            return
        self.filter_text = text
        before = self.selection
        self.relayout()
        lost = self._lost
        if lost is not None and lost in self._index:
            self.move_cursor(self._index[lost])
        elif before is not None and before.key not in self._index:
            self.move_cursor(self._index.get(app_key(before.app), 0))
            self._lost = lost or before.key
        else:
            self._scroll_to_cursor()

    @property
    def filter_counts(self) -> tuple[int, int]:
        """(workers shown, workers in all) under the row filter."""
        return self._counts

    def cycle_sort(self) -> str:
        """Sort by the next column of SORTS (the grouping by app stays); returns it."""
        self.sort_by = SORTS[(SORTS.index(self.sort_by) + 1) % len(SORTS)]
        self._labels_of = None
        self.relayout()
        return self.sort_by

    def on_resize(self) -> None:
        self.relayout()

    # -- public ---------------------------------------------------------------

    @property
    def selection(self) -> Selection | None:
        if not self._order:
            return None
        return self._meta.get(self._order[self.cursor_row])

    @property
    def row_keys(self) -> list[str]:
        """Row keys in display order."""
        return list(self._order)

    @property
    def rows(self) -> dict[str, tuple[Text, ...]]:
        for key in list(self._lazy):
            self._cells_of(key)
        return self._cells

    @property
    def row_count(self) -> int:
        return len(self._order)

    @property
    def cursor_row(self) -> int:
        return min(self._cursor, max(0, len(self._order) - 1))

    def get_cell(self, key: str, column: str) -> Text:
        return self._cells_of(key)[COLUMNS.index(column)]

    def _cells_of(self, key: str) -> tuple[Text, ...]:
        make = self._lazy.pop(key, None)
        if make is not None:
            self._cells[key] = make()
        return self._cells[key]

    def select_key(self, key: str) -> bool:
        if key not in self._index:
            return False
        self.move_cursor(self._index[key])
        return True

    def move_cursor(self, row: int, *, scroll: bool = True) -> None:
        self._lost = None  # the user (or the filter) chose this row: forget the old one
        old = self.cursor_row
        self._cursor = max(0, min(row, len(self._order) - 1))
        if self.cursor_row != old:
            self._refresh_rows({old, self.cursor_row})
        if scroll:
            self._scroll_to_cursor()
        self._announce()

    def add_row(self, *cells: Text, key: str) -> None:
        self._index[key] = len(self._order)
        self._order.append(key)
        self._cells[key] = cells

    def remove_row(self, key: str) -> None:
        self._order.remove(key)
        self._index = {k: i for i, k in enumerate(self._order)}
        self._cells.pop(key, None)
        self._lazy.pop(key, None)
        self._forget(key)

    def update_snapshot(self, snapshot: dict[str, Any], history: History) -> None:
        """Bring the rows in line with a snapshot: add, remove, update by key."""
        self._snapshot = snapshot
        self._history = history
        before = self.selection
        label = (
            "req/s" if any(_reports_requests(w) for w in snapshot.get("workers", [])) else "conn/s"
        )
        relabel = label != self._rate_label
        if relabel:
            self._rate_label = label
            self._labels_of = None
            self._header = None
        shape = self._shape(snapshot)
        reused = shape is not None and shape == self._last_shape and not relabel
        desired = self._last_desired if reused else self._desired_rows(snapshot)
        self._last_shape, self._last_desired = shape, desired
        layout = self._layout if reused else self._fit_layout(desired)
        relayout = layout != self._layout
        self._layout = layout

        gone = [] if reused else [key for key in self._order if key not in desired]
        for key in gone:
            self.remove_row(key)
            del self._meta[key]

        changed: set[str] = set()
        order = self._order if reused else list(desired)
        # Cells are made now only for the rows on screen and the cursor's neighbours (a
        # row either side: an insertion above moves them by one); the others when drawn.
        top = int(self.scroll_y)
        shown = set(order[max(0, top - 1) : top + self._body_height() + 1])
        if self._order:
            cursor = self.cursor_row
            shown.update(self._order[max(0, cursor - 1) : cursor + 2])
        if reused:
            # The same rows, the same row dicts (updated in place by a state delta): an
            # off-screen row not drawn since the last update still has the maker it
            # needs. Only the rows on screen, and those drawn meanwhile, are looked at:
            # at 2,000 rows the rest was most of an update's time.
            visit = shown | (self._index.keys() - self._lazy.keys())
            rows = [(key, desired[key]) for key in visit if key in desired]
        else:
            rows = list(desired.items())
        for key, (sel, cells_fn) in rows:
            self._meta[key] = sel
            if key not in self._cells:
                self.add_row(key=key)
                self._lazy[key] = cells_fn
            elif key in shown:
                self._lazy.pop(key, None)
                cells = cells_fn()
                if cells != self._cells[key]:
                    self._cells[key] = cells
                    changed.add(key)
            else:
                self._lazy[key] = cells_fn
                self._forget(key)
        if relayout:
            self._header = None
            self._strips.clear()
        reshaped = relayout or order != self._order
        if reshaped:
            self._order = order
            self._index = {k: i for i, k in enumerate(order)}
        for key in changed:
            self._forget(key)
        self._keep_cursor(before, gone)
        self.virtual_size = Size(self._row_width(), len(self._order) + 1)
        if reshaped or relabel:
            self.refresh()
        else:
            self._refresh_rows({self._index[key] for key in changed})
        self._announce()

    def relayout(self) -> None:
        """Re-fit the columns after a resize (cells are re-rendered, rows stay)."""
        self._header = None
        self._strips.clear()
        self._last_shape = None  # made again: the layout, filter or order changed
        if self._snapshot["apps"] or self._snapshot["workers"]:
            self.update_snapshot(self._snapshot, self._history)

    # -- keys and mouse ---------------------------------------------------------

    def action_cursor_up(self) -> None:
        self.move_cursor(self.cursor_row - 1)

    def action_cursor_down(self) -> None:
        self.move_cursor(self.cursor_row + 1)

    def action_page_up(self) -> None:
        self.move_cursor(self.cursor_row - max(1, self._body_height() - 1))

    def action_page_down(self) -> None:
        self.move_cursor(self.cursor_row + max(1, self._body_height() - 1))

    def action_first(self) -> None:
        self.move_cursor(0)

    def action_last(self) -> None:
        self.move_cursor(len(self._order) - 1)

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None or offset.y < 1:
            return
        row = int(self.scroll_y) + offset.y - 1
        if not 0 <= row < len(self._order):
            return
        if row == self.cursor_row:
            self.post_message(self.RowSelected(self, self._order[row]))
        else:
            self.move_cursor(row, scroll=False)

    def _on_focus(self, event: events.Focus) -> None:
        super()._on_focus(event)
        self._drop_cursor_strips()

    def _on_blur(self, event: events.Blur) -> None:
        super()._on_blur(event)
        self._drop_cursor_strips()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._header = None
        self._styles.clear()
        self._strips.clear()
        self.call_after_refresh(self._restyle)

    def _restyle(self) -> None:
        """Re-make the cells when the colours they hold changed (a new theme): they carry
        their styles, and would otherwise keep the old theme's until their values change."""
        look = tuple(self._styles.fg(name) for name in sorted(self._CELL_STYLES))
        if look != self._look:
            self._look = look
            self._cells = {key: () for key in self._cells}  # all differ from the new ones
            self._lazy.clear()
            self.relayout()

    # -- rendering ------------------------------------------------------------------

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width or self.size.width
        base = self._styles.base()
        if y == 0:
            if self._header is None:
                self._header = self._strip(self._labels(), self._styles.full("proc--header"))
            return self._header.crop_extend(0, width, base)
        row = int(self.scroll_y) + y - 1
        if not 0 <= row < len(self._order):
            return Strip.blank(width, base)
        key = self._order[row]
        cursor = row == self.cursor_row
        strip = self._strips.get((key, cursor))
        if strip is None:
            if cursor:
                # The cursor row in the cursor's own colours: a cell's colour (a status,
                # a sparkline) on the cursor's background is unreadable in some themes.
                bar = self._styles.full("proc--cursor")
                top = Style(color=bar.color, dim=False) if bar.color is not None else None
                strip = self._strip(self._cells_of(key), base + bar, top)
            else:
                strip = self._strip(self._cells_of(key), base)
            self._strips[key, cursor] = strip
        return strip.crop_extend(0, width, base)

    def _strip(self, cells: tuple[Text, ...], base: Style, top: Style | None = None) -> Strip:
        # One strip per cell, joined: a cell's segments then start at its own column,
        # which keeps exported SVGs aligned where a font draws a glyph wider than a cell.
        console = self.app.console
        parts = []
        for cell in cells:
            cell = cell.copy()
            cell.stylize_before(base)
            if top is not None:
                cell.stylize(top)
            parts.append(Strip(cell.render(console), cell.cell_len))
        strip = Strip.join(parts)
        width = max(strip.cell_length, self.scrollable_content_region.width)
        return strip.extend_cell_length(width, base)

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        self.refresh()

    # -- internals ------------------------------------------------------------

    def _forget(self, key: str) -> None:
        self._strips.pop((key, False), None)
        self._strips.pop((key, True), None)

    def _drop_cursor_strips(self) -> None:
        self._styles.clear()  # the cursor style depends on focus
        for entry in [k for k in self._strips if k[1]]:
            del self._strips[entry]
        self._refresh_rows({self.cursor_row})

    def _refresh_rows(self, rows: set[int]) -> None:
        for row in rows:
            self.refresh_line(row + 1)

    def _body_height(self) -> int:
        return max(1, self.scrollable_content_region.height - 1)

    def _scroll_to_cursor(self) -> None:
        row, top, height = self.cursor_row, int(self.scroll_y), self._body_height()
        if row < top:
            self.scroll_to(y=row, animate=False, immediate=True)
        elif row >= top + height:
            self.scroll_to(y=row - height + 1, animate=False, immediate=True)

    def _announce(self) -> None:
        key = self._order[self.cursor_row] if self._order else None
        if key != self._highlighted:
            self._highlighted = key
            self.post_message(self.RowHighlighted(self, key))

    def _labels(self) -> tuple[Text, ...]:
        """The column labels, which depend on the layout alone."""
        if self._labels_of is None or self._labels_of[0] != self._layout:
            self._labels_of = (self._layout, tuple(self._label(key) for key in COLUMNS))
            self._header = None
        return self._labels_of[1]

    def _row_width(self) -> int:
        return sum(label.cell_len for label in self._labels())

    def _fit_layout(self, desired: dict[str, Any]) -> Layout:
        names = [len(sel.target) + 2 for sel, _ in desired.values()]
        avail = self.scrollable_content_region.width or 120
        return choose_layout(avail, max(names, default=8))

    def _keep_cursor(self, before: Selection | None, gone: list[str]) -> None:
        if before is None or not self._order:
            return
        if before.key in self._index:
            index = self._index[before.key]
            if index != self._cursor:
                self._cursor = index
                self._scroll_to_cursor()
        elif before.key in gone and app_key(before.app) in self._index:
            # the worker went (scaled down): land on its app rather than a stranger
            self._cursor = self._index[app_key(before.app)]
        self._strips = {k: v for k, v in self._strips.items() if not k[1]}

    def _style(self, name: str) -> Style:
        return self._styles.fg(name)

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
            "conn": (self._rate_label, 6 + _plus_one(self._spark_width("conn")), "left"),
            "open": ("open", 5, "right"),
        }
        label, width, justify = labels[key]
        if width == 0:
            return Text(HIDDEN, end="")
        if key == self.sort_by:
            short = {"uptime": "up", "conn": self._rate_label.split("/")[0]}
            label = (label if len(label) < 6 else short.get(key, label)) + SORT_MARK
        if key in ("cpu", "mem", "conn"):
            # over the figure (right-aligned), not over the sparkline
            return _cell(label.rjust(6), width)
        return _cell(label, width, justify=justify)

    def _shape(self, snapshot: dict[str, Any]) -> tuple[Any, ...] | None:
        """What `_desired_rows` depends on besides the rows' figures: the row dicts
        themselves (a delta updates them in place; new ones come with a whole state), the
        filter and the width (`relayout` makes them again anyway). None while sorted: the
        order then follows the figures. The previous rows are kept alive by the reused
        makers, so an id here is never a new dict's."""
        if self.sort_by:
            return None
        return (
            self.filter_text,
            self.scrollable_content_region.width,
            tuple(map(id, snapshot.get("apps", ()))),
            tuple(map(id, snapshot.get("workers", ()))),
        )

    def _desired_rows(
        self, snapshot: dict[str, Any]
    ) -> dict[str, tuple[Selection, Callable[[], tuple[Text, ...]]]]:
        rows: dict[str, tuple[Selection, Callable[[], tuple[Text, ...]]]] = {}
        workers_by_app: dict[str, list[dict[str, Any]]] = {}
        for w in snapshot.get("workers", []):
            workers_by_app.setdefault(w["app"], []).append(w)
        apps = list(snapshot.get("apps", []))
        by = self.sort_by
        if by:
            # Groups stay whole: apps by their total (uptime: their longest-lived worker),
            # then each app's workers among themselves. Stable: ties keep the file order.
            def total(app: dict[str, Any]) -> float:
                values = [_sort_value(w, by) for w in workers_by_app.get(app["name"], [])]
                return max(values, default=0.0) if by == "uptime" else sum(values)

            apps.sort(key=total, reverse=True)
        query = self.filter_text.strip().casefold()
        shown = 0
        for app in apps:
            name = app["name"]
            every = sorted(workers_by_app.get(name, []), key=lambda w: w["instance"])
            workers = [w for w in every if row_matches(query, name, w)] if query else every
            if query and not workers and query not in name.casefold():
                continue  # the app row stays only with a match of its own or its workers'
            shown += len(workers)
            if by:
                workers.sort(key=lambda w: _sort_value(w, by), reverse=True)
            # the app's row sums up the whole app, filtered or not
            rows[app_key(name)] = (Selection(name), _bind(self._app_cells, app, every))
            for i, w in enumerate(workers):
                last = i == len(workers) - 1
                rows[worker_key(w["id"])] = (
                    Selection(name, w["id"], w["instance"]),
                    _bind(self._worker_cells, app, w, last),
                )
        self._counts = (shown, len(snapshot.get("workers", [])))
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

    def _worker_cells(self, app: dict[str, Any], w: dict[str, Any], last: bool) -> tuple[Text, ...]:
        lay = self._layout
        status = w.get("status", "?")
        look = states.LOOKS.get(status)
        status_style = self._style(f"proc--{look.tone}") if look else Style()
        word = status if look is None else look.short if lay.narrow else look.word
        live = w.get("pid") is not None
        id_cell = _cell(str(w["id"]), 3, justify="right")
        name = Text(" ", end="")
        name.append("└ " if last else "├ ", self._style("proc--tree"))
        name.append(f"{app['name']}:{w['instance']}")
        name.truncate(lay.name_w + 1, overflow="ellipsis", pad=True)
        cpu_s = worker_series(w, self._history, "cpu")
        mem_s = worker_series(w, self._history, "memory")
        rate_key = _rate_key(w)
        conn_s = worker_series(w, self._history, rate_key)
        return (
            id_cell,
            name,
            _cell("", lay.mode_w) if lay.mode_w else Text(HIDDEN, end=""),
            _cell(str(w["pid"]) if live else "—", 7, justify="right"),
            _cell(f"{states.look(status).glyph} {word}", lay.status_w, style=status_style),
            _cell(_count(w.get("restarts", 0)), 3, justify="right"),
            _cell(fmt_duration(w.get("uptime")) if live else "—", 6, justify="right"),
            self._metric_cell(fmt_cpu(w.get("cpu")) if live else "—", cpu_s, "cpu", 100.0),
            self._metric_cell(
                fmt_bytes(w.get("memory")) if live else "—", mem_s, "mem", _headroom(mem_s)
            ),
            self._metric_cell(fmt_rate(w.get(rate_key)), conn_s, "conn", None),
            _cell(str(w.get("active", 0)) if live else "—", 5, justify="right"),
        )

    def _app_cells(self, app: dict[str, Any], workers: list[dict[str, Any]]) -> tuple[Text, ...]:
        lay = self._layout
        bold = self._style("proc--app")
        total = len(workers)
        online = sum(1 for w in workers if w.get("status") == states.ONLINE)
        if app.get("reloading"):
            status, word = states.LAUNCHING, "reloading"
        elif any(w.get("status") == states.ERRORED for w in workers):
            status, word = states.ERRORED, f"{online}/{total} up"
        elif total and online == total:
            status, word = states.ONLINE, f"{online}/{total} up"
        elif total == 0 or online == 0:
            status, word = states.STOPPED, f"{online}/{total} up"
        else:
            status, word = states.LAUNCHING, f"{online}/{total} up"
        glyph = "↻" if app.get("reloading") else states.LOOKS[status].glyph
        name = _cell(app["name"], lay.name_w, style=bold)
        if app.get("watch"):
            name = Text(" ", end="")
            name.append(app["name"], bold)
            name.append(" ◉", bold)  # "watch on": information, not decoration
            name.truncate(lay.name_w + 1, overflow="ellipsis", pad=True)
        cpu = sum(float(w.get("cpu") or 0) for w in workers)
        mem = sum(int(w.get("memory") or 0) for w in workers)
        rate = sum(float(w.get(_rate_key(w)) or 0) for w in workers)
        series = {
            kind: sum_series(worker_series(w, self._history, kind) for w in workers)
            for kind in ("cpu", "memory")
        }
        series["conn_rate"] = sum_series(
            worker_series(w, self._history, _rate_key(w)) for w in workers
        )
        return (
            _cell("", 3),
            name,
            _cell(mode_label(app), lay.mode_w, style=self._style("proc--dim"))
            if lay.mode_w
            else Text(HIDDEN, end=""),
            _cell("", 7),
            _cell(
                f"{glyph} {word}",
                lay.status_w,
                style=self._style(f"proc--{states.LOOKS[status].tone}") + Style(bold=True),
            ),
            _cell(_count(sum(int(w.get("restarts") or 0) for w in workers)), 3, justify="right"),
            _cell("", 6),
            self._metric_cell(fmt_cpu(cpu), series["cpu"], "cpu", 100.0),
            self._metric_cell(fmt_bytes(mem), series["memory"], "mem", _headroom(series["memory"])),
            self._metric_cell(fmt_rate(rate), series["conn_rate"], "conn", None),
            _cell(str(sum(int(w.get("active") or 0) for w in workers)), 5, justify="right"),
        )


def row_matches(query: str, app: str, w: dict[str, Any]) -> bool:
    """Whether worker `w` of `app` matches a row filter: a plain case-insensitive substring
    (`query` already casefolded) of its name `app:instance` or of its status, as stored
    or as the table words it ("waiting", "paused"). Never a pattern: the text is data.
    """
    status = str(w.get("status", ""))
    look = states.look(status)
    words = (f"{app}:{w.get('instance')}", status, look.word, look.short)
    return any(query in word.casefold() for word in words)


def _sort_value(w: dict[str, Any], by: str) -> float:
    if by != "restarts" and w.get("pid") is None:
        return 0.0  # not running: no figures, last among the live ones
    field = {"cpu": "cpu", "mem": "memory", "conn": _rate_key(w)}.get(by, by)
    return float(w.get(field) or 0)


def _reports_requests(w: dict[str, Any]) -> bool:
    return w.get("req_rate") is not None


def _rate_key(w: dict[str, Any]) -> str:
    """The rate column's figure: requests/s where the worker reports it, else conn/s."""
    return "req_rate" if _reports_requests(w) else "conn_rate"


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
