"""Durations and sizes as ecosystem files write them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clusterui.core.units import parse_duration, parse_size


@pytest.mark.parametrize(
    ("value", "ms"),
    [
        (0, 0),
        (1500, 1500),
        (2.4, 2),
        ("250", 250),
        ("500ms", 500),
        ("2s", 2000),
        ("1.5s", 1500),
        (".5s", 500),
        ("1m", 60_000),
        ("1h", 3_600_000),
        ("1d", 86_400_000),
        ("2S", 2000),
        ("1MS", 1),
        (" 3 s ", 3000),
        ("+5", 5),
        (10**20, 10**20),
    ],
)
def test_parse_duration(value, ms: int) -> None:
    assert parse_duration(value) == ms


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (-1, "must not be negative"),
        ("-1s", "must not be negative"),
        (True, "true is not a duration"),
        (None, "empty is not a duration"),
        ("", "is not a duration"),
        ("fast", "'fast' is not a duration (use milliseconds, or a number with ms, s, m, h or d)"),
        ("1e3", "is not a duration"),
        ("2 weeks", "is not a duration"),
        ("1.2.3s", "is not a duration"),
        ("s", "is not a duration"),
        (float("nan"), "not a finite duration"),
        (float("inf"), "not a finite duration"),
        ("9" * 400, "too long"),
        ([1], "is not a duration"),
        ("٣s", "is not a duration"),  # non-ASCII digits
    ],
)
def test_parse_duration_rejects(value, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (0, 0),
        (1024, 1024),
        ("100", 100),
        ("100b", 100),
        ("512K", 512 * 1024),
        ("512k", 512 * 1024),
        ("512KB", 512 * 1024),
        ("300M", 300 * 1024**2),
        ("10MB", 10 * 1024**2),
        ("10mib", 10 * 1024**2),
        ("1G", 1024**3),
        ("1.5G", 1024**3 + 512 * 1024**2),
        ("2 GiB", 2 * 1024**3),
        ("1T", 1024**4),
        (1.5, 2),
    ],
)
def test_parse_size(value, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (-1, "a size must not be negative (got -1)"),
        ("-1M", "must not be negative"),
        (False, "false is not a size"),
        ("300X", "'300X' is not a size (use bytes, or a number with K, M, G or T)"),
        ("M", "is not a size"),
        ("1 0M", "is not a size"),
        (float("inf"), "not a finite size"),
        ({"a": 1}, "is not a size"),
        (-(10**500), "got a very long number"),
    ],
)
def test_parse_size_rejects(value, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_size(value)
    assert fragment in str(info.value)


@given(st.integers(min_value=0, max_value=10**12), st.sampled_from(["ms", "s", "m", "h", "d"]))
def test_duration_units_scale(n: int, unit: str) -> None:
    factor = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}[unit]
    assert parse_duration(f"{n}{unit}") == n * factor


@given(st.one_of(st.text(max_size=30), st.floats(), st.integers(), st.none(), st.booleans()))
def test_only_value_errors(value) -> None:
    for parse in (parse_duration, parse_size):
        try:
            result = parse(value)
        except ValueError as e:
            assert str(e)
        else:
            assert isinstance(result, int) and result >= 0
