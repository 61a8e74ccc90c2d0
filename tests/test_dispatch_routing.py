"""The dispatcher's routing decisions on their own: how a batch of pending connections is
shared out, when a worker that leaves connections unread is skipped, and how the count
of unread ones follows the channel. The same code runs end to end in test_dispatch.py;
these pin the cases a run of real connections cannot aim at (a batch's order, a count of
exactly QUEUE_CAP, a channel read part way)."""

from __future__ import annotations

import collections
import socket
import time

import pytest

from clusterui.dispatch import protocol as proto
from clusterui.dispatch.core import (
    QUEUE_CAP,
    RECHECK,
    Backend,
    Dispatcher,
    _fewest_open,
    _rotate,
)


def backends(*open_counts: int) -> list[Backend]:
    """Ready workers in turn order, each with this many connections open."""
    out = []
    for seq, count in enumerate(open_counts):
        w = Backend(seq + 1, seq)
        w.ready = True
        w.handed = count
        out.append(w)
    return out


def share(strategy, targets: list[Backend], start: int, n: int) -> tuple[list[list[str]], int]:
    pending = collections.deque(f"c{i}" for i in range(n))
    groups: list[list[str]] = [[] for _ in targets]
    last = strategy(targets, start, pending, groups)
    assert not pending
    return groups, last


def test_rotate_deals_a_batch_forward_from_the_start_and_names_the_last():
    groups, last = share(_rotate, backends(0, 0, 0), start=1, n=7)
    assert groups == [["c2", "c5"], ["c0", "c3", "c6"], ["c1", "c4"]]
    assert last == 1  # c6 went to the second worker: the next batch starts after it


def test_fewest_open_goes_to_the_least_busy_and_breaks_ties_in_turn():
    # Open: 3, 0, 1. c0 to the idle one; then 3, 1, 1: the tie goes to the next in turn
    # after the last pick (index 2); then 3, 1, 2 and 3, 2, 2 (a tie again: index 2).
    groups, last = share(_fewest_open, backends(3, 0, 1), start=0, n=4)
    assert groups == [[], ["c0", "c2"], ["c1", "c3"]]
    assert last == 2


def test_fewest_open_looks_forward_in_turn_from_the_start():
    # The two idle ones tie: the first after the start wins, not the last.
    groups, _ = share(_fewest_open, backends(5, 1, 1), start=0, n=1)
    assert groups == [[], ["c0"], []]


def test_fewest_open_counts_what_it_hands_in_the_same_batch():
    groups, _ = share(_fewest_open, backends(0, 0), start=0, n=6)
    assert groups == [["c0", "c2", "c4"], ["c1", "c3", "c5"]]
    # Open 0 and 2: the first gets two (one each time it is the least busy, then a tie
    # it loses to the turn), then the second.
    groups, _ = share(_fewest_open, backends(0, 2), start=0, n=3)
    assert groups == [["c0", "c1"], ["c2"]]


@pytest.fixture
def dispatcher():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    d = Dispatcher(None, ours, "round-robin")
    yield d
    d.close()
    theirs.close()


def test_a_worker_with_queue_cap_connections_unread_is_skipped(dispatcher):
    full, room = backends(0, 0)
    for w in (full, room):
        dispatcher.workers[w.id] = w
    # No worker end to ask (wend None): the dispatcher's own count is what it goes by.
    full.queued_fds = QUEUE_CAP
    room.queued_fds = QUEUE_CAP - 1
    assert dispatcher._targets() == [room]


def test_the_unread_count_follows_what_the_worker_takes_off_its_channel(dispatcher):
    w = backends(0)[0]
    dend, wend = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    w.dend, w.wend = dend, wend
    try:
        # Three conn datagrams sent, with 2, 1 and 3 connections (fds are not needed for
        # the count: FIONREAD counts the datagrams' bytes).
        for size in (2, 1, 3):
            dend.send(proto.CONN)
            w.queued.append(size)
            w.queued_fds += size
        assert dispatcher._queued(w) == 6
        wend.recv(64)
        wend.recv(64)  # the worker took the first two
        assert dispatcher._queued(w) == 3
        assert (w.taken, list(w.queued)) == (2, [3])
        wend.recv(64)
        assert dispatcher._queued(w) == 0
        assert w.taken == 3
    finally:
        dend.close()
        wend.close()


def test_when_every_worker_failed_its_probe_the_ready_ones_still_serve(dispatcher):
    """Serving badly beats refusing all, but not through a worker that is draining, whose
    channel is full, or that never said ready."""
    fallback, draining, full, unready = backends(0, 0, 0, 0)
    draining.draining = True
    full.full = True
    unready.ready = False
    for w in (fallback, draining, full, unready):
        w.unhealthy = True
        dispatcher.workers[w.id] = w
    assert dispatcher._routable() == [fallback]


def test_with_every_worker_busy_the_pending_ones_are_looked_at_again_soon(dispatcher):
    """No event says a worker took connections off its channel: the dispatcher must set
    itself a time to look again, RECHECK from now, not never and not in the past."""
    busy = backends(0)[0]
    busy.queued_fds = QUEUE_CAP
    dispatcher.workers[busy.id] = busy
    dispatcher.pending.append("c0")
    before = time.monotonic()
    dispatcher._route()
    assert list(dispatcher.pending) == ["c0"]
    assert before + RECHECK <= dispatcher.recheck_at <= time.monotonic() + RECHECK
