"""Reading a worker's stdout/stderr pipes: one bounded read per wake-up, complete lines
handed to the hub as one block."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from clusterui.core.logs.lines import MAX_LINE
from clusterui.core.logs.ring import split_long
from clusterui.core.logs.sink import LogSink

if TYPE_CHECKING:
    from clusterui.core.logs.hub import LogHub

# One os.read per wake-up, so a flooding worker costs the loop one bounded slice per turn.
READ_SIZE = 64 * 1024
# A file buffer is written out once it holds this much, else at the next tick.
FLUSH_BYTES = 256 * 1024
# A flooding worker's pipe is grown to this, so it can run ahead while the loop is busy.
PIPE_SIZE = 1024 * 1024
# Reads allowed when force-closing a capture whose pipe is still open (a live grandchild
# could keep it full forever); more than any pipe can hold.
DRAIN_READS = 64


class StreamCapture:
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
                data = split_long(data)
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
                block = split_long(block)
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
        self._pipes: list[StreamCapture] = []
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
