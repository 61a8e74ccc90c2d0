"""The dashboard's pure helpers: formatting, sparklines, column fitting."""

from __future__ import annotations

import pytest

from clusterui.dashboard.model import (
    BARS,
    History,
    Selection,
    fmt_bytes,
    fmt_duration,
    fmt_rate,
    spark,
    spark_rows,
    sum_series,
)
from clusterui.dashboard.table import COLUMNS, choose_layout


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0B"), (999, "999B"), (1000, "0.98K"), (38 << 20, "38.0M"), (5_400_000_000, "5.03G")],
)
def test_fmt_bytes(n: int, text: str) -> None:
    assert fmt_bytes(n) == text
    assert len(text) <= 5


@pytest.mark.parametrize(
    ("s", "text"),
    [(0, "—"), (45, "45s"), (412, "6m52s"), (3600, "1h00m"), (11525, "3h12m"), (200000, "2d07h")],
)
def test_fmt_duration(s: float, text: str) -> None:
    assert fmt_duration(s) == text


def test_fmt_rate_stays_short() -> None:
    assert [fmt_rate(r) for r in (0, 4.25, 42, 999, 1234, 56789, 2_500_000)] == [
        "0", "4.2", "42", "999", "1.2k", "57k", "2.5M",
    ]  # fmt: skip


def test_spark_is_right_aligned_and_scaled_from_zero() -> None:
    assert spark([], 4) == "    "
    assert spark([1, 2], 4) == "  " + BARS[4] + BARS[7]
    # a flat small series stays low when a top is given (CPU out of 100 %)
    assert spark([5, 5, 5], 3, top=100.0) == BARS[0] * 3
    assert spark(list(range(100)), 5)[-1] == BARS[-1]


def test_spark_rows_stack_bars() -> None:
    rows = spark_rows([0, 8, 16], 3, 2, top=16)
    assert rows == [" " + " " + "█", BARS[0] + "█" + "█"]


def test_sum_series_aligns_on_the_newest_sample() -> None:
    assert sum_series([[1, 2, 3], [10, 20]]) == [1, 12, 23]


def test_history_keeps_metrics_once_per_tick() -> None:
    h = History()
    w = {"id": 3, "cpu": 1.0, "memory": 5, "conn_rate": 0, "metrics": {"queue": 4}}
    h.record(w, tick=1.0)
    h.record(w, tick=1.0)  # the same snapshot again
    h.record(dict(w, metrics={"queue": 7}), tick=2.0)
    # An event made before the state() reply it was queued behind: nothing new in it.
    h.record(dict(w, metrics={"queue": 9}), tick=1.5)
    assert h.get(3, "metric:queue") == [4.0, 7.0]
    h.forget(set())
    assert h.get(3, "cpu") == []


def test_history_seeds_from_a_state_reply_as_it_is_even_empty() -> None:
    """A worker in a state() reply before any tick sampled it has an empty series there:
    the dashboard keeps none either, so a dashboard attached later, seeded from the same
    series, draws as many samples (test_ssh's reattach found one more)."""
    h = History()
    fresh = {"id": 1, "cpu": 2.0, "memory": 7, "conn_rate": 0}
    empty = {"cpu": [], "memory": [], "conn_rate": [], "req_rate": []}
    h.record(dict(fresh, history=empty), tick=1.0)
    assert h.get(1, "memory") == []
    h.record(dict(fresh, memory=8), tick=2.0)  # the first tick's event
    assert h.get(1, "memory") == [8.0]
    seeded = {"cpu": [1, 2], "memory": [5, 6], "conn_rate": [0, 0], "req_rate": [0, 0]}
    h.record({"id": 2, "cpu": 2.0, "memory": 6, "conn_rate": 0, "history": seeded}, tick=2.5)
    h.record({"id": 2, "cpu": 3.0, "memory": 9, "conn_rate": 0}, tick=3.0)
    assert h.get(2, "memory") == [5.0, 6.0, 9.0]


def test_selection_targets() -> None:
    assert Selection("web").target == "web" and Selection("web").is_app
    assert Selection("web", 3, 1).target == "web:1" and Selection("web", 3, 1).key == "w:3"


@pytest.mark.parametrize("avail", [60, 78, 90, 104, 118, 140, 200, 300])
def test_columns_fit_the_width(avail: int) -> None:
    lay = choose_layout(avail, 10)
    # every cell is a separator plus its content; a hidden column keeps one blank cell
    spark_cols = sum(w + 1 for w in lay.sparks if w)
    fixed = {"id": 3, "name": lay.name_w, "mode": lay.mode_w, "pid": 7, "status": lay.status_w}
    fixed |= {"restarts": 3, "uptime": 6, "cpu": 6, "mem": 6, "conn": 6, "open": 5}
    total = sum(1 + w if w else 1 for w in fixed.values()) + spark_cols
    assert set(fixed) == set(COLUMNS)
    if avail >= 78:
        assert total <= avail
    else:
        # Narrower than every layout: the narrowest one (no mode, no sparkline), and the
        # table scrolls sideways (test_dashboard checks that at 60 columns).
        assert lay.mode_w == 0 and lay.sparks == (0, 0, 0)
        assert total > avail
    if avail >= 140:
        assert lay.mode_w and all(lay.sparks)
    if avail == 78:
        assert lay.sparks[0] >= 4  # even at 80 columns the CPU sparkline stays
