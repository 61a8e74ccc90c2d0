"""Log capture: workers' stdout/stderr pipes → files, per-worker rings, live subscribers.

Runs inside the supervisor's single-threaded event loop, so the hot path is built around
chunks, not lines: each wake-up does one bounded `os.read`, keeps the bytes up to the last
newline as one block, and hands that block (already split into lines by its newlines) to
the file buffer, the ring and the subscriber outbox. Lines become Python strings only when
someone reads them (`recent()`, a subscriber batch).

Public surface: `LogHub` (one per supervisor), `WorkerLogs` (one per attached worker),
`LogLine`, `LogSink` (one open file), `tail_file`, `compile_date_format`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import fcntl
import heapq
import os
import re
import stat
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any

from clusterui.core import safefs
from clusterui.core.spec import AppSpec

# One os.read per wake-up, so a flooding worker costs the loop one bounded slice per turn.
READ_SIZE = 64 * 1024
# Longer lines are cut into pieces of this size (each piece a line), so nothing buffers
# without bound. Equal to READ_SIZE: then only the first line of a read can be too long.
MAX_LINE = 64 * 1024
# A file buffer is written out once it holds this much, else at the next tick.
FLUSH_BYTES = 256 * 1024
# Tick: dirty files are flushed and subscribers get their batch at most this long after a read.
TICK = 0.05
# A flooding worker's pipe is grown to this, so it can run ahead while the loop is busy.
PIPE_SIZE = 1024 * 1024
# Reads allowed when force-closing a capture whose pipe is still open (a live grandchild
# could keep it full forever); more than any pipe can hold.
DRAIN_READS = 64
SUPERVISOR_LOG = "clusterui.log"
SUPERVISOR_DATE_FORMAT = "YYYY-MM-DD HH:mm:ss"


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


SKIPPED = " lines not shown live (too fast to follow); the log file has them all"


def skipped_note(worker: int, app: str, instance: int, n: int, t: float) -> LogLine:
    """The "sys" line that stands for n lines a live view left out (never the files)."""
    return LogLine(worker, app, instance, "sys", t, f"{n}{SKIPPED}")


def live_cut(lines: list[LogLine], limit: int) -> list[LogLine]:
    """The newest `limit` lines of a batch, after one note per worker for what is left out."""
    if len(lines) <= limit:
        return lines
    cut = len(lines) - limit
    left: dict[tuple[int, str, int], int] = {}
    for line in lines[:cut]:
        if line.stream == "sys" and line.text.endswith(SKIPPED):
            n = int(line.text[: -len(SKIPPED)])  # an earlier note: fold it in
        else:
            n = 1
        key = (line.worker, line.app, line.instance)
        left[key] = left.get(key, 0) + n
    t = lines[cut].time
    notes = [skipped_note(w, app, inst, n, t) for (w, app, inst), n in left.items()]
    return notes + lines[cut:]


# ---- timestamps ------------------------------------------------------------------------

_MOMENT = re.compile(
    r"\[([^\]]*)\]|YYYY|YY|MMMM|MMM|MM|M|dddd|ddd|DD|D|HH|H|hh|h|mm|m|ss|s|SSS|ZZ|Z|A|a"
)
_STRFTIME = {
    "YYYY": "%Y",
    "YY": "%y",
    "MMMM": "%B",
    "MMM": "%b",
    "MM": "%m",
    "M": "%-m",
    "dddd": "%A",
    "ddd": "%a",
    "DD": "%d",
    "D": "%-d",
    "HH": "%H",
    "H": "%-H",
    "hh": "%I",
    "h": "%-I",
    "mm": "%M",
    "m": "%-M",
    "ss": "%S",
    "s": "%-S",
    "A": "%p",
    "SSS": "{ms:03d}",
    "Z": "{z}",
    "ZZ": "{zz}",
    "a": "{ampm}",
}


def compile_date_format(fmt: str) -> Callable[[float], bytes]:
    """A PM2/moment `log_date_format` → function(epoch seconds) → line prefix bytes.

    The moment tokens are turned into one strftime template here, once; per call there is
    one strftime (cached per second when the format has no milliseconds). Supported:
    YYYY YY MMMM MMM MM M dddd ddd DD D HH H hh h mm m ss s SSS Z ZZ A a and [literal];
    any other character is literal, as in moment. The prefix is "STAMP: ".
    """
    matches = list(_MOMENT.finditer(fmt))
    # Milliseconds, offsets and am/pm have no strftime code: str.format fills them in.
    needs_format = any(_STRFTIME.get(m.group(0), "%").startswith("{") for m in matches)
    per_ms = any(m.group(0) == "SSS" for m in matches)

    def literal(text: str) -> str:
        text = text.replace("%", "%%")
        return text.replace("{", "{{").replace("}", "}}") if needs_format else text

    parts: list[str] = []
    pos = 0
    for m in matches:
        parts.append(literal(fmt[pos : m.start()]))
        parts.append(literal(m.group(1)) if m.group(1) is not None else _STRFTIME[m.group(0)])
        pos = m.end()
    parts.append(literal(fmt[pos:]))
    template = "".join(parts) + literal(": ")
    cache: list[Any] = [None, b""]

    def stamp(t: float) -> bytes:
        key = t if per_ms else int(t)
        if key == cache[0]:
            return cache[1]
        tm = time.localtime(t)
        text = time.strftime(template, tm)
        if needs_format:
            off = tm.tm_gmtoff or 0
            sign = "-" if off < 0 else "+"
            hh, mm = divmod(abs(off) // 60, 60)
            text = text.format(
                ms=int(t * 1000) % 1000,
                z=f"{sign}{hh:02d}:{mm:02d}",
                zz=f"{sign}{hh:02d}{mm:02d}",
                ampm="am" if tm.tm_hour < 12 else "pm",
            )
        cache[0], cache[1] = key, text.encode()
        return cache[1]

    return stamp


# Regex per moment token for reading a stamp back: (group name or None, pattern).
_PARSE = {
    "YYYY": ("Y", r"\d{4}"),
    "YY": ("y", r"\d{2}"),
    "MMMM": ("B", r"[^\W\d_]+"),
    "MMM": ("b", r"[^\W\d_]+"),
    "MM": ("m", r"\d{2}"),
    "M": ("m", r"\d{1,2}"),
    "dddd": (None, r"[^\W\d_]+"),
    "ddd": (None, r"[^\W\d_]+"),
    "DD": ("d", r"\d{2}"),
    "D": ("d", r"\d{1,2}"),
    "HH": ("H", r"\d{2}"),
    "H": ("H", r"\d{1,2}"),
    "hh": ("I", r"\d{2}"),
    "h": ("I", r"\d{1,2}"),
    "mm": ("M", r"\d{2}"),
    "m": ("M", r"\d{1,2}"),
    "ss": ("S", r"\d{2}"),
    "s": ("S", r"\d{1,2}"),
    "SSS": ("f", r"\d{3}"),
    "Z": ("z", r"[+-]\d{2}:\d{2}"),
    "ZZ": ("z", r"[+-]\d{4}"),
    "A": ("p", r"[^\W\d_]+"),
    "a": ("p", r"am|pm"),
}


def compile_date_parser(fmt: str) -> Callable[[str], tuple[float | None, str]]:
    """The inverse of compile_date_format: line → (epoch seconds or None, text after "STAMP: ").

    A line without the prefix comes back whole with None; so does the time of a stamp that
    lacks the year, month or day (the caller picks a fallback).
    """
    parts: list[str] = []
    named: set[str] = set()
    pos = 0
    for m in _MOMENT.finditer(fmt):
        parts.append(re.escape(fmt[pos : m.start()]))
        if m.group(1) is not None:
            parts.append(re.escape(m.group(1)))
        else:
            name, pattern = _PARSE[m.group(0)]
            if name is None or name in named:  # a repeated token: matched, read once
                parts.append(f"(?:{pattern})")
            else:
                named.add(name)
                parts.append(f"(?P<{name}>{pattern})")
        pos = m.end()
    parts.append(re.escape(fmt[pos:]) + ": ")
    prefix = re.compile("".join(parts))

    def parse(line: str) -> tuple[float | None, str]:
        m = prefix.match(line)
        if m is None:
            return None, line
        try:
            when = _stamp_time(m.groupdict())
        except (ValueError, OverflowError):
            when = None
        return when, line[m.end() :]

    return parse


def _stamp_time(g: dict[str, str]) -> float | None:
    if g.get("Y"):
        year = int(g["Y"])
    elif g.get("y"):
        year = 2000 + int(g["y"])
    else:
        return None
    if g.get("m"):
        month = int(g["m"])
    elif g.get("B") or g.get("b"):
        name, code = (g["B"], "%B") if g.get("B") else (g["b"], "%b")
        month = time.strptime(name, code).tm_mon
    else:
        return None
    if not g.get("d"):
        return None
    hour = int(g.get("H") or 0)
    if g.get("I"):
        hour = int(g["I"]) % 12 + (12 if (g.get("p") or "").lower() == "pm" else 0)
    fields = (year, month, int(g["d"]), hour, int(g.get("M") or 0), int(g.get("S") or 0))
    ms = int(g.get("f") or 0) / 1000
    zone = g.get("z")
    if zone:
        digits = zone[1:].replace(":", "")
        offset = (int(digits[:2]) * 60 + int(digits[2:])) * (-60 if zone[0] == "-" else 60)
        tz = datetime.timezone(datetime.timedelta(seconds=offset))
        return datetime.datetime(*fields, tzinfo=tz).timestamp() + ms
    return datetime.datetime(*fields).timestamp() + ms  # naive: local time, as written


# ---- files -----------------------------------------------------------------------------


class LogSink:
    """One log file opened for append; shared (refcounted) by every stream writing to it.

    Writers hand it complete lines only, so whole lines from several workers never mix.
    Size rotation happens at line boundaries: the file never exceeds max_size (unless one
    line alone is longer, then that line is cut), so the disk use stays within
    max_size × (retain + 1). Non-regular files (/dev/stdout, a FIFO) never rotate.
    """

    def __init__(self, path: str, max_size: int | None, retain: int) -> None:
        self.path = path
        self.max_size = max_size or 0
        self.retain = max(0, retain)
        self.refs = 0
        self.pieces: list[bytes] = []
        self.pending = 0
        self.dirty = False
        self.failed = False  # a write error was reported; report again only after a success
        self.fd = -1
        self.size = 0
        self.regular = True
        self.closed = False
        self._open()

    def _open(self, truncate: bool = False) -> None:
        # Never through a link another user planted (see core/safefs); truncated only
        # once the file is known to be ours.
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        self.fd = safefs.open_file(self.path, flags, 0o644, truncate=truncate)
        st = os.fstat(self.fd)
        self.regular = stat.S_ISREG(st.st_mode)
        self.size = st.st_size

    def write(self, data: bytes) -> None:
        """Buffer complete lines; the owner flushes (see LogHub)."""
        self.pieces.append(data)
        self.pending += len(data)

    def flush(self) -> None:
        """Write the buffer out, rotating as needed. Raises OSError (buffer dropped)."""
        self.dirty = False
        if not self.pieces:
            return
        data = self.pieces[0] if len(self.pieces) == 1 else b"".join(self.pieces)
        self.pieces = []
        self.pending = 0
        if self.closed:
            return
        if self.fd < 0:
            self._open()  # a rotation or reopen failed earlier: try again (raises if not)
        if self.max_size and self.regular:
            self._write_rotating(data)
        else:
            self._write_all(data, 0, len(data))
        self.failed = False

    def _write_rotating(self, data: bytes) -> None:
        pos, end, limit = 0, len(data), self.max_size
        while pos < end:
            room = limit - self.size
            if end - pos <= room:
                self._write_all(data, pos, end)
                return
            # The whole lines that still fit, then a new file.
            cut = data.rfind(b"\n", pos, pos + max(room, 0)) + 1
            if cut <= pos:
                if self.size > 0:
                    self._rotate()
                    continue
                cut = pos + room  # a single line longer than max_size: cut it
            self._write_all(data, pos, cut)
            pos = cut
            self._rotate()

    def _write_all(self, data: bytes, start: int, end: int) -> None:
        view = memoryview(data)
        while start < end:
            n = os.write(self.fd, view[start:end])
            start += n
            self.size += n

    def _rotate(self) -> None:
        os.close(self.fd)
        self.fd = -1
        if self.retain:
            for i in range(self.retain - 1, 0, -1):
                with contextlib.suppress(FileNotFoundError):
                    safefs.replace(f"{self.path}.{i}", f"{self.path}.{i + 1}")
            with contextlib.suppress(FileNotFoundError):
                safefs.replace(self.path, f"{self.path}.1")
            self._open()
        else:
            self._open(truncate=True)

    def reopen(self) -> None:
        """Flush, then open the path again (after an outside tool moved or deleted it)."""
        try:
            self.flush()
        finally:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1
        self._open()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.closed = True
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1


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
        lines = _tail_one(name, n - len(out))
        out[:0] = lines
        if len(out) >= n:
            break
    return out


def _tail_one(path: str, n: int) -> list[str]:
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below; a with-block hides the early return
    except (FileNotFoundError, IsADirectoryError):
        return []
    with f:
        return _tail_open(f, n, f.seek(0, os.SEEK_END))


def _tail_open(f: Any, n: int, end: int) -> list[str]:
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


# ---- rings -----------------------------------------------------------------------------


class _Ring:
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
            lines = _materialize(self.worker, self.app, self.instance, stream, t, block)
            picked.append(lines)
            have += len(lines)
            if have >= n:
                break
        out = [line for lines in reversed(picked) for line in lines]
        return out[-n:] if n else []


def _materialize(
    worker: int, app: str, instance: int, stream: str, t: float, block: bytes
) -> list[LogLine]:
    texts = block.decode("utf-8", "replace").split("\n")
    texts.pop()  # the block ends with a newline
    return [LogLine(worker, app, instance, stream, t, text) for text in texts]


def _split_long(block: bytes) -> bytes:
    """Cut lines longer than MAX_LINE into MAX_LINE pieces (rare path, so per line)."""
    out: list[bytes] = []
    for line in block[:-1].split(b"\n"):
        if len(line) <= MAX_LINE:
            out.append(line)
        else:
            out.extend(line[i : i + MAX_LINE] for i in range(0, len(line), MAX_LINE))
    return b"\n".join(out) + b"\n"


# ---- capture ---------------------------------------------------------------------------


class _Pipe:
    """One worker stream: a non-blocking pipe read end, owned and closed by us."""

    __slots__ = (
        "hub",
        "owner",
        "stream",
        "fd",
        "sink",
        "stamp",
        "partial",
        "grown",
        "done",
        "loop",
    )

    def __init__(
        self,
        hub: LogHub,
        owner: WorkerLogs,
        stream: str,
        fd: int,
        sink: LogSink | None,
        stamp: Callable[[float], bytes] | None,
    ) -> None:
        self.hub = hub
        self.owner = owner
        self.stream = stream
        self.fd = fd
        self.sink = sink
        self.stamp = stamp
        self.partial = b""
        self.grown = False
        self.done = False
        self.loop = asyncio.get_running_loop()
        os.set_blocking(fd, False)
        self.loop.add_reader(fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.finish()
            return
        if not self.grown and len(data) == READ_SIZE:
            self._grow()
        self._feed(data, time.time())

    def _grow(self) -> None:
        # Only flooding workers get a big pipe (kernel memory, and the per-user pipe quota).
        self.grown = True
        with contextlib.suppress(OSError, AttributeError):
            fcntl.fcntl(self.fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)

    def _feed(self, data: bytes, now: float) -> None:
        partial = self.partial
        if partial:
            data = partial + data
        end = data.rfind(b"\n") + 1
        if end == 0:
            if len(data) < MAX_LINE:
                self.partial = data
                return
            end = len(data) - len(data) % MAX_LINE
            self.partial = data[end:]
            block = b"\n".join(data[i : i + MAX_LINE] for i in range(0, end, MAX_LINE)) + b"\n"
        else:
            if end < len(data):
                self.partial = data[end:]
                data = data[:end]
            elif partial:
                self.partial = b""
            # Lines inside one read are ≤ READ_SIZE; only a line joined to an old partial
            # can be longer.
            if partial and data.find(b"\n") > MAX_LINE:
                data = _split_long(data)
            block = data
        self._deliver(block, now)

    def _deliver(self, block: bytes, now: float) -> None:
        hub = self.hub
        count = block.count(b"\n")
        sink = self.sink
        if sink is not None:
            if self.stamp is not None:
                p = self.stamp(now)
                out = p + block[:-1].replace(b"\n", b"\n" + p) + b"\n"
            else:
                out = block
            sink.pieces.append(out)
            sink.pending += len(out)
            if sink.pending >= FLUSH_BYTES:
                hub._flush(sink)
            elif not sink.dirty:
                sink.dirty = True
                hub._dirty.append(sink)
                hub._arm()
        owner = self.owner
        owner.ring.add(now, self.stream, block, count)
        if hub._subscribers:
            hub._enqueue(owner.ring, self.stream, now, block, count)

    def drain(self) -> None:
        """Read what the pipe holds now (bounded), then finish: used by a forced close."""
        for _ in range(DRAIN_READS):
            if self.done:
                return
            try:
                data = os.read(self.fd, READ_SIZE)
            except BlockingIOError:
                break
            except OSError:
                break
            if not data:
                break
            self._feed(data, time.time())
        self.finish()

    def finish(self) -> None:
        """EOF (or forced close): the trailing partial line becomes a line; files flushed."""
        if self.done:
            return
        self.done = True
        self.loop.remove_reader(self.fd)
        with contextlib.suppress(OSError):
            os.close(self.fd)
        if self.partial:
            block, self.partial = self.partial + b"\n", b""
            if len(block) - 1 > MAX_LINE:
                block = _split_long(block)
            self._deliver(block, time.time())
        if self.sink is not None:
            self.hub._flush(self.sink)
            self.hub._release(self.sink)
            self.sink = None
        self.owner._pipe_done()


class WorkerLogs:
    """The capture of one worker's stdout and stderr (returned by LogHub.attach)."""

    def __init__(
        self, hub: LogHub, worker_id: int, app: str, instance: int, paths: tuple[str, str]
    ) -> None:
        self.hub = hub
        self.worker_id = worker_id
        self.app = app
        self.instance = instance
        self.out_path, self.err_path = paths
        self.ring = hub._ring(worker_id, app, instance)
        self._pipes: list[_Pipe] = []
        self._left = 0
        self._closed = asyncio.get_running_loop().create_future()

    @property
    def closed(self) -> bool:
        return self._closed.done()

    async def wait_closed(self) -> None:
        """Until both pipes hit EOF (every writer, grandchildren too, closed them) and all
        their lines are in the ring, the outbox and the files."""
        await asyncio.shield(self._closed)

    def close(self) -> None:
        """Stop capturing now: read what the pipes hold, flush the partial lines and files.
        For a worker that is gone but whose pipe is still held open by a grandchild."""
        for pipe in self._pipes:
            pipe.drain()

    def _pipe_done(self) -> None:
        self._left -= 1
        if self._left <= 0 and not self._closed.done():
            self._closed.set_result(None)
            self.hub._captures.discard(self)


