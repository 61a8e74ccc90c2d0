"""The detail pane: larger charts and the facts about the selected worker or app."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from rich.console import Group
from rich.style import Style, StyleType
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widget import Widget
from textual.widgets import Static

from clusterui import reqstats
from clusterui.dashboard.model import (
    History,
    Selection,
    fmt_bytes,
    fmt_clock,
    fmt_cpu,
    fmt_duration,
    fmt_metric,
    fmt_rate,
    max_series,
    metric_series,
    mode_label,
    spark_rows,
    sum_series,
    worker_series,
)
from clusterui.dashboard.proctree import tree_renderable
from clusterui.dashboard.style import fg_style
from clusterui.vocab import events as timeline
from clusterui.vocab import states
from clusterui.vocab.safetext import visible


class SparkChart(Widget):
    """A labelled multi-line sparkline, newest sample on the right.

    Narrower than 60 cells it folds two samples into one column (their maximum), so the
    chart still covers a minute or more of one-second samples.
    """

    DEFAULT_CSS = """
    SparkChart {
        height: 3;
        & > .sparkchart--label { text-style: bold; }
        & > .sparkchart--note { color: $text-muted; }
        & > .sparkchart--bars { color: $text-primary; }
    }
    """
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "sparkchart--label",
        "sparkchart--note",
        "sparkchart--bars",
    }

    def __init__(
        self,
        label: str,
        *,
        fmt: Callable[[float], str] = fmt_metric,
        top: float | None = None,
        headroom: float = 1.0,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(id=id, classes=classes)
        self.label = label
        self.fmt = fmt
        self.top = top
        self.headroom = headroom
        self.data: list[float] = []
        self.value: str = ""

    def set_data(self, data: Sequence[float], value: str | None = None) -> None:
        self.data = list(data)
        self.value = value if value is not None else (self.fmt(data[-1]) if data else "—")
        self.refresh()

    def render(self) -> Text:
        width = self.size.width or 40
        rows = max(1, self.size.height - 1)
        step = 1 if width >= 60 else 2
        data = self.data
        if step > 1:
            # fold pairs from the newest end, so the newest sample is never half a bucket
            tail = len(data) % step
            data = ([max(data[:tail])] if tail else []) + [
                max(data[i : i + step]) for i in range(tail, len(data), step)
            ]
        peak = max(self.data, default=0.0)
        seconds = min(len(self.data), width * step)
        head = Text(no_wrap=True, end="")
        head.append(visible(self.label) + " ", fg_style(self, "sparkchart--label"))
        head.append(self.value)
        note = f"max {self.fmt(peak)} · {seconds}s" if self.data else "no samples yet"
        pad = width - head.cell_len - len(note)
        if pad >= 1:
            head.append(" " * pad)
            head.append(note, fg_style(self, "sparkchart--note"))
        bars_style = fg_style(self, "sparkchart--bars")
        lines = [head]
        top = self.top if self.top is not None else peak * self.headroom
        for line in spark_rows(data, width, rows, top):
            lines.append(Text(line, style=bars_style, no_wrap=True, end=""))
        return Text("\n").join(lines)


# Worker fields the info grid does not show: they change every tick.
LIVE_FIELDS = frozenset({"cpu", "memory", "uptime", "conn_rate", "req_rate"})
LATENCIES = frozenset({reqstats.P50, reqstats.P99})


class DetailPane(VerticalScroll):
    """Everything about the selection; rebuilt from each snapshot (it is small)."""

    DEFAULT_CSS = """
    DetailPane {
        & > #detail-title { height: auto; text-style: bold; margin-bottom: 1; }
        & > #detail-metrics { height: auto; }
        & > #detail-info { height: auto; margin-top: 1; }
        & > #detail-events { height: auto; margin-top: 1; }
        & > #detail-procs { height: auto; margin-top: 1; }
        SparkChart.-mem > .sparkchart--bars { color: $text-secondary; }
        SparkChart.-conn > .sparkchart--bars { color: $text-accent; }
        SparkChart.-metric > .sparkchart--bars { color: $text-warning; }
        /* muted, not dim as well: dim on top of muted is too pale on light themes */
        & > .detail--label { color: $text-muted; }
    }
    """
    COMPONENT_CLASSES: ClassVar[set[str]] = {"detail--label"}

    def __init__(self, *, tz: _dt.tzinfo | None = None, id: str | None = None) -> None:
        super().__init__(id=id)
        self.tz = tz
        self._metric_names: list[str] = []
        self._metric_charts: list[SparkChart] = []
        self._shown: dict[str, Any] = {}  # Static id -> what it shows (skip equal updates)
        # The selection the shown events were fetched for (the app asks the supervisor).
        self._events_owner: tuple[str, int | None] | None = None
        self.tree_target: str | None = None  # whose process tree the section shows
        self.tree_read = False  # ... and whether the supervisor's answer is in

    def compose(self) -> ComposeResult:
        yield Static("Nothing selected", id="detail-title")
        yield SparkChart("CPU", fmt=fmt_cpu, top=100.0, id="chart-cpu")
        yield SparkChart("Memory", fmt=fmt_bytes, headroom=1.15, id="chart-mem", classes="-mem")
        yield SparkChart("Conn/s", fmt=fmt_rate, id="chart-conn", classes="-conn")
        yield Vertical(id="detail-metrics")
        yield Static("", id="detail-info")
        yield Static("", id="detail-events")
        yield Static("", id="detail-procs")

    def show(self, sel: Selection | None, snapshot: dict[str, Any], history: History) -> None:
        apps = {a["name"]: a for a in snapshot.get("apps", [])}
        if sel is None or sel.app not in apps:
            self._update("detail-title", "Nothing selected", lambda: "Nothing selected")
            self._update("detail-info", "", lambda: "")
            self._update("detail-events", "", lambda: "")
            self._update("detail-procs", "", lambda: "")
            self.tree_target = None
            return
        if self._events_owner != (sel.app, sel.worker):
            # Fetched for another selection: say they are coming rather than show those.
            self._update(
                "detail-events", "loading", lambda: _events_text("loading…", None, self._muted())
            )
        if sel.target != self.tree_target:  # another selection: its tree is on its way
            self.show_tree(sel.target, None, app_row=sel.is_app)
        app = apps[sel.app]
        workers = [w for w in snapshot.get("workers", []) if w["app"] == sel.app]
        worker = next((w for w in workers if w["id"] == sel.worker), None)
        if sel.worker is not None and worker is None:
            return  # the worker is going; the table will move the cursor
        scope = [worker] if worker else workers
        cpu = sum_series(worker_series(w, history, "cpu") for w in scope)
        mem = sum_series(worker_series(w, history, "memory") for w in scope)
        rate = sum_series(worker_series(w, history, "conn_rate") for w in scope)
        self.query_one("#chart-cpu", SparkChart).set_data(
            cpu, fmt_cpu(sum(float(w.get("cpu") or 0) for w in scope))
        )
        self.query_one("#chart-mem", SparkChart).set_data(
            mem, fmt_bytes(sum(int(w.get("memory") or 0) for w in scope))
        )
        self.query_one("#chart-conn", SparkChart).set_data(
            rate, fmt_rate(sum(float(w.get("conn_rate") or 0) for w in scope))
        )
        self._show_metrics(scope, history)
        # An update re-lays out the pane: make one only when what it shows changed.
        if worker:
            self._update("detail-title", (app, worker), lambda: self._worker_title(app, worker))
            facts = (app, {k: v for k, v in worker.items() if k not in LIVE_FIELDS})
            self._update("detail-info", facts, lambda: self._worker_info(app, worker))
        else:
            statuses = [w.get("status") for w in workers]
            self._update("detail-title", (app, statuses), lambda: self._app_title(app, workers))
            facts = (app, [(w.get("restarts"), w.get("restart_history")) for w in workers])
            self._update("detail-info", facts, lambda: self._app_info(app, workers))

    def show_events(self, owner: tuple[str, int | None], rows: list[dict[str, Any]] | str) -> None:
        """The timeline the app fetched for `owner` (app, worker id): rows oldest first,
        or why they could not be fetched."""
        self._events_owner = owner
        self._update(
            "detail-events", (owner, rows), lambda: _events_text(rows, self.tz, self._muted())
        )

    def _update(self, static_id: str, facts: Any, build: Callable[[], Any]) -> None:
        key = repr(facts)
        if self._shown.get(static_id) != key:
            self._shown[static_id] = key
            self.query_one(f"#{static_id}", Static).update(build())

    def _muted(self) -> Style:
        """Secondary text that still reads in light themes (dim alone does not)."""
        return fg_style(self, "detail--label")

    def show_tree(
        self,
        target: str,
        trees: list[dict[str, Any]] | None,
        *,
        app_row: bool,
        error: str | None = None,
    ) -> None:
        """The Processes section for `target` (None: not read yet; see dashboard/proctree)."""
        self.tree_target = target
        self.tree_read = trees is not None or error is not None
        facts = (target, trees, error)
        self._update(
            "detail-procs",
            facts,
            lambda: tree_renderable(trees, app_row=app_row, error=error, muted=self._muted()),
        )

    # -- charts for custom metrics ---------------------------------------------

    def _show_metrics(self, scope: list[dict[str, Any]], history: History) -> None:
        names = sorted({name for w in scope for name in (w.get("metrics") or {})})
        if names != self._metric_names:
            box = self.query_one("#detail-metrics", Vertical)
            box.remove_children()
            self._metric_charts = [SparkChart(name, classes="-metric") for name in names]
            box.mount_all(self._metric_charts)
            self._metric_names = names
        for name, chart in zip(names, self._metric_charts, strict=True):
            values = [
                v for w in scope if isinstance(v := (w.get("metrics") or {}).get(name), int | float)
            ]
            if name in LATENCIES:  # an app's latency is its slowest worker's, not a sum
                series = max_series(metric_series(w, history, name) for w in scope)
                chart.set_data(series, fmt_metric(max(values)) if values else "—")
                continue
            series = sum_series(metric_series(w, history, name) for w in scope)
            chart.set_data(series, fmt_metric(sum(values)) if values else "—")

    # -- text -----------------------------------------------------------------

    def _worker_title(self, app: dict[str, Any], w: dict[str, Any]) -> Text:
        status = w.get("status", "?")
        text = Text(visible(f"{app['name']}:{w['instance']}"), style="bold", end="")
        text.append(f"  id {w['id']}  ")
        text.append(f"{states.look(status).glyph} {status}")
        if w.get("pid") is not None:
            text.append(f"  pid {w['pid']}  up {fmt_duration(w.get('uptime'))}")
        return text

    def _app_title(self, app: dict[str, Any], workers: list[dict[str, Any]]) -> Text:
        online = sum(1 for w in workers if w.get("status") == states.ONLINE)
        text = Text(visible(app["name"]), style="bold", end="")
        text.append(f"  {mode_label(app, 40)}  {online}/{len(workers)} online")
        if app.get("reloading"):
            text.append("  reloading…")
        return text

    def _grid(self) -> Table:
        grid = _PlainGrid.grid(padding=(0, 1))
        grid.add_column(style=fg_style(self, "detail--label"), no_wrap=True)
        grid.add_column(overflow="fold")
        return grid

    def _common_rows(self, grid: Table, app: dict[str, Any]) -> None:
        grid.add_row("script", app.get("script") or "—")
        if app.get("interpreter"):
            grid.add_row("interpreter", str(app["interpreter"]))
        args = app.get("args") or []
        grid.add_row("args", " ".join(str(a) for a in args) if args else "—")
        grid.add_row("cwd", app.get("cwd") or "—")
        env = app.get("env_names") or []
        grid.add_row("env", ", ".join(env) if env else "—")

    def _watch_rows(self, grid: Table, app: dict[str, Any]) -> None:
        paths = app.get("watch_paths") or []
        if app.get("watch"):
            grid.add_row("watch", "on · " + (", ".join(paths) if paths else "—"))
        else:
            grid.add_row("watch", "off" + (" · " + ", ".join(paths) if paths else ""))
        if app.get("last_watch_event"):
            grid.add_row("", f"last: {app['last_watch_event']}")

    def _worker_info(self, app: dict[str, Any], w: dict[str, Any]) -> Group:
        grid = self._grid()
        self._common_rows(grid, app)
        grid.add_row("out log", w.get("out_file") or "—")
        grid.add_row("err log", w.get("err_file") or "—")
        self._watch_rows(grid, app)
        grid.add_row("last exit", _exit_text(w.get("exit_code"), w.get("exit_signal")))
        if w.get("error"):
            grid.add_row("error", str(w["error"]))
        grid.add_row(
            "connections", f"{w.get('connections', 0):,} total · {w.get('active', 0)} open"
        )
        for name, value in sorted((w.get("metrics") or {}).items()):
            grid.add_row(f"· {name}", fmt_metric(value))
        _health_rows(grid, w.get("health"), self.tz)
        grid.add_row("restarts", str(w.get("restarts", 0)))  # their reasons: under Events
        return Group(grid)

    def _app_info(self, app: dict[str, Any], workers: list[dict[str, Any]]) -> Group:
        grid = self._grid()
        listen = app.get("listen")
        grid.add_row("mode", mode_label(app, 40) + (f" on {listen}" if listen else ""))
        grid.add_row("instances", f"{len(workers)} (configured {app.get('instances', '—')})")
        dispatchers = app.get("dispatchers") or []
        if len(dispatchers) > 1:  # `dispatchers: N`: what each accepted (the rows show sums)
            each = " / ".join(f"{d['accepted']:,}" for d in dispatchers)
            grid.add_row("dispatchers", f"{len(dispatchers)} · accepted {each}")
        self._common_rows(grid, app)
        self._watch_rows(grid, app)
        if app.get("source"):
            grid.add_row("from", app["source"])
        _upkeep_rows(grid, app, self.tz)
        restarts = sum(int(w.get("restarts") or 0) for w in workers)
        grid.add_row("restarts", str(restarts))
        return Group(grid)


class _PlainGrid(Table):
    """A grid whose str cells are plain text: Rich would parse a str cell as markup, and
    these hold data (metric names, file names from watch events, env names, paths)."""

    def add_row(self, *cells: Any, **kw: Any) -> None:  # type: ignore[override]
        super().add_row(
            *(Text(visible(c), end="") if isinstance(c, str) else c for c in cells), **kw
        )


def _health_rows(grid: Table, health: dict[str, Any] | None, tz: Any) -> None:
    """Probe state, counts and the latest results (text, never markup)."""
    if not health:
        return
    state = {True: "passing", False: "failing", None: "not probed yet"}.get(health.get("ok"))
    grid.add_row(
        "health",
        Text(
            f"{state} · {health.get('probes', 0)} probes, {health.get('failed', 0)} failed"
            + (f", {health['consecutive_failures']} in a row" if health.get("ok") is False else "")
        ),
    )
    for r in (health.get("recent") or [])[-3:][::-1]:
        mark = "ok" if r.get("ok") else "FAIL"
        line = f"{mark} {float(r.get('latency_ms') or 0):.1f} ms · {r.get('detail', '')}"
        grid.add_row(fmt_clock(float(r.get("time") or 0), tz), Text(line))


def _upkeep_rows(grid: Table, app: dict[str, Any], tz: Any) -> None:
    if app.get("health_check"):
        grid.add_row("health", Text(f"{app['health_check']} probe on every worker"))
    if app.get("depends_on"):
        deps = ", ".join(f"{k}: {v}" for k, v in app["depends_on"].items())
        grid.add_row("depends on", Text(deps))
    if app.get("waiting_for"):
        grid.add_row("", Text(str(app["waiting_for"])))
    if app.get("cron_restart"):
        nxt = app.get("cron_next")
        when = _dt.datetime.fromtimestamp(float(nxt), tz).strftime("%Y-%m-%d %H:%M") if nxt else "—"
        grid.add_row("cron", Text(f"{app['cron_restart']} · next {when}"))


def _exit_text(code: Any, signal: Any) -> str:
    if signal:
        return f"killed by {signal}"
    if code is not None:
        return f"exit code {code}"
    return "—"


def _events_text(rows: list[dict[str, Any]] | str, tz: Any, muted: StyleType) -> Group:
    """The Events section: newest first, local HH:MM:SS, kind, who, reason. A reason holds
    worker-controlled text (exit codes, file names, probe output): Text, never markup."""
    title = Text("Events", style="bold")
    if isinstance(rows, str):  # loading, or why the fetch failed
        return Group(title, Text(visible(rows), style=muted))
    if not rows:
        return Group(title, Text("none yet", style=muted))
    # Two columns: a long reason wraps under itself, the times stay a clean column.
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style=muted, no_wrap=True)
    grid.add_column(overflow="fold")
    shown = [
        (
            e,
            visible(str(e.get("kind") or "?")),
            "app" if e.get("instance") is None else f":{e['instance']}",
        )
        for e in reversed(rows)
    ]
    kinds = max(len(kind) for _, kind, _ in shown)  # padded: kinds and workers line up
    whos = max(len(who) for _, _, who in shown)
    for event, kind, who in shown:
        line = Text(end="")
        line.append(kind.ljust(kinds), style="bold red" if kind in timeline.BAD else "bold")
        line.append(f" {who.ljust(whos)} ")
        line.append(visible(str(event.get("reason") or "")))
        grid.add_row(fmt_clock(float(event.get("time") or 0), tz), line)
    return Group(title, grid)
