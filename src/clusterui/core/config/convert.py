"""Value converters: one raw YAML value → the typed value AppSpec holds, or `Bad` with
a message that reads well after the key ("instances: must be at most 1024")."""

from __future__ import annotations

import os
import re
import shlex
import signal
from typing import Any

from clusterui.core.config.problems import quote, show, suggest
from clusterui.core.units import parse_duration, parse_size

MAX_INSTANCES = 1024
MAX_DISPATCHERS = 64  # dispatcher processes per listener (`dispatchers`)
# Node's setTimeout limit; PM2 users know it, and it keeps timers sane.
MAX_DURATION_MS = 2**31 - 1
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_DIGITS = re.compile(r"[0-9]{1,10}")
_INTEGER = re.compile(r"[+-]?[0-9]{1,10}")
_MAX_NAME = 64


class Bad(Exception):
    """A value error; `sub` is the path below the key (e.g. a list index) for its line."""

    def __init__(self, message: str, *sub: Any) -> None:
        super().__init__(message)
        self.message = message
        self.sub = sub


def as_str(value: Any) -> str:
    if not isinstance(value, str):
        raise Bad(f"must be a string, not {show(value)}")
    return value


def as_opt_str(value: Any) -> str | None:
    return None if value is None else as_str(value)


def as_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Bad(f"must be true or false, not {show(value)}")
    return value


def numeric(value: Any) -> Any:
    """PM2 reads a number written as a string ("10") as that number; so do we."""
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        return int(value.strip())
    return value


def as_int(value: Any, low: int, high: int) -> int:
    value = numeric(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise Bad(f"must be a whole number, not {show(value)}")
    if not low <= value <= high:
        raise Bad(f"must be between {low} and {high}, not {show(value)}")
    return value


def as_duration(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise Bad(f"must be a duration (milliseconds, or e.g. '2s'), not {show(value)}")
    ms = parse_duration(value)
    if ms > MAX_DURATION_MS:
        raise Bad(f"is too long (at most {MAX_DURATION_MS} ms, about 24.8 days)")
    return ms


def as_size(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise Bad(f"must be a size (bytes, or e.g. '300M'), not {show(value)}")
    return parse_size(value)


def words(value: Any, what: str) -> list[str]:
    """A list of strings (numbers become strings) or a string split like a shell would."""
    if value is None:
        return []
    if isinstance(value, int | float) and not isinstance(value, bool):
        return [str(value)]
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as e:
            raise Bad(f"cannot be split into {what}: {str(e).lower()}") from None
    if not isinstance(value, list):
        raise Bad(f"must be a list of strings or a string, not {show(value)}")
    out = []
    for i, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            hint = " (a YAML boolean; quote it)" if isinstance(item, bool) else ""
            raise Bad(f"item {i + 1} must be a string, not {show(item)}{hint}", i)
        out.append(item if isinstance(item, str) else str(item))
    if any("\0" in s for s in out):
        raise Bad("must not contain NUL characters")
    return out


def as_env(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Bad(f"must be a mapping of names to values, not {show(value)}")
    env: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            raise Bad(f"has an invalid variable name {show(key)}", key)
        if isinstance(item, bool):
            env[key] = "true" if item else "false"
        elif isinstance(item, str):
            if "\0" in item:
                raise Bad(f"value of {quote(key)} contains a NUL character", key)
            env[key] = item
        elif isinstance(item, int | float):
            if isinstance(item, int) and item.bit_length() > 1024:
                raise Bad(f"value of {quote(key)} is too long a number", key)
            env[key] = str(item)
        elif item is None:
            raise Bad(
                f'{quote(key)} has no value (write {quote(key)[1:-1]}: "" for an empty string)', key
            )
        else:
            raise Bad(f"value of {quote(key)} must be a string or a number, not {show(item)}", key)
    return env


def as_signal(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise Bad(f"must be a signal name like SIGINT or a number, not {show(value)}")
    if isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        value = int(value.strip())
    if isinstance(value, int):
        try:
            return int(signal.Signals(value))
        except ValueError:
            raise Bad(f"{show(value)} is not a signal number") from None
    name = value.strip().upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    if name.startswith("SIG_") or name not in signal.Signals.__members__:
        names = [s.name for s in signal.Signals]
        raise Bad(f"unknown signal {show(value)}{suggest(name, names)}")
    return int(signal.Signals[name])


def check_name(name: str) -> str | None:
    """Why `name` cannot be an app name, or None if it can."""
    if not name:
        return "is empty"
    if len(name) > _MAX_NAME:
        return f"is longer than {_MAX_NAME} characters"
    if not _NAME.fullmatch(name):
        return "may only contain letters, digits, '_', '.' and '-'"
    if name.isdigit():
        return "must not be all digits (a number means a worker id)"
    if name.lower() == "all":
        return "must not be 'all' (that means every app)"
    if name.startswith("-"):
        return "must not start with '-'"
    return None


def inside(base: str, path: str) -> str:
    return os.path.normpath(os.path.join(base, os.path.expanduser(path)))


_ACCOUNT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}")


def as_account(value: Any) -> str:
    """A user or group: a name or a number (PM2's uid/gid)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    if isinstance(value, str) and _ACCOUNT.fullmatch(value):
        return value
    raise Bad(f"{show(value)} is not a user or group name or number")
