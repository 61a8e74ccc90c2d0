"""The worker fields `clusterui ls` shows, and `ls --json` prints in this order.

A module of their own, importing nothing, so that the quick `ls` (cli/quick.py) can
ask the supervisor for these fields alone: at 2,000 workers the whole snapshot is
about 1 MB of JSON to build, encode and decode. vocab/snapshot.py uses them too.
"""

from __future__ import annotations

LS_JSON_KEYS: tuple[str, ...] = (
    "id",
    "app",
    "instance",
    "pid",
    "status",
    "restarts",
    "uptime",
    "cpu",
    "memory",
    "connections",
    "active",
    "conn_rate",
    "req_rate",
    "exit_code",
    "exit_signal",
    "draining_pids",
    "metrics",
    "error",  # why it failed, or why it is not ready (core.diagnose)
)
