"""A worker at its fd limit: the kernel drops handed fds it cannot install (MSG_CTRUNC);
the worker helper reports the loss ({"t":"lost"}) and the `open` count comes back to 0
once the worker closes what it holds. Before, the lost fds counted as open for ever."""

from __future__ import annotations

import subprocess

WORKER = """
import os, resource, time
from clusterui import worker
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (48, hard))
sock = worker.listening_socket()
sock.settimeout(0.2)
held = []
end = time.monotonic() + 6
while time.monotonic() < end:
    try:
        conn, _ = sock.accept()
        held.append(conn)
    except (TimeoutError, OSError):
        pass
print("held", len(held), flush=True)
for conn in held:
    conn.close()
print("closed", flush=True)
time.sleep(600)
"""


def test_fds_lost_at_the_fd_limit_are_not_counted_open(make) -> None:
    h = make()
    proc = h.add_worker(1, source=WORKER, stdout=subprocess.PIPE)
    h.wait_ready(1)
    clients = [h.connect() for _ in range(80)]  # more than the worker can hold
    try:
        held = int(proc.stdout.readline().split()[1])
        assert 0 < held < 80  # some really were lost at the limit
        assert proc.stdout.readline() == b"closed\n"
        stats = h.wait_stats(lambda s: s["workers"]["1"]["handed"] == 80, timeout=10)
        stats = h.wait_stats(lambda s: s["workers"]["1"]["open"] == 0, timeout=10)
        assert stats["workers"]["1"] == {"handed": 80, "open": 0}
    finally:
        for c in clients:
            c.close()
        proc.kill()
        proc.wait()
        proc.stdout.close()
