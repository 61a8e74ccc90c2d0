"""One worker's log (or one app's), full screen: `L` on its row.

The same LogView as the dashboard's log pane (the same sanitising, the same bound on
memory), showing only that worker's lines: its recent lines from the supervisor (what
`clusterui logs TARGET --lines N` gets), then the live ones the dashboard's feed passes
on (DashboardApp.on_logs_arrived). Keys are this screen's own, in its footer: wrap,
timestamps, a plain-text search with n/N, the last restart, top and bottom.

A modal screen, so the dashboard's keys (stop, scale, ...) cannot act on a worker the
user no longer sees; it covers the whole terminal.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import ModalScreen
from textual.widgets import Footer, Input, Static

from clusterui.dashboard.feed import line_id, message_of, unseen
from clusterui.dashboard.focus import focus_now
from clusterui.dashboard.logview import LogView
from clusterui.dashboard.model import Selection
from clusterui.vocab.safetext import visible


class SearchInput(Input):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "screen.cancel_search", "Cancel search", show=False),
    ]


class FullLogView(LogView):
    """The log view with g/G shown in the footer (the pane's own keep them hidden)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("home,g", "screen.top", "Top", key_display="g"),
        Binding("end,G", "screen.bottom", "Bottom", key_display="G"),
    ]


class LogScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    LogScreen {
        background: $surface;
        layout: vertical;
        #logscreen-title { height: 1; padding: 0 1; background: $boost; text-style: bold; }
        #logscreen-log { height: 1fr; }
        #logscreen-search { display: none; height: 1; border: none; padding: 0 1; }
        &.-searching #logscreen-search { display: block; }
    }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "close", "Back"),
        Binding("slash", "search", "Search", key_display="/", priority=True),  # see focus.py
        Binding("n", "next_match", "Next"),
        Binding("N", "previous_match", "Prev"),
        Binding("r", "last_restart", "Restart"),
        Binding("w", "wrap", "Wrap"),
        Binding("t", "timestamps", "Times"),
    ]

    def __init__(
        self,
        client: Any,
        selection: Selection,
        *,
        max_lines: int = 5000,
        tz: _dt.tzinfo | None = None,
    ) -> None:
        super().__init__()
        self.client = client
        self.selection = selection
        self.max_lines = max_lines
        self.tz = tz
        self.loaded = asyncio.Event()  # the backlog is shown (tests wait for it)
        self._early: list[dict[str, Any]] | None = []  # live lines before the backlog
        self._matches: int | None = None  # lines holding the search text, counted once

    def compose(self) -> ComposeResult:
        yield Static("", id="logscreen-title")
        yield FullLogView(self.max_lines, tz=self.tz, id="logscreen-log")
        yield SearchInput(
            placeholder="search (plain text; enter finds, esc cancels)", id="logscreen-search"
        )
        yield Footer(compact=True)

    @property
    def log_view(self) -> LogView:
        return self.query_one("#logscreen-log", LogView)

    def on_mount(self) -> None:
        self.log_view.focus()
        self._update_title()
        # Scrolling up stops following: the title says so.
        self.watch(self.log_view, "follow", lambda _follow: self._update_title(), init=False)
        self._load()

    # -- lines ------------------------------------------------------------------

    def wants(self, line: dict[str, Any]) -> bool:
        sel = self.selection
        if sel.worker is not None:
            return line.get("worker") == sel.worker
        return line.get("app") == sel.app

    def disconnected(self) -> None:
        """Live lines from the next connection wait until its backlog is shown."""
        self.loaded.clear()
        if self._early is None:
            self._early = []

    def reconnected(self, client: Any) -> None:
        """Connected again (perhaps to a new supervisor): what this worker wrote in
        between is fetched, as on opening, then the live lines that waited for it."""
        self.client = client
        self.disconnected()  # if the disconnection was not seen
        self._load()

    @work(group="backlog", exclusive=True, exit_on_error=False)
    async def _load(self) -> None:
        try:
            lines = list(await self.client.logs(self.selection.target, self.max_lines))
        except asyncio.CancelledError:
            raise
        except Exception as err:
            self.notify(message_of(err), severity="error", markup=False)
            lines = []
        early, self._early = self._early or [], None
        lines = [x for x in lines if self.wants(x)]
        seen = {line_id(line) for line in lines}
        self._append(unseen(lines, self.log_view.records))
        self._append([x for x in early if line_id(x) not in seen])
        self.loaded.set()

    def add_live(self, lines: list[dict[str, Any]]) -> None:
        """Live lines from the dashboard's feed (all workers'): this selection's are kept."""
        mine = [x for x in lines if self.wants(x)]
        if not mine:
            return
        if self._early is not None:  # the backlog is still on its way
            self._early.extend(mine)
            del self._early[: -self.max_lines]
            return
        self._append(mine)

    def _append(self, lines: list[dict[str, Any]]) -> None:
        if lines:
            self.log_view.append(lines)
            self._matches = None
            self._update_title()

    # -- keys -------------------------------------------------------------------

    def action_close(self) -> None:
        self.dismiss(None)

    def action_wrap(self) -> None:
        self.log_view.wrap = not self.log_view.wrap
        self._update_title()

    def action_timestamps(self) -> None:
        self.log_view.timestamps = not self.log_view.timestamps
        self._update_title()

    def action_top(self) -> None:
        log = self.log_view
        log.follow = False
        log.scroll_home(animate=False, immediate=True)
        self._update_title()

    def action_bottom(self) -> None:
        self.log_view.action_follow_end()
        self._update_title()

    def action_search(self) -> None:
        box = self.query_one(SearchInput)
        box.value = self.log_view.search_text
        self.add_class("-searching")
        focus_now(box)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return not (action == "search" and isinstance(self.focused, SearchInput))

    @on(Input.Changed, "#logscreen-search")
    def _search_changed(self, event: Input.Changed) -> None:
        self.log_view.search_text = event.value
        self._matches = None
        self._update_title()

    @on(Input.Submitted, "#logscreen-search")
    def _search_submitted(self) -> None:
        self.remove_class("-searching")
        self.log_view.focus()
        if self.log_view.search_text:
            self._move(forward=True)

    def action_cancel_search(self) -> None:
        self.query_one(SearchInput).value = ""
        self.log_view.search_text = ""
        self.remove_class("-searching")
        self.log_view.focus()
        self._update_title()

    def action_next_match(self) -> None:
        self._move(forward=True)

    def action_previous_match(self) -> None:
        self._move(forward=False)

    def _move(self, *, forward: bool) -> None:
        log = self.log_view
        needle = log.search_text
        if not needle:
            self.notify("Nothing to find: / starts a search.", markup=False)
            return
        index = log.find(needle, forward=forward)
        if index is None:
            self.notify(f"No line holds “{visible(needle)}”.", severity="warning", markup=False)
            return
        log.jump_to(index)
        self._update_title()

    def action_last_restart(self) -> None:
        log = self.log_view
        index = log.last_restart()
        if index is None:
            self.notify("No restart in the lines loaded.", markup=False)
            return
        log.jump_to(index)
        self._update_title()

    # -- title ------------------------------------------------------------------

    def _update_title(self) -> None:
        log = self.log_view
        parts = [f"log · {self.selection.target}", _lines(len(log.shown))]
        if log.search_text:
            if self._matches is None:
                needle = log.search_text.lower()
                self._matches = sum(
                    1 for r in log.shown if needle in r.text.lower() or needle in r.source.lower()
                )
            parts.append(f"search “{log.search_text}”: {_lines(self._matches)}")
        parts.append("wrap" if log.wrap else "no wrap")
        if not log.timestamps:
            parts.append("no times")
        parts.append("follow" if log.follow else "paused")
        # Text, not str: a str is parsed as markup, and the search is typed data.
        self.query_one("#logscreen-title", Static).update(Text(visible(" · ".join(parts))))


def _lines(n: int) -> str:
    return f"{n} line" if n == 1 else f"{n} lines"
