"""A worker that costs as little as a protocol v1 worker can: for bench/dispatch.py's
capacity rows, where the dispatcher, not the worker, should be what runs out.

It takes connections off its channel (CLUSTERUI_CHANNEL_FD), reads each request, writes
one fixed HTTP answer with ``Connection: close`` and closes, in one blocking loop: no
asyncio, no HTTP parsing. It reports what it closed, in batches, as a worker must.
"""

from __future__ import annotations

import os
import select
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from clusterui.dispatch import protocol as proto  # noqa: E402

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"


REPORT_EVERY = 0.05  # seconds: closed counts go out in batches, as clusterui.worker's do


def main() -> None:
    channel = socket.socket(fileno=int(os.environ["CLUSTERUI_CHANNEL_FD"]))
    proto.send(channel, proto.READY, block=True)
    closed = 0
    reported = time.monotonic()
    while True:
        if closed and time.monotonic() - reported >= REPORT_EVERY:
            proto.send(channel, {"t": "closed", "n": closed}, block=True)
            closed, reported = 0, time.monotonic()
        # Wait with select, not a socket timeout: that would set O_NONBLOCK on the open
        # file, which the dispatcher's copy of this end shares.
        if closed and not select.select([channel], [], [], REPORT_EVERY)[0]:
            continue
        got = proto.recv(channel, block=True)
        if got is None:
            return  # the dispatcher is gone
        data, fds, _truncated = got
        if proto.decode(data)["t"] != "conn":
            proto.close_fds(fds)
            continue  # a drain: this worker serves until it is stopped
        for fd in fds:
            conn = socket.socket(fileno=fd)
            try:
                conn.recv(4096)
                conn.sendall(ANSWER)
            except OSError:
                pass
            finally:
                conn.close()
        closed += len(fds)


if __name__ == "__main__":
    main()
