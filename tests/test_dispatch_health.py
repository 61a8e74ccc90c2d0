"""The dispatcher's health messages, with real sockets and workers (no supervisor):
a probe connection goes to the one worker named, and an unhealthy worker gets nothing."""

from __future__ import annotations

import signal
import socket
from collections import Counter

import pytest
from dispatch_harness import Harness, instance_of
from test_dispatch import Collector, open_requests

pytestmark = pytest.mark.timeout(60)

REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def probe(h: Harness, wid: int, token: int, ack: bool = False) -> socket.socket:
    """A loopback TCP pair: hand one end to worker wid, return the other."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        ours = socket.create_connection(server.getsockname())
        theirs, _ = server.accept()
    msg = {"t": "probe", "id": wid, "token": token}
    if ack:
        msg["ack"] = True
    h.send(msg, [theirs.fileno()])
    theirs.close()
    return ours


def test_a_probe_reaches_the_worker_it_names(make) -> None:
    h = make()
    for wid in (1, 2, 3):
        h.add_worker(wid)
        h.wait_ready(wid)
    for n in range(2):
        for wid in (3, 1, 2):
            token = 10 * n + wid
            s = probe(h, wid, token, ack=True)
            s.sendall(REQUEST)
            answer = s.recv(65536).decode()
            s.close()
            assert instance_of(answer.partition("\r\n\r\n")[2]) == wid

            def acked(e: dict, token: int = token) -> bool:
                return e.get("t") == "probe" and e.get("token") == token

            assert h.wait_event(acked) == {"t": "probe", "id": wid, "token": token, "ok": True}
    # Probes are not client connections: not counted as handed.
    stats = h.stats()
    assert all(w["handed"] == 0 for w in stats["workers"].values())


def test_a_probe_to_an_unknown_worker_fails_at_once(make) -> None:
    h = make()
    probe(h, 42, 7).close()
    event = h.wait_event(lambda e: e.get("t") == "probe")
    assert event["ok"] is False and event["token"] == 7


def test_a_hung_worker_never_takes_its_probe(make) -> None:
    h = make()
    hung = h.add_worker(1)
    h.wait_ready(1)
    hung.send_signal(signal.SIGSTOP)  # here only to stop it reading its channel
    try:
        s = probe(h, 1, 9, ack=True)
        with pytest.raises(AssertionError):
            h.wait_event(lambda e: e.get("t") == "probe", timeout=1.0)
        s.close()
    finally:
        hung.send_signal(signal.SIGCONT)


def test_an_unhealthy_worker_gets_nothing_and_its_queue_goes_to_the_others(make) -> None:
    h = make()
    hung = h.add_worker(1)
    h.add_worker(2)
    h.wait_ready(1)
    h.wait_ready(2)
    hung.send_signal(signal.SIGSTOP)  # it stops reading its channel, as a hung loop does
    try:
        first = Collector(open_requests(h, 20, REQUEST))
        # Round-robin queued about half of them for worker 1, which does not read them.
        assert first.until(20, 3) < 20
        h.send({"t": "health", "id": 1, "ok": False})
        # Taken back from its channel and served by worker 2; new ones go to 2 only.
        assert first.until(20, 10) == 20
        later = Collector(open_requests(h, 20, REQUEST))
        assert later.until(20, 10) == 20
        answers = [*first.answers.values(), *later.answers.values()]
        counts = Counter(instance_of(a.partition("\r\n\r\n")[2]) for a in answers)
        assert counts == {2: 40}
        first.close()
        later.close()
    finally:
        hung.send_signal(signal.SIGCONT)
    h.send({"t": "health", "id": 1, "ok": True})  # passing again: back in the rotation
    again = Collector(open_requests(h, 10, REQUEST))
    assert again.until(10, 10) == 10
    counts = Counter(instance_of(a.partition("\r\n\r\n")[2]) for a in again.answers.values())
    assert counts == {1: 5, 2: 5}
    again.close()


def test_when_every_worker_is_unhealthy_they_still_serve(make) -> None:
    h = make()
    h.add_worker(1)
    h.add_worker(2)
    h.wait_ready(1)
    h.wait_ready(2)
    h.send({"t": "health", "id": 1, "ok": False})
    h.send({"t": "health", "id": 2, "ok": False})
    clients = Collector(open_requests(h, 10, REQUEST))
    assert clients.until(10, 10) == 10
    clients.close()
