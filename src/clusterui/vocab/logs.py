"""Words about log lines that the supervisor writes and the clients read."""

from __future__ import annotations

# The "sys" stream: lines the supervisor writes about a worker (exits, restarts, reloads,
# watch events), next to its "out" and "err".
SYS = "sys"

# Ends the "sys" note that stands for lines a live view left out under a flood: a note
# about the view, not an event of the worker's.
SKIPPED = " lines not shown live (too fast to follow); the log file has them all"


def is_event(stream: str, text: str) -> bool:
    """A supervisor line worth keeping through a flood (not a skipped-lines note)."""
    return stream == SYS and not text.endswith(SKIPPED)
