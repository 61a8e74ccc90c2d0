"""The dispatcher's epoll loop: accept, hand fds to workers (or proxy bytes), report.

Everything runs in one thread on level-triggered epoll with non-blocking sockets;
no asyncio in the hot path. See the package docstring for the control messages.
"""

from __future__ import annotations

import array
import collections
import contextlib
import errno
import fcntl
import os
import select
import socket
import struct
import sys
import termios
import time
from collections.abc import Callable, Sequence
from typing import Any

from clusterui.dispatch import node as nodeproto
from clusterui.dispatch import protocol as proto
from clusterui.vocab.exits import Exit

try:  # the hot path in C (_handoff.c), built where a compiler was at install time
    from clusterui.dispatch import _handoff
except ImportError:  # pragma: no cover - depends on the install
    _handoff = None  # type: ignore[assignment]
# Run the Python path even where the C one is built: for tests and A/B benchmarks.
PURE_ENV = "CLUSTERUI_DISPATCH_PURE"

MODES = proto.DISPATCHER_MODES

ACCEPT_BATCH = 64  # connections accepted per wakeup, at most
FDS_PER_MESSAGE = 64  # fds in one conn datagram, at most
PENDING_CAP = 1024  # accepted connections waiting for a worker; beyond it we stop accepting
# Connections sent to a worker that it has not taken off its channel yet. A worker
# with this many is skipped (it is busy or stuck), so a frozen worker strands at most
# this many clients. Measured exactly: see Dispatcher._queued.
QUEUE_CAP = 64
RECHECK = 0.01  # every worker busy: look again this soon
# Bounds what queues up for one worker before it counts as full (~768 bytes of
# buffer per datagram: 16 KiB, doubled by the kernel, holds ~43 datagrams).
CHANNEL_SNDBUF = 16 * 1024
READ_BATCH = 64  # datagrams read from one socket per wakeup, so nobody starves the loop
STATS_INTERVAL = 1.0
# One of several dispatchers: what a killed one did since its last report is lost to the
# sum the supervisor keeps (core/listener.py), so they report more often while busy.
SHARED_STATS_INTERVAL = 0.25
PROBE_INTERVAL = 0.075
PROBE_TAKEN_CHECK = 0.02  # while a health probe waits in a channel: look this often
ACCEPT_BACKOFF = 0.1  # after EMFILE and friends
PROXY_CHUNK = 256 * 1024
OUT_CAP = 1000  # queued messages to a supervisor that is not reading
ERRORS_PER_SECOND = 5  # per worker; the rest are counted and summarised

IN = select.EPOLLIN
OUT = select.EPOLLOUT
ERR = select.EPOLLERR
HUP = select.EPOLLHUP

_ACCEPT_RETRY = {errno.ECONNABORTED, errno.EPROTO, errno.EINTR, errno.EPERM}
_ACCEPT_BACKOFF = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_CONN_ANC_LEVEL = (socket.SOL_SOCKET, socket.SCM_RIGHTS)
LOST_WINDOW = 4096  # conn datagrams remembered for a worker's "lost" report
# struct tcp_info: on a listening socket, tcpi_unacked is the accept queue's length.
_TCPI_UNACKED = struct.Struct("I")
_TCPI_UNACKED_OFFSET = 24


class Backend:
    """The dispatcher's record of one worker: its channel, readiness and counters."""

    __slots__ = (
        "id",
        "seq",
        "dend",
        "wend",
        "port",
        "host",
        "ready",
        "draining",
        "full",
        "queued",
        "queued_fds",
        "drain_pending",
        "handed",
        "closed",
        "pipes",
        "probe",
        "next_probe",
        "err_window",
        "err_count",
        "err_suppressed",
        "sent_sizes",
        "sent_conns",
        "node",
        "rbuf",
        "obuf",
        "unhealthy",
        "probes",
        "taken",
        "probe_marks",
        "shared",
    )

    def __init__(self, wid: Any, seq: int) -> None:
        self.id = wid
        self.seq = seq
        self.dend: socket.socket | None = None  # our end of the channel
        self.wend: socket.socket | None = None  # the worker's end, kept to recover fds
        self.port: int | None = None  # proxy mode
        self.host = "127.0.0.1"
        self.ready = False
        self.draining = False
        self.full = False  # channel would block: skipped until writable
        # Fd counts of the conn datagrams that may still sit in the worker's queue.
        self.queued: collections.deque[int] = collections.deque()
        self.queued_fds = 0
        self.drain_pending = False  # the drain message still has to go out
        self.handed = 0
        self.closed = 0  # as reported by the worker
        # Fd counts of the last conn datagrams sent, the newest last, and how many were
        # sent in all: a worker that lost fds of datagram N (its fd limit) says so.
        self.sent_sizes: collections.deque[int] = collections.deque(maxlen=LOST_WINDOW)
        self.sent_conns = 0
        self.pipes = 0  # proxy mode: open forwarded connections
        self.probe: socket.socket | None = None
        self.next_probe = 0.0
        self.err_window = 0.0
        self.err_count = 0
        self.err_suppressed = 0
        self.node = False  # Node's IPC framing (dispatch.node) instead of protocol v1
        self.rbuf = b""  # node: a partial line read from the worker
        self.obuf = b""  # node: the rest of a line the channel took only part of
        self.unhealthy = False  # the supervisor's health probe failed: no new connections
        self.probes = 0  # probe connections handed (not in `handed`, but in `closed`)
        self.taken = 0  # conn datagrams the worker has taken off its channel, in total
        # (datagram number, token) of probe connections not yet taken by the worker.
        self.probe_marks: collections.deque[tuple[int, Any]] = collections.deque()
        # One of several dispatchers sharing the channel: `closed` counts what the others
        # handed too, so `open` here is this dispatcher's share of a sum (may be < 0).
        self.shared = False

    @property
    def routable(self) -> bool:
        return self.ready and not self.draining and not self.full and not self.unhealthy

    @property
    def open(self) -> int:
        if self.port is not None:
            return self.pipes
        n = self.handed + self.probes - self.closed
        return n if self.shared else max(0, n)


# Routing strategies (clusterui.dispatch.protocol.Mode.route): share out every pending
# connection among `targets` (ready workers, in turn order) into `groups`, starting the
# turn at `start`; return the index of the worker that got the last one.


def _rotate(targets: list[Backend], start: int, pending: collections.deque, groups: list) -> int:
    """Each worker in turn."""
    count = len(targets)
    n = len(pending)
    for i in range(n):
        groups[(start + i) % count].append(pending.popleft())
    return (start + n - 1) % count


