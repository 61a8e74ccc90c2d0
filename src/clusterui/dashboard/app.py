"""The clusterui dashboard: a Textual app over the client API (never touches processes)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import gc
import inspect
import os
import signal
import sys
import termios
import threading
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, ClassVar

from rich.text import Text
from textual import events, on, work
from textual.app import App, ComposeResult, ScreenStackError, SystemCommand
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import Footer, Input

from clusterui.client import caller_env
from clusterui.dashboard.detail import DetailPane
from clusterui.dashboard.feed import Sink, follow, message_of
from clusterui.dashboard.focus import focus_now
from clusterui.dashboard.header import StatusHeader
from clusterui.dashboard.keys import KEYS, bindings
from clusterui.dashboard.logscreen import LogScreen
from clusterui.dashboard.logview import SYS_MODES, LogView, newest
from clusterui.dashboard.messages import (
    ConnectionChanged,
    LogsArrived,
    NoticeArrived,
    StateUpdated,
)
from clusterui.dashboard.modals import ConfirmScreen, HelpScreen, QuitScreen, SignalScreen
from clusterui.dashboard.model import History, Selection
from clusterui.dashboard.table import SORT_MARK, ProcessTable
from clusterui.dashboard.themes import Prefs, ThemeMemory
from clusterui.vocab.exits import Exit
from clusterui.vocab.safetext import visible

ClientFactory = Callable[[], Any]  # returns a connected client, or an awaitable of one
EVENTS_SHOWN = 15  # the newest events the detail pane asks for
NARROW = 120  # below this many columns the detail pane leaves the side and goes on demand
SEVERITY = {"info": "information", "warning": "warning", "error": "error"}
TREE_EVERY = 1.0  # seconds between asks for the selection's process tree (detail pane open)
SORT_NAMES = {"cpu": "CPU", "mem": "memory", "conn": "req|conn/s", "restarts": "restarts"}


async def _resolve(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class LogPane(Vertical):
    """The log view and its filter box; the thing `l` maximises."""

    ALLOW_MAXIMIZE = True


class FilterInput(Input):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.clear_filter", "Clear filter", show=False),
    ]


class RowFilterInput(Input):
    """The process table's filter box, under the table while it is typed in."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.clear_row_filter", "Clear filter", show=False),
    ]


