"""The dispatcher process with real sockets and real worker processes (no supervisor)."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections import Counter

import pytest
from dispatch_harness import (
    ECHO_WORKER,
    LAZY_WORKER,
    SILENT_WORKER,
    Harness,
    instance_of,
    read_all,
)
from support import free_port, wait_for

from clusterui.dispatch import protocol as proto
from clusterui.dispatch.core import QUEUE_CAP

pytestmark = pytest.mark.timeout(60)


def open_requests(h: Harness, n: int, line: bytes = b"hi\n") -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = h.connect()
        s.sendall(line)
        socks.append(s)
    return socks


class Collector:
    """Reads complete answers (the worker closes after answering) from many clients."""

    def __init__(self, socks: list[socket.socket]) -> None:
        self.socks = socks
        self.answers: dict[socket.socket, str] = {}
        self._buffers: dict[socket.socket, bytes] = {}

    def until(self, count: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while len(self.answers) < count:
            waiting = [s for s in self.socks if s not in self.answers]
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not waiting:
                break
            readable, _, _ = select.select(waiting, [], [], min(remaining, 0.5))
            for s in readable:
                chunk = s.recv(65536)
                if chunk:
                    self._buffers[s] = self._buffers.get(s, b"") + chunk
                else:
                    self.answers[s] = self._buffers.pop(s, b"").decode()
        return len(self.answers)

    def close(self) -> None:
        for s in self.socks:
            s.close()


def test_round_robin_exact_order_and_counters(make):
    h = make()
    for wid in (1, 2, 3):
        h.add_worker(wid)
    for wid in (1, 2, 3):
        h.wait_ready(wid)
    order = [instance_of(h.get()) for _ in range(30)]
    assert order[:3] in ([1, 2, 3], [2, 3, 1], [3, 1, 2]), order  # in the order added
    assert order == order[:3] * 10, order
    stats = h.wait_stats(
        lambda s: all(w["open"] == 0 for w in s["workers"].values()) and s["accepted"] == 30
    )
    assert stats["workers"] == {str(w): {"handed": 10, "open": 0} for w in (1, 2, 3)}
    assert stats["pending"] == 0
    # Which path handed them: all by C where it is asked for (each came to ready workers
    # with room), none where the Python path is.
    assert stats["accepted_c"] == (30 if make.path == "c-path" else 0)


def test_open_connections_are_counted(make):
    h = make()
    h.add_worker(1, source=ECHO_WORKER)
    h.add_worker(2, source=ECHO_WORKER)
    h.wait_ready(1)
    h.wait_ready(2)
    held = open_requests(h, 3, b"hold\n")
    for s in held:  # each got its answer and stays open
        assert s.recv(100)
    stats = h.wait_stats(lambda s: sum(w["open"] for w in s["workers"].values()) == 3)
    assert sorted(w["open"] for w in stats["workers"].values()) == [1, 2]
    for s in held:
        s.close()
    stats = h.wait_stats(lambda s: all(w["open"] == 0 for w in s["workers"].values()))
    assert sum(w["handed"] for w in stats["workers"].values()) == stats["accepted"] == 3


def test_least_connections_prefers_the_idle_worker(make):
    h = make("least-connections")
    h.add_worker(1, source=ECHO_WORKER)
    h.wait_ready(1)
    held = open_requests(h, 3, b"hold\n")
    for s in held:
        assert s.recv(100).split()[0] == b"1"
    h.wait_stats(lambda s: s["workers"]["1"]["open"] == 3)
    h.add_worker(2, source=ECHO_WORKER)
    h.wait_ready(2)
    answers = []
    for _ in range(8):
        answers.append(instance_of(h.ask()))
        h.wait_stats(lambda s: s["workers"]["2"]["open"] == 0)
    assert answers == [2] * 8  # round-robin would have given worker 1 half of them
    for s in held:
        s.close()
    h.wait_stats(lambda s: s["workers"]["1"]["open"] == 0)
    answers = []
    for _ in range(4):
        answers.append(instance_of(h.ask()))
        h.wait_stats(lambda s: all(w["open"] == 0 for w in s["workers"].values()))
    assert sorted(answers) == [1, 1, 2, 2]  # equal load: taking turns


def test_worker_that_never_says_ready_gets_nothing(make):
    h = make()
    h.add_worker(1, source=SILENT_WORKER)
    # With no ready worker the listening socket is not even polled: the kernel holds it.
    early = h.connect()
    early.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert select.select([early], [], [], 0.3)[0] == []
    assert h.stats()["accepted"] == 0
    h.add_worker(2)
    h.wait_ready(2)
    assert "web instance 2" in read_all(early).decode()
    early.close()
    assert [instance_of(h.get()) for _ in range(10)] == [2] * 10
    stats = h.stats()
    assert stats["workers"]["1"] == {"handed": 0, "open": 0}
    assert stats["workers"]["2"]["handed"] == 11


def test_drain_finishes_in_flight_and_routes_nothing_new(make):
    h = make()
    procs = {wid: h.add_worker(wid, source=ECHO_WORKER, stdout=subprocess.PIPE) for wid in (1, 2)}
    h.wait_ready(1)
    h.wait_ready(2)
    slow = open_requests(h, 2, b"slow 1.0\n")  # one in flight on each worker
    h.wait_stats(lambda s: all(w["open"] == 1 for w in s["workers"].values()))
    h.drain(1)
    answers = [instance_of(h.ask()) for _ in range(6)]
    assert answers == [2] * 6
    slow_answers = sorted(instance_of(read_all(s).decode()) for s in slow)
    assert slow_answers == [1, 2]  # the in-flight request on the draining worker finished
    assert procs[1].wait(timeout=10) == 0
    assert procs[1].stdout.read() == b"drained\n"
    assert procs[2].poll() is None
    h.remove(1)
    assert [instance_of(h.ask()) for _ in range(2)] == [2, 2]
    procs[2].stdout.close()
    procs[1].stdout.close()


def test_killed_worker_connections_go_to_another_worker(make):
    h = make()
    lazy = h.add_worker(1, source=LAZY_WORKER)  # ready, but never takes its connections
    h.add_worker(2, source=ECHO_WORKER)
    h.wait_ready(1)
    h.wait_ready(2)
    clients = Collector(open_requests(h, 10))
    assert clients.until(5, 10) == 5
    h.wait_stats(lambda s: s["workers"]["1"]["handed"] == 5)
    lazy.send_signal(signal.SIGKILL)
    lazy.wait(timeout=5)
    h.remove(1)
    assert clients.until(10, 10) == 10
    assert {instance_of(a) for a in clients.answers.values()} == {2}
    stats = h.wait_stats(lambda s: s["workers"]["2"]["open"] == 0)
    assert stats["workers"] == {"2": {"handed": 10, "open": 0}}
    assert stats["accepted"] == 10
    clients.close()


def test_full_channel_is_skipped_not_waited_on(make):
    h = make()
    stopped = h.add_worker(1)
    h.add_worker(2)
    h.wait_ready(1)
    h.wait_ready(2)
    stopped.send_signal(signal.SIGSTOP)
    try:
        total = 300
        request = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        clients = Collector(open_requests(h, total, request))
        # Without skipping, half would wait for the stopped worker; with it, at most
        # QUEUE_CAP (64) are stranded there.
        assert clients.until(total - 64, 20) >= total - 64
        bodies = [a.partition("\r\n\r\n")[2] for a in clients.answers.values()]
        assert {instance_of(b) for b in bodies} == {2}
    finally:
        stopped.send_signal(signal.SIGCONT)
    assert clients.until(total, 20) == total  # the stopped worker's share was not lost
    counts = Counter(instance_of(a.partition("\r\n\r\n")[2]) for a in clients.answers.values())
    assert counts[1] >= 1 and counts[1] + counts[2] == total
    clients.close()


GARBAGE_WORKER = """
import os, socket, array
from clusterui import worker
chan = socket.socket(fileno=int(os.environ["CLUSTERUI_CHANNEL_FD"]))
r, w = os.pipe()
for junk in [b"", b"not json", b"[1, 2]", b'{"t": "bogus"}', b'{"t": "closed", "n": "x"}',
             b'{"no": "type"}', b"x" * 70000, b'{"t": "metrics", "values": 3}', b"\\xff\\xfe"]:
    chan.send(junk)
