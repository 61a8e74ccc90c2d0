"""The last lines of a log file (and of its rotated copies), read from the end."""

from __future__ import annotations

import os
from typing import Any


def tail_file(path: str | os.PathLike[str], n: int, *, rotated: bool = False) -> list[str]:
    """The last n lines of a log file, read backwards from the end in blocks.

    With rotated=True, continues into path.1, path.2, … while fewer than n lines were found.
    A missing file gives no lines; a last line without a newline still counts.
    """
    if n <= 0:
        return []
    out: list[str] = []
    candidates = [os.fspath(path)]
    if rotated:
        i = 1
        while os.path.exists(f"{os.fspath(path)}.{i}"):
            candidates.append(f"{os.fspath(path)}.{i}")
            i += 1
    for name in candidates:
        lines = tail_one(name, n - len(out))
        out[:0] = lines
        if len(out) >= n:
            break
    return out


def tail_one(path: str, n: int) -> list[str]:
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below; a with-block hides the early return
    except (FileNotFoundError, IsADirectoryError):
        return []
    with f:
        return tail_open(f, n, f.seek(0, os.SEEK_END))


def tail_open(f: Any, n: int, end: int) -> list[str]:
    """The last n lines of the first `end` bytes of an open binary file."""
    if n <= 0:
        return []
    pos = end
    chunks: list[bytes] = []
    newlines = 0
    block = 64 * 1024
    # n lines need n+1 newlines before them (or the start of the file); the final
    # newline of the file ends the last line and is not a separator.
    while pos > 0 and newlines <= n:
        step = min(block, pos)
        pos -= step
        f.seek(pos)
        chunk = f.read(step)
        chunks.append(chunk)
        newlines += chunk.count(b"\n")
    data = b"".join(reversed(chunks))
    if data.endswith(b"\n"):
        data = data[:-1]
    elif not data:
        return []
    lines = data.decode("utf-8", "replace").split("\n")
    if pos > 0:
        lines = lines[1:]  # the first piece may be the tail of an older line
    return lines[-n:]