def _fewest_open(
    targets: list[Backend], start: int, pending: collections.deque, groups: list
) -> int:
    """The worker with the fewest open connections; ties go to the next in turn."""
    count = len(targets)
    loads = [w.open for w in targets]
    best = start
    for _ in range(len(pending)):
        best = start
        for j in range(1, count):
            k = (start + j) % count
            if loads[k] < loads[best]:
                best = k
        groups[best].append(pending.popleft())
        loads[best] += 1
        start = (best + 1) % count
    return best


_STRATEGIES = {"rotate": _rotate, "fewest-open": _fewest_open}


def _c_path_serves(proxy: bool, strategy: Callable[..., int]) -> bool:
    """Whether the C hot path (_handoff.accept_hand) may hand this dispatcher's
    connections: handoff in turn, where it was built and not turned off (PURE_ENV)."""
    return (
        _handoff is not None and not proxy and strategy is _rotate and not os.environ.get(PURE_ENV)
    )


class Dispatcher:
    def __init__(
        self,
        listen_sock: socket.socket | None,
        control: socket.socket,
        mode: str,
        orphan_grace: float = 0.0,
        shared: str = "",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown dispatch mode {mode!r} (expected one of {', '.join(MODES)})")
        if shared and not proto.MODES[mode].shareable:
            raise ValueError(f"{mode} runs one dispatcher per listener")
        self.mode = mode
        # One of several dispatchers of this listener (proto.PRIMARY or proto.HELPER),
        # or "" alone. A helper never reads a worker's channel: the primary does, and
        # the supervisor tells the helpers what they need (ready); see Listener.
        self.shared = shared
        self.helper = shared == proto.HELPER
        self.chan_mask = 0 if self.helper else IN
        self.stats_interval = SHARED_STATS_INTERVAL if shared else STATS_INTERVAL
        self.orphan_grace = orphan_grace
        self.proxy = proto.MODES[mode].own_port
        self.strategy = _STRATEGIES[proto.MODES[mode].route]
        self.ctl = control
        self.ctl.setblocking(False)
        self.ep = select.epoll()
        self.handlers: dict[int, Callable[[int], None]] = {}
        self.workers: dict[Any, Backend] = {}  # insertion order is the rotation order
        self.seq = 0
        self.rr_seq = -1  # seq of the worker that got the last connection
        # Accepted connections waiting for a worker: fds (handoff) or sockets (proxy).
        self.pending: collections.deque[Any] = collections.deque()
        self.accepted = 0
        self.accepted_c = 0  # of which by the C hot path: tests check which path ran
        self.listening = False
        self.accept_paused_until = 0.0
        self.recheck_at = 0.0
        self.next_timer = 0.0  # earliest deadline in _timeout's list (0: none)
        self.rlist: list[Backend] | None = None  # routable workers; None: recompute
        self.c_path = _c_path_serves(self.proxy, self.strategy)
        self.rfast = False  # rlist is all protocol v1 channels: the C path may serve it
        # The listening socket; None until the supervisor sends it (a Node app whose
        # port comes from its own listen()): workers asking for it wait in listen_waiters.
        self.lsock: socket.socket | None = None
        self.lfd = -1
        self.listen_waiters: list[Backend] = []
        self.listen_asked = False
        self.probe_watch: set[Any] = set()  # ids of workers with probes not yet taken
        self.out: collections.deque[bytes] = collections.deque()
        self.ctl_mask = IN
        self.dirty = False
        self.last_stats = 0.0
        self.running = True
        # Set once the supervisor is gone, when we outlive it (orphan_grace): the time
        # by which we exit, whatever we still hold.
        self.orphan_until = 0.0
        self._register(self.ctl.fileno(), IN, self._on_control)
        if listen_sock is not None:
            self._set_listen_socket(listen_sock)

    def _set_listen_socket(self, sock: socket.socket) -> None:
        self.lsock = sock
        sock.setblocking(False)
        self.lfd = sock.fileno()
        self._accept = sock.accept if self.proxy else sock._accept
        self._backlog_known = self._accept_queue() is not None
        self._register(self.lfd, 0, self._on_listen)
        if self.shared:
            # Several dispatchers wait on this socket: wake one of them per connection,
            # not all (EPOLLEXCLUSIVE is set at registration only, so it is re-added).
            self.ep.unregister(self.lfd)
        self.listening = False

    def _listen_on(self, want: bool) -> None:
        """Poll the listening socket for connections, or stop."""
        self.listening = want
        if not self.shared:
            self.ep.modify(self.lfd, IN if want else 0)
        elif want:
            self.ep.register(self.lfd, IN | select.EPOLLEXCLUSIVE)
        else:
            with contextlib.suppress(OSError):
                self.ep.unregister(self.lfd)

    # ---- loop -----------------------------------------------------------------

    def run(self) -> None:
        poll = self.ep.poll
        handlers = self.handlers
        monotonic = time.monotonic
        while self.running:
            try:
                events = poll(self._timeout(), 256)
            except InterruptedError:
                continue
            for fd, ev in events:
                handler = handlers.get(fd)
                if handler is not None:
                    handler(ev)
                    if not self.running:
                        break
            if self.next_timer and monotonic() >= self.next_timer:
                self._timers()
            if self.orphan_until and (
                not self.pending or not self.workers or monotonic() >= self.orphan_until
            ):
                self.running = False

    def close(self) -> None:
        for w in list(self.workers.values()):
            self._forget(w)
        proto.close_fds([fd for fd in self.pending if isinstance(fd, int)])
        for item in self.pending:
            if isinstance(item, socket.socket):
                item.close()
        self.pending.clear()
        self.ep.close()

    def _timeout(self) -> float:
        now = time.monotonic()
        deadlines = []
        if self.dirty:
            deadlines.append(self.last_stats + self.stats_interval)
        if self.accept_paused_until:
            deadlines.append(self.accept_paused_until)
        if self.recheck_at:
            deadlines.append(self.recheck_at)
        if self.proxy:
            deadlines.extend(w.next_probe for w in self.workers.values() if self._probing(w))
        if self.probe_watch:
            deadlines.append(now + PROBE_TAKEN_CHECK)
        if self.orphan_until:
            deadlines.append(self.orphan_until)
        if not deadlines:
            self.next_timer = 0.0
            return -1
        self.next_timer = min(deadlines)
        return max(0.0, self.next_timer - now)

    def _timers(self) -> None:
        now = time.monotonic()
        if self.dirty and now >= self.last_stats + self.stats_interval:
            self._push_stats(now)
        if self.accept_paused_until and now >= self.accept_paused_until:
            self.accept_paused_until = 0.0
            self._update_listen()
        if self.recheck_at and now >= self.recheck_at:
            self.recheck_at = 0.0
            self._route()
            self._update_listen()
        if self.proxy:
            for w in list(self.workers.values()):
                if self._probing(w) and now >= w.next_probe:
                    self._start_probe(w)
        if self.probe_watch:
            self._check_probes()

    @staticmethod
    def _probing(w: Backend) -> bool:
        return not w.ready and not w.draining and w.probe is None

    def _register(self, fd: int, mask: int, handler: Callable[[int], None]) -> None:
        self.ep.register(fd, mask)
        self.handlers[fd] = handler

    def _unregister(self, fd: int) -> None:
        if self.handlers.pop(fd, None) is not None:
            with contextlib.suppress(OSError):
                self.ep.unregister(fd)

    # ---- talking to the supervisor ---------------------------------------------

    def _emit(self, msg: dict[str, Any], *, droppable: bool = True) -> None:
        if self.orphan_until:
            return  # nobody is listening any more
        data = proto.encode(msg)
        if not self.out:
            try:
                self.ctl.sendmsg([data], [], socket.MSG_DONTWAIT)
                return
            except BlockingIOError:
                pass
            except OSError:
                self.running = False  # the supervisor is gone
                return
        if droppable and len(self.out) >= OUT_CAP:
            return
        self.out.append(data)
        self._set_ctl_mask(IN | OUT)

    def _flush_out(self) -> None:
        while self.out:
            try:
                self.ctl.sendmsg([self.out[0]], [], socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError:
                self.running = False
                return
            self.out.popleft()
        self._set_ctl_mask(IN)

    def _set_ctl_mask(self, mask: int) -> None:
        if mask != self.ctl_mask:
            self.ctl_mask = mask
            self.ep.modify(self.ctl.fileno(), mask)

    def stats(self) -> dict[str, Any]:
        return {
            "t": "stats",
            "workers": {
                str(w.id): {"handed": w.handed, "open": w.open} for w in self.workers.values()
            },
            "accepted": self.accepted,
            "accepted_c": self.accepted_c,
            "pending": len(self.pending),
        }

    def _push_stats(self, now: float) -> None:
        if len(self.out) > 8:
            return  # the supervisor is behind; the next push carries the same totals
        self.dirty = False
        self.last_stats = now
        self._emit(self.stats())

    def _error(self, w: Backend | None, message: str) -> None:
        if w is not None:
            now = time.monotonic()
            if now - w.err_window >= 1.0:
                if w.err_suppressed:
                    message += f" ({w.err_suppressed} similar messages suppressed)"
                w.err_window, w.err_count, w.err_suppressed = now, 0, 0
            w.err_count += 1
            if w.err_count > ERRORS_PER_SECOND:
                w.err_suppressed += 1
                return
            self._emit({"t": "error", "id": w.id, "message": f"worker {w.id}: {message}"})
        else:
            self._emit({"t": "error", "message": message})

    def _on_control(self, ev: int) -> None:
        if ev & OUT:
            self._flush_out()
        if not ev & (IN | HUP | ERR):
            return
        for _ in range(READ_BATCH):
            try:
                got = proto.recv(self.ctl)
            except BlockingIOError:
                return
            except OSError:
                got = None
            if got is None:
                self._supervisor_gone()
                return
            data, fds, truncated = got
            try:
                if truncated:
                    raise proto.ProtocolError("control message too large")
                msg = proto.decode(data)
            except proto.ProtocolError as exc:
                proto.close_fds(fds)
                self._error(None, f"bad control message: {exc}")
                continue
            try:
                self._control(msg, fds)  # takes ownership of fds
            except proto.ProtocolError as exc:
                self._error(None, f"bad control message: {exc}")

    def _supervisor_gone(self) -> None:
        """The control socket ended: the supervisor is gone.

        Without an orphan grace, so are we. With one (a socket handed in from outside,
        whose workers outlive the supervisor), accept nothing more, since what waits in
        the kernel's queue is the next supervisor's, but hand what we already accepted
        to the workers, then exit: killed at once, we would drop those connections.
        """
        if not self.orphan_grace or self.proxy:
            self.running = False
            return
        self._unregister(self.ctl.fileno())
        self.orphan_until = time.monotonic() + self.orphan_grace
        if self.lsock is not None and self.listening:
            self._listen_on(False)
        self._route()

    def _control(self, msg: dict[str, Any], fds: list[int]) -> None:
        kind = msg["t"]
        wid = msg.get("id")
        if kind == "add":
            self._add(wid, msg, fds)
            return
        if kind == "socket":
            self._got_socket(fds)
            return
        if kind == "probe":
            self._probe(wid, msg.get("token"), msg.get("ack") is True, fds)
            return
        proto.close_fds(fds)
        if kind == "listen-failed":
            self._listen_failed(msg)
            return
        if kind == "stats":
            self.dirty = False
            self.last_stats = time.monotonic()
            self._emit(self.stats(), droppable=False)
            return
        w = self.workers.get(wid)
        if kind == "drain" and self.helper:
            # Nothing more goes to it from here on: the supervisor waits for this before
            # the primary tells the worker, so no connection reaches it after its drain.
            if w is not None:
                self._drain(w)
            self._emit({"t": "drained", "id": wid}, droppable=False)
            return
        if kind in ("drain", "remove", "health", "ready") and w is None:
            return  # already gone: harmless
        if kind == "drain":
            self._drain(w)
        elif kind == "remove":
            self._remove(w)
        elif kind == "health":
            self._set_health(w, msg.get("ok") is not False)
        elif kind == "ready" and self.helper:
            self._set_ready(w)  # the primary read it from the worker
        else:
            raise proto.ProtocolError(f"unknown control message type {kind!r}")

    # ---- workers ------------------------------------------------------------------

    def _add(self, wid: Any, msg: dict[str, Any], fds: list[int]) -> None:
        if wid is None or isinstance(wid, (dict, list)):
            proto.close_fds(fds)
            raise proto.ProtocolError('"add" needs a scalar "id"')
        if wid in self.workers:
            self._remove(self.workers[wid])
        w = Backend(wid, self.seq)
        self.seq += 1
        if self.proxy:
            proto.close_fds(fds)
            port = msg.get("port")
            if not isinstance(port, int) or not 0 < port < 65536:
                raise proto.ProtocolError('proxy "add" needs a "port"')
            w.port = port
            w.host = str(msg.get("host") or "127.0.0.1")
            self.workers[wid] = w
            self._start_probe(w)
            return
        if len(fds) != 2:
            proto.close_fds(fds)
            raise proto.ProtocolError(f'"add" needs 2 fds (channel ends), got {len(fds)}')
        w.node = msg.get("framing") == "node"
        if w.node and self.shared:
            proto.close_fds(fds)
            raise proto.ProtocolError("a Node worker's channel is a stream: it cannot be shared")
        w.shared = bool(self.shared)
        w.dend = socket.socket(fileno=fds[0])
        # Never change flags on wend: its open file is shared with the worker's fd.
        w.wend = socket.socket(fileno=fds[1])
        w.dend.setblocking(False)
        if not w.node:  # node: NODE_HANDLE_ACKs bound the queue instead
            with contextlib.suppress(OSError):
                w.dend.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CHANNEL_SNDBUF)
        self.workers[wid] = w
        self._register(w.dend.fileno(), self.chan_mask, lambda ev: self._on_worker(w, ev))

    def _drain(self, w: Backend) -> None:
        if w.draining:
            return
        w.draining = True
        self.rlist = None
        if w.dend is not None and not self.helper:
            w.drain_pending = True
            self._send_drain(w)
        self._update_listen()

    def _send_drain(self, w: Backend) -> None:
        assert w.dend is not None
        if w.node:
            w.drain_pending = False
            self._node_write(w, nodeproto.DRAIN)
            return
        try:
            w.dend.sendmsg([proto.DRAIN], [], socket.MSG_DONTWAIT)
            w.drain_pending = False
        except BlockingIOError:
            self._want_writable(w)
        except OSError:
            w.drain_pending = False

    def _want_writable(self, w: Backend) -> None:
        if w.dend is not None:
            self.ep.modify(w.dend.fileno(), self.chan_mask | OUT)

    def _remove(self, w: Backend) -> None:
        """The worker is gone: take back what it never received and route it elsewhere."""
        recovered = self._forget(w)
        if recovered:
            w.handed -= len(recovered)
            self.pending.extendleft(reversed(recovered))
            self._route()
        self.dirty = True
        self._update_listen()

    def _forget(self, w: Backend) -> list[int]:
        self.workers.pop(w.id, None)
        self.rlist = None
        w.ready = False
        self.rlist = None
        recovered: list[int] = []
        self._fail_probes(w, "the worker is gone")
        if w.probe is not None:
            self._unregister(w.probe.fileno())
            w.probe.close()
            w.probe = None
        if w.dend is not None:
            self._unregister(w.dend.fileno())
            w.dend.close()
            w.dend = None
        if w.wend is not None:
            # Node: every fd in its stream is a connection.
            recovered, _others = _take_back(w.wend, every_fd=w.node)
            w.wend.close()
            w.wend = None
        return recovered

    def _on_worker(self, w: Backend, ev: int) -> None:
        if w.dend is None:
            return
        if ev & OUT and w.obuf and not self._node_flush(w):
            ev &= ~OUT  # still more to write: stay polled for OUT
        if ev & OUT:
            self.ep.modify(w.dend.fileno(), self.chan_mask)
            if w.drain_pending:
                self._send_drain(w)
            if w.full:
                w.full = False
                self.rlist = None
                self._route()
                self._update_listen()
        if not ev & (IN | HUP | ERR) or self.helper:
            return
        if w.node:
            self._node_read(w)
            return
        for _ in range(READ_BATCH):
            if w.dend is None:
                return
            try:
                got = proto.recv(w.dend)
            except BlockingIOError:
                return
            except OSError as exc:
                self._error(w, f"channel error: {exc.strerror or exc}")
                got = False
            if got is None:
                # Not end of file: we hold wend, so the worker sent an empty datagram.
                self._error(w, "sent an empty datagram; ignored")
                continue
            if got is False:
                # The socket broke: stop polling it.
                self._unregister(w.dend.fileno())
                w.ready = False
                self.rlist = None
                self._update_listen()
                return
            data, fds, truncated = got
            if fds:
                proto.close_fds(fds)
                self._error(w, "sent file descriptors to the dispatcher; ignored")
                continue
            if truncated:
                self._error(w, f"message larger than {proto.MAX_MESSAGE} bytes; ignored")
                continue
            try:
                self._worker_message(w, proto.decode(data))
            except proto.ProtocolError as exc:
                self._error(w, f"{exc}; ignored")

    def _worker_message(self, w: Backend, msg: dict[str, Any]) -> None:
        kind = msg["t"]
        if kind == "closed":
            n = msg.get("n", 1)
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise proto.ProtocolError(f'"closed" needs a count "n" >= 0, got {n!r}')
            w.closed = w.closed + n if w.shared else min(w.closed + n, w.handed + w.probes)
            self.dirty = True
        elif kind == "ready":
            self._set_ready(w)
        elif kind == "lost":
            # The kernel dropped fds of conn datagram `seq` the worker could not install
            # (its fd limit): those connections are gone, count them closed.
            seq, got = msg.get("seq"), msg.get("got")
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in (seq, got)):
                raise proto.ProtocolError('"lost" needs whole numbers "seq" and "got"')
            if w.shared:
                return  # seq counts every dispatcher's datagrams: this one cannot place it
            first = w.sent_conns - len(w.sent_sizes) + 1
            if first <= seq <= w.sent_conns:
                n = w.sent_sizes[seq - first] - got
                if n > 0:
                    w.closed = min(w.closed + n, w.handed)
                    self.dirty = True
        elif kind == "metrics":
            values = msg.get("values")
            if not isinstance(values, dict):
                raise proto.ProtocolError('"metrics" needs an object "values"')
            self._forward_metrics(w, values)
        else:
            raise proto.ProtocolError(f"unknown message type {kind!r}")

    def _forward_metrics(self, w: Backend, values: dict[str, Any]) -> None:
        """A worker's figures to the supervisor, numbers only, trimmed to the caps."""
        clean = {}
        for k, v in values.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                # One character past the limit: the supervisor still refuses it.
                clean[str(k)[: proto.METRIC_NAME_LEN_MAX + 1]] = v
                if len(clean) >= proto.METRIC_NAMES_MAX:
                    break  # the supervisor keeps no more than this per worker anyway
        if clean:
            self._emit({"t": "metrics", "id": w.id, "values": clean})

    def _set_ready(self, w: Backend) -> None:
        if w.ready:
            return
        w.ready = True
        self.rlist = None
        if not self.helper:
            self._emit({"t": "ready", "id": w.id}, droppable=False)
        self._route()
        self._update_listen()

    # ---- health probes (the supervisor's) ---------------------------------------------

    def _probe(self, wid: Any, token: Any, ack: bool, fds: list[int]) -> None:
        """Hand one probe connection to worker wid itself, ready or not, as a client's
        connection would reach it. With ack, report once the worker has taken it off its
        channel (a worker whose loop hangs never does); a failure is always reported."""
        w = self.workers.get(wid)
        if len(fds) != 1 or w is None or w.dend is None:
            proto.close_fds(fds)
            why = "no such worker" if w is None or w.dend is None else "needs one fd"
            self._emit({"t": "probe", "id": wid, "token": token, "ok": False, "error": why})
            return
        line = nodeproto.CONN if w.node else proto.CONN
        try:
            if w.obuf:  # node: a line is half written; the fd cannot go before its end
                raise BlockingIOError(errno.EAGAIN, "busy")
            n = w.dend.sendmsg(
                [line], [(*_CONN_ANC_LEVEL, array.array("i", fds))], socket.MSG_DONTWAIT
            )
        except OSError as exc:
            why = "its channel is full" if exc.errno == errno.EAGAIN else exc.strerror
            self._emit({"t": "probe", "id": wid, "token": token, "ok": False, "error": why})
            return
        finally:
            proto.close_fds(fds)
        w.probes += 1
        w.queued_fds += 1
        if w.node:
            if n < len(line):
                w.obuf = line[n:]
                self._want_writable(w)
            in_flight = w.queued_fds  # NODE_HANDLE_ACKs count them off, in order
        else:
            w.queued.append(1)
            in_flight = len(w.queued)
        if ack:
            w.probe_marks.append((w.taken + in_flight, token))
            self.probe_watch.add(wid)

    def _check_probes(self) -> None:
        for wid in list(self.probe_watch):
            w = self.workers.get(wid)
            if w is None:
                self.probe_watch.discard(wid)
                continue
            self._queued(w)
            marks = w.probe_marks
            while marks and w.taken >= marks[0][0]:
                _n, token = marks.popleft()
                self._emit({"t": "probe", "id": wid, "token": token, "ok": True})
            if not marks:
                self.probe_watch.discard(wid)

    def _fail_probes(self, w: Backend, why: str) -> None:
        while w.probe_marks:
            _n, token = w.probe_marks.popleft()
            self._emit({"t": "probe", "id": w.id, "token": token, "ok": False, "error": why})
        self.probe_watch.discard(w.id)

    def _set_health(self, w: Backend, ok: bool) -> None:
        if w.unhealthy == (not ok):
            return
        w.unhealthy = not ok
        self.rlist = None
        if not ok:
            self._reclaim(w)
        self._route()
        self._update_listen()

    def _reclaim(self, w: Backend) -> None:
        """Take back the connections still queued for an unhealthy worker (it has not
        read them: it may never) and route them to the others, oldest first."""
        if w.wend is None or not w.queued_fds or not self._others_routable(w):
            return
        recovered, resend = _take_back(w.wend, every_fd=False)
        for data in resend:  # a drain message keeps its meaning
            if w.dend is not None:
                with contextlib.suppress(OSError):
                    w.dend.sendmsg([data], [], socket.MSG_DONTWAIT)
        probes = min(len(w.probe_marks), len(recovered))
        self._fail_probes(w, "taken back from an unhealthy worker")
        w.queued.clear()
        w.queued_fds = 0
        w.probes -= probes
        if recovered:
            w.handed = max(0, w.handed - (len(recovered) - probes))
            self.pending.extendleft(reversed(recovered))
            self.dirty = True

    def _others_routable(self, w: Backend) -> bool:
        return any(o.routable for o in self.workers.values() if o is not w)

    # ---- accepting and routing -----------------------------------------------------

    def _routable(self) -> list[Backend]:
        rlist = self.rlist
        if rlist is None:
            rlist = [w for w in self.workers.values() if w.routable]
            if not rlist:
                # Every ready worker failed its probe: serving badly beats refusing all.
                rlist = [
                    w
                    for w in self.workers.values()
                    if w.ready and not w.draining and not w.full and w.unhealthy
                ]
            self.rlist = rlist
            self.rfast = self.c_path and not any(w.node for w in rlist)
        return rlist

    def _update_listen(self) -> None:
        if self.lsock is None or self.orphan_until:
            return
        want = (
            not self.accept_paused_until
            and len(self.pending) < PENDING_CAP
            and bool(self._routable())
        )
        if want != self.listening:
            self._listen_on(want)

    def _accept_queue(self) -> int | None:
        """Connections waiting in the kernel's accept queue (TCP only; else None).

        Asking costs a fraction of the failing accept() that would otherwise end
        every batch (Python raises BlockingIOError for it, which is not cheap).
        """
        assert self.lsock is not None
        try:
            info = self.lsock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 32)
        except OSError:
            return None
        if len(info) < _TCPI_UNACKED_OFFSET + 4:
            return None
        return _TCPI_UNACKED.unpack_from(info, _TCPI_UNACKED_OFFSET)[0]

    def _on_listen(self, ev: int) -> None:
        if self.rfast and not self.pending and self.rlist:
            targets = self._targets()
            if targets:  # else every worker is at its cap: the Python path queues
                self._accept_hand(targets)
                return
        room = min(ACCEPT_BATCH, PENDING_CAP - len(self.pending))
        if self._backlog_known:
            queued = self._accept_queue()
            if queued == 0 and self.shared:
                return  # another dispatcher took it: a failing accept costs more than this
            room = min(room, max(1, queued or 0))
        got = 0
        pending = self.pending
        # Handoff mode uses _accept: (fd, addr), no socket object for a fd we pass on.
        accept = self._accept
        for _ in range(room):
            try:
                conn, _addr = accept()
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in _ACCEPT_RETRY:
                    continue
                self._accept_failed(exc.errno)
                break
            pending.append(conn)
            got += 1
        if got:
            self.accepted += got
            self.dirty = True
            self._route()
        if pending or self.accept_paused_until or not self.listening:
            self._update_listen()

    def _accept_hand(self, targets: list[Backend]) -> None:
        """_on_listen, _route and _hand in one C call (_handoff.accept_hand), for the
        common case; what it could not hand goes the Python way (_route)."""
        start = self._turn_start(targets)
        # Stay in C over later wakeups until a timer is due (stats once something changed).
        # Timers are worked out again: a handler earlier in this round may have set one
        # (a probe to check in 20 ms), which the loop's own reckoning does not have.
        self._timeout()
        deadline = self.last_stats + self.stats_interval
        if self.next_timer:
            deadline = min(deadline, self.next_timer)
        got, sent, sizes, last, leftover, failed, send_errno, accept_errno = _handoff.accept_hand(
            self.lfd,
            ACCEPT_BATCH,
            [w.dend.fileno() for w in targets],  # type: ignore[union-attr]
            [QUEUE_CAP - w.queued_fds for w in targets],
            start,
            proto.CONN,
            self.ep.fileno(),
            deadline,
        )
        if got:
            self.accepted += got
            self.accepted_c += got
            self.dirty = True
            for w, n, datagrams in zip(targets, sent, sizes, strict=True):
                if n:
                    self._sent(w, n, datagrams)
            if last >= 0:
                self.rr_seq = targets[last].seq
        if failed >= 0:
            self._send_failed(targets[failed], send_errno)
        if accept_errno:
            self._accept_failed(accept_errno)
        if leftover:
            self.pending.extend(leftover)
            self._route()
        if self.pending or self.accept_paused_until or not self.listening:
            self._update_listen()

    def _accept_failed(self, err: int) -> None:
        why = os.strerror(err)
        if err in _ACCEPT_BACKOFF:
            self._error(None, f"cannot accept: {why}; pausing briefly")
        else:
            self._error(None, f"accept failed: {why}")
        self.accept_paused_until = time.monotonic() + ACCEPT_BACKOFF

    def _queued(self, w: Backend) -> int:
        """How many connections w has not taken off its channel yet.

        SIOCINQ on a SEQPACKET socket counts the bytes of every queued datagram, and
        every conn datagram has the same size; we hold the worker's end, so we can ask.
        """
        if w.node:
            return w.queued_fds  # NODE_HANDLE_ACKs count exactly
        if w.queued_fds and w.wend is not None:
            try:
                raw = fcntl.ioctl(w.wend.fileno(), termios.FIONREAD, b"\0\0\0\0")
            except OSError:
                return w.queued_fds
            left = int.from_bytes(raw, sys.byteorder, signed=True) // len(proto.CONN)
            queued = w.queued
            while len(queued) > left:
                w.queued_fds -= queued.popleft()
                w.taken += 1
        return w.queued_fds

    def _targets(self) -> list[Backend]:
        return [
            w for w in self._routable() if w.queued_fds < QUEUE_CAP or self._queued(w) < QUEUE_CAP
        ]

    def _route(self) -> None:
        pending = self.pending
        while pending:
            targets = self._targets()
            if not targets:
                if self._routable():
                    self.recheck_at = time.monotonic() + RECHECK  # all busy, none gone
                return
            start = self._turn_start(targets)
            groups: list[list[Any]] = [[] for _ in targets]
            last = self.strategy(targets, start, pending, groups)
            self.rr_seq = targets[last].seq
            for w, group in zip(targets, groups, strict=True):
                if group:
                    unsent = self._hand(w, group)
                    if unsent:
                        pending.extendleft(reversed(unsent))
            self.dirty = True

    def _turn_start(self, targets: list[Backend]) -> int:
        """Continue the rotation after the worker that got the last connection."""
        rr_seq = self.rr_seq
        for i, w in enumerate(targets):
            if w.seq > rr_seq:
                return i
        return 0

    def _hand(self, w: Backend, conns: list[Any]) -> list[Any]:
        """Give conns to w; return those it could not take (its channel is full)."""
        if self.proxy:
            for i, client in enumerate(conns):
                if not w.routable or not _ProxiedConnection(self, w, client).started:
                    return conns[i:]
            return []
        if w.node:
            return self._hand_node(w, conns)
        dend = w.dend
        assert dend is not None
        room = QUEUE_CAP - w.queued_fds
        if room < len(conns):
            room = max(0, QUEUE_CAP - self._queued(w))
            if room < len(conns):
                conns, keep = conns[:room], conns[room:]
                return (self._hand(w, conns) if conns else []) + keep
        sendmsg = dend.sendmsg
        for i in range(0, len(conns), FDS_PER_MESSAGE):
            chunk = conns[i : i + FDS_PER_MESSAGE]
            try:
                sendmsg(
                    [proto.CONN],
                    [(*_CONN_ANC_LEVEL, array.array("i", chunk))],
                    socket.MSG_DONTWAIT,
                )
            except OSError as exc:
                self._send_failed(w, exc.errno)
                return conns[i:]
            for fd in chunk:
                os.close(fd)
            self._sent(w, len(chunk), (len(chunk),))
        return []

    @staticmethod
    def _sent(w: Backend, n: int, datagrams: Sequence[int]) -> None:
        """Conn datagrams went out to w: n connections, each datagram's count in order."""
        w.handed += n
        w.sent_sizes.extend(datagrams)
        w.sent_conns += len(datagrams)
        w.queued.extend(datagrams)
        w.queued_fds += n

    def _send_failed(self, w: Backend, err: int) -> None:
        """Full (EAGAIN, or ETOOMANYREFS: too many fds in flight): skip w until its
        channel is writable again. Anything else: it is broken."""
        w.full = True
        self.rlist = None
        if err in (errno.EAGAIN, errno.ETOOMANYREFS):
            self._want_writable(w)
        else:
            self._error(w, f"cannot send to the worker: {os.strerror(err)}")

    # ---- Node workers (dispatch.node framing) ------------------------------------

    def _hand_node(self, w: Backend, conns: list[int]) -> list[int]:
        """One sendmsg per connection: Node takes one handle per read."""
        dend = w.dend
        assert dend is not None
        line = nodeproto.CONN
        sendmsg = dend.sendmsg
        for i, fd in enumerate(conns):
            if w.obuf or w.queued_fds >= QUEUE_CAP:
                return conns[i:]  # a line is half written, or it has enough to do
            try:
                n = sendmsg(
                    [line], [(*_CONN_ANC_LEVEL, array.array("i", (fd,)))], socket.MSG_DONTWAIT
                )
            except OSError as exc:
                w.full = True
                self.rlist = None
                if exc.errno in (errno.EAGAIN, errno.ETOOMANYREFS):
                    self._want_writable(w)
                else:
                    self._error(w, f"cannot send to the worker: {exc.strerror or exc}")
                return conns[i:]
            os.close(fd)
            w.handed += 1
            w.queued_fds += 1
            if n < len(line):  # the fd went with the first byte; the rest follows
                w.obuf = line[n:]
                w.full = True
                self.rlist = None
                self._want_writable(w)
                return conns[i + 1 :]
        return []

    def _node_write(self, w: Backend, data: bytes) -> None:
        """A line without fds, after anything still half written."""
        if w.dend is None:
            return
        if w.obuf:
            w.obuf += data
            return
        try:
            n = w.dend.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            n = 0
        except OSError:
            return
        if n < len(data):
            w.obuf = data[n:]
            self._want_writable(w)

    def _node_flush(self, w: Backend) -> bool:
        """Write what is left of obuf; True once it is all out."""
        assert w.dend is not None
        try:
            n = w.dend.send(w.obuf, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError:
            n = len(w.obuf)
        w.obuf = w.obuf[n:]
        return not w.obuf

    def _node_read(self, w: Backend) -> None:
        assert w.dend is not None
        for _ in range(READ_BATCH):
            try:
                data = w.dend.recv(nodeproto.READ_SIZE, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            except OSError as exc:
                self._error(w, f"channel error: {exc.strerror or exc}")
                data = b""
            if not data:
                # We hold the worker's end, so this is a broken socket: stop polling it.
                self._unregister(w.dend.fileno())
                w.ready = False
                self.rlist = None
                self._update_listen()
                return
            lines, w.rbuf, overflow = nodeproto.split_lines(w.rbuf, data)
            if overflow:
                self._error(w, f"sent a line longer than {nodeproto.MAX_LINE} bytes; dropped")
            acked = 0
            for raw in lines:
                if raw == nodeproto.ACK:
                    acked += 1
                elif raw == nodeproto.NACK:
                    acked += 1
                    self._error(w, "a handed connection did not arrive (NODE_HANDLE_NACK)")
                else:
                    msg = nodeproto.parse(raw)
                    if msg is not None:
                        self._node_message(w, msg)
            if acked:
                w.queued_fds = max(0, w.queued_fds - acked)
                w.taken += acked
                if self.pending:
                    self._route()
                    self._update_listen()
            if w.dend is None:
                return

    def _node_message(self, w: Backend, msg: dict[str, Any]) -> None:
        kind = msg["t"]
        if kind == "ready":
            self._set_ready(w)
        elif kind == "unready":  # its servers closed: route nothing more to it
            if w.ready:
                w.ready = False
                self.rlist = None
                self._update_listen()
        elif kind == "closed":
            n = msg.get("n", 1)
            if isinstance(n, int) and not isinstance(n, bool) and n >= 0:
                w.closed = min(w.closed + n, w.handed)
                self.dirty = True
        elif kind == "listen":
            self._node_listen(w, msg)
        elif kind == "metrics" and isinstance(msg.get("values"), dict):
            self._forward_metrics(w, msg["values"])  # the preload's request figures

    def _node_listen(self, w: Backend, msg: dict[str, Any]) -> None:
        """A worker's server.listen(): answer with the shared socket's address."""
        if self.lsock is not None:
            self._node_write(
                w, nodeproto.line({"t": "listening", **nodeproto.address_of(self.lsock)})
            )
            return
        if w not in self.listen_waiters:
            self.listen_waiters.append(w)
        if not self.listen_asked:
            self.listen_asked = True
            request = {k: msg.get(k) for k in ("address", "port", "path") if k in msg}
            self._emit({"t": "listen", "id": w.id, **request}, droppable=False)

    def _got_socket(self, fds: list[int]) -> None:
        if len(fds) != 1 or self.lsock is not None:
            proto.close_fds(fds)
            raise proto.ProtocolError('"socket" needs 1 fd, and only once')
        self._set_listen_socket(socket.socket(fileno=fds[0]))
        waiters, self.listen_waiters = self.listen_waiters, []
        answer = nodeproto.line({"t": "listening", **nodeproto.address_of(self.lsock)})
        for w in waiters:
            if w.id in self.workers:
                self._node_write(w, answer)
        self._update_listen()

    def _listen_failed(self, msg: dict[str, Any]) -> None:
        self.listen_asked = False  # the next listen() asks again
        waiters, self.listen_waiters = self.listen_waiters, []
        answer = nodeproto.line(
            {"t": "listen-error", "code": str(msg.get("code") or "EADDRINUSE"),
             "message": str(msg.get("message") or "")}
        )  # fmt: skip
        for w in waiters:
            if w.id in self.workers:
                self._node_write(w, answer)

    # ---- proxy mode ---------------------------------------------------------------

    def _start_probe(self, w: Backend) -> None:
        assert w.port is not None
        s = socket.socket(socket.AF_INET6 if ":" in w.host else socket.AF_INET)
        s.setblocking(False)
        err = s.connect_ex((w.host, w.port))
        if err == 0:
            s.close()
            self._set_ready(w)
        elif err == errno.EINPROGRESS:
            w.probe = s
            self._register(s.fileno(), OUT, lambda ev: self._on_probe(w, s, ev))
        else:
            s.close()
            w.next_probe = time.monotonic() + PROBE_INTERVAL

    def _on_probe(self, w: Backend, s: socket.socket, ev: int) -> None:
        self._unregister(s.fileno())
        try:
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if not err:
                s.getpeername()  # raises if not connected after all
        except OSError as exc:
            err = exc.errno or -1
        s.close()
        w.probe = None
        if err:
            w.next_probe = time.monotonic() + PROBE_INTERVAL
        elif w.id in self.workers:
            self._set_ready(w)

    def _unreachable(self, w: Backend) -> None:
        """Connecting to w failed: take it out of rotation and probe it again."""
        if w.ready:
            w.ready = False
            self.rlist = None
            w.next_probe = time.monotonic() + PROBE_INTERVAL

    def _upstream_failed(self, w: Backend, client: socket.socket) -> None:
        """No byte has moved yet, so the client can go to another worker."""
        w.pipes -= 1
        w.handed -= 1
        self._unreachable(w)
        self.pending.appendleft(client)
        self._route()
        self._update_listen()


def _take_back(wend: socket.socket, every_fd: bool) -> tuple[list[int], list[bytes]]:
    """Empty a worker's channel from the worker's end (we hold it): the fds of the conn
    datagrams it never took off, oldest first (with every_fd, the fds of every message),
    and the data of the other messages, whose fds are closed. Not on the path of a
    connection: only a worker that is gone or unhealthy is emptied."""
    recovered: list[int] = []
    others: list[bytes] = []
    for _ in range(100_000):  # bounded by the channel's buffer in practice
        try:
            got = proto.recv(wend)
        except OSError:
            break
        if got is None:
            break
        data, fds, _truncated = got
        if every_fd or data == proto.CONN:
            recovered.extend(fds)
        else:
            proto.close_fds(fds)
            others.append(data)
    return recovered, others


class _ProxiedConnection:
    """One proxied connection: client ⇄ upstream, with back-pressure both ways."""

    __slots__ = (
        "d",
        "w",
        "c",
        "u",
        "cfd",
        "ufd",
        "c2u",
        "u2c",
        "c_eof",
        "u_eof",
        "masks",
        "started",
    )

    def __init__(self, d: Dispatcher, w: Backend, client: socket.socket) -> None:
        self.d = d
        self.w = w
        self.c = client
        self.started = False
        self.cfd = client.fileno()
        self.c2u: memoryview | None = None
        self.u2c: memoryview | None = None
        self.c_eof = False
        self.u_eof = False
        # fd -> epoll mask; 0 means not registered at all.
        self.masks: dict[int, int] = {self.cfd: 0}
        assert w.port is not None
        self.u = socket.socket(socket.AF_INET6 if ":" in w.host else socket.AF_INET)
        self.ufd = self.u.fileno()
        self.u.setblocking(False)
        err = self.u.connect_ex((w.host, w.port))
        self.started = err in (0, errno.EINPROGRESS)
        if not self.started:
            self.u.close()
            d._unreachable(w)
            return
        w.pipes += 1
        w.handed += 1
        # The client is not polled until the upstream is connected.
        d._register(self.ufd, OUT, self._on_connect)
        self.masks[self.ufd] = OUT

    def _on_connect(self, ev: int) -> None:
        try:
            err = self.u.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if not err:
                self.u.getpeername()
        except OSError as exc:
            err = exc.errno or -1
        if err:
            self.d._unregister(self.ufd)
            self.u.close()
            self.masks.clear()
            self.d._upstream_failed(self.w, self.c)
            return
        self.c.setblocking(False)
        for s in (self.c, self.u):
            with contextlib.suppress(OSError):  # a unix socket client has no TCP_NODELAY
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.d.handlers[self.ufd] = self._on_upstream
        self._update()

    def _on_client(self, ev: int) -> None:
        if ev & ERR:
            self._close()
            return
        if ev & OUT and not self._flush_to_client():
            return
        if ev & (IN | HUP) and self.c2u is None and not self.c_eof:
            self._pump(self.c, self.u, True)
        self._update()

    def _on_upstream(self, ev: int) -> None:
        if ev & ERR:
            self._close()
            return
        if ev & OUT and not self._flush_to_upstream():
            return
        if ev & (IN | HUP) and self.u2c is None and not self.u_eof:
            self._pump(self.u, self.c, False)
        self._update()

    def _pump(self, src: socket.socket, dst: socket.socket, to_upstream: bool) -> None:
        try:
            data = src.recv(PROXY_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            self._close()
            return
        if not data:
            if to_upstream:
                self.c_eof = True
            else:
                self.u_eof = True
            self._shut(dst)
            return
        try:
            n = dst.send(data)
        except BlockingIOError:
            n = 0
        except OSError:
            self._close()
            return
        if n < len(data):
            rest = memoryview(data)[n:]
            if to_upstream:
                self.c2u = rest
            else:
                self.u2c = rest

    def _flush_to_client(self) -> bool:
        return self._flush(self.c, False)

    def _flush_to_upstream(self) -> bool:
        return self._flush(self.u, True)

    def _flush(self, dst: socket.socket, to_upstream: bool) -> bool:
        buf = self.c2u if to_upstream else self.u2c
        if buf is None:
            return True
        try:
            n = dst.send(buf)
        except BlockingIOError:
            return True
        except OSError:
            self._close()
            return False
        rest = buf[n:] if n < len(buf) else None
        if to_upstream:
            self.c2u = rest
            if rest is None and self.c_eof:
                self._shut(dst)
        else:
            self.u2c = rest
            if rest is None and self.u_eof:
                self._shut(dst)
        return True

    def _shut(self, dst: socket.socket) -> None:
        pending = self.c2u if dst is self.u else self.u2c
        if pending is None:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def _update(self) -> None:
        if self.c.fileno() < 0:
            return  # closed
        if self.c_eof and self.u_eof and self.c2u is None and self.u2c is None:
            self._close()
            return
        cmask = (IN if self.c2u is None and not self.c_eof else 0) | (OUT if self.u2c else 0)
        umask = (IN if self.u2c is None and not self.u_eof else 0) | (OUT if self.c2u else 0)
        self._set(self.cfd, cmask, self._on_client)
        self._set(self.ufd, umask, self._on_upstream)

    def _set(self, fd: int, mask: int, handler: Callable[[int], None]) -> None:
        old = self.masks.get(fd)
        if old == mask:
            return
        d = self.d
        # A socket we do not poll at all is unregistered, so a hang-up on it cannot spin.
        if mask == 0:
            d._unregister(fd)
        elif not old:
            d._register(fd, mask, handler)
        else:
            d.ep.modify(fd, mask)
        self.masks[fd] = mask

    def _close(self) -> None:
        if self.c.fileno() < 0:
            return
        d = self.d
        for fd in (self.cfd, self.ufd):
            d._unregister(fd)
        self.c.close()
        self.u.close()
        self.w.pipes -= 1
        d.dirty = True


def set_pdeathsig() -> None:
    """Die with the supervisor (Linux): it may be SIGKILLed and cannot tell us."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        # Seconds to outlive the supervisor, handing over what we accepted (see
        # Dispatcher._supervisor_gone); the guardian kills us once they are over.
        orphan_grace = float(os.environ.get("CLUSTERUI_ORPHAN_GRACE") or 0)
    except ValueError:
        orphan_grace = 0.0
    parent = os.getppid()
    if not orphan_grace:
        set_pdeathsig()
    if os.getppid() != parent:
        return Exit.FAILED  # the parent died before prctl took effect
    mode = argv[0] if argv else os.environ.get("CLUSTERUI_DISPATCH_MODE", proto.DEFAULT_MODE)
    if mode not in MODES:
        print(f"clusterui.dispatch: unknown mode {mode!r} ({', '.join(MODES)})", file=sys.stderr)
        return Exit.USAGE
    try:
        # No listening socket yet: the supervisor sends one once a worker asks for it.
        lfd = os.environ.get("CLUSTERUI_LISTEN_FD")
        cfd = int(os.environ["CLUSTERUI_CONTROL_FD"])
        lsock = socket.socket(fileno=int(lfd)) if lfd else None
        ctl = socket.socket(fileno=cfd)
    except (KeyError, ValueError, OSError) as exc:
        print(
            "clusterui.dispatch: needs CLUSTERUI_LISTEN_FD and CLUSTERUI_CONTROL_FD "
            f"(inherited sockets): {exc}",
            file=sys.stderr,
        )
        return Exit.USAGE
    shared = os.environ.get("CLUSTERUI_DISPATCH_SHARED", "")
    if shared not in ("", proto.PRIMARY, proto.HELPER) or (
        shared and not proto.MODES[mode].shareable
    ):
        print(f"clusterui.dispatch: {mode} cannot be shared ({shared!r})", file=sys.stderr)
        return Exit.USAGE
    dispatcher = Dispatcher(lsock, ctl, mode, orphan_grace, shared)
    import gc

    gc.freeze()  # everything so far is long-lived; keep collections short
    with contextlib.suppress(KeyboardInterrupt):
        dispatcher.run()
    return Exit.OK