chan.sendmsg([b'{"t": "ready"}'], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [r]))])
os.close(r)
"""


def test_protocol_garbage_from_a_worker_is_reported_and_harmless(make):
    h = make()
    h.add_worker(1, source=GARBAGE_WORKER + ECHO_WORKER)
    h.add_worker(2, source=ECHO_WORKER)
    h.wait_ready(2)
    errors = wait_for(
        lambda: (e := [x for x in h.read_events() if x.get("t") == "error"])[1:] and e,
        10,
        "two error reports",
    )
    first, second = errors[:2]
    # The first junk, an empty datagram, named as such and as this worker's; then the
    # decoder's own reason for the second.
    assert first == {"t": "error", "id": 1, "message": "worker 1: sent an empty datagram; ignored"}
    assert second["message"].startswith("worker 1: ") and second["message"].endswith("; ignored")
    assert "None" not in second["message"]
    # Still serving everyone, the garbage sender included (its ready came with an fd
    # attached: the fd is dropped, the message ignored; the helper's ready counts).
    h.wait_ready(1)
    answers = Counter(instance_of(h.ask()) for _ in range(10))
    assert answers == {1: 5, 2: 5}
    errors = [e for e in h.read_events() if e.get("t") == "error"]
    assert 3 <= len(errors) <= 6  # rate-limited per worker
    assert h.dispatcher.poll() is None


# Two protocol errors, each on its own well under the per-second report limit.
FD_AND_BIG_WORKER = """
import os, socket, array
chan = socket.socket(fileno=int(os.environ["CLUSTERUI_CHANNEL_FD"]))
r, w = os.pipe()
fds = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [r]))]
chan.sendmsg([b'{"t": "closed", "n": 0}'], fds)
chan.send(b"x" * 70000)
"""


def test_a_worker_sending_fds_or_an_oversized_message_is_told_which(make):
    h = make()
    h.add_worker(3, source=FD_AND_BIG_WORKER + ECHO_WORKER)
    h.wait_ready(3)
    errors = [e["message"] for e in h.read_events() if e.get("t") == "error" and e["id"] == 3]
    assert errors[:2] == [
        "worker 3: sent file descriptors to the dispatcher; ignored",
        f"worker 3: message larger than {proto.MAX_MESSAGE} bytes; ignored",
    ]
    assert instance_of(h.ask()) == 3


def test_garbage_on_the_control_socket_is_reported(make):
    h = make()
    h.ctl.send(b"nonsense")
    h.send({"t": "add", "id": 5})  # no fds attached
    h.send({"t": "frobnicate"})
    errors = []
    for _ in range(3):
        errors.append(h.wait_event(lambda e: e.get("t") == "error" and e not in errors))
    assert all("bad control message" in e["message"] for e in errors)
    h.add_worker(1)
    h.wait_ready(1)
    assert "web instance 1" in h.get()


def test_metrics_are_forwarded(make):
    h = make()
    h.add_worker(3, source=ECHO_WORKER)
    h.wait_ready(3)
    assert instance_of(h.ask(b"metrics\n")) == 3
    event = h.wait_event(lambda e: e.get("t") == "metrics")
    assert event == {"t": "metrics", "id": 3, "values": {"requests": 7, "load": 0.5}}


def test_stats_are_pushed_when_something_changed(make):
    h = make()
    h.add_worker(1)
    h.wait_ready(1)
    h.get()
    pushed = h.wait_event(lambda e: e.get("t") == "stats" and e["accepted"] == 1, timeout=5)
    assert pushed["workers"]["1"]["handed"] == 1


def test_dispatcher_exits_with_its_supervisor_and_workers_follow(make):
    h = make()
    worker = h.add_worker(1)
    h.wait_ready(1)
    h.ctl.close()  # the supervisor is gone
    assert h.dispatcher.wait(timeout=10) == 0
    assert worker.wait(timeout=10) == 0  # channel EOF: the worker drains and exits


# Says ready, then reads its channel only once a file named "go" exists; answers each
# connection it is handed with one line and closes it; exits at the channel's end.
GATED_WORKER = """
import os, socket, time
from clusterui.dispatch import protocol as proto
chan = socket.socket(fileno=int(os.environ["CLUSTERUI_CHANNEL_FD"]))
chan.send(b'{"t":"ready"}')
while not os.path.exists("go"):
    time.sleep(0.02)
