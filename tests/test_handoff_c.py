"""The dispatcher's C hot path (dispatch/_handoff.c) called directly, on real sockets.

The dispatcher tests (tests/test_dispatch.py and the rest through `make`) run it in its
place; these pin what its callers rely on: who gets which connection, what comes back
unhanded, and when the loop mode returns. Importing it fails (not skips) where it was
not built: the tests run where the install had a compiler.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import time
from collections.abc import Iterator

import pytest
from support import wait_for

from clusterui.dispatch import _handoff
from clusterui.dispatch import protocol as proto
from clusterui.dispatch.core import _TCPI_UNACKED, _TCPI_UNACKED_OFFSET

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def listener() -> Iterator[tuple[socket.socket, list[socket.socket]]]:
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(256)
    lsock.setblocking(False)
    clients: list[socket.socket] = []
    yield lsock, clients
    for c in clients:
        c.close()
    lsock.close()


def connect(lsock: socket.socket, clients: list[socket.socket], n: int) -> None:
    """n connections waiting in lsock's accept queue, each having sent its number."""
    for _ in range(n):
        c = socket.create_connection(lsock.getsockname())
        c.sendall(f"{len(clients)}\n".encode())
        clients.append(c)
    wait_for(lambda: accept_queue(lsock) >= n, 5, f"{n} connections in the accept queue")


def accept_queue(lsock: socket.socket) -> int:
    """Connections waiting to be accepted, read as the dispatcher reads them."""
    info = lsock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 32)
    return _TCPI_UNACKED.unpack_from(info, _TCPI_UNACKED_OFFSET)[0]


def channels(n: int) -> list[tuple[socket.socket, socket.socket]]:
    return [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(n)]


def received(wend: socket.socket) -> list[list[int]]:
    """The client numbers each conn datagram on a channel carried, in order."""
    got = []
    wend.setblocking(False)
    while True:
        try:
            data, fds, _truncated = proto.recv(wend)
        except BlockingIOError:
            return got
        assert data == proto.CONN
        numbers = []
        for fd in fds:
            with socket.socket(fileno=fd) as s:
                numbers.append(int(s.recv(16)))
        got.append(numbers)


def test_each_target_gets_its_turn_in_one_datagram(listener):
    lsock, clients = listener
    connect(lsock, clients, 7)
    chans = channels(3)
    got, sent, sizes, last, leftover, failed, send_err, accept_err = _handoff.accept_hand(
        lsock.fileno(), 64, [d.fileno() for d, _ in chans], [64] * 3, 2, proto.CONN
    )
    assert (got, leftover, failed, send_err, accept_err) == (7, [], -1, 0, 0)
    # Connection k goes to target (2 + k) % 3: 0, 3, 6 to target 2; 1, 4 to 0; 2, 5 to 1.
    assert [received(w) for _, w in chans] == [[[1, 4]], [[2, 5]], [[0, 3, 6]]]
    assert sent == (2, 2, 3)
    assert sizes == (bytes([2]), bytes([2]), bytes([3]))
    assert last == (2 + 7 - 1) % 3


def test_a_share_past_its_cap_hands_nothing_and_returns_every_fd_in_order(listener):
    lsock, clients = listener
    connect(lsock, clients, 4)
    chans = channels(2)
    got, sent, sizes, last, leftover, failed, *_ = _handoff.accept_hand(
        lsock.fileno(), 64, [d.fileno() for d, _ in chans], [1, 64], 0, proto.CONN
    )
    assert (got, sent, sizes, last, failed) == (4, (0, 0), (b"", b""), -1, -1)
    numbers = []
    for fd in leftover:
        with socket.socket(fileno=fd) as s:
            numbers.append(int(s.recv(16)))
    assert numbers == [0, 1, 2, 3]
    assert [received(w) for _, w in chans] == [[], []]


