"""Worker statuses: the names, their groups, how each is shown, and the one place a
status changes.

A worker slot is in exactly one status. While it has a process the status is that
process's (`launching` → `online` → `stopping`/`draining`); once the process is gone the
slot rests in one of the idle statuses (`stopped`, `errored`, `waiting-restart`,
`pending`), which may follow each other freely (a manual stop ends a pending restart, a
failed spawn makes a stopped slot errored, ...). `pending` is a slot not started yet: its
app waits for its `depends_on` or its zygote's imports, or the zygote is forking it.
`suspended` and `unhealthy` are never stored: the snapshot shows them instead of `online`
(`suspended` also instead of `launching`) while the kernel has the process stopped
(SIGSTOP, a debugger), or while its health probe fails.

Every change goes through `Lifecycle.to`, which refuses a transition the table below does
not list, so a new code path that would put a worker in an impossible status fails loudly
in the tests instead of showing a confusing status.
"""

from __future__ import annotations

# `clusterui ls` imports this module, and `typing` costs it milliseconds (it imports
# `re`): the names below are for type checkers only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

LAUNCHING: Final = "launching"
ONLINE: Final = "online"
STOPPING: Final = "stopping"
DRAINING: Final = "draining"
STOPPED: Final = "stopped"
ERRORED: Final = "errored"
WAITING_RESTART: Final = "waiting-restart"
SUSPENDED: Final = "suspended"
UNHEALTHY: Final = "unhealthy"
PENDING: Final = "pending"

# How a front end colours a status; each maps these to its own colours.
TONES: Final[tuple[str, ...]] = (
    "good",
    "starting",
    "busy",
    "waiting",
    "alert",
    "failing",
    "held",
    "idle",
    "bad",
)


class Look:
    """How a status is shown: a glyph (so it reads without colour), the word in a wide
    column, the word in a narrow one, and a tone (one of TONES)."""

    __slots__ = ("glyph", "word", "short", "tone")

    def __init__(self, glyph: str, word: str, short: str, tone: str) -> None:
        self.glyph = glyph
        self.word = word
        self.short = short
        self.tone = tone

    def __repr__(self) -> str:
        return f"Look({self.glyph!r}, {self.word!r}, {self.short!r}, {self.tone!r})"


# Every status, in the order most worth seeing.
LOOKS: Final[dict[str, Look]] = {
    ONLINE: Look("●", "online", "online", "good"),
    LAUNCHING: Look("◐", "launching", "launch", "starting"),
    DRAINING: Look("◑", "draining", "draining", "busy"),
    STOPPING: Look("◒", "stopping", "stopping", "busy"),
    WAITING_RESTART: Look("↻", "waiting", "waiting", "waiting"),
    # Alive but stopped by a signal: it needs someone's attention.
    SUSPENDED: Look("‖", "suspended", "paused", "alert"),
    # Alive, but failing its health probe: it gets no new connections.
    UNHEALTHY: Look("⊘", "unhealthy", "failing", "failing"),
    # Not started yet: its app waits for its depends_on or preload, or it is being forked.
    PENDING: Look("◌", "pending", "pending", "held"),
    STOPPED: Look("○", "stopped", "stopped", "idle"),
    ERRORED: Look("✖", "errored", "errored", "bad"),
}
UNKNOWN = Look("?", "?", "?", "idle")

STATUSES: Final[tuple[str, ...]] = tuple(LOOKS)
# A process exists (its pid, uptime, cpu and memory mean something).
LIVE: Final = frozenset({LAUNCHING, ONLINE, STOPPING, DRAINING})
# No process: the slot rests here between processes.
IDLE: Final = frozenset({STOPPED, ERRORED, WAITING_RESTART, PENDING})
# Shown as `suspended` while the process is stopped by the kernel; a worker that is
# stopping or draining keeps saying so (its kill_timeout SIGKILL ends it either way).
SUSPENDABLE: Final = frozenset({ONLINE, LAUNCHING})

# status → the statuses it may change to (a status may always be set again).
TRANSITIONS: Final[dict[str, frozenset[str]]] = {
    LAUNCHING: frozenset({ONLINE, STOPPING, DRAINING}),
    ONLINE: frozenset({STOPPING, DRAINING}),
    STOPPING: frozenset(),
    DRAINING: frozenset(),
    **{idle: IDLE for idle in IDLE},
}


def look(status: str) -> Look:
    """How to show `status` (UNKNOWN for a word this version does not know)."""
    return LOOKS.get(status, UNKNOWN)


def shown(status: str, stopped_by_kernel: bool, failing_probe: bool = False) -> str:
    """The status a snapshot reports: `suspended` over a live status the kernel stopped,
    `unhealthy` over `online` while its health probe fails."""
    if stopped_by_kernel and status in SUSPENDABLE:
        return SUSPENDED
    return UNHEALTHY if failing_probe and status == ONLINE else status


class IllegalTransition(RuntimeError):
    """A status change the table does not allow: a bug in the caller, not bad input."""


class Lifecycle:
    """One status that changes only through `to`."""

    __slots__ = ("value",)

    def __init__(self, initial: str) -> None:
        if initial not in TRANSITIONS:
            raise IllegalTransition(f"{initial!r} is not a stored status")
        self.value = initial

    def to(self, new: str) -> None:
        if new != self.value and new not in TRANSITIONS[self.value]:
            raise IllegalTransition(f"a worker cannot go from {self.value!r} to {new!r}")
        self.value = new

    def __repr__(self) -> str:
        return f"Lifecycle({self.value!r})"