while (got := proto.recv(chan, block=True)) is not None:
    for fd in got[1]:
        with socket.socket(fileno=fd) as conn:
            conn.sendall(b"served\\n")
"""


def test_an_orphaned_dispatcher_hands_over_what_it_accepted_and_accepts_no_more(make):
    """On a socket handed in from outside, the supervisor may be SIGKILLed while the
    dispatcher holds accepted connections no worker has room for yet. Those must reach
    the workers (which outlive the supervisor there); what is still in the kernel's
    queue is left for the next supervisor."""
    h = make(env={"CLUSTERUI_ORPHAN_GRACE": "20"})
    worker = h.add_worker(1, source=GATED_WORKER)
    h.wait_ready(1)
    clients = [socket.create_connection(h.address, timeout=20) for _ in range(QUEUE_CAP + 40)]
    # The channel fills and the dispatcher holds some: it has accepted them all, or it
    # stopped accepting (the rest wait in the kernel's queue).
    h.wait_stats(lambda s: s["pending"] > 0)
    wait_for(
        lambda: (
            h.stats()["accepted"] == len(clients) or not h.watched()[h.listen_fd] & select.EPOLLIN
        ),
        10,
        "accepting to end",
    )
    stats = h.stats()
    accepted, held = stats["accepted"], stats["pending"]
    assert held > 0, stats
    h.ctl.close()  # the supervisor is gone
    # Seen: the control socket leaves its epoll set (or, on the old code, it exits).
    wait_for(lambda: h.control_fd not in (h.watched() or {}), 10, "the end seen")
    later = [socket.create_connection(h.address, timeout=20) for _ in range(5)]
    assert h.dispatcher.poll() is None  # it waits to hand over what it holds
    (h.tmp / "go").touch()
    # Accepted in the order they were made: the first `accepted` are the dispatcher's.
    assert [c.recv(64) for c in clients[:accepted]] == [b"served\n"] * accepted
    assert h.dispatcher.wait(timeout=10) == 0  # then it goes
    assert worker.wait(timeout=10) == 0
    # Everything else, the 5 made after the supervisor died too, is still queued on
    # the socket, unaccepted: the next supervisor's.
    h.lsock.setblocking(False)
    queued = []
    with contextlib.suppress(BlockingIOError):
        while True:
            queued.append(h.lsock.accept()[0])
    assert len(queued) == len(clients) - accepted + len(later)
    for s in (*clients, *later, *queued):
        s.close()


def test_unknown_mode_is_one_clear_sentence():
    proc = subprocess.run(
        [sys.executable, "-m", "clusterui.dispatch", "random"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "CLUSTERUI_LISTEN_FD": "0", "CLUSTERUI_CONTROL_FD": "0"},
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "unknown mode 'random'" in proc.stderr


# ---- proxy mode ---------------------------------------------------------------------


def http_server(h: Harness, wid: int, tmp_path) -> int:
    root = tmp_path / f"www{wid}"
    root.mkdir()
    (root / "id.txt").write_text(str(wid))
    (root / "big.bin").write_bytes(os.urandom(3_000_000))
    port = free_port()
    h.add_proxy_worker(
        wid,
        [sys.executable, "-c", HTTP_SERVER, str(root)],
        port,
    )
    return port


HTTP_SERVER = """
import functools, http.server, os, sys

