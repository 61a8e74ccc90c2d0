"""Pure helpers for the dashboard: number formatting, sparklines, selection, aggregation.

Nothing here touches Textual, so it is cheap to test and to reuse.
"""

from __future__ import annotations

import datetime as _dt
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from clusterui.dispatch.protocol import MODES
from clusterui.vocab.snapshot import HISTORY

BARS = "▁▂▃▄▅▆▇█"


def fmt_bytes(n: float | int | None) -> str:
    """Binary units, at most five characters ("999K", "12.3M", "1.21G")."""
    if n is None:
        return "—"
    value = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if value < 1000 or unit == "T":
            break
        value /= 1024
    if unit == "B":
        return f"{int(value)}B"
    if value < 10:
        return f"{value:.2f}{unit}"
    if value < 100:
        return f"{value:.1f}{unit}"
    return f"{value:.0f}{unit}"


def fmt_rate(r: float | int | None) -> str:
    """Connections per second in at most five characters."""
    if r is None:
        return "—"
    r = float(r)
    if r < 10:
        return f"{r:.1f}" if r else "0"
    if r < 1000:
        return f"{r:.0f}"
    if r < 10_000:
        return f"{r / 1000:.1f}k"
    if r < 1_000_000:
        return f"{r / 1000:.0f}k"
    return f"{r / 1_000_000:.1f}M"


def fmt_cpu(c: float | int | None) -> str:
    if c is None:
        return "—"
    return f"{c:.0f}%" if c >= 100 else f"{c:.1f}%"


def fmt_duration(seconds: float | int | None) -> str:
    """Compact uptime: "45s", "12m", "3h12m", "2d04h"."""
    if seconds is None or seconds <= 0:
        return "—"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s" if m < 10 else f"{m}m"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h"


def fmt_clock(t: float, tz: _dt.tzinfo | None = None) -> str:
    """HH:MM:SS in the given zone (local time when None)."""
    return _dt.datetime.fromtimestamp(t, tz).strftime("%H:%M:%S")