# ---- hub -------------------------------------------------------------------------------

Subscriber = Callable[[list[LogLine]], None]


class LogHub:
    """All log capture of one supervisor: files (shared by path), rings, subscribers.

    logs_dir: default location of the files (CLUSTERUI_HOME/logs), created on first use.
    ring_lines / ring_bytes: per worker, recent output kept in memory (both bounds hold).
    live_lines / live_bytes: most lines, and most bytes of log text (as read, newlines
      included), per subscriber batch (one batch per TICK); above either the oldest lines
      of the batch are left out of the live view (never out of the files) and a "sys" line
      says how many. The byte bound matters for long lines: 5,000 lines of 4 KB would be
      20 MB of text, then more again as dicts and JSON for every subscriber. The newest
      line is always shown, whatever its length (at most MAX_LINE).
    notice: called as notice(level, message) when a log file cannot be opened or written.
    """

    def __init__(
        self,
        logs_dir: Path | str,
        ring_lines: int = 1000,
        *,
        ring_bytes: int = 1024 * 1024,
        live_lines: int = 5000,
        live_bytes: int = 1024 * 1024,
        notice: Callable[[str, str], None] | None = None,
    ) -> None:
        self.logs_dir = Path(logs_dir)
        self.ring_lines = max(1, ring_lines)
        self.ring_bytes = ring_bytes
        self.live_lines = max(1, live_lines)
        self.live_bytes = max(1, live_bytes)
        self.notice = notice
        self._sinks: dict[str, LogSink] = {}
        self._rings: dict[int, _Ring] = {}
        self._captures: set[WorkerLogs] = set()
        self._subscribers: list[Subscriber] = []
        self._dirty: list[LogSink] = []
        # (ring, stream, time, block, count) waiting for the next subscriber batch
        self._outbox: deque[tuple[_Ring, str, float, bytes, int]] = deque()
        self._outbox_lines = 0
        self._outbox_bytes = 0
        self._skipped: dict[int, int] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._sys_sink: LogSink | None = None
        self._sys_stamp = compile_date_format(SUPERVISOR_DATE_FORMAT)
        self._open_error: dict[str, str] = {}  # path → why it could not be opened, last time
        # path → (inode, size, mtime) when this hub first opened it (None: it did not exist):
        # what lies before is earlier supervisors' output, which `history` reads back.
        self._origins: dict[str, tuple[int, int, float] | None] = {}

    # -- paths

    def paths(self, app: str, instance: int, spec: AppSpec) -> tuple[str, str]:
        """(stdout file, stderr file) for one instance.

        Default CLUSTERUI_HOME/logs/NAME-INSTANCE-out.log / -err.log, or NAME-out.log with
        merge_logs. A given out_file/error_file is used as it is with merge_logs, or for a
        single fork-mode instance (PM2 merges those by default); otherwise the instance is
        added before the extension (web.log → web-1.log), as PM2 does.
        """
        return (
            self._path(app, instance, spec, spec.out_file, "out"),
            self._path(app, instance, spec, spec.error_file, "err"),
        )

    def _path(self, app: str, instance: int, spec: AppSpec, given: str | None, kind: str) -> str:
        if given:
            path = os.path.abspath(os.path.expanduser(given))
            if path.startswith("/dev/") or spec.merge_logs:
                return path
            if spec.exec_mode == "fork" and spec.instances == 1:
                return path
            root, ext = os.path.splitext(path)
            return f"{root}-{instance}{ext}"
        name = f"{app}-{kind}.log" if spec.merge_logs else f"{app}-{instance}-{kind}.log"
        return str(self.logs_dir / name)

    # -- capture

    def attach(
        self,
        worker_id: int,
        app: str,
        instance: int,
        spec: AppSpec,
        stdout_fd: int | None,
        stderr_fd: int | None,
    ) -> WorkerLogs:
        """Start capturing a worker. Takes ownership of the two pipe read ends (closed at
        EOF). Must be called from the running event loop. Files that cannot be opened are
        reported through `notice`; the lines still reach the ring and subscribers."""
        paths = self.paths(app, instance, spec)
        cap = WorkerLogs(self, worker_id, app, instance, paths)
        stamp = compile_date_format(spec.log_date_format) if spec.log_date_format else None
        if stderr_fd == stdout_fd:
            stderr_fd = None  # one pipe for both (2>&1): read it once, as "out"
        for stream, fd, path in (("out", stdout_fd, paths[0]), ("err", stderr_fd, paths[1])):
            if fd is None:
                continue
            sink = self._acquire(path, spec.log_max_size, spec.log_retain)
            if sink is None and path != os.devnull:
                # In the app's own log view and describe too, not only a passing notice.
                self.emit(worker_id, app, instance, self._open_error.get(path, "no log file"))
            cap._pipes.append(_Pipe(self, cap, stream, fd, sink, stamp))
        cap._left = len(cap._pipes)
        if cap._left:
            self._captures.add(cap)
        else:
            cap._closed.set_result(None)
        return cap

    def emit(self, worker_id: int, app: str, instance: int, text: str, stream: str = "sys") -> None:
        """A line the supervisor writes about a worker ("exited with code 1"): to the ring,
        the subscribers and the supervisor's own file logs/clusterui.log (never the app's
        files, which hold exactly what the app wrote)."""
        now = time.time()
        block = text.replace("\n", " ").encode("utf-8", "replace") + b"\n"
        ring = self._ring(worker_id, app, instance)
        ring.add(now, stream, block, 1)
        if self._subscribers:
            self._enqueue(ring, stream, now, block, 1)
        sink = self._sys_sink
        if sink is None:
            sink = self._sys_sink = self._acquire(
                str(self.logs_dir / SUPERVISOR_LOG), 10 * 1024 * 1024, 3
            )
        if sink is not None:
            sink.write(self._sys_stamp(now) + f"{app}:{instance} ".encode() + block)
            self._flush(sink)

    # -- readers

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """callback(list[LogLine]) gets new lines in batches, at most one per TICK (50 ms),
        in the order they were read. Returns the function that unsubscribes."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(callback)

        return unsubscribe

    def recent(self, worker_ids: Iterable[int] | None = None, n: int = 100) -> list[LogLine]:
        """The last n lines (at most ring_lines per worker) of the given workers, or of all,
        oldest first, merged by time."""
        if n <= 0:
            return []
        if worker_ids is None:
            rings = list(self._rings.values())
        else:
            rings = [self._rings[w] for w in dict.fromkeys(worker_ids) if w in self._rings]
        per_worker = [ring.tail(n) for ring in rings]
        merged = list(heapq.merge(*per_worker, key=attrgetter("time")))
        return merged[-n:]

    def history(
        self, worker_id: int, app: str, instance: int, spec: AppSpec, n: int
    ) -> list[LogLine]:
        """Up to n of the last lines the worker's files held before this hub first opened
        them (what earlier supervisors wrote: the rings hold only this one's), oldest first.

        Blocking file reads, at most n lines from the end of each file (rotated ones too):
        call it off the event loop. Times come from the lines' log_date_format stamps when
        they carry them, else from the file's modification time. Files that several
        instances share (merge_logs) are not read: their lines cannot be told apart.
        """
        if n <= 0 or (spec.merge_logs and spec.instances != 1):
            return []
        parse = compile_date_parser(spec.log_date_format) if spec.log_date_format else None
        out_path, err_path = self.paths(app, instance, spec)
        per_stream: list[list[LogLine]] = []
        for stream, path in (("out", out_path), ("err", err_path)):
            if stream == "err" and err_path == out_path:
                continue  # both streams in one file: read once
            raw = self._before_origin(path, n)
            parsed = [parse(text) if parse else (None, text) for _, text in raw]
            # A line without a stamp takes its neighbour's (the one before, else the first
            # one after); with none at all, the file's mtime. Non-decreasing, so the streams
            # merge in file order.
            first = next((when for when, _ in parsed if when is not None), None)
            lines = []
            last = 0.0
            for (mtime, _), (when, text) in zip(raw, parsed, strict=True):
                if when is None:
                    when = first if first is not None else mtime
                last = max(last, when)
                lines.append(LogLine(worker_id, app, instance, stream, last, text))
            per_stream.append(lines)
        return list(heapq.merge(*per_stream, key=attrgetter("time")))[-n:]

    def sys_history(self, workers: dict[tuple[str, int], int], n: int) -> list[LogLine]:
        """Up to n of the last "sys" lines (exits, restarts) about these workers that the
        supervisor log held before this hub wrote to it, oldest first. workers maps
        (app, instance) to the worker id to report. Blocking, like `history`; reads at most
        10 n + 100 lines from the end, so lines about other apps can crowd some out."""
        if n <= 0 or not workers:
            return []
        path = str(self.logs_dir / SUPERVISOR_LOG)
        parse = compile_date_parser(SUPERVISOR_DATE_FORMAT)
        out: list[LogLine] = []
        last = 0.0
        for mtime, raw in self._before_origin(path, min(10 * n + 100, 100_000)):
            when, text = parse(raw)
            label, _, text = text.partition(" ")
            app, _, instance = label.rpartition(":")
            if not instance.isdigit() or (app, int(instance)) not in workers:
                continue
            last = max(last, when if when is not None else mtime)
            out.append(LogLine(workers[app, int(instance)], app, int(instance), "sys", last, text))
        return out[-n:]

    def _origin(self, path: str) -> tuple[int, int, float] | None:
        """Where this hub's writes to path begin, recorded on first use. setdefault: the
        event loop (about to write) and a reader thread may both get here first."""
        origin = self._origins.get(path, False)
        if origin is not False:
            return origin
        try:
            st = os.stat(path)
            found: tuple[int, int, float] | None = (st.st_ino, st.st_size, st.st_mtime)
        except OSError:
            found = None
        return self._origins.setdefault(path, found)

    def _before_origin(self, path: str, n: int) -> list[tuple[float, str]]:
        """(file mtime, line) for the last n lines before this hub's first write to path,
        continuing into path.1, path.2, … (older rotations) while short of n."""
        origin = self._origin(path)
        if origin is None:
            return []  # the file did not exist before us: all of it is in the rings
        out: list[tuple[float, str]] = []
        found = False
        for i in range(1000):  # bounded: far more than any log_retain
            name = f"{path}.{i}" if i else path
            try:
                st = os.stat(name)
            except OSError:
                break
            if not stat.S_ISREG(st.st_mode):
                break  # /dev/stdout, a FIFO: nothing to read back (and opening could block)
            end, mtime = st.st_size, st.st_mtime
            if not found:
                if st.st_ino != origin[0]:
                    continue  # newer than our first write (rotated since): ours
                if st.st_size < origin[1]:
                    break  # truncated in place: the history is gone
                found = True
                end, mtime = origin[1], origin[2]
            try:
                with open(name, "rb") as f:
                    if os.fstat(f.fileno()).st_ino != st.st_ino:
                        break  # rotated between stat and open: give up rather than guess
                    lines = _tail_open(f, n - len(out), end)
            except OSError:
                break
            out[:0] = [(mtime, text) for text in lines]
            if len(out) >= n:
                break
        return out[-n:] if n > 0 else []

    def reopen(self) -> None:
        """Reopen every log file: for logrotate-style tools that move files away."""
        for sink in list(self._sinks.values()):
            try:
                sink.reopen()
            except OSError as exc:
                self._report(f"cannot reopen log file {sink.path}: {exc.strerror or exc}")

    def forget(self, worker_id: int) -> None:
        """Drop a worker slot's ring (app deleted or scaled down)."""
        self._rings.pop(worker_id, None)

    async def aclose(self, timeout: float = 1.0) -> None:
        """Wait up to `timeout` for attached workers' pipes to reach EOF, force-close the rest,
        deliver the last batch and close every file."""
        pending = [asyncio.ensure_future(c.wait_closed()) for c in list(self._captures)]
        if pending:
            _, late = await asyncio.wait(pending, timeout=timeout)
            for fut in late:
                fut.cancel()
        for cap in list(self._captures):
            cap.close()
        if self._timer is not None:
            self._timer.cancel()
        self._tick()
        for sink in list(self._sinks.values()):
            self._close_sink(sink)
        self._sinks.clear()
        self._sys_sink = None

    # -- internals

    def _ring(self, worker_id: int, app: str, instance: int) -> _Ring:
        ring = self._rings.get(worker_id)
        if ring is None:
            ring = self._rings[worker_id] = _Ring(
                worker_id, app, instance, self.ring_lines, self.ring_bytes
            )
        else:
            ring.app, ring.instance = app, instance
        return ring

    def _acquire(self, path: str, max_size: int | None, retain: int) -> LogSink | None:
        if path == os.devnull:
            return None
        sink = self._sinks.get(path)
        if sink is None:
            self._origin(path)  # before our first write to it
            try:
                folder = os.path.dirname(path)
                if not os.path.isdir(folder):
                    os.makedirs(folder, mode=0o700, exist_ok=True)
                sink = LogSink(path, max_size, retain)
            except OSError as exc:
                message = f"cannot open log file {path}: {exc.strerror or exc}"
                self._open_error[path] = message
                self._report(message)
                return None
            self._open_error.pop(path, None)
            self._sinks[path] = sink
        sink.refs += 1
        return sink

    def _release(self, sink: LogSink) -> None:
        sink.refs -= 1
        if sink.refs <= 0 and self._sinks.get(sink.path) is sink:
            del self._sinks[sink.path]
            self._close_sink(sink)

    def _close_sink(self, sink: LogSink) -> None:
        try:
            sink.close()
        except OSError as exc:
            self._report(f"cannot write log file {sink.path}: {exc.strerror or exc}")

    def _flush(self, sink: LogSink) -> None:
        try:
            sink.flush()
        except OSError as exc:
            # Disk full or similar: the buffer is dropped rather than grown without bound.
            if not sink.failed:
                sink.failed = True
                self._report(f"cannot write log file {sink.path}: {exc.strerror or exc}")

    def _report(self, message: str) -> None:
        if self.notice is not None:
            self.notice("error", message)

    def _arm(self) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(TICK, self._tick)

    def _enqueue(self, ring: _Ring, stream: str, t: float, block: bytes, count: int) -> None:
        box = self._outbox
        box.append((ring, stream, t, block, count))
        self._outbox_lines += count
        self._outbox_bytes += len(block)
        # Bound the outbox between ticks: the oldest block goes (counted, per worker) once
        # the newer ones fill a batch by lines or by bytes (the tick would leave it out).
        while len(box) > 1 and (
            self._outbox_lines - box[0][4] >= self.live_lines
            or self._outbox_bytes - len(box[0][3]) >= self.live_bytes
        ):
            old = box.popleft()
            self._outbox_lines -= old[4]
            self._outbox_bytes -= len(old[3])
            self._skipped[old[0].worker] = self._skipped.get(old[0].worker, 0) + old[4]
        self._arm()

    def _tick(self) -> None:
        self._timer = None
        dirty, self._dirty = self._dirty, []
        for sink in dirty:
            if sink.dirty:
                self._flush(sink)
        if not self._outbox:
            return
        box, self._outbox = self._outbox, deque()
        self._outbox_lines = self._outbox_bytes = 0
        skipped, self._skipped = self._skipped, {}
        lines = self._batch(box, skipped)
        if skipped:
            t = lines[0].time if lines else time.time()
            notes = [
                skipped_note(wid, ring.app, ring.instance, n, t)
                for wid, n in skipped.items()
                if (ring := self._rings.get(wid)) is not None
            ]
            lines = notes + lines
        for callback in list(self._subscribers):
            try:
                callback(lines)
            except Exception as exc:  # a broken subscriber must not stop the capture
                asyncio.get_running_loop().call_exception_handler(
                    {"message": "log subscriber failed", "exception": exc}
                )

    def _batch(
        self, box: deque[tuple[_Ring, str, float, bytes, int]], skipped: dict[int, int]
    ) -> list[LogLine]:
        """The newest lines of the outbox within live_lines and live_bytes, oldest first;
        the rest are counted into `skipped`. Only what is shown is decoded."""
        room_lines, room_bytes = self.live_lines, self.live_bytes
        parts: list[list[LogLine]] = []
        for ring, stream, t, block, count in reversed(box):
            if room_lines <= 0:
                skipped[ring.worker] = skipped.get(ring.worker, 0) + count
                continue
            cut = 0
            if len(block) > room_bytes:
                # The newest whole lines within room_bytes; none at all if the next line
                # alone is longer, unless nothing is shown yet (then the newest line).
                cut = block.find(b"\n", len(block) - room_bytes - 1) + 1
                if cut >= len(block) and not parts:
                    cut = block.rfind(b"\n", 0, len(block) - 1) + 1
            piece = block[cut:] if cut else block
            lines = (
                _materialize(ring.worker, ring.app, ring.instance, stream, t, piece)
                if piece
                else []
            )
            if len(lines) > room_lines:
                lines = lines[len(lines) - room_lines :]
            if len(lines) < count:
                skipped[ring.worker] = skipped.get(ring.worker, 0) + count - len(lines)
                room_lines = 0  # older lines would leave a gap: the batch is full
            else:
                room_lines -= count
                room_bytes -= len(block)
            if lines:
                parts.append(lines)
        return [line for lines in reversed(parts) for line in lines]
