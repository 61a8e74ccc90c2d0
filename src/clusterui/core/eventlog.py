"""The events timeline on disk: CLUSTERUI_HOME/events.jsonl.

Each app's timeline (vocab.events) lives in memory, where the `events` op serves it.
This file keeps it across supervisors, so that after `down`/`up`, `kill`, a crash or a
reboot with `resurrect`, "why did it restart at 03:12" still has an answer.

- One event per line, as JSON (worker-controlled text stays inside a JSON string).
- Appended as each event is recorded. Past MAX_BYTES the file becomes events.jsonl.1,
  replacing the one before: at most twice MAX_BYTES on disk.
- A new supervisor reads both files back once (`past`), keeping the newest
  vocab.events.KEPT events of each app; an app added under that name starts with them.
- A line that does not parse, or does not hold an event, is skipped: a crash can leave
  half a line, and the file may have been edited by hand.
- The file is opened through core.safefs (never through another user's link), 0600.
"""

from __future__ import annotations

import errno
import json
import os
from collections import deque
from collections.abc import Callable, Iterator

from clusterui.core import safefs
from clusterui.vocab import events

MAX_BYTES = 1024 * 1024  # about 7,000 events
LONGEST_LINE = 16 * 1024  # longer lines are not events we wrote: skipped on reading


class EventLog:
    """Appends events to `path` and reads back what earlier supervisors left there.

    notice(level, message) is told once when the file cannot be written; the timeline
    in memory goes on regardless (until a write works again)."""

    def __init__(self, path: str | os.PathLike[str], notice: Callable[[str, str], None]):
        self.path = str(path)
        self.notice = notice
        self._fd: int | None = None
        self._size = 0
        self._failing = False

    def append(self, event: events.Event) -> None:
        line = (json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        try:
            if self._fd is None:
                self._open()
            if self._size + len(line) > MAX_BYTES:
                self._rotate()
            self._write(line)
        except OSError as exc:
            self.close()
            if not self._failing:
                self.notice("warning", f"events timeline not saved to {self.path}: {exc}")
            self._failing = True
            return
        self._failing = False

    def _write(self, data: bytes) -> None:
        assert self._fd is not None
        written = os.write(self._fd, data)
        self._size += written
        if written < len(data):  # a full disk: the half line is ended on the next open
            raise OSError(errno.ENOSPC, "short write")

    def _open(self) -> None:
        # Read and write: a half line (a crash, a full disk) is ended before ours.
        self._fd = safefs.open_file(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
        self._size = os.fstat(self._fd).st_size
        if self._size and os.pread(self._fd, 1, self._size - 1) != b"\n":
            self._write(b"\n")

    def _rotate(self) -> None:
        self.close()
        safefs.replace(self.path, self.path + ".1")
        self._open()

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def past(self) -> dict[str, deque[events.Event]]:
        """The newest events.KEPT events of each app in the files, oldest first. Call it
        before the first append (it reads what earlier supervisors wrote)."""
        out: dict[str, deque[events.Event]] = {}
        for path in (self.path + ".1", self.path):
            for event in _read(path):
                kept = out.get(event["app"])
                if kept is None:
                    kept = out[event["app"]] = deque(maxlen=events.KEPT)
                kept.append(event)
        return out


def _read(path: str) -> Iterator[events.Event]:
    try:
        fd = safefs.open_file(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    except OSError:
        return  # refused (not ours, a planted link): the timeline starts empty
    with open(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > 2 * MAX_BYTES:  # not one we wrote whole: its newest part
            f.seek(size - 2 * MAX_BYTES)
            f.readline()  # the rest of a line cut in two
        data = f.read(2 * MAX_BYTES)
    for raw in data.split(b"\n"):
        if not raw or len(raw) > LONGEST_LINE:
            continue
        try:
            event = events.from_json(json.loads(raw))
        except (ValueError, RecursionError):  # ValueError: bad JSON, bad UTF-8
            continue
        if event is not None:
            yield event