def fmt_metric(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return str(v)
    if isinstance(v, int) or float(v).is_integer():
        return f"{int(v):,}"
    return f"{v:,.2f}"


def mode_label(app: dict[str, Any], width: int = 12) -> str:
    """ "cluster rr", "fork", "cluster hash"; shortened for narrow columns."""
    mode = app.get("exec_mode") or "fork"
    dispatch = app.get("dispatch")
    if dispatch:
        known = MODES.get(dispatch)
        short = (known.short or dispatch) if known else dispatch
        text = f"{mode} {short}"
    else:
        text = mode
    return text[:width]


def spark(values: Sequence[float], width: int, top: float | None = None) -> str:
    """One-line sparkline of the last `width` values, newest on the right.

    The scale runs from 0 to `top` (or the largest value shown), so a flat line of
    small numbers stays low instead of filling the cell as a min-max scale would.
    Missing history is padded with blanks on the left.
    """
    if width <= 0:
        return ""
    shown = list(values)[-width:]
    peak = max(shown, default=0.0)
    scale = top if top and top > peak else peak
    out = []
    for v in shown:
        if scale <= 0 or v <= 0:
            out.append(BARS[0])
        else:
            out.append(BARS[min(len(BARS) - 1, int(v / scale * (len(BARS) - 1) + 0.5))])
    return " " * (width - len(shown)) + "".join(out)


def spark_rows(
    values: Sequence[float], width: int, height: int, top: float | None = None
) -> list[str]:
    """A `height`-line sparkline (top line first), newest value on the right."""
    if width <= 0 or height <= 0:
        return []
    shown = list(values)[-width:]
    peak = max(shown, default=0.0)
    scale = top if top and top > peak else peak
    steps = height * len(BARS)
    levels = [0 if scale <= 0 or v <= 0 else max(1, round(v / scale * steps)) for v in shown]
    pad = width - len(shown)
    rows = []
    for row in range(height - 1, -1, -1):  # from the top line down
        base = row * len(BARS)
        chars = []
        for level in levels:
            part = level - base
            if part <= 0:
                chars.append(BARS[0] if row == 0 else " ")  # a baseline on the bottom line
            elif part >= len(BARS):
                chars.append("█")
            else:
                chars.append(BARS[part - 1])
        rows.append(" " * pad + "".join(chars))
    return rows


def sum_series(series: Iterable[Sequence[float]]) -> list[float]:
    """Element-wise sum aligned on the newest sample (histories differ in length)."""
    lists = [list(s) for s in series]
    n = max((len(s) for s in lists), default=0)
    out = [0.0] * n
    for s in lists:
        offset = n - len(s)
        for i, v in enumerate(s):
            out[offset + i] += v or 0
    return out


def max_series(series: Iterable[Sequence[float]]) -> list[float]:
    """Element-wise maximum aligned on the newest sample (for latencies)."""
    lists = [list(s) for s in series]
    n = max((len(s) for s in lists), default=0)
    out = [0.0] * n
    for s in lists:
        offset = n - len(s)
        for i, v in enumerate(s):
            out[offset + i] = max(out[offset + i], v or 0)
    return out


@dataclass(frozen=True)
class Selection:
    """What the cursor is on: a whole app (group row) or one worker."""

    app: str
    worker: int | None = None  # worker id
    instance: int | None = None

    @property
    def key(self) -> str:
        return app_key(self.app) if self.worker is None else worker_key(self.worker)

    @property
    def target(self) -> str:
        """TARGET string for the client API: APP or APP:INSTANCE."""
        return self.app if self.instance is None else f"{self.app}:{self.instance}"

    @property
    def is_app(self) -> bool:
        return self.worker is None


def app_key(name: str) -> str:
    return f"app:{name}"


def worker_key(wid: int) -> str:
    return f"w:{wid}"


class History:
    """The series the dashboard draws, kept by the dashboard itself: cpu, memory,
    conn_rate and req_rate, seeded from a snapshot's `history` the first time a worker is
    seen with one (state() on attach), then one sample per state event (which carry
    current figures only); and custom metrics, which snapshots carry as current values
    only. Keyed by worker id, bounded to HISTORY samples."""

    SEEDED = ("cpu", "memory", "conn_rate", "req_rate")

    def __init__(self) -> None:
        self._series: dict[int, dict[str, deque[float]]] = {}
        self._last_tick: dict[int, float] = {}

    def record(self, worker: dict[str, Any], tick: float) -> None:
        """tick: when the snapshot was made (wall seconds). One no newer than the last
        recorded is skipped: the same one again, or an event made before the state()
        reply it follows, whose figures the seeded series already end with."""
        wid = worker["id"]
        last = self._last_tick.get(wid)
        if last is not None and tick <= last:
            return
        self._last_tick[wid] = tick
        series = self._series.setdefault(wid, {})
        past = None if series else worker.get("history")
        if past is not None:
            # A state() reply: the supervisor's series end with this snapshot's figures
            # (custom metrics start from here). Taken as they are, empty too (a worker
            # no tick has sampled yet): a sample of our own here would be one the
            # supervisor never kept, and a dashboard attached later would draw one less.
            for name in self.SEEDED:
                values = past.get(name) or ()
                series[name] = deque((float(v or 0) for v in values), maxlen=HISTORY)
            self._record_metrics(worker, series)
            return
        values: dict[str, float] = {
            "cpu": float(worker.get("cpu") or 0),
            "memory": float(worker.get("memory") or 0),
            "conn_rate": float(worker.get("conn_rate") or 0),
            "req_rate": float(worker.get("req_rate") or 0),
        }
        for name, v in values.items():
            series.setdefault(name, deque(maxlen=HISTORY)).append(v)
        self._record_metrics(worker, series)

    @staticmethod
    def _record_metrics(worker: dict[str, Any], series: dict[str, deque[float]]) -> None:
        for name, v in (worker.get("metrics") or {}).items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                series.setdefault(f"metric:{name}", deque(maxlen=HISTORY)).append(float(v))

    def get(self, wid: int, name: str) -> list[float]:
        return list(self._series.get(wid, {}).get(name, ()))

    def forget(self, keep: set[int]) -> None:
        for wid in list(self._series):
            if wid not in keep:
                del self._series[wid]
                self._last_tick.pop(wid, None)


def worker_series(worker: dict[str, Any], history: History, name: str) -> list[float]:
    """A worker's history for cpu/memory/conn_rate/req_rate."""
    return history.get(worker["id"], name)


def metric_series(worker: dict[str, Any], history: History, name: str) -> list[float]:
    """A worker's custom metric over time, as recorded from the snapshots seen."""
    return history.get(worker["id"], f"metric:{name}")
