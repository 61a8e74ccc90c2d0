"""A bounded, filterable log view (Line API: only visible lines are rendered)."""

from __future__ import annotations

import bisect
import datetime as _dt
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.binding import Binding, BindingType
from textual.cache import LRUCache
from textual.geometry import Size
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.timer import Timer

from clusterui.dashboard.model import fmt_clock
from clusterui.dashboard.style import StyleCache
from clusterui.vocab.logs import is_event, is_restart
from clusterui.vocab.safetext import visible, visible_except_sgr

_ANSI = "\x1b"
APP_COLOURS = 6  # logview--app-0 .. logview--app-5
# Redraws a second while lines arrive: a flood replaces every row of the pane at each one.
REPAINT_HZ = 5
MAX_EVENTS = 1000  # supervisor lines kept through any flood of output
# Lines kept drawn: about one tall terminal, enough for repaints in place. Under a flood
# none is shown twice, and each keeps the strips Textual derives from it (every one with
# seven small caches) alive for each full collection to scan (bench/README.md).
STRIP_CACHE = 64
# Which lines `v` shows: all, only the supervisor's own, or only the apps' output.
SYS_MODES = ("all", "only", "hide")
_SGR = re.compile(r"\x1b\[[0-9;:]*m")  # colours: drawn as styles, so they take no cells


def newest(lines: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The newest n lines, after the supervisor's own lines among the older ones (a flood
    must not cut an exit or a reload out of a batch)."""
    if len(lines) <= n:
        return lines
    cut = len(lines) - n
    kept = [x for x in lines[:cut] if is_event(str(x.get("stream")), str(x.get("text", "")))]
    return kept[-MAX_EVENTS:] + lines[cut:]


@dataclass(slots=True)
class LogRecord:
    seq: int
    worker: int
    app: str
    instance: int
    stream: str  # "out" | "err" | "sys"
    time: float
    text: str

    @property
    def source(self) -> str:
        return f"{self.app}:{self.instance}"

    @property
    def event(self) -> bool:
        """One of the supervisor's own lines (kept through a flood of output)."""
        return is_event(self.stream, self.text)