def test_a_failed_send_stops_there_and_returns_what_was_not_handed(listener):
    lsock, clients = listener
    connect(lsock, clients, 4)
    chans = channels(2)
    chans[1][1].close()  # the second worker's end is gone: sending to it fails
    got, sent, _sizes, last, leftover, failed, send_err, _ = _handoff.accept_hand(
        lsock.fileno(), 64, [d.fileno() for d, _ in chans], [64, 64], 0, proto.CONN
    )
    assert (got, sent, failed, send_err, last) == (4, (2, 0), 1, errno.EPIPE, -1)
    assert received(chans[0][1]) == [[0, 2]]
    numbers = []
    for fd in leftover:
        with socket.socket(fileno=fd) as s:
            numbers.append(int(s.recv(16)))
    assert numbers == [1, 3]  # target 1's share, oldest first


def epoll_on(lsock: socket.socket) -> select.epoll:
    ep = select.epoll()
    ep.register(lsock.fileno(), select.EPOLLIN)
    return ep


def test_loop_mode_takes_batch_after_batch_until_the_deadline(listener):
    lsock, clients = listener
    connect(lsock, clients, 40)
    chans = channels(2)
    with epoll_on(lsock) as ep:
        began = time.monotonic()
        got, sent, sizes, last, leftover, failed, *_ = _handoff.accept_hand(
            lsock.fileno(),
            4,
            [d.fileno() for d, _ in chans],
            [64, 64],
            0,
            proto.CONN,
            ep.fileno(),
            began + 0.3,
        )
        took = time.monotonic() - began
    assert (got, sent, leftover, failed, last) == (40, (20, 20), [], -1, 1)
    assert sizes == (bytes([2] * 10), bytes([2] * 10))  # one datagram per target per batch
    assert 0.25 < took < 2.0  # it waited for more until the deadline, then returned
    assert [sum(map(len, received(w))) for _, w in chans] == [20, 20]


def test_loop_mode_keeps_to_a_past_deadline_even_while_batches_come_full(listener):
    lsock, clients = listener
    connect(lsock, clients, 40)
    chans = channels(2)
    with epoll_on(lsock) as ep:
        got, sent, *_ = _handoff.accept_hand(
            lsock.fileno(),
            4,
            [d.fileno() for d, _ in chans],
            [64, 64],
            0,
            proto.CONN,
            ep.fileno(),
            time.monotonic() - 10,
        )
    assert (got, sent) == (4, (2, 2))  # one batch, though 36 more wait


def test_loop_mode_returns_at_once_when_anything_else_is_ready(listener):
    lsock, clients = listener
    connect(lsock, clients, 3)
    chans = channels(2)
    other_r, other_w = socket.socketpair()
    with epoll_on(lsock) as ep, other_r, other_w:
        ep.register(other_r.fileno(), select.EPOLLIN)
        other_w.send(b"x")  # a control message, say: Python must see it
        began = time.monotonic()
        got, *_ = _handoff.accept_hand(
            lsock.fileno(),
            64,
            [d.fileno() for d, _ in chans],
            [64, 64],
            0,
            proto.CONN,
            ep.fileno(),
            began + 5,
        )
        assert time.monotonic() - began < 1.0
    assert got == 3


def test_bad_arguments_are_refused_before_anything_is_accepted(listener):
    lsock, clients = listener
    connect(lsock, clients, 1)
    a, b = channels(1)[0]
    with a, b:
        for args in (
            (lsock.fileno(), 0, [a.fileno()], [64], 0, proto.CONN),  # room 0
            (lsock.fileno(), 4, [], [], 0, proto.CONN),  # no target
            (lsock.fileno(), 4, [a.fileno()], [65], 0, proto.CONN),  # cap past 64
            (lsock.fileno(), 4, [a.fileno()], [64, 64], 0, proto.CONN),  # lengths differ
        ):
            with pytest.raises(ValueError):
                _handoff.accept_hand(*args)
    # The connection is still in the queue: nothing was accepted and lost.
    fd, _addr = lsock._accept()
    os.close(fd)