class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

handler = functools.partial(Quiet, directory=sys.argv[1])
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), handler).serve_forever()
"""

ECHO_UPSTREAM = """
import asyncio, os

async def echo(reader, writer):
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()

async def main():
    server = await asyncio.start_server(echo, "127.0.0.1", int(os.environ["PORT"]))
    await server.serve_forever()

asyncio.run(main())
"""


def test_proxy_mode_forwards_to_plain_servers(make, tmp_path):
    h = make("proxy")
    for wid in (1, 2):
        http_server(h, wid, tmp_path)
    h.wait_ready(1)
    h.wait_ready(2)
    bodies = [h.get("/id.txt") for _ in range(6)]
    assert sorted(bodies[:2]) == ["1", "2"] and bodies == bodies[:2] * 3
    with h.connect() as s:
        s.sendall(b"GET /big.bin HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(7000):  # a slow reader: back-pressure to the upstream
            data += chunk
    expected = (tmp_path / "www1" / "big.bin").read_bytes()
    assert data.endswith(expected) or data.endswith((tmp_path / "www2" / "big.bin").read_bytes())
    stats = h.wait_stats(lambda s: all(w["open"] == 0 for w in s["workers"].values()))
    assert sum(w["handed"] for w in stats["workers"].values()) == 7


def test_proxy_mode_both_directions_and_half_close(make, tmp_path):
    h = make("proxy")
    h.add_proxy_worker(1, [sys.executable, "-c", ECHO_UPSTREAM], free_port())
    h.wait_ready(1)
    payload = os.urandom(2_000_000)
    with h.connect() as s:
        received = bytearray()
        view = memoryview(payload)
        s.setblocking(False)
        sent = 0
        shut = False
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            want_write = [s] if not shut else []
            r, w, _ = select.select([s], want_write, [], 1)
            if w:
                sent += s.send(view[sent : sent + 65536])
                if sent == len(payload):
                    s.shutdown(socket.SHUT_WR)  # the upstream sees EOF and closes
                    shut = True
            if r:
                chunk = s.recv(65536)
                if not chunk:
                    break
                received += chunk
    assert bytes(received) == payload


def test_proxy_mode_waits_for_the_port_and_survives_a_dead_upstream(make, tmp_path):
    h = make("proxy")
    late_port = free_port()
    # Announce a worker whose port nobody listens on yet: not ready, gets nothing.
    h.send({"t": "add", "id": 7, "port": late_port})
    http_server(h, 1, tmp_path)
    h.wait_ready(1)
    assert [h.get("/id.txt") for _ in range(3)] == ["1", "1", "1"]
    assert {"t": "ready", "id": 7} not in h.read_events()
    h.workers[7] = h.spawn(
        [sys.executable, "-c", HTTP_SERVER, str(tmp_path / "www1")], env={"PORT": str(late_port)}
    )
    h.wait_ready(7)
    # Worker 1 dies without a word: connections to it are refused and rerouted.
    h.workers[1].kill()
    h.workers[1].wait(timeout=5)
    assert [h.get("/id.txt") for _ in range(4)] == ["1"] * 4  # all served by 7's copy
    stats = h.stats()
    assert stats["workers"]["7"]["handed"] >= 4


# Says ready, then leaves its channel unread until SIGUSR1, so the channel fills up. Then
# it answers every connection it was handed ("held"), says "drain" when the drain message
# comes, and at end of file (the dispatcher's remove) prints what it got, as JSON. With
# HELD_READ_FIRST=n it takes n datagrams at the first SIGUSR1, says "took", and waits for
# a second SIGUSR1 before the rest.
HELD_WORKER = """
import fcntl, json, os, signal, socket, sys, termios
from clusterui.dispatch import protocol as proto
chan = socket.socket(fileno=int(os.environ["CLUSTERUI_CHANNEL_FD"]))
chan.setblocking(True)
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
chan.send(proto.READY)
signal.sigwait([signal.SIGUSR1])
got = {"waiting_bytes": 0, "conns": 0, "drains": 0, "after_drain": []}