class DashboardApp(App[None]):
    CSS_PATH = "dashboard.tcss"
    TITLE = "clusterui"
    BINDINGS: ClassVar[list[BindingType]] = [
        *bindings(),
        # Not in KEYS: esc is navigation (listed in `?` as such), never a footer key.
        Binding("escape", "escape", "Clear filter", show=False),
    ]
    ALLOW_IN_MAXIMIZED_VIEW: ClassVar[str] = "StatusHeader, Footer"

    def __init__(
        self,
        client: Any,
        *,
        client_factory: ClientFactory | None = None,
        file: str | None = None,
        started_supervisor: bool = False,
        tz: _dt.tzinfo | None = None,
        log_backlog: int = 1000,
        max_log_lines: int = 5000,
        reconnect_delay: float = 2.0,
        freeze_gc: bool = False,
        prefs: Prefs | None = None,
    ) -> None:
        super().__init__()
        self.client: Any = client
        self.client_factory = client_factory
        self.file = file
        self.started_supervisor = started_supervisor
        self.tz = tz
        self.log_backlog = log_backlog
        self.max_log_lines = max_log_lines
        self.reconnect_delay = reconnect_delay
        self.freeze_gc = freeze_gc  # for a process of its own (run_dashboard), not tests
        self.prefs = prefs  # the settings file (the theme); None: nothing is remembered
        self.snapshot: dict[str, Any] = {"apps": [], "workers": []}
        self.history = History()
        self.connected = True
        self.disconnect_reason = ""
        self.exit_reason: str | None = None  # "detach" | "shutdown" | "hangup" | "lost"
        self.loaded = asyncio.Event()  # the first snapshot and the log backlog are shown
        self._details_wide = True
        self._details_narrow = False
        self._log_follows_selection = False
        self._shutting_down = False
        self._main: Screen | None = None
        self._signals: dict[int, Any] = {}  # signal -> the handler to put back
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self._pending_logs: list[dict[str, Any]] | None = None  # the batch in the queue
        self._seen_width: int | None = None  # the terminal width the last Resize gave
        # What the shown events were fetched for (selection and the counters that say
        # the app's timeline moved); a different key fetches them again.
        self._events_key: tuple[Any, ...] | None = None
        self._events_nudge = 0  # bumped after a signal this dashboard sent
        self._tree_asking: str | None = None  # the target of the tree call under way

    # -- layout ---------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield StatusHeader(self.file, id="header")
        with Horizontal(id="body"):
            with Vertical(id="left"):
                yield ProcessTable(id="procs")
                yield RowFilterInput(
                    placeholder="filter rows: app, app:instance, status (enter keeps, esc clears)",
                    id="row-filter",
                )
                with LogPane(id="logs"):
                    yield LogView(self.max_log_lines, tz=self.tz, id="log")
                    yield FilterInput(
                        placeholder="filter logs (enter keeps, esc clears)", id="filter"
                    )
            yield DetailPane(tz=self.tz, id="detail")
        yield Footer(compact=True)

    @property
    def table(self) -> ProcessTable:
        return self.main_screen.query_one(ProcessTable)

    @property
    def log_view(self) -> LogView:
        return self.main_screen.query_one(LogView)

    @property
    def main_screen(self) -> Screen:
        return self._main or self.screen

    @property
    def selection(self) -> Selection | None:
        return self.table.selection

    @property
    def narrow(self) -> bool:
        return self._width() < NARROW

    def _width(self) -> int:
        # During a live resize the App's on_resize runs before App.size has the new
        # width, so the width the last Resize event gave is the one to trust.
        return self._seen_width if self._seen_width is not None else self.size.width

    @property
    def details_visible(self) -> bool:
        return self._details_narrow if self.narrow else self._details_wide

    def on_mount(self) -> None:
        self._main = self.screen
        if self.prefs is not None:
            ThemeMemory(self, self.prefs).start()
        # The detail pane's text holds its colours: draw it again in a new theme's.
        self.theme_changed_signal.subscribe(self, lambda _theme: self._refresh_selection())
        self._update_table_title()
        self.main_screen.query_one(DetailPane).border_title = "details"
        self._apply_size()
        self._update_log_title()
        self.table.focus()
        self._install_signals()
        self._consume()
        self.set_interval(TREE_EVERY, self._poll_tree)

    def on_unmount(self) -> None:
        self._restore_signals()

    def on_resize(self, event: events.Resize) -> None:
        self._seen_width = event.size.width
        self._apply_size()
        # The pane may have come back (wide again): draw the selection now, not at the
        # next key press, and re-fit the table once the new layout has settled.
        self._refresh_selection()
        self.call_after_refresh(self.table.relayout)

    def _apply_size(self) -> None:
        screen = self.main_screen
        screen.set_class(self.narrow, "-narrow")
        screen.set_class(self.details_visible, "-details")
        for footer in screen.query(Footer):
            footer.show_command_palette = not self.narrow  # room for one more key

    # -- signals --------------------------------------------------------------

    def _install_signals(self) -> None:
        # Plain signal.signal, not loop.add_signal_handler: when the terminal hangs up,
        # Textual's output thread dies on the first failed write and the event loop can
        # then block for good on its full queue; only a Python-level handler still runs.
        if threading.current_thread() is not threading.main_thread():
            return  # run from another thread: the caller's own handling applies
        self._event_loop = asyncio.get_running_loop()
        for sig in (signal.SIGHUP, signal.SIGTERM):
            self._signals[sig] = signal.signal(sig, self._on_signal)

    def _restore_signals(self) -> None:
        for sig, previous in self._signals.items():
            signal.signal(sig, previous)
        self._signals.clear()

    def _on_signal(self, signum: int, frame: Any) -> None:
        """SIGHUP (terminal gone) or SIGTERM: detach; the apps live in the supervisor."""
        self.exit_reason = "hangup"
        if signum == signal.SIGHUP and not _terminal_alive():
            # Nothing can be shown or restored any more and a clean shutdown could hang
            # on the dead terminal: leave now. The supervisor sees our socket close.
            os._exit(Exit.OK)
        if self._event_loop is not None:
            self._event_loop.call_soon_threadsafe(partial(self.exit, return_code=0))

    # -- data from the supervisor -----------------------------------------------

    @work(group="events", exclusive=True, exit_on_error=False)
    async def _consume(self) -> None:
        while True:
            reason = await self._session(self.client)
            if self._shutting_down:
                return
            self._pending_logs = None  # the next connection's lines start a batch of their own
            self.post_message(ConnectionChanged(False, reason))
            if self.client_factory is None:
                return
            old, self.client = self.client, None
            with contextlib.suppress(Exception):
                await old.close()
            await asyncio.sleep(self.reconnect_delay)  # a flapping link must not spin
            self.client = await self._reconnect()
            self.post_message(ConnectionChanged(True, client=self.client))

    async def _session(self, client: Any) -> str:
        """Follow one connection until it ends; returns why it ended."""
        sink = Sink(
            state=lambda snapshot: self.post_message(StateUpdated(snapshot)),
            backlog=lambda lines: self.post_message(LogsArrived(lines)),
            loaded=lambda: self.call_later(self._on_loaded),  # after the messages above
            logs=self._post_logs,
            notice=lambda level, text: self.post_message(NoticeArrived(level, text)),
        )
        return await follow(
            client, sink, backlog=self.log_backlog, shown=lambda: self.log_view.records
        )

    def _on_loaded(self) -> None:
        if self.freeze_gc and not self.loaded.is_set():
            # Everything made so far (modules, widgets, styles) lives as long as the app:
            # out of the collector's sight, about 57,000 objects fewer to scan in each
            # full collection a log flood sets off, which a key press pressed at that
            # moment waits for (bench/README.md, dashboard.py).
            gc.collect()
            gc.freeze()
        self.loaded.set()

    def _post_logs(self, lines: list[dict[str, Any]]) -> None:
        """Add lines to the batch still waiting in the queue, or post a new batch.

        Under a flood the supervisor sends 20 batches a second; while the app is busy they
        pile into one message, so a key press waits behind at most one batch, and the
        lines a batch would push straight out of the bounded view are never decoded into
        records at all.
        """
        pending = self._pending_logs
        if pending is not None:
            pending.extend(lines)
            if len(pending) > self.max_log_lines:
                pending[:] = newest(pending, self.max_log_lines)
            return
        self._pending_logs = pending = newest(lines, self.max_log_lines)
        self.post_message(LogsArrived(pending))

    async def _reconnect(self) -> Any:
        assert self.client_factory is not None
        while True:
            try:
                return await _resolve(self.client_factory())
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(self.reconnect_delay)

    def on_state_updated(self, message: StateUpdated) -> None:
        snapshot = message.snapshot
        snapshot.setdefault("apps", [])
        snapshot.setdefault("workers", [])
        self.snapshot = snapshot
        sup = snapshot.get("supervisor") or {}
        # When it was made: after a reconnect to a new supervisor too, later than before.
        tick = (sup.get("started_at") or 0.0) + (sup.get("uptime") or 0.0)
        for worker in snapshot["workers"]:
            self.history.record(worker, tick)
        self.history.forget({w["id"] for w in snapshot["workers"]})
        self.table.update_snapshot(snapshot, self.history)
        if self.table.filter_text:
            self._update_table_title()  # the counts may have changed
        # The rest in later frames. Textual redraws the box around everything that changed
        # since the last frame: the table, header and detail pane together are most of
        # the screen, one long frame a second that a key press under a flood waits behind.
        self.call_after_refresh(self._state_header, snapshot)

    def _state_header(self, snapshot: dict[str, Any]) -> None:
        if snapshot is not self.snapshot:  # a newer state is on its way through here
            return
        try:
            self.main_screen.query_one(StatusHeader).update_state(snapshot)
        except (NoMatches, ScreenStackError):  # the app closed meanwhile
            return
        self.call_after_refresh(self._state_selection, snapshot)

    def _state_selection(self, snapshot: dict[str, Any]) -> None:
        if snapshot is self.snapshot:
            with contextlib.suppress(NoMatches, ScreenStackError):
                self._refresh_selection()

    def on_logs_arrived(self, message: LogsArrived) -> None:
        if message.lines is self._pending_logs:
            self._pending_logs = None  # from here on, new lines go into a new batch
        self.log_view.append(message.lines)
        if self.log_view.filter_text:
            self._update_log_title()
        for screen in self.screen_stack:
            if isinstance(screen, LogScreen):
                screen.add_live(message.lines)

    def on_notice_arrived(self, message: NoticeArrived) -> None:
        self.notify(
            visible(message.message),
            severity=SEVERITY.get(message.level, "information"),
            markup=False,
        )

    def on_connection_changed(self, message: ConnectionChanged) -> None:
        if self._shutting_down:
            return
        self.connected = message.connected
        self.disconnect_reason = message.reason
        self.main_screen.query_one(StatusHeader).update_state(
            connected=message.connected, reason=message.reason
        )
        self.main_screen.set_class(not message.connected, "-disconnected")
        if message.connected:
            self.notify("Reconnected to the supervisor.", markup=False)
        else:
            tail = " Retrying…" if self.client_factory else ""
            self.notify(
                f"Lost the connection to the supervisor: {message.reason.rstrip('.')}.{tail}",
                severity="error",
                timeout=10,
                markup=False,
            )
        for screen in self.screen_stack:
            if isinstance(screen, LogScreen):
                if message.connected:
                    screen.reconnected(message.client)
                else:
                    screen.disconnected()

    @on(ProcessTable.RowHighlighted, "#procs")
    def _row_highlighted(self) -> None:
        self._refresh_selection()

    @on(ProcessTable.RowSelected, "#procs")
    def _row_selected(self) -> None:
        # a click on the selected row (enter is bound to the details toggle itself)
        if not self.details_visible:
            self.action_details()

    def _refresh_selection(self) -> None:
        sel = self.selection
        if self.details_visible:
            pane = self.main_screen.query_one(DetailPane)
            shown = pane.tree_target
            pane.show(sel, self.snapshot, self.history)
            if sel is not None and pane.tree_target != shown:
                self._poll_tree()  # a new selection: its tree now, not in up to a second
            self._follow_events(sel)
        else:
            self._events_key = None  # shown again: fetched again
        if self._log_follows_selection:
            self._scope_logs(sel)

    def _poll_tree(self) -> None:
        """Ask for the selection's process tree, while the detail pane shows it (the
        supervisor samples; the dashboard never reads /proc). One call at a time."""
        try:
            if not self.details_visible or self.screen is not self.main_screen:
                return
            sel = self.selection
        except (NoMatches, ScreenStackError):  # the timer fired while the app shut down
            return
        if sel is None or not self.connected or self.client is None:
            return
        if self._tree_asking is None:
            self._tree_asking = sel.target
            self._fetch_tree(sel.target, sel.is_app)

    @work(group="tree", exit_on_error=False)
    async def _fetch_tree(self, target: str, app_row: bool) -> None:
        error = None
        trees = None
        try:
            trees = await self.client.tree(target)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # an older supervisor, a lost link: said in the section
            error = message_of(err)
        finally:
            self._tree_asking = None
        with contextlib.suppress(NoMatches):  # gone if the app shut down meanwhile
            sel = self.selection
            if sel is not None and sel.target == target and self.details_visible:
                self.main_screen.query_one(DetailPane).show_tree(
                    target, trees, app_row=app_row, error=error
                )

    # -- the events timeline (fetched, not in the snapshot) ----------------------------

    def _follow_events(self, sel: Selection | None) -> None:
        """Fetch the selection's events when it changes, or when its app's counters say
        something happened (restarts, reloads, scale, watch, health, a signal we sent)."""
        if sel is None or not self.connected or self.client is None:
            return
        workers = self._workers_of(sel.app)
        app = next((a for a in self.snapshot["apps"] if a["name"] == sel.app), {})
        key = (
            id(self.client),
            sel.app,
            sel.worker,
            tuple((w["instance"], w.get("restarts"), (w.get("health") or {}).get("ok"))
                  for w in workers),
            repr(app.get("reloads")),
            app.get("last_watch_event"),
            self._events_nudge,
        )  # fmt: skip
        if key != self._events_key:
            self._events_key = key
            self._fetch_events(sel)

    @work(group="timeline", exclusive=True, exit_on_error=False)
    async def _fetch_events(self, sel: Selection) -> None:
        owner = (sel.app, sel.worker)
        try:
            rows = await self.client.app_events(sel.app, sel.instance, EVENTS_SHOWN)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            # Said until the key changes: an older supervisor without the op is not
            # asked again every second.
            self.main_screen.query_one(DetailPane).show_events(owner, message_of(err))
            return
        self.main_screen.query_one(DetailPane).show_events(owner, list(rows))

    # -- actions on the supervisor ------------------------------------------------

    def _selected(self) -> Selection | None:
        """The selection to act on, or None (and the reason said) if there is none."""
        if not self.connected or self.client is None:
            self.notify("Not connected to the supervisor.", severity="error", markup=False)
            return None
        sel = self.selection
        if sel is None and self.table.filter_text:
            typed = visible(self.table.filter_text)
            self.notify(
                f"Nothing is selected: no row matches the filter “{typed}” (esc clears it).",
                severity="warning",
                markup=False,
            )
        elif sel is None:
            self.notify("Nothing is selected: there are no apps loaded.", severity="warning")
        return sel

    def _workers_of(self, app: str) -> list[dict[str, Any]]:
        return [w for w in self.snapshot["workers"] if w["app"] == app]

    async def _call(self, op: str, *args: Any) -> Any:
        """Run one client call, and say how it went (the supervisor's own words)."""
        if not self.connected or self.client is None:
            self.notify("Not connected to the supervisor.", severity="error", markup=False)
            return None
        try:
            result = await getattr(self.client, op)(*args)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            self.notify(message_of(err), severity="error", markup=False)
            return None
        text = result.get("message") if isinstance(result, dict) else None
        self.notify(text or f"{op}: done.", markup=False)
        return result

    async def _confirm(self, question: str, label: str) -> bool:
        if await self.push_screen_wait(ConfirmScreen(question, label)):
            return True
        self.notify("Cancelled.", markup=False)
        return False

    @work(group="actions", exit_on_error=False)
    async def action_scale(self, delta: str) -> None:
        if sel := self._selected():
            await self._call("scale", sel.app, delta)

    @work(group="actions", exit_on_error=False)
    async def action_restart(self) -> None:
        sel = self._selected()
        if sel is None:
            return
        if sel.is_app:
            n = len(self._workers_of(sel.app))
            question = (
                f"Restart all {n} worker{'s' if n != 1 else ''} of {sel.app} at once? "
                "Open connections are cut; R does a rolling reload instead."
            )
            if not await self._confirm(question, f"Restart {sel.app}"):
                return
        await self._call("restart", [sel.target])

    @work(group="actions", exit_on_error=False)
    async def action_reload(self) -> None:
        if sel := self._selected():
            self.notify(f"Reloading {sel.app} (one worker at a time)…", markup=False)
            await self._call("reload", [sel.app])

    @work(group="actions", exit_on_error=False)
    async def action_stop(self) -> None:
        sel = self._selected()
        if sel is None:
            return
        if sel.is_app:
            n = len(self._workers_of(sel.app))
            question = f"Stop {sel.app} and its {n} worker{'s' if n != 1 else ''}?"
            if not await self._confirm(question, f"Stop {sel.app}"):
                return
        await self._call("stop", [sel.target])

    @work(group="actions", exit_on_error=False)
    async def action_start(self) -> None:
        if sel := self._selected():
            await self._call("start", [sel.target])

    @work(group="actions", exit_on_error=False)
    async def action_watch(self) -> None:
        if sel := self._selected():
            await self._call("watch", sel.app, None)

    @work(group="actions", exit_on_error=False)
    async def action_signal(self) -> None:
        """The `x` menu: the supervisor signals the worker (or each of the app's)."""
        sel = self._selected()
        if sel is None:
            return
        n = len(self._workers_of(sel.app)) if sel.is_app else 1
        name = await self.push_screen_wait(SignalScreen(sel.target, n))
        if name is None:
            self.notify("Cancelled.", markup=False)
            return
        if name == "KILL":
            whom = f"all {n} workers of {sel.app}" if sel.is_app and n != 1 else sel.target
            question = (
                f"Send SIGKILL to {whom}? It dies at once, without cleanup, and restarts "
                "per its policy."
            )
            if not await self._confirm(question, "Kill"):
                return
        await self._call("signal", name, [sel.target])
        self._events_nudge += 1
        self._refresh_selection()

    @work(group="actions", exit_on_error=False)
    async def action_apply_file(self) -> None:
        """`clusterui reload FILE` for the files loaded now (and the one we were started on)."""
        files = list((self.snapshot.get("supervisor") or {}).get("files") or [])
        if self.file and self.file not in files:
            files.insert(0, self.file)
        if not files:
            self.notify("No ecosystem file is loaded.", severity="warning", markup=False)
            return
        caller = caller_env()
        for file in files:
            self.notify(f"Applying {os.path.basename(file)}…", markup=False)
            await self._call("apply", file, caller)

    @work(group="actions", exit_on_error=False)
    async def action_delete(self) -> None:
        sel = self._selected()
        if sel is None:
            return
        question = f"Delete {sel.app}: stop its workers and forget it until it is loaded again?"
        if await self._confirm(question, f"Delete {sel.app}"):
            await self._call("delete", [sel.app])

    # -- leaving ----------------------------------------------------------------

    def action_detach(self) -> None:
        self._leave_running()

    async def action_quit(self) -> None:
        if not self.connected:
            self.exit_reason = "lost"
            reason = self.disconnect_reason.rstrip(".")
            self.exit(
                return_code=Exit.NO_SUPERVISOR,
                message=Text(f"Lost the connection to the supervisor: {reason}."),
            )
        elif self.started_supervisor:
            self._ask_quit()
        else:
            self._leave_running()

    def _leave_running(self) -> None:
        self.exit_reason = "detach"
        self.exit(
            return_code=0,
            message=Text("Detached; the apps keep running. `clusterui attach` shows them again."),
        )

    @work(group="quit", exclusive=True, exit_on_error=False)
    async def _ask_quit(self) -> None:
        answer = await self.push_screen_wait(QuitScreen(len(self.snapshot["apps"])))
        if answer == "leave":
            self._leave_running()
        elif answer == "stop":
            self.notify("Stopping all apps and the supervisor…", markup=False)
            self._shutting_down = True  # the event stream ends with it: not a lost link
            try:
                await self.client.shutdown()
            except asyncio.CancelledError:
                raise
            except Exception as err:
                self._shutting_down = False
                self.notify(message_of(err), severity="error", markup=False)
                return
            self.exit_reason = "shutdown"
            self.exit(return_code=0, message=Text("Stopped all apps and the supervisor."))
        else:
            self.notify("Still here.", markup=False)

    # -- view actions -------------------------------------------------------------

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_details(self) -> None:
        if self.narrow:
            self._details_narrow = not self._details_narrow
        else:
            self._details_wide = not self._details_wide
        self._apply_size()
        self._refresh_selection()

    def action_logs(self) -> None:
        screen = self.main_screen
        log = self.log_view
        if screen.maximized is not None:
            screen.minimize()
            self.table.focus()
            return
        if self.narrow and self._details_narrow:
            self._details_narrow = False  # the logs share the space with the details
            self._apply_size()
        if log.has_focus:
            screen.maximize(screen.query_one(LogPane), container=False)
        else:
            log.focus()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """`/` means the focused pane's filter: the rows' in the table, else the logs'.

        Both bindings stay in KEYS; the one that does not apply is hidden (so the footer
        names the one that does) and lets the key fall through to the other.
        """
        if action in ("filter", "filter_rows") and self._main is not None:
            # Priority bindings: checked whatever has the focus, so not over another
            # screen, and in a filter box `/` is a character.
            if self.screen is not self.main_screen or isinstance(self.focused, Input):
                return False
            return (action == "filter_rows") == self._table_focused()
        return True

    def _table_focused(self) -> bool:
        focused = self.main_screen.focused
        return focused is not None and focused.id in ("procs", "row-filter")

    def action_filter_rows(self) -> None:
        """Open the row filter box under the table, with the filter kept so far."""
        box = self.main_screen.query_one(RowFilterInput)
        box.value = self.table.filter_text
        box.add_class("-filtering")
        focus_now(box)

    @on(Input.Changed, "#row-filter")
    def _row_filter_changed(self, event: Input.Changed) -> None:
        self.table.set_filter(event.value)
        self._update_table_title()

    @on(Input.Submitted, "#row-filter")
    def _row_filter_submitted(self) -> None:
        self.main_screen.query_one(RowFilterInput).remove_class("-filtering")
        self.table.focus()

    def action_clear_row_filter(self) -> None:
        box = self.main_screen.query_one(RowFilterInput)
        box.value = ""
        box.remove_class("-filtering")
        self.table.set_filter("")
        self._update_table_title()
        self.table.focus()

    def _update_table_title(self) -> None:
        table = self.table
        parts = ["processes"]
        if table.sort_by:
            parts.append(f"by {SORT_NAMES.get(table.sort_by, table.sort_by)} {SORT_MARK}")
        if table.filter_text:
            shown, total = table.filter_counts
            parts.append(f"filter “{table.filter_text}” {shown}/{total} workers")
        # Text, not str: a str title is parsed as markup, and the filter is typed data.
        table.border_title = Text(visible(" · ".join(parts)))

    def action_filter(self) -> None:
        if self.narrow and self._details_narrow:
            self._details_narrow = False
            self._apply_size()
        box = self.main_screen.query_one(FilterInput)
        box.value = self.log_view.filter_text
        self.main_screen.query_one(LogPane).add_class("-filtering")
        focus_now(box)

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.log_view.filter_text = event.value
        self._update_log_title()

    @on(Input.Submitted, "#filter")
    def _filter_submitted(self) -> None:
        self.main_screen.query_one(LogPane).remove_class("-filtering")
        self.log_view.focus()

    def action_clear_filter(self) -> None:
        box = self.main_screen.query_one(FilterInput)
        box.value = ""
        self.log_view.filter_text = ""
        self.main_screen.query_one(LogPane).remove_class("-filtering")
        self._update_log_title()
        self.log_view.focus()

    def action_escape(self) -> None:
        """Esc outside the filter boxes: clear a filter, the focus left where it is.

        The focused pane's filter goes first (the rows' in the table, the logs' in the
        log pane), then the other's on the next esc. A maximised pane is restored by
        Textual before this runs, so esc first restores, then clears.
        """
        rows = bool(self.table.filter_text)
        logs = bool(self.log_view.filter_text)
        in_logs = self.focused is not None and self.main_screen.query_one(LogPane) in (
            self.focused.ancestors_with_self
        )
        if not (rows or logs):
            return
        focused = self.focused
        if rows and (not logs or not in_logs):
            self.action_clear_row_filter()
            said = "Row filter cleared."
        else:
            self.action_clear_filter()
            said = "Log filter cleared."
        if focused is not None and focused.id not in ("filter", "row-filter"):
            focused.focus()
        self.notify(said, markup=False)

    def action_log_screen(self) -> None:
        """The selected worker's (or app's) log, full screen (dashboard/logscreen.py)."""
        sel = self._selected()
        if sel is not None and self.screen is self.main_screen:
            self.push_screen(LogScreen(self.client, sel, max_lines=self.max_log_lines, tz=self.tz))

    def action_log_scope(self) -> None:
        self._log_follows_selection = not self._log_follows_selection
        self._scope_logs(self.selection if self._log_follows_selection else None)

    def _scope_logs(self, sel: Selection | None) -> None:
        if sel is None:
            self.log_view.set_scope(None)
        else:
            self.log_view.set_scope(sel.app, sel.worker)
        self._update_log_title()

    def action_sort(self) -> None:
        by = self.table.cycle_sort()
        names = SORT_NAMES
        self._update_table_title()
        said = (
            f"Sorted by {names.get(by, by)}, largest first, within each app."
            if by
            else ("In the ecosystem file's order.")
        )
        self.notify(said, markup=False)

    def action_sys_lines(self) -> None:
        log = self.log_view
        log.sys_mode = SYS_MODES[(SYS_MODES.index(log.sys_mode) + 1) % len(SYS_MODES)]
        self._update_log_title()
        said = {
            "all": "Logs: the apps' output and the supervisor's lines.",
            "only": "Logs: the supervisor's lines only (exits, restarts, reloads, watch).",
            "hide": "Logs: the apps' output only.",
        }
        self.notify(said[log.sys_mode], markup=False)

    def action_follow(self) -> None:
        self.log_view.follow = not self.log_view.follow
        self._update_log_title()
        self.notify(f"Follow {'on' if self.log_view.follow else 'off'}.", markup=False)

    def action_timestamps(self) -> None:
        self.log_view.timestamps = not self.log_view.timestamps
        self._update_log_title()

    def _update_log_title(self) -> None:
        log = self.log_view
        app, worker = log.scope
        if worker is not None:
            sel = self.selection
            scope = sel.target if sel and sel.worker == worker else f"worker {worker}"
        else:
            scope = app or "all apps"
        parts = [f"logs · {scope}"]
        if log.sys_mode != "all":
            parts.append("supervisor only" if log.sys_mode == "only" else "no supervisor")
        if log.filter_text:
            parts.append(f"filter “{log.filter_text}” ({len(log.shown)})")
        parts.append("follow" if log.follow else "paused")
        if not log.timestamps:
            parts.append("no times")
        # Text, not str: a str title is parsed as markup, and the filter is typed data.
        self.main_screen.query_one(LogPane).border_title = Text(visible(" · ".join(parts)))

    # -- command palette --------------------------------------------------------

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        for command in super().get_system_commands(screen):
            if command.title not in ("Quit", "Theme"):  # ours below (Theme: to show its key)
                yield command
        sel = self.selection if self._main is not None else None
        target = sel.target if sel else "selection"
        app = sel.app if sel else "app"
        titles = {
            "scale('+1')": f"Scale {app} up (+1)",
            "scale('-1')": f"Scale {app} down (-1)",
            "restart": f"Restart {target}",
            "reload": f"Rolling reload {app}",
            "stop": f"Stop {target}",
            "start": f"Start {target}",
            "watch": f"Toggle file watch for {app}",
            "signal": f"Send a signal to {target}…",
            "apply_file": "Apply the ecosystem file (reload FILE)",
            "logs": "Focus or maximise the logs",
            "filter": "Filter the logs",
            "filter_rows": "Filter the table's rows",
            "details": "Show or hide details",
            "log_scope": "Logs: all apps or the selection",
            "follow": "Follow logs on or off",
            "sys_lines": "Logs: all, supervisor lines only, or app output only",
            "sort": "Sort the table by the next column",
            "timestamps": "Log timestamps on or off",
            "log_screen": f"Full-screen log of {target}",
            "change_theme": "Change the colour theme",
            "detach": "Detach (apps keep running)",
            "quit": "Quit",
        }
        for key in KEYS:
            if key.palette and key.action in titles:
                yield SystemCommand(
                    f"{titles[key.action]}  ({key.show})",
                    key.help,
                    self._palette_callback(key.action),
                )
        yield SystemCommand(
            f"Delete {app}", "Stop the app and forget it (asks first)", self.action_delete
        )

    def _palette_callback(self, action: str) -> Callable[[], Any]:
        if action in ("filter", "filter_rows"):
            # check_action would refuse the one `/` does not mean for the focus of the
            # moment; chosen by name, it focuses its own pane.
            return getattr(self, f"action_{action}")
        return partial(self.run_action, action)


