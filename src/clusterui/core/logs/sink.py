"""One log file opened for append, with size rotation at line boundaries."""

from __future__ import annotations

import contextlib
import os
import stat

from clusterui.core import safefs


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
        # Lines lost to write errors (a full disk) since the last good write, and in all;
        # the next good write first puts a line saying how many, so the gap is visible.
        self.dropped = 0
        self.dropped_total = 0
        self.torn = False  # the file ends inside a line (a write stopped half-way)
        self.error = ""
        self._wrote = 0  # bytes of the current flush written so far
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
        marker = b""
        if self.dropped:
            # Never glue the next line to a torn one; say what is missing, and why.
            marker = b"%sclusterui: %d line(s) dropped here (%s)\n" % (
                b"\n" if self.torn else b"",
                self.dropped,
                self.error.encode(),
            )
            data = marker + data
        self._wrote = 0
        try:
            if self.fd < 0:
                self._open()  # a rotation or reopen failed earlier: try again (raises if not)
            if self.max_size and self.regular:
                self._write_rotating(data)
            else:
                self._write_all(data, 0, len(data))
        except OSError as exc:
            lost = data[self._wrote :]
            n = lost.count(b"\n") - (1 if self._wrote < len(marker) else 0)
            self.dropped += n
            self.dropped_total += n
            if self._wrote:
                self.torn = data[self._wrote - 1 : self._wrote] != b"\n"
            self.error = exc.strerror or str(exc)
            raise
        self.dropped = 0
        self.torn = False
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
            self._wrote += n

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
