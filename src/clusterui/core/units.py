"""Durations and sizes as PM2 writes them: plain numbers, or numbers with a unit."""

from __future__ import annotations

import math
import re

_DURATION_UNITS: dict[str, int] = {
    "": 1,
    "ms": 1,
    "s": 1000,
    "m": 60_000,
    "h": 3_600_000,
    "d": 86_400_000,
}

# Binary multiples, as PM2 uses for max_memory_restart ("300M" = 300 * 1024**2).
_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1024**4,
    "tib": 1024**4,
}

_NUMBER_UNIT = re.compile(r"([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))\s*([a-z]*)")

# Long enough for any sane value; keeps int()/float() away from pathological input.
_MAX_TEXT = 64


def _show(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "empty"}[value]
    if isinstance(value, int) and value.bit_length() > 128:
        return "a very long number"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


_HINTS = {
    "duration": "use milliseconds, or a number with ms, s, m, h or d",
    "size": "use bytes, or a number with K, M, G or T",
}


def _number(value: object, kind: str) -> int | float:
    """A non-negative finite number from an int or float (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{_show(value)} is not a {kind} ({_HINTS[kind]})")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{_show(value)} is not a finite {kind}")
    if value < 0:
        raise ValueError(f"a {kind} must not be negative (got {_show(value)})")
    return value


def _split(value: str, kind: str, units: dict[str, int]) -> tuple[int | float, str]:
    text = value.strip().lower()
    if len(text) > _MAX_TEXT:
        raise ValueError(f"{_show(value)} is too long for a {kind}")
    match = _NUMBER_UNIT.fullmatch(text)
    if not match or match.group(2) not in units:
        raise ValueError(f"{_show(value)} is not a {kind} ({_HINTS[kind]})")
    digits = match.group(1)
    # Whole numbers stay exact (a float would round "1000000000000d").
    number = float(digits) if "." in digits else int(digits)
    if number < 0:
        raise ValueError(f"a {kind} must not be negative (got {_show(value)})")
    return number, match.group(2)


def parse_duration(value: int | float | str) -> int:
    """Milliseconds from `1500`, `"1500"`, `"500ms"`, `"1.5s"`, `"2m"`, `"1h"` or `"1d"`.

    Numbers without a unit are milliseconds, as in PM2. Raises ValueError.
    """
    if isinstance(value, str):
        number, unit = _split(value, "duration", _DURATION_UNITS)
        ms = number * _DURATION_UNITS[unit]
    else:
        ms = _number(value, "duration")
    if isinstance(ms, int):
        return ms
    if not math.isfinite(ms):
        raise ValueError(f"{_show(value)} is too large for a duration")
    return round(ms)


def parse_size(value: int | float | str) -> int:
    """Bytes from `1048576`, `"512K"`, `"300M"`, `"10MB"`, `"1.5G"` (binary multiples).

    Case-insensitive; numbers without a unit are bytes. Raises ValueError.
    """
    if isinstance(value, str):
        number, unit = _split(value, "size", _SIZE_UNITS)
        size = number * _SIZE_UNITS[unit]
    else:
        size = _number(value, "size")
    if isinstance(size, int):
        return size
    if not math.isfinite(size):
        raise ValueError(f"{_show(value)} is too large for a size")
    return round(size)