def take(data, fds):
    if got["drains"]:
        got["after_drain"].append(data.decode())
    if data == proto.DRAIN:
        got["drains"] += 1
        print("drain", flush=True)
    for fd in fds:
        with socket.socket(fileno=fd) as conn:
            conn.recv(64)  # the client's line: closing with it unread would reset
            conn.sendall(b"held\\n")
    got["conns"] += len(fds)

for _ in range(int(os.environ.get("HELD_READ_FIRST", "0"))):
    take(*proto.recv(chan, block=True)[:2])
if os.environ.get("HELD_READ_FIRST"):
    print("took", flush=True)
    signal.sigwait([signal.SIGUSR1])
raw = fcntl.ioctl(chan.fileno(), termios.FIONREAD, b"\\0" * 4)
got["waiting_bytes"] = int.from_bytes(raw, sys.byteorder)
while (msg := proto.recv(chan, block=True)) is not None:
    take(*msg[:2])
print(json.dumps(got), flush=True)
"""


class Lines:
    """A worker's stdout, line by line; waiting for one fails after `timeout`, naming it."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.fd = proc.stdout.fileno()
        self.buf = b""

    def next(self, timeout: float, what: str) -> bytes:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.fd], [], [], max(0.0, left))
            assert ready, f"timed out after {timeout:g} s waiting for {what}"
            chunk = os.read(self.fd, 65536)
            assert chunk, f"the worker closed its output before {what}"
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line


