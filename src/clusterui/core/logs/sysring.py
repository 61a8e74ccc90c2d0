"""The supervisor's own lines (exits, restarts, reloads, watch events) in memory.

Kept apart from the workers' rings, so a worker's flood can never push them out: they
go only when newer supervisor lines need the room.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from clusterui.core.logs.lines import LogLine


class SysLines:
    """The newest `limit` supervisor lines about any worker, oldest first."""

    def __init__(self, limit: int = 2000) -> None:
        self.lines: deque[LogLine] = deque(maxlen=max(1, limit))

    def add(self, line: LogLine) -> None:
        self.lines.append(line)

    def tail(self, worker_ids: Iterable[int] | None, n: int) -> list[LogLine]:
        """The last n lines about these workers (all when None), oldest first."""
        if n <= 0:
            return []
        if worker_ids is None:
            return list(self.lines)[-n:]
        wanted = set(worker_ids)
        picked: list[LogLine] = []
        for line in reversed(self.lines):
            if line.worker in wanted:
                picked.append(line)
                if len(picked) >= n:
                    break
        picked.reverse()
        return picked

    def forget(self, worker_id: int) -> None:
        kept = [line for line in self.lines if line.worker != worker_id]
        self.lines.clear()
        self.lines.extend(kept)
