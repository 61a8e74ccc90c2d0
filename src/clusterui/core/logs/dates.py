"""PM2/moment-style date formats ("YYYY-MM-DD HH:mm:ss"): compiled once into a fast
stamper for writing, and a parser that reads a stamp back off the start of a line."""

from __future__ import annotations

import datetime
import re
import time
from collections.abc import Callable
from typing import Any

_MOMENT = re.compile(
    r"\[([^\]]*)\]|YYYY|YY|MMMM|MMM|MM|M|dddd|ddd|DD|D|HH|H|hh|h|mm|m|ss|s|SSS|ZZ|Z|A|a"
)
_STRFTIME = {
    "YYYY": "%Y",
    "YY": "%y",
    "MMMM": "%B",
    "MMM": "%b",
    "MM": "%m",
    "M": "%-m",
    "dddd": "%A",
    "ddd": "%a",
    "DD": "%d",
    "D": "%-d",
    "HH": "%H",
    "H": "%-H",
    "hh": "%I",
    "h": "%-I",
    "mm": "%M",
    "m": "%-M",
    "ss": "%S",
    "s": "%-S",
    "A": "%p",
    "SSS": "{ms:03d}",
    "Z": "{z}",
    "ZZ": "{zz}",
    "a": "{ampm}",
}


def compile_date_format(fmt: str) -> Callable[[float], bytes]:
    """A PM2/moment `log_date_format` → function(epoch seconds) → line prefix bytes.

    The moment tokens are turned into one strftime template here, once; per call there is
    one strftime (cached per second when the format has no milliseconds). Supported:
    YYYY YY MMMM MMM MM M dddd ddd DD D HH H hh h mm m ss s SSS Z ZZ A a and [literal];
    any other character is literal, as in moment. The prefix is "STAMP: ".
    """
    matches = list(_MOMENT.finditer(fmt))
    # Milliseconds, offsets and am/pm have no strftime code: str.format fills them in.
    needs_format = any(_STRFTIME.get(m.group(0), "%").startswith("{") for m in matches)
    per_ms = any(m.group(0) == "SSS" for m in matches)

    def literal(text: str) -> str:
        text = text.replace("%", "%%")
        return text.replace("{", "{{").replace("}", "}}") if needs_format else text

    parts: list[str] = []
    pos = 0
    for m in matches:
        parts.append(literal(fmt[pos : m.start()]))
        parts.append(literal(m.group(1)) if m.group(1) is not None else _STRFTIME[m.group(0)])
        pos = m.end()
    parts.append(literal(fmt[pos:]))
    template = "".join(parts) + literal(": ")
    cache: list[Any] = [None, b""]

    def stamp(t: float) -> bytes:
        key = t if per_ms else int(t)
        if key == cache[0]:
            return cache[1]
        tm = time.localtime(t)
        text = time.strftime(template, tm)
        if needs_format:
            off = tm.tm_gmtoff or 0
            sign = "-" if off < 0 else "+"
            hh, mm = divmod(abs(off) // 60, 60)
            text = text.format(
                ms=int(t * 1000) % 1000,
                z=f"{sign}{hh:02d}:{mm:02d}",
                zz=f"{sign}{hh:02d}{mm:02d}",
                ampm="am" if tm.tm_hour < 12 else "pm",
            )
        cache[0], cache[1] = key, text.encode()
        return cache[1]

    return stamp


# Regex per moment token for reading a stamp back: (group name or None, pattern).
_PARSE = {
    "YYYY": ("Y", r"\d{4}"),
    "YY": ("y", r"\d{2}"),
    "MMMM": ("B", r"[^\W\d_]+"),
    "MMM": ("b", r"[^\W\d_]+"),
    "MM": ("m", r"\d{2}"),
    "M": ("m", r"\d{1,2}"),
    "dddd": (None, r"[^\W\d_]+"),
    "ddd": (None, r"[^\W\d_]+"),
    "DD": ("d", r"\d{2}"),
    "D": ("d", r"\d{1,2}"),
    "HH": ("H", r"\d{2}"),
    "H": ("H", r"\d{1,2}"),
    "hh": ("I", r"\d{2}"),
    "h": ("I", r"\d{1,2}"),
    "mm": ("M", r"\d{2}"),
    "m": ("M", r"\d{1,2}"),
    "ss": ("S", r"\d{2}"),
    "s": ("S", r"\d{1,2}"),
    "SSS": ("f", r"\d{3}"),
    "Z": ("z", r"[+-]\d{2}:\d{2}"),
    "ZZ": ("z", r"[+-]\d{4}"),
    "A": ("p", r"[^\W\d_]+"),
    "a": ("p", r"am|pm"),
}


def compile_date_parser(fmt: str) -> Callable[[str], tuple[float | None, str]]:
    """The inverse of compile_date_format: line → (epoch seconds or None, text after "STAMP: ").

    A line without the prefix comes back whole with None; so does the time of a stamp that
    lacks the year, month or day (the caller picks a fallback).
    """
    parts: list[str] = []
    named: set[str] = set()
    pos = 0
    for m in _MOMENT.finditer(fmt):
        parts.append(re.escape(fmt[pos : m.start()]))
        if m.group(1) is not None:
            parts.append(re.escape(m.group(1)))
        else:
            name, pattern = _PARSE[m.group(0)]
            if name is None or name in named:  # a repeated token: matched, read once
                parts.append(f"(?:{pattern})")
            else:
                named.add(name)
                parts.append(f"(?P<{name}>{pattern})")
        pos = m.end()
    parts.append(re.escape(fmt[pos:]) + ": ")
    prefix = re.compile("".join(parts))

    def parse(line: str) -> tuple[float | None, str]:
        m = prefix.match(line)
        if m is None:
            return None, line
        try:
            when = _stamp_time(m.groupdict())
        except (ValueError, OverflowError):
            when = None
        return when, line[m.end() :]

    return parse


def _stamp_time(g: dict[str, str]) -> float | None:
    if g.get("Y"):
        year = int(g["Y"])
    elif g.get("y"):
        year = 2000 + int(g["y"])
    else:
        return None
    if g.get("m"):
        month = int(g["m"])
    elif g.get("B") or g.get("b"):
        name, code = (g["B"], "%B") if g.get("B") else (g["b"], "%b")
        month = time.strptime(name, code).tm_mon
    else:
        return None
    if not g.get("d"):
        return None
    hour = int(g.get("H") or 0)
    if g.get("I"):
        hour = int(g["I"]) % 12 + (12 if (g.get("p") or "").lower() == "pm" else 0)
    fields = (year, month, int(g["d"]), hour, int(g.get("M") or 0), int(g.get("S") or 0))
    ms = int(g.get("f") or 0) / 1000
    zone = g.get("z")
    if zone:
        digits = zone[1:].replace(":", "")
        offset = (int(digits[:2]) * 60 + int(digits[2:])) * (-60 if zone[0] == "-" else 60)
        tz = datetime.timezone(datetime.timedelta(seconds=offset))
        return datetime.datetime(*fields, tzinfo=tz).timestamp() + ms
    return datetime.datetime(*fields).timestamp() + ms  # naive: local time, as written