def fill_channel(h: Harness, wid: int) -> list[socket.socket]:
    """Connect one client at a time until the dispatcher cannot hand the next one to
    worker `wid` (its only worker, which does not read its channel): each connection
    is one datagram, so the channel's send buffer, not QUEUE_CAP, is what fills."""
    clients: list[socket.socket] = []
    for n in range(1, QUEUE_CAP + 1):
        clients.append(h.connect())
        clients[-1].sendall(b"hi\n")
        stats = h.wait_stats(
            lambda s, n=n: (
                s["accepted"] == n and (s["workers"][str(wid)]["handed"] == n or s["pending"] > 0)
            )
        )
        if stats["pending"]:
            assert stats["pending"] == 1 and stats["workers"][str(wid)]["handed"] == n - 1
            return clients
    raise AssertionError(f"the channel took {QUEUE_CAP} connections without filling up")


def held_summary(h: Harness, held: subprocess.Popen, out: Lines) -> dict:
    """Once the held worker got its drain: remove it, and return what it got in all."""
    assert out.next(30, "worker 1 to get its drain message") == b"drain"
    # A second drain message would be sent when the dispatcher sees the channel writable,
    # which it did while the worker read (before this answer): then it would be queued.
    h.stats()
    h.remove(1)  # its channel closes: the worker says what it got
    got = json.loads(out.next(30, "worker 1's summary"))
    assert held.wait(timeout=30) == 0
    return got


def test_drain_waits_for_room_in_a_full_channel(make):
    """The drain message of a worker whose channel is full goes out once there is room:
    the worker drains (not only stops getting connections), after everything it was
    handed, and the connection that did not fit goes to another worker."""
    h = make()
    held = h.add_worker(1, source=HELD_WORKER, stdout=subprocess.PIPE)
    out = Lines(held)
    h.wait_ready(1)
    clients = fill_channel(h, 1)
    handed = len(clients) - 1
    h.drain(1)
    h.stats()  # answered after the drain: the dispatcher tried to send it, to a full channel
    h.add_worker(2, source=ECHO_WORKER)
    h.wait_ready(2)
    held.send_signal(signal.SIGUSR1)
    got = held_summary(h, held, out)
    held.stdout.close()
    # waiting_bytes: when the dispatcher tried, the drain did not fit (only conns waited).
    assert got == {
        "waiting_bytes": handed * len(proto.CONN),
        "conns": handed,
        "drains": 1,
        "after_drain": [],
    }
    answers = [read_all(c).decode() for c in clients]
    assert answers[:handed] == ["held\n"] * handed
    assert instance_of(answers[-1]) == 2
    for c in clients:
        c.close()


