"""All log capture of one supervisor: files (shared by path), rings, live subscribers."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import os
import stat
import time
from collections import deque
from collections.abc import Callable, Iterable
from operator import attrgetter
from pathlib import Path
from typing import Any

from clusterui.core.logs.capture import StreamCapture, WorkerLogs
from clusterui.core.logs.dates import compile_date_format, compile_date_parser
from clusterui.core.logs.lines import LogLine, skipped_note
from clusterui.core.logs.ring import Ring, materialize
from clusterui.core.logs.sink import LogSink
from clusterui.core.logs.sysring import SysLines
from clusterui.core.logs.tail import tail_open
from clusterui.core.spec import AppSpec

# Tick: dirty files are flushed and subscribers get their batch at most this long after a read.
TICK = 0.05
SUPERVISOR_LOG = "clusterui.log"
SUPERVISOR_DATE_FORMAT = "YYYY-MM-DD HH:mm:ss"
PATHS_KEPT = 65536  # remembered log paths (see paths), far more than any fleet has workers


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
    sys_log: the file for the supervisor's own lines (the supervisor passes
      CLUSTERUI_HOME/supervisor.log); default logs_dir/clusterui.log.
    sys_lines: how many of the supervisor's own lines are kept in memory, apart from the
      workers' rings (a worker's flood never pushes them out).
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
        sys_log: Path | str | None = None,
        sys_lines: int = 2000,
    ) -> None:
        self.logs_dir = Path(logs_dir)
        # paths() runs for every worker in every snapshot: its answers are kept, by
        # everything they depend on (see _path).
        self._logs_root = str(self.logs_dir)
        self._paths: dict[tuple[Any, ...], tuple[str, str]] = {}
        self.sys_log = str(sys_log) if sys_log is not None else str(self.logs_dir / SUPERVISOR_LOG)
        self.sys = SysLines(sys_lines)
        # The supervisor's lines for the next subscriber batch: never cut by the live
        # bounds (they are few), so a flood cannot hide a restart from a live view either.
        self._sys_outbox: list[LogLine] = []
        self.ring_lines = max(1, ring_lines)
        self.ring_bytes = ring_bytes
        self.live_lines = max(1, live_lines)
        self.live_bytes = max(1, live_bytes)
        self.notice = notice
        self._sinks: dict[str, LogSink] = {}
        self._rings: dict[int, Ring] = {}
        self._captures: set[WorkerLogs] = set()
        self._subscribers: list[Subscriber] = []
        self._dirty: list[LogSink] = []
        # (ring, stream, time, block, count) waiting for the next subscriber batch
        self._outbox: deque[tuple[Ring, str, float, bytes, int]] = deque()
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
        key = (app, instance, spec.out_file, spec.error_file, spec.merge_logs)
        key += (spec.exec_mode == "fork" and spec.instances == 1,)
        paths = self._paths.get(key)
        if paths is None:
            if len(self._paths) >= PATHS_KEPT:
                self._paths.clear()
            paths = self._paths[key] = (
                self._path(app, instance, spec, spec.out_file, "out"),
                self._path(app, instance, spec, spec.error_file, "err"),
            )
        return paths

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
        return os.path.join(self._logs_root, name)

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
                # In the app's own log view and describe too, not only a passing notice
                # (_acquire records why for every path but /dev/null).
                self.emit(worker_id, app, instance, self._open_error[path])
            cap._pipes.append(StreamCapture(self, cap, stream, fd, sink, stamp))
        cap._left = len(cap._pipes)
        if cap._left:
            self._captures.add(cap)
        else:
            cap._closed.set_result(None)
        return cap

    def emit(self, worker_id: int, app: str, instance: int, text: str, stream: str = "sys") -> None:
        """A line the supervisor writes about a worker ("exited with code 1"): to the ring,
        the subscribers and the supervisor's own file `sys_log` (never the app's files,
        which hold exactly what the app wrote). In memory they are kept apart from the
        worker's ring (see SysLines), so its output cannot push them out."""
        now = time.time()
        flat = text.replace("\n", " ")
        block = flat.encode("utf-8", "replace") + b"\n"
        line = LogLine(worker_id, app, instance, stream, now, flat)
        self.sys.add(line)
        if self._subscribers:
            self._sys_outbox.append(line)
            del self._sys_outbox[: -self.sys.lines.maxlen]  # type: ignore[operator]
            self._arm()
        sink = self._sys_sink
        if sink is None:
            sink = self._sys_sink = self._acquire(self.sys_log, 10 * 1024 * 1024, 3)
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
            worker_ids = list(dict.fromkeys(worker_ids))
            rings = [self._rings[w] for w in worker_ids if w in self._rings]
        # The newest n lines by time, except that the newest supervisor lines keep up to
        # half of them: a flood of output cannot crowd out an exit or a reload, and a
        # small n (`logs --lines 1`) is still simply the newest line.
        sys_lines = self.sys.tail(worker_ids, n)
        kept = min(len(sys_lines), n // 2)
        guaranteed = sys_lines[len(sys_lines) - kept :]
        output = heapq.merge(*(ring.tail(n) for ring in rings), key=attrgetter("time"))
        pool = list(heapq.merge(output, sys_lines[: len(sys_lines) - kept], key=attrgetter("time")))
        rest = pool[max(0, len(pool) - (n - kept)) :] if n > kept else []
        return list(heapq.merge(rest, guaranteed, key=attrgetter("time")))

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
        path = self.sys_log
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
                    lines = tail_open(f, n - len(out), end)
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
        """Drop a worker slot's ring and supervisor lines (app deleted or scaled down)."""
        self._rings.pop(worker_id, None)
        self.sys.forget(worker_id)

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

    def _ring(self, worker_id: int, app: str, instance: int) -> Ring:
        ring = self._rings.get(worker_id)
        if ring is None:
            ring = self._rings[worker_id] = Ring(
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
            # Disk full or similar: the buffer is dropped rather than grown without bound;
            # the file gets a line counting the gap once it can be written again.
            if not sink.failed:
                sink.failed = True
                message = (
                    f"cannot write log file {sink.path}: {exc.strerror or exc}; "
                    "lines are dropped from it (counted) until it can be written again"
                )
                self._report(message)
                if sink is not self._sys_sink:
                    for worker_id, app, instance in self._writers_of(sink):
                        self.emit(worker_id, app, instance, message)

    def _writers_of(self, sink: LogSink) -> list[tuple[int, str, int]]:
        """The workers whose capture writes to `sink` now."""
        return [
            (cap.worker_id, cap.app, cap.instance)
            for cap in list(self._captures)
            if any(pipe.sink is sink for pipe in cap._pipes)
        ]

    def dropped(self, path: str) -> int:
        """Lines this hub could not write to the file at `path` (a full disk)."""
        sink = self._sinks.get(path)
        return sink.dropped_total if sink is not None else 0

    def _report(self, message: str) -> None:
        if self.notice is not None:
            self.notice("error", message)

    def _arm(self) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(TICK, self._tick)

    def _enqueue(self, ring: Ring, stream: str, t: float, block: bytes, count: int) -> None:
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
        if not self._outbox and not self._sys_outbox:
            return
        box, self._outbox = self._outbox, deque()
        self._outbox_lines = self._outbox_bytes = 0
        skipped, self._skipped = self._skipped, {}
        sys_lines, self._sys_outbox = self._sys_outbox, []
        lines = self._batch(box, skipped) if box else []
        if sys_lines:
            lines = list(heapq.merge(lines, sys_lines, key=attrgetter("time")))
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
        self, box: deque[tuple[Ring, str, float, bytes, int]], skipped: dict[int, int]
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
                materialize(ring.worker, ring.app, ring.instance, stream, t, piece) if piece else []
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
