"""The signals a user may send a worker (`clusterui signal`, the dashboard's `x` menu).

One allow-list, read by the supervisor (which checks it), the CLI (its help) and the
dashboard (its menu). Names are written without the SIG prefix, as people say them;
`parse` takes either spelling, in any case.
"""

from __future__ import annotations

# (name, what it usually means). The meaning is the program's: these are conventions.
SIGNALS: tuple[tuple[str, str], ...] = (
    ("HUP", "reload config or reopen logs, if the program does so"),
    ("USR1", "program-defined (often: reopen logs, dump state)"),
    ("USR2", "program-defined (often: a graceful upgrade)"),
    ("INT", "interrupt (ctrl+c): it exits, restarts per its policy"),
    ("TERM", "terminate: it exits, restarts per its policy"),
    ("KILL", "kill at once, no cleanup: restarts per its policy"),
)
NAMES: tuple[str, ...] = tuple(name for name, _ in SIGNALS)
# Signals after which the worker is (normally) gone: its exit is an unexpected one.
ENDING: frozenset[str] = frozenset({"INT", "TERM", "KILL"})


def parse(text: object) -> str | None:
    """ "usr1", "SIGUSR1", "USR1" -> "USR1"; None for anything not on the list."""
    if not isinstance(text, str):
        return None
    name = text.strip().upper()
    name = name.removeprefix("SIG")
    return name if name in NAMES else None


def problem(text: object) -> str:
    """The one-line error for a signal not on the list."""
    return f"cannot send {text!r}: the signals are {', '.join(NAMES)}"
