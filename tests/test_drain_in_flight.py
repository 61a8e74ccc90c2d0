"""A drain never cuts a request in flight on a make_server worker.

The cause of the `test_worker.py::test_threading_http_server_under_dispatcher` flake:
closing a draining server waited at most the idle grace (1 s) for every open
connection, busy or idle, then the program exited and ThreadingHTTPServer's daemon
handler threads died mid-request, so a request slower than that (or slowed by a busy
machine) came back empty. Now a request being answered is waited for; only keep-alive
connections idle past the grace are ended.
"""

from __future__ import annotations

import subprocess

from dispatch_harness import read_all
from support import http_worker

SLOW_WORKER = http_worker(
    """
    print("busy", flush=True)
    time.sleep(2.5)  # longer than the idle grace (1 s)
    body = b"slow answer\\n"
    """
)


def test_a_request_in_flight_outlives_the_idle_grace_of_a_drain(make) -> None:
    h = make()
    proc = h.add_worker(1, source=SLOW_WORKER, stdout=subprocess.PIPE)
    h.wait_ready(1)
    slow = h.connect()
    slow.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert proc.stdout.readline() == b"busy\n"  # in the handler now: deterministic
    h.drain(1)
    assert proc.stdout.readline() == b"draining\n"
    answer = read_all(slow).decode()
    assert answer.startswith("HTTP/1.1 200") and answer.endswith("slow answer\n"), answer
    assert proc.wait(timeout=15) == 0
    assert proc.stdout.read() == b"drained\n"
    proc.stdout.close()
    slow.close()
