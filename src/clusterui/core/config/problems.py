"""How a problem in an ecosystem file is reported: `FILE:LINE: message`, and the
small helpers that show user values inside such a message."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

Severity = Literal["error", "warning"]


@dataclass
class Problem:
    file: str
    line: int
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        where = self.file
        if self.line > 0:
            where = f"{where}:{self.line}" if where else f"line {self.line}"
        text = f"warning: {self.message}" if self.severity == "warning" else self.message
        return f"{where}: {text}" if where else text


class ConfigError(Exception):
    """The ecosystem (or a CLI app description) is invalid; `.problems` lists every error."""

    def __init__(self, problems: Iterable[Problem], warnings: Iterable[Problem] = ()) -> None:
        self.problems = list(problems)
        self.warnings = list(warnings)
        super().__init__("\n".join(str(p) for p in self.problems))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


def show(value: Any) -> str:
    """A value as a user wrote it, for messages."""
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, int) and value.bit_length() > 128:
        return "a very long number"
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def quote(text: str) -> str:
    """User text quoted for a one-line message (newlines and control characters escaped)."""
    shown = repr(text)
    return shown if len(shown) <= 42 else shown[:38] + "..." + shown[0]


def suggest(word: str, choices: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" — did you mean '{match[0]}'?" if match else ""