class LogView(ScrollView, can_focus=True):
    """Log lines from every worker, newest at the bottom, at most `max_lines` kept.

    Scope (app / worker), a case-insensitive substring filter and timestamps change
    only which records are shown and how; the records themselves stay, so turning a
    filter off brings back everything still in the buffer.
    """

    DEFAULT_CSS = """
    LogView {
        background: $surface;
        overflow: auto auto;
        scrollbar-size-horizontal: 1;
        & > .logview--time { color: $text-muted; text-style: dim; }
        & > .logview--err { color: $text-error; }
        & > .logview--sys { color: $text-accent; text-style: italic; }
        & > .logview--match { background: $warning; color: $background; text-style: bold; }
        & > .logview--current { background: $accent 40%; }
        & > .logview--app-0 { color: $text-primary; }
        & > .logview--app-1 { color: $text-success; }
        & > .logview--app-2 { color: $text-warning; }
        & > .logview--app-3 { color: $text-secondary; }
        & > .logview--app-4 { color: $text-accent; }
        & > .logview--app-5 { color: $text; text-style: bold; }
    }
    """
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "logview--time",
        "logview--err",
        "logview--sys",
        "logview--match",
        "logview--current",
        *(f"logview--app-{i}" for i in range(APP_COLOURS)),
    }
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("j", "scroll_down", "Down", show=False),
        Binding("k", "scroll_up", "Up", show=False),
        Binding("end,G", "follow_end", "Follow", show=False),
        Binding("home,g", "scroll_home", "Top", show=False),
    ]

    follow: reactive[bool] = reactive(True)
    timestamps: reactive[bool] = reactive(True)
    filter_text: reactive[str] = reactive("")
    sys_mode: reactive[str] = reactive("all")  # one of SYS_MODES
    # The full-screen view's (dashboard/logscreen.py): long lines folded at the width; a
    # search that lights its matches without hiding the other lines.
    wrap: reactive[bool] = reactive(False)
    search_text: reactive[str] = reactive("")

    def __init__(
        self,
        max_lines: int = 5000,
        *,
        tz: _dt.tzinfo | None = None,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.max_lines = max_lines
        self.tz = tz
        self._records: list[LogRecord] = []
        self._view: list[LogRecord] = []
        self._seq = 0
        self._events = 0  # records that are supervisor lines (kept through a flood)
        self._scope_app: str | None = None
        self._scope_worker: int | None = None
        self._app_colour: dict[str, int] = {}
        self._source_width = 6
        self._width = 0
        self._cache: LRUCache[int, Strip] = LRUCache(STRIP_CACHE)  # record seq -> its line
        self._styles = StyleCache(self)
        self._last_repaint = 0.0
        self._repaint_timer: Timer | None = None
        self._starts: list[int] = []  # wrap on: the first row of each shown record
        self._wrapped_at = 10  # wrap on: the row width _starts was counted at
        self.current: int | None = None  # seq of the line the last jump landed on

    # -- data -----------------------------------------------------------------

    @property
    def records(self) -> list[LogRecord]:
        """Every record kept (oldest first), whatever the scope and filter."""
        return self._records

    @property
    def shown(self) -> list[LogRecord]:  # not `visible`: that is Textual's, used by focus
        """The records the scope and filter let through (oldest first)."""
        return self._view

    def append(self, lines: Iterable[dict[str, Any]]) -> None:
        batch = newest(list(lines), self.max_lines)  # older ones would be pruned at once
        added: list[LogRecord] = []
        for line in batch:
            self._seq += 1
            rec = LogRecord(
                seq=self._seq,
                worker=int(line.get("worker", -1)),
                app=str(line.get("app", "?")),
                instance=int(line.get("instance", 0)),
                stream=str(line.get("stream", "out")),
                time=float(line.get("time", 0.0)),
                text=str(line.get("text", "")),
            )
            if rec.app not in self._app_colour:
                self._app_colour[rec.app] = len(self._app_colour) % APP_COLOURS
            if rec.event:
                self._events += 1
            added.append(rec)
        if not added:
            return
        self._records.extend(added)
        sources = {(r.app, r.instance) for r in added}
        widths = (len(app) + 1 + len(str(instance)) for app, instance in sources)
        source_width = min(24, max(self._source_width, *widths))
        if source_width != self._source_width:
            self._source_width = source_width
            self._cache.clear()  # the cached lines have the narrower source column
        shown = [r for r in added if self._matches(r)] if self._filtering else added
        self._view.extend(shown)
        removed = self._prune()
        if shown:
            self._width = max(self._width, self._prefix_width() + max(map(_text_width, shown)))
        self._resize_virtual()
        if removed and not self.follow:
            # keep the lines the reader is looking at in place
            self.scroll_to(y=max(0, self.scroll_y - removed), animate=False, immediate=True)
        self._repaint()

    def _repaint(self) -> None:
        """Scroll to the newest line and redraw, at most REPAINT_HZ times a second.

        A flood sends 20 batches a second; drawing each would spend the CPU a key press
        is waiting for, and nobody reads faster than this anyway.
        """
        now = time.monotonic()
        wait = self._last_repaint + 1 / REPAINT_HZ - now
        if wait > 0:
            if self._repaint_timer is None:
                self._repaint_timer = self.set_timer(wait, self._repaint_due)
            return
        self._last_repaint = now
        if self.follow:
            # Following means "at the newest line": also once the new size is laid out,
            # since a first backlog arrives before the pane knows how tall it is.
            self.scroll_end(animate=False, immediate=True, x_axis=False)
            self.call_after_refresh(self.scroll_end, animate=False, immediate=True, x_axis=False)
        # Always repaint: once the buffer is full, new lines change neither the size nor
        # the scroll position, and nothing else would ask for a redraw.
        self.refresh()

    def _repaint_due(self) -> None:
        self._repaint_timer = None
        self._repaint()

    def clear(self) -> None:
        self._records.clear()
        self._view.clear()
        self._events = 0
        self._cache.clear()
        self._width = 0
        self._resize_virtual()
        self.refresh()

    def _prune(self) -> int:
        """Drop the oldest records past max_lines; returns how many shown lines went."""
        excess = len(self._records) - self.max_lines
        if excess <= 0:
            return 0
        if self._events:
            return self._prune_output(excess)
        del self._records[:excess]
        first = self._records[0].seq
        gone = 0
        while gone < len(self._view) and self._view[gone].seq < first:
            gone += 1
        if gone:
            del self._view[:gone]
        return gone

    def _prune_output(self, excess: int) -> int:
        """Drop the oldest output past max_lines, keeping the supervisor's lines (up to
        MAX_EVENTS of them) where they are; returns how many shown lines went."""
        extra_events = max(0, self._events - MAX_EVENTS)
        dropped: set[int] = set()
        for rec in self._records:
            if excess <= 0 and extra_events <= 0:
                break
            if rec.event:
                if extra_events > 0:
                    extra_events -= 1
                    excess -= 1
                    dropped.add(rec.seq)
            elif excess > 0:
                excess -= 1
                dropped.add(rec.seq)
        if not dropped:
            return 0
        self._records = [r for r in self._records if r.seq not in dropped]
        self._events = sum(1 for r in self._records if r.event)
        before = len(self._view)
        self._view = [r for r in self._view if r.seq not in dropped]
        return before - len(self._view)

    # -- scope and filter -----------------------------------------------------

    def set_scope(self, app: str | None, worker: int | None = None) -> None:
        if (app, worker) == (self._scope_app, self._scope_worker):
            return
        self._scope_app, self._scope_worker = app, worker
        self._rebuild()

    @property
    def scope(self) -> tuple[str | None, int | None]:
        return self._scope_app, self._scope_worker

    @property
    def _filtering(self) -> bool:
        scoped = self._scope_app is not None or self._scope_worker is not None
        return scoped or bool(self.filter_text) or self.sys_mode != "all"

    def _matches(self, rec: LogRecord) -> bool:
        if self.sys_mode != "all" and (rec.stream == "sys") != (self.sys_mode == "only"):
            return False
        if self._scope_worker is not None:
            if rec.worker != self._scope_worker:
                return False
        elif self._scope_app is not None and rec.app != self._scope_app:
            return False
        needle = self.filter_text
        if needle:
            needle = needle.lower()
            return needle in rec.text.lower() or needle in rec.source.lower()
        return True

    # -- search and jumps (the full-screen view) ---------------------------------

    def find(self, needle: str, forward: bool = True) -> int | None:
        """Index in `shown` of the next (or previous) line holding `needle` (plain text,
        any case), from the current line, else from the top of the window; wraps round."""
        view = self._view
        if not needle or not view:
            return None
        needle = needle.lower()
        start = self._current_index()
        if start is None:
            start = self.index_at(round(self.scroll_y)) - (1 if forward else 0)
        n = len(view)
        for step in range(1, n + 1):
            i = (start + step if forward else start - step) % n
            rec = view[i]
            if needle in rec.text.lower() or needle in rec.source.lower():
                return i
        return None

    def last_restart(self) -> int | None:
        """Index in `shown` of the newest supervisor line saying the worker exited or
        was replaced (vocab/logs.is_restart)."""
        for i in range(len(self._view) - 1, -1, -1):
            rec = self._view[i]
            if is_restart(rec.stream, rec.text):
                return i
        return None

    def jump_to(self, index: int) -> None:
        """Make shown[index] the current line, lit, in the middle of the window; following
        stops (it would pull the view away again)."""
        old = self.current
        self.current = self._view[index].seq
        for seq in (old, self.current):
            if seq is not None:
                self._cache.discard(seq)
        self.follow = False
        row = self._row_of(index)
        self.scroll_to(y=max(0, row - self.size.height // 2), animate=False, immediate=True)
        self.refresh()

    def _current_index(self) -> int | None:
        if self.current is None:
            return None
        seqs = [r.seq for r in self._view]  # ascending: records keep their arrival order
        i = bisect.bisect_left(seqs, self.current)
        return i if i < len(seqs) and seqs[i] == self.current else None

    def index_at(self, row: int) -> int:
        """Index in `shown` of the record drawn on virtual row `row`."""
        if self.wrap and self._starts:
            return max(0, bisect.bisect_right(self._starts, row) - 1)
        return max(0, min(row, len(self._view) - 1))

    def _row_of(self, index: int) -> int:
        return self._starts[index] if self.wrap and index < len(self._starts) else index

    def _rebuild(self) -> None:
        self._view = [r for r in self._records if self._matches(r)]
        self._width = max((self._line_width(r) for r in self._view), default=0)
        self._cache.clear()
        self._resize_virtual()
        if self.follow:
            self.scroll_end(animate=False, immediate=True, x_axis=False)
        self.refresh()

    def watch_filter_text(self) -> None:
        self._rebuild()

    def watch_search_text(self) -> None:
        self._cache.clear()
        self.refresh()

    def watch_wrap(self) -> None:
        self._cache.clear()
        self.scroll_to(x=0, animate=False, immediate=True)
        self._resize_virtual()
        if self.follow:
            self.scroll_end(animate=False, immediate=True, x_axis=False)
        self.refresh()

    def watch_sys_mode(self) -> None:
        self._rebuild()

    def watch_timestamps(self) -> None:
        self._width = max((self._line_width(r) for r in self._view), default=0)
        self._cache.clear()
        self._resize_virtual()
        self.refresh()

    def watch_follow(self, follow: bool) -> None:
        if follow:
            self.scroll_end(animate=False, immediate=True, x_axis=False)

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        if new < old and self.follow and round(new) < round(self.max_scroll_y):
            self.follow = False  # the reader scrolled up: stop dragging them down

    def watch_show_vertical_scrollbar(self) -> None:
        if self.wrap:  # the scrollbar came or went: the rows hold more or fewer cells
            self._resize_virtual()

    def on_resize(self) -> None:
        if self.wrap:
            self._resize_virtual()  # the rows a line folds into depend on the width
        if self.follow:  # the first layout, or a new size: stay at the newest line
            self.call_after_refresh(self.scroll_end, animate=False, immediate=True, x_axis=False)

    def action_follow_end(self) -> None:
        self.follow = True
        self.scroll_end(animate=False, immediate=True, x_axis=False)

    # -- rendering ------------------------------------------------------------

    def _prefix_width(self) -> int:
        return (9 if self.timestamps else 0) + self._source_width + 3

    def _line_width(self, rec: LogRecord) -> int:
        # A source longer than the column's cap is drawn whole: the line is that much longer.
        longer = max(0, cell_len(rec.source) - self._source_width)
        return self._prefix_width() + longer + _text_width(rec)

    def _wrap_width(self) -> int:
        """Wrap on: the cells a row holds (a vertical scrollbar takes its own)."""
        return max(10, self.scrollable_content_region.width)

    def _resize_virtual(self) -> None:
        if not self.wrap:
            self.virtual_size = Size(self._width, len(self._view))
            return
        width = self._wrapped_at = self._wrap_width()
        indent = self._indent(width)
        step = width - indent  # cells of a line on each row after its first
        starts, row = [], 0
        for rec in self._view:
            starts.append(row)
            row += 1 + max(0, -(-(self._line_width(rec) - width) // step))
        self._starts = starts
        self.virtual_size = Size(width, row)

    def _indent(self, width: int) -> int:
        """Wrap on: a line's later rows start under its text, past the time and source,
        unless that would leave under 20 cells for the text."""
        prefix = self._prefix_width()
        return prefix if width - prefix >= 20 else 0

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._styles.clear()
        self._cache.clear()

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        row = scroll_y + y
        width = self.size.width
        rich_style = self._styles.base()
        index = self.index_at(row) if self.wrap else row
        if row >= self.virtual_size.height or index >= len(self._view):
            return Strip.blank(width, rich_style)
        rec = self._view[index]
        strip = self._cache.get(rec.seq)
        if strip is None:
            strip = self._plain_strip(rec, rich_style)
            if strip is None:
                text = self.render_record(rec)
                text.stylize_before(rich_style)
                strip = Strip(text.render(self.app.console), text.cell_len)
            self._cache[rec.seq] = strip
        if self.wrap:  # the part of the line this row shows
            part = row - self._starts[index]
            wrap = self._wrapped_at  # the width _starts was counted at
            if not part:
                cut = strip.crop_extend(0, wrap, rich_style)
            else:
                indent = self._indent(wrap)
                start = wrap + (part - 1) * (wrap - indent)
                cut = strip.crop_extend(start, start + wrap - indent, rich_style)
                cut = Strip.join([Strip.blank(indent, rich_style), cut])
            return cut.extend_cell_length(width, rich_style).apply_offsets(0, row)
        return strip.crop_extend(scroll_x, scroll_x + width, rich_style).apply_offsets(
            scroll_x, index
        )

    def _plain_strip(self, rec: LogRecord, base: Style) -> Strip | None:
        """The common line (no filter, no escapes or controls) built straight from segments:
        what render_record gives, at a fraction of Rich's cost, which a flood notices."""
        text = rec.text
        if self.filter_text or self.search_text or rec.seq == self.current:
            return None
        if not text.isprintable():
            return None
        colour = base + self.style_of(f"logview--app-{self._app_colour.get(rec.app, 0)}")
        body = base
        if rec.stream in ("err", "sys"):
            body = base + self.style_of(f"logview--{rec.stream}")
        segments = []
        if self.timestamps:
            stamp = fmt_clock(rec.time, self.tz) + " "
            segments.append(Segment(stamp, base + self.style_of("logview--time")))
        source = rec.source.ljust(self._source_width)
        marker = {"err": " ! ", "sys": " » "}.get(rec.stream, " │ ")
        segments += [Segment(source + marker, colour), Segment(text, body)]
        return Strip(segments, sum(s.cell_length for s in segments))

    def style_of(self, name: str) -> Style:
        """The Rich style a component class gives (the match highlight keeps its background)."""
        if name in ("logview--match", "logview--current"):
            return self._styles.full(name)
        return self._styles.fg(name)

    def render_record(self, rec: LogRecord) -> Text:
        """One log line as Rich Text: [time] source marker text, with filter matches lit."""
        line = Text(no_wrap=True, end="")
        if self.timestamps:
            line.append(fmt_clock(rec.time, self.tz) + " ", self.style_of("logview--time"))
        colour = self.style_of(f"logview--app-{self._app_colour.get(rec.app, 0)}")
        line.append(rec.source.ljust(self._source_width), colour)
        marker = {"err": " ! ", "sys": " » "}.get(rec.stream, " │ ")
        line.append(marker, colour)
        start = len(line)
        raw = rec.text.expandtabs()
        if _ANSI in raw:
            # Colours (SGR) stay; every other control is shown, one character for one.
            body = Text.from_ansi(visible_except_sgr(raw), no_wrap=True, end="")
        else:
            body = Text(visible(raw), no_wrap=True, end="")
        if rec.stream == "err":
            body.stylize_before(self.style_of("logview--err"))
        elif rec.stream == "sys":
            body.stylize_before(self.style_of("logview--sys"))
        line.append_text(body)
        if rec.seq == self.current:
            line.stylize_before(self.style_of("logview--current"))
        for needle in {self.filter_text.lower(), self.search_text.lower()} - {""}:
            plain = line.plain.lower()
            match_style = self.style_of("logview--match")
            # light matches in the source and the text, not in the timestamp
            pos = plain.find(needle, start - len(marker) - self._source_width)
            while pos != -1:
                line.stylize(match_style, pos, pos + len(needle))
                pos = plain.find(needle, pos + len(needle))
        return line


def _text_width(rec: LogRecord) -> int:
    """The cells rec.text takes as render_record draws it."""
    text = rec.text
    if text.isascii() and text.isprintable():
        return len(text)
    text = _SGR.sub("", text.expandtabs())
    return cell_len(visible(text))
