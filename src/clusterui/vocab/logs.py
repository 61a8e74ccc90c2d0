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


# How the supervisor's lines about a worker's process ending begin (core/apps.py writes
# them; tests/test_logscreen_real.py checks a crash, a restart and a reload each give one):
# "exited with code 1; restarting in 100 ms", "killed by SIGKILL; ...", "stopped (killed
# by SIGTERM)" (a restart stops, then starts), "old worker 123 exited ..." (a reload).
RESTART_PREFIXES = ("exited with code", "killed by", "stopped (", "old worker ")


def is_restart(stream: str, text: str) -> bool:
    """A supervisor line marking the end of one of the worker's processes: where the last
    restart is in its log."""
    return stream == SYS and text.startswith(RESTART_PREFIXES)
