"""A log line as subscribers see it, and how a live batch too big to show is cut."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clusterui.vocab.logs import SKIPPED

# Longer lines are cut into pieces of this size (each piece a line), so nothing buffers
# without bound. Equal to READ_SIZE: then only the first line of a read can be too long.
MAX_LINE = 64 * 1024


@dataclass(slots=True)
class LogLine:
    worker: int
    app: str
    instance: int
    stream: str  # "out" | "err" | "sys" (written by the supervisor about the worker)
    time: float  # epoch seconds when the supervisor read it
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "worker": self.worker,
            "app": self.app,
            "instance": self.instance,
            "stream": self.stream,
            "time": self.time,
            "text": self.text,
        }


def skipped_note(worker: int, app: str, instance: int, n: int, t: float) -> LogLine:
    """The "sys" line that stands for n lines a live view left out (never the files)."""
    return LogLine(worker, app, instance, "sys", t, f"{n}{SKIPPED}")


def live_cut(lines: list[LogLine], limit: int) -> list[LogLine]:
    """The newest `limit` lines of a batch, after one note per worker for what is left out
    (and after the supervisor's own lines among the older ones, which are all kept)."""
    if len(lines) <= limit:
        return lines
    cut = len(lines) - limit
    left: dict[tuple[int, str, int], int] = {}
    kept: list[LogLine] = []  # the supervisor's own lines: never left out (they are few)
    for line in lines[:cut]:
        if line.stream == "sys":
            if not line.text.endswith(SKIPPED):
                kept.append(line)
                continue
            n = int(line.text[: -len(SKIPPED)])  # an earlier note: fold it in
        else:
            n = 1
        key = (line.worker, line.app, line.instance)
        left[key] = left.get(key, 0) + n
    t = lines[cut].time
    notes = [skipped_note(w, app, inst, n, t) for (w, app, inst), n in left.items()]
    return kept + notes + lines[cut:]
