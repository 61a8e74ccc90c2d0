"""Recent output of one worker in memory, kept as the blocks read."""

from __future__ import annotations

from collections import deque

from clusterui.core.logs.lines import MAX_LINE, LogLine


class Ring:
    """Recent output of one worker, kept as the blocks read (decoded only when asked)."""

    __slots__ = ("worker", "app", "instance", "entries", "lines", "nbytes", "limit", "max_bytes")

    def __init__(self, worker: int, app: str, instance: int, limit: int, max_bytes: int) -> None:
        self.worker = worker
        self.app = app
        self.instance = instance
        # (time, stream, block of complete lines, number of lines)
        self.entries: deque[tuple[float, str, bytes, int]] = deque()
        self.lines = 0
        self.nbytes = 0
        self.limit = limit
        self.max_bytes = max_bytes

    def add(self, t: float, stream: str, block: bytes, count: int) -> None:
        entries = self.entries
        entries.append((t, stream, block, count))
        self.lines += count
        self.nbytes += len(block)
        # Drop old blocks once the rest still hold `limit` lines, or when over the byte cap
        # (lines are up to 64 KiB: a line count alone does not bound memory).
        while len(entries) > 1:
            first = entries[0]
            if self.lines - first[3] >= self.limit or self.nbytes > self.max_bytes:
                entries.popleft()
                self.lines -= first[3]
                self.nbytes -= len(first[2])
            else:
                break

    def tail(self, n: int) -> list[LogLine]:
        n = min(n, self.limit)
        picked: list[list[LogLine]] = []
        have = 0
        for t, stream, block, _ in reversed(self.entries):
            lines = materialize(self.worker, self.app, self.instance, stream, t, block)
            picked.append(lines)
            have += len(lines)
            if have >= n:
                break
        out = [line for lines in reversed(picked) for line in lines]
        return out[-n:] if n else []


def materialize(
    worker: int, app: str, instance: int, stream: str, t: float, block: bytes
) -> list[LogLine]:
    texts = block.decode("utf-8", "replace").split("\n")
    texts.pop()  # the block ends with a newline
    return [LogLine(worker, app, instance, stream, t, text) for text in texts]


def split_long(block: bytes) -> bytes:
    """Cut lines longer than MAX_LINE into MAX_LINE pieces (rare path, so per line)."""
    out: list[bytes] = []
    for line in block[:-1].split(b"\n"):
        if len(line) <= MAX_LINE:
            out.append(line)
        else:
            out.extend(line[i : i + MAX_LINE] for i in range(0, len(line), MAX_LINE))
    return b"\n".join(out) + b"\n"