def _terminal_alive() -> bool:
    """False once the controlling terminal has hung up (its ioctls then fail with EIO)."""
    try:
        termios.tcgetattr(sys.__stdout__.fileno() if sys.__stdout__ else 1)
    except (termios.error, OSError, ValueError):
        return False
    return True


def run_dashboard(
    client_factory: ClientFactory,
    *,
    file: str | None,
    started_supervisor: bool,
    prefs: Prefs | None = None,
) -> int:
    """Run the dashboard until the user quits or detaches; returns the exit code.

    `client_factory()` returns a connected client (or an awaitable of one); it is called
    once at the start and again to reconnect if the supervisor connection drops. `prefs`
    keeps the chosen theme (clusterui.cli.prefs.PrefsFile); without it nothing is kept.
    """

    async def main() -> int:
        try:
            client = await _resolve(client_factory())
        except Exception as err:
            print(message_of(err), file=sys.stderr)
            code = getattr(err, "code", Exit.NO_SUPERVISOR)
            return code if isinstance(code, int) else Exit.NO_SUPERVISOR
        app = DashboardApp(
            client,
            client_factory=client_factory,
            file=file,
            started_supervisor=started_supervisor,
            freeze_gc=True,
            prefs=prefs,
        )
        try:
            await app.run_async()
        finally:
            if app.client is not None:
                with contextlib.suppress(Exception):
                    await app.client.close()
        return app.return_code or 0

    return asyncio.run(main())


__all__ = ["DashboardApp", "run_dashboard", "message_of"]
