"""Log capture: workers' stdout/stderr pipes → files, per-worker rings, live subscribers.

Runs inside the supervisor's single-threaded event loop, so the hot path is built around
chunks, not lines: each wake-up does one bounded `os.read`, keeps the bytes up to the last
newline as one block, and hands that block (already split into lines by its newlines) to
the file buffer, the ring and the subscriber outbox. Lines become Python strings only when
someone reads them (`recent()`, a subscriber batch).

Public surface: `LogHub` (one per supervisor), `WorkerLogs` (one per attached worker),
`LogLine`, `LogSink` (one open file), `tail_file`, `compile_date_format`.

One job per module: `lines` (the line and the live cut), `dates` (date formats),
`sink` (a file and its rotation), `tail` (reading a file's end), `ring` (recent output
in memory), `capture` (reading the pipes), `hub` (all of it for one supervisor).
"""

from clusterui.core.logs.capture import WorkerLogs
from clusterui.core.logs.dates import compile_date_format, compile_date_parser
from clusterui.core.logs.hub import SUPERVISOR_LOG, TICK, LogHub, Subscriber
from clusterui.core.logs.lines import MAX_LINE, SKIPPED, LogLine, live_cut, skipped_note
from clusterui.core.logs.sink import LogSink
from clusterui.core.logs.tail import tail_file

__all__ = [
    "MAX_LINE",
    "SKIPPED",
    "SUPERVISOR_LOG",
    "TICK",
    "LogHub",
    "LogLine",
    "LogSink",
    "Subscriber",
    "WorkerLogs",
    "compile_date_format",
    "compile_date_parser",
    "live_cut",
    "skipped_note",
    "tail_file",
]