def test_connections_handed_once_a_full_channel_has_room_are_reported_unasked(make):
    """The connection that waited for room in a full channel is handed when the channel
    turns writable, and the dispatcher pushes the new figures to the supervisor (the
    connection counts `ls` shows) without being asked: this worker reports nothing."""
    h = make()
    held = h.add_worker(1, source=HELD_WORKER, stdout=subprocess.DEVNULL)
    h.wait_ready(1)
    clients = fill_channel(h, 1)
    assert h.read_events()[-1]["pending"] == 1  # from here on, nothing asks for stats
    held.send_signal(signal.SIGUSR1)  # it takes everything off its channel

    def all_handed(e: dict) -> bool:
        return e.get("t") == "stats" and (e["pending"], e["workers"]["1"]["handed"]) == (
            0,
            len(clients),
        )

    h.wait_event(all_handed, what="pushed stats with every connection handed")
    assert [read_all(c) for c in clients] == [b"held\n"] * len(clients)
    for c in clients:
        c.close()


def test_a_drain_that_fits_is_sent_once(make):
    """A channel that was full has room for the drain message again, but the kernel says
    "writable" only later (a unix socket: once 3/4 of its buffer is free). The drain goes
    out at once, and not a second time when the channel turns writable."""
    h = make()
    held = h.add_worker(1, source=HELD_WORKER, stdout=subprocess.PIPE, env={"HELD_READ_FIRST": "1"})
    out = Lines(held)
    h.wait_ready(1)
    clients = fill_channel(h, 1)
    handed = len(clients) - 1
    held.send_signal(signal.SIGUSR1)
    assert out.next(30, "worker 1 to take one connection") == b"took"
    h.drain(1)
    h.stats()
    h.add_worker(2, source=ECHO_WORKER)
    h.wait_ready(2)
    held.send_signal(signal.SIGUSR1)
    got = held_summary(h, held, out)
    held.stdout.close()
    # waiting_bytes: the drain message was in the channel, behind the connections.
    assert got == {
        "waiting_bytes": (handed - 1) * len(proto.CONN) + len(proto.DRAIN),
        "conns": handed,
        "drains": 1,
        "after_drain": [],
    }
    answers = [read_all(c).decode() for c in clients]
    assert answers[:handed] == ["held\n"] * handed
    assert instance_of(answers[-1]) == 2
    for c in clients:
        c.close()


# Speaks Node's IPC framing as the preload does: says ready, acknowledges each handle (and
# answers its connection), and exits 0 once the drain line comes.
NODE_FRAMED_WORKER = """
import os, socket
from clusterui.dispatch import node as nodeproto
from clusterui.dispatch import protocol as proto
chan = socket.socket(fileno=int(os.environ["NODE_CHANNEL_FD"]))
chan.sendall(nodeproto.line({"t": "ready"}))
buf = b""
while True:
    data, anc, _, _ = chan.recvmsg(65536, socket.CMSG_SPACE(4 * 8))
    assert data, "the channel closed before the drain line"
    for fd in proto.unpack_fds(anc):
        with socket.socket(fileno=fd) as conn:
            conn.recv(64)
            conn.sendall(b"node\\n")
    lines, buf, _ = nodeproto.split_lines(buf, data)
    for line in lines:
        if line == nodeproto.DRAIN.rstrip(b"\\n"):
            raise SystemExit(0)
        if b"NODE_HANDLE" in line:
            chan.sendall(nodeproto.ACK + b"\\n")
"""


def test_a_node_framed_worker_gets_its_drain_line(make):
    """Workers on Node's framing drain too: the drain line reaches the worker (which
    exits), and nothing new is routed to it."""
    h = make()
    node = h.add_node_worker(1, NODE_FRAMED_WORKER)
    h.add_worker(2, source=ECHO_WORKER)
    h.wait_ready(1)
    h.wait_ready(2)
    assert {h.ask() for _ in range(2)} >= {"node\n"}  # it serves until drained
    h.drain(1)
    assert node.wait(timeout=30) == 0
    assert [instance_of(h.ask()) for _ in range(4)] == [2] * 4
