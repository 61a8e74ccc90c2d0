"""The metrics gate: caps on names and rate, and never a stale last value."""

from __future__ import annotations

import pytest

from clusterui.core import metric_cap
from clusterui.core.metric_cap import BURST, MAX_NAMES, RATE, MetricsGate


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(metric_cap.time, "monotonic", c)
    return c


def test_a_burst_over_the_rate_keeps_the_newest_value(clock: Clock) -> None:
    gate, current = MetricsGate(), {}
    for n in range(1, 201):  # 200 updates in one instant: far over the burst
        gate.apply(current, {"requests": n})
    assert current["requests"] == BURST  # the burst went through, the rest is held
    assert gate.dropped_updates == 200 - BURST
    gate.settle(current)  # no time has passed: the rate still says no
    assert current["requests"] == BURST
    clock.now += 2 / RATE  # one token, with room for float error
    gate.settle(current)
    assert current["requests"] == 200
    assert gate.held == {}


def test_a_held_value_is_superseded_by_a_newer_update(clock: Clock) -> None:
    gate, current = MetricsGate(), {}
    for n in range(int(BURST) + 5):
        gate.apply(current, {"q": n, "other": 1})
    assert gate.held == {"q": BURST + 4, "other": 1}
    clock.now += 2 / RATE  # one token, with room for float error
    gate.apply(current, {"q": -1})  # within the rate: held values first, then this one
    assert current == {"q": -1, "other": 1} and gate.held == {}


def test_held_names_count_against_the_name_cap(clock: Clock) -> None:
    gate, current = MetricsGate(), {}
    for _ in range(int(BURST)):
        gate.apply(current, {"a": 1})
    gate.apply(current, {f"n{i}": i for i in range(MAX_NAMES + 10)})  # over the rate
    assert len(gate.held) == MAX_NAMES - 1 and gate.dropped_names == 11
    clock.now += 1
    gate.settle(current)
    assert len(current) == MAX_NAMES
