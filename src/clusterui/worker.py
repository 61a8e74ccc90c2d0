"""Python side of clusterui's worker protocol (v1): serve handed-over connections.

The same app runs three ways without a change:

- under a clusterui dispatcher (``CLUSTERUI_CHANNEL_FD`` set): connections arrive as
  file descriptors over the channel; ``ready``, ``closed`` and ``drain`` are handled;
- with a shared listening socket (``LISTEN_FDS=1`` and ``LISTEN_PID`` = our pid,
  systemd's convention): it serves fd 3;
- standalone: it binds ``$PORT`` (else the ``port`` argument, else 8000) itself.

A channel with ``CLUSTERUI_DISPATCH`` set to anything but ``round-robin`` or
``least-connections`` (e.g. ``none`` for a fork-mode app with wait_ready) carries
only ``ready`` and ``drain``; the app then listens as in the other two cases.

asyncio streams::

    async def handle(reader, writer): ...
    server = await clusterui.worker.start_server(handle)
    await server.serve_forever()          # returns once drained; exit 0 from there

asyncio protocols: ``create_server(protocol_factory)``. Blocking servers::

    with clusterui.worker.make_server(ThreadingHTTPServer, Handler) as httpd:
        httpd.serve_forever()             # returns once drained

or ``make_wsgi_server(app)``, or ``listening_socket()`` for your own accept loop.

While a drain is under way ``clusterui.worker.draining`` is true: HTTP handlers
should answer with ``Connection: close`` (``make_server`` does it for
``http.server`` handlers). This module imports only the standard library.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import json
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from clusterui import reqstats
from clusterui.dispatch import protocol as proto

if TYPE_CHECKING:
    import socketserver

__all__ = [
    "Draining",
    "ListeningSocket",
    "Server",
    "create_server",
    "instance",
    "is_draining",
    "listening_socket",
    "make_server",
    "make_wsgi_server",
    "metrics",
    "mode",
    "ready",
    "serve",
    "start_server",
]

DEFAULT_PORT = 8000
IDLE_GRACE = 1.0  # a keep-alive connection idle this long during a drain is closed
EOF_GRACE = 5.0  # after the dispatcher vanished, in-flight work gets this long
_DRAIN_TICK = 0.1
# Loop turns from asyncio's accept() to the protocol's connection_made: a task step, then
# a call_soon; a few more for margin.
_ACCEPT_SETTLE_TURNS = 5
# Closes are reported in batches at most this often: one datagram per burst rather than
# per connection (fresh enough for least-connections, cheap under load).
CLOSED_REPORT_DELAY = 0.02


class Draining(ConnectionAbortedError):
    """Raised by ListeningSocket.accept() once no more connections will come."""


# ---- process-wide state -------------------------------------------------------------


class _State:
    def __init__(self) -> None:
        self.draining = False
        self.channel: _Channel | None = None
        self.channel_checked = False
        self.channel_owner: object | None = None
        self.shared_fd: int | None = None
        self.shared_checked = False
        self.requests: reqstats.RequestStats | None = None
        self.lock = threading.Lock()


_state = _State()


def __getattr__(name: str) -> Any:
    # `clusterui.worker.draining` is live (a plain global would be copied on import).
    if name == "draining":
        return _state.draining
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_draining() -> bool:
    return _state.draining


def instance() -> int:
    """This worker's instance number (CLUSTERUI_INSTANCE / NODE_APP_INSTANCE), 0 standalone."""
    for key in ("CLUSTERUI_INSTANCE", "NODE_APP_INSTANCE"):
        try:
            return int(os.environ[key])
        except (KeyError, ValueError):
            continue
    return 0


def _channel() -> _Channel | None:
    with _state.lock:
        if not _state.channel_checked:
            _state.channel_checked = True
            raw = os.environ.pop("CLUSTERUI_CHANNEL_FD", None)
            if raw is not None:
                try:
                    fd = int(raw)
                    os.set_inheritable(fd, False)  # our children must not hold it open
                    _state.channel = _Channel(socket.socket(fileno=fd))
                except (ValueError, OSError) as exc:
                    print(
                        f"clusterui.worker: ignoring CLUSTERUI_CHANNEL_FD={raw}: {exc}",
                        file=sys.stderr,
                    )
        return _state.channel


def _shared_fd() -> int | None:
    """fd 3 if systemd-style socket activation is meant for this process."""
    with _state.lock:
        if not _state.shared_checked:
            _state.shared_checked = True
            fds, pid = os.environ.get("LISTEN_FDS"), os.environ.get("LISTEN_PID")
            if fds and pid == str(os.getpid()) and fds.isdigit() and int(fds) >= 1:
                for key in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
                    os.environ.pop(key, None)
                os.set_inheritable(3, False)
                _state.shared_fd = 3
        return _state.shared_fd


def _handoff() -> bool:
    """Whether connections arrive over the channel. In other modes (the supervisor says
    CLUSTERUI_DISPATCH=shared, proxy or none) the channel only carries ready/drain, e.g.
    for a fork-mode app with wait_ready, and we listen ourselves."""
    mode = proto.MODES.get(os.environ.get("CLUSTERUI_DISPATCH", proto.DEFAULT_MODE))
    return mode is not None and mode.handoff


def mode() -> str:
    """ "shared" (fd 3), "channel" (a dispatcher hands connections over) or "standalone"."""
    if _shared_fd() is not None:
        return "shared"
    if _channel() is not None and _handoff():
        return "channel"
    return "standalone"


def _claim_channel(owner: object) -> _Channel | None:
    chan = _channel()
    if chan is None:
        return None
    with _state.lock:
        if _state.channel_owner is not None and _state.channel_owner is not owner:
            raise RuntimeError(
                "this worker's clusterui channel is already served by another server"
            )
        _state.channel_owner = owner
    return chan


def _port(port: int | None) -> int:
    raw = os.environ.get("PORT")
    if raw:
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"PORT must be a number, not {raw!r}") from None
    return DEFAULT_PORT if port is None else port


def _bind(host: str, port: int | None, reuse_port: bool, backlog: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, _port(port)))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def _listen_socket(host: str, port: int | None, reuse_port: bool, backlog: int) -> socket.socket:
    fd = _shared_fd()
    if fd is not None:
        return socket.socket(fileno=fd)
    return _bind(host, port, reuse_port, backlog)


# ---- the channel ---------------------------------------------------------------------


def _metrics_chunk(values: Mapping[str, float]) -> tuple[bytes | None, list[str]]:
    """The first `metrics` datagram of `values` that fits protocol v1's 64 KiB, and the
    names it carries: a worker that piled up many names while its channel was full sends
    them in several datagrams rather than failing. A name too long to fit alone is
    dropped (returned with no data)."""
    names: list[str] = []
    size = 32  # {"t":"metrics","values":{}}
    for name, value in values.items():
        item = len(json.dumps(name)) + len(json.dumps(value)) + 2
        if size + item > proto.MAX_MESSAGE:
            break
        names.append(name)
        size += item
    if not names:
        return None, [next(iter(values))]
    chunk = {name: values[name] for name in names}
    return proto.encode({"t": "metrics", "values": chunk}), names


class _Channel:
    """Our end of the handoff channel; sends never block the caller for long."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()
        self.closed = 0  # connection closes not yet reported
        self.metrics: dict[str, float] = {}
        self.ready_sent = False
        self.ready_wanted = False
        self.gone = False
        self.conns_received = 0  # conn datagrams taken off the channel, in order
        # (datagram number, fds we got) for conn datagrams whose fds the kernel could not
        # all install (MSG_CTRUNC: our fd limit): the dispatcher counts the lost ones closed
        self.lost: list[tuple[int, int]] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def ready(self) -> None:
        with self.lock:
            if self.ready_wanted:
                return
            self.ready_wanted = True
        self.flush(wait=True)

    def note_closed(self, n: int = 1) -> None:
        with self.lock:
            self.closed += n

    def set_metrics(self, values: Mapping[str, float]) -> None:
        with self.lock:
            self.metrics.update(values)

    def flush(self, *, wait: bool = False) -> bool:
        """Send what is owed; False if some of it has to wait (channel full)."""
        with self.lock:
            if self.gone:
                return True
            try:
                if self.ready_wanted and not self.ready_sent:
                    self._send(proto.READY, wait)
                    self.ready_sent = True
                if self.closed:
                    self._send(proto.encode({"t": "closed", "n": self.closed}), wait)
                    self.closed = 0
                while self.lost:
                    seq, got = self.lost[0]
                    self._send(proto.encode({"t": "lost", "seq": seq, "got": got}), wait)
                    del self.lost[0]
                while self.metrics:
                    data, sent = _metrics_chunk(self.metrics)
                    if data is not None:
                        self._send(data, wait)
                    for name in sent:  # sent, or too long to ever fit: either way done
                        del self.metrics[name]
            except BlockingIOError:
                return False
            except OSError:
                self.gone = True  # the dispatcher is gone; the reader sees EOF
            return True

    def _send(self, data: bytes, wait: bool) -> None:
        deadline = time.monotonic() + 10.0
        while True:
            try:
                self.sock.sendmsg([data], [], socket.MSG_DONTWAIT)
                return
            except BlockingIOError:
                if not wait or time.monotonic() > deadline:
                    raise
                select.select([], [self.sock], [], 1.0)

    def receive(self) -> tuple[str, list[int]] | None:
        """One message: (type, fds); None at end of file. Raises BlockingIOError."""
        while True:
            got = proto.recv(self.sock)
            if got is None:
                return None
            data, fds, truncated = got
            if data == proto.CONN:
                self.conns_received += 1
                if truncated:
                    with self.lock:
                        self.lost.append((self.conns_received, len(fds)))
                    self.flush()
                return "conn", fds
            try:
                if truncated:
                    raise proto.ProtocolError("message too large")
                return proto.decode(data)["t"], fds
            except proto.ProtocolError:
                proto.close_fds(fds)  # not from a dispatcher we understand: skip it


def ready() -> None:
    """Tell the dispatcher (or a supervisor waiting with wait_ready) that we serve now.

    The servers here do this by themselves; call it from programs that serve by other
    means. A no-op standalone.
    """
    chan = _channel()
    if chan is not None:
        chan.ready()


def _request_stats() -> reqstats.RequestStats | None:
    """This process's request figures, reported once a second; None without a channel."""
    with _state.lock:
        if _state.requests is not None or _state.channel is None:
            return _state.requests
        _state.requests = reqstats.RequestStats()
        reqstats.Reporter(_state.requests, metrics)
        return _state.requests


def metrics(values: Mapping[str, float] | None = None, /, **kw: float) -> None:
    """Report custom figures for the dashboard, e.g. ``metrics(queue=3, hit_rate=0.9)``."""
    merged = {**(values or {}), **kw}
    for key, value in merged.items():
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise TypeError(f"metric {key!r} must be a number, not {type(value).__name__}")
    chan = _channel()
    if chan is None:
        return  # standalone: checked all the same, so a mistake shows before deployment
    chan.set_metrics(merged)
    chan.flush()


# ---- asyncio ---------------------------------------------------------------------------


class _Conn:
    __slots__ = ("transport", "reader", "protocol", "handed", "last_data", "seen_waiter", "seen_at")

    def __init__(self, handed: bool) -> None:
        self.transport: asyncio.BaseTransport | None = None
        self.reader: asyncio.StreamReader | None = None
        self.protocol: asyncio.BaseProtocol | None = None
        self.handed = handed
        self.last_data = 0.0
        self.seen_waiter: object | None = None
        self.seen_at = 0.0


class Server:
    """A serving worker: what start_server() and create_server() return.

    ``serve_forever()`` returns once a drain has finished (every connection closed) or
    the dispatcher has gone away; the program then just ends, with exit status 0. If
    nobody awaits ``serve_forever()``, the process exits by itself at that point.
    """

    def __init__(
        self,
        make_protocol: Callable[..., asyncio.BaseProtocol],
        *,
        streams: bool,
        on_drain: Callable[[Server], Any] | None,
        idle_grace: float,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._make_protocol = make_protocol
        self._streams = streams
        self._on_drain = on_drain
        self._idle_grace = idle_grace
        self._conns: set[_Conn] = set()
        self._settle = 0  # loop turns to wait after closing the server (see _start_drain)
        self._chan: _Channel | None = None
        self._server: asyncio.base_events.Server | None = None
        self._draining = False
        self._closed = False
        self._eof = False
        self._hook: asyncio.Future[Any] | None = None
        self._done: asyncio.Future[None] = self._loop.create_future()
        self._all_closed = asyncio.Event()
        self._all_closed.set()
        self._awaited = False
        self._timer: asyncio.TimerHandle | None = None
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[Any]] = set()  # handed fds becoming connections
        self._sock_args: tuple[int, int, int] | None = None
        # How asyncio's selector loops make the transport of a socket they accepted
        # (their accept path calls it): a handed fd becomes a connection the same way,
        # without connect_accepted_socket's coroutine and task per connection. Other
        # loops (uvloop) do not have it and take that public path.
        self._make_transport = getattr(self._loop, "_make_socket_transport", None)
        self._signals: list[int] = []
        self.mode = "standalone"

    # ---- public --------------------------------------------------------------------

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The listening sockets (none under a dispatcher: it owns the listener)."""
        return tuple(self._server.sockets) if self._server is not None else ()

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self._conns)

    def is_serving(self) -> bool:
        return not self._closed

    def drain(self) -> None:
        """Begin a graceful stop, as when the supervisor asks for one."""
        self._start_drain()

    def close(self) -> None:
        """Take no more connections; the open ones carry on (asyncio.Server semantics)."""
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            self._server.close()
        if self._chan is not None and not self._eof:
            # Whatever is still queued is taken back by the dispatcher once we exit.
            self._loop.remove_reader(self._chan.fileno())

    async def wait_closed(self) -> None:
        """Wait until every connection has closed."""
        await self._all_closed.wait()
        if self._server is not None:
            await self._server.wait_closed()

    async def serve_forever(self) -> None:
        self._awaited = True
        try:
            await asyncio.shield(self._done)
        finally:
            self._awaited = False

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()

    # ---- setup ---------------------------------------------------------------------

    async def _start(
        self,
        host: str,
        port: int | None,
        reuse_port: bool,
        backlog: int,
        handle_signals: bool,
    ) -> None:
        shared = _shared_fd() is not None
        self._chan = _claim_channel(self)
        if shared or self._chan is None or not _handoff():
            self.mode = "shared" if shared else "standalone"
            sock = _listen_socket(host, port, reuse_port, backlog)
            self._server = await self._loop.create_server(
                lambda: self._protocol(False), sock=sock, backlog=backlog
            )
        else:
            self.mode = "channel"
        if self._chan is not None:
            self._chan.sock.setblocking(False)
            self._loop.add_reader(self._chan.fileno(), self._on_channel)
            self._chan.ready()
        if handle_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
                    self._loop.add_signal_handler(sig, self._on_signal)
                    self._signals.append(sig)

    def _protocol(self, handed: bool) -> asyncio.BaseProtocol:
        return self._connection(handed)[1]

    def _connection(self, handed: bool) -> tuple[_Conn, asyncio.BaseProtocol]:
        conn = _Conn(handed)
        if self._streams:
            # Our own protocol class reports to us itself: nothing to patch.
            return conn, self._make_protocol(self, conn)  # type: ignore[call-arg]
        protocol = self._make_protocol()
        conn.protocol = protocol
        made, lost = protocol.connection_made, protocol.connection_lost

        def connection_made(transport: asyncio.BaseTransport) -> None:
            self._made(conn, transport)
            made(transport)

        def connection_lost(exc: Exception | None) -> None:
            try:
                lost(exc)
            finally:
                self._lost(conn)

        # Instance attributes shadow the methods: the protocol's class stays as it is.
        protocol.connection_made = connection_made  # type: ignore[method-assign]
        protocol.connection_lost = connection_lost  # type: ignore[method-assign]
        conn.last_data = self._loop.time()
        name = "buffer_updated" if isinstance(protocol, asyncio.BufferedProtocol) else None
        name = name or "data_received"
        inner = getattr(protocol, name)
        loop_time = self._loop.time

        def received(*args: Any) -> None:
            conn.last_data = loop_time()
            inner(*args)

        setattr(protocol, name, received)
        return conn, protocol

    def _made(self, conn: _Conn, transport: asyncio.BaseTransport) -> None:
        conn.transport = transport
        self._conns.add(conn)
        self._all_closed.clear()

    def _lost(self, conn: _Conn) -> None:
        self._conns.discard(conn)
        if conn.handed and self._chan is not None:
            self._chan.closed += 1  # one event loop thread: no lock needed
            if not self._flush_scheduled:
                self._flush_scheduled = True
                self._loop.call_later(CLOSED_REPORT_DELAY, self._flush)
        if not self._conns:
            self._all_closed.set()
            if self._draining:
                self._maybe_finish()

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._chan is not None and not self._chan.flush():
            self._loop.call_later(0.05, self._flush)  # channel full: try again soon

    # ---- the channel ---------------------------------------------------------------

    def _on_channel(self) -> None:
        chan = self._chan
        assert chan is not None
        for _ in range(64):
            try:
                got = chan.receive()
            except BlockingIOError:
                return
            except OSError:
                got = None
            if got is None:
                self._on_eof()
                return
            kind, fds = got
            if kind == "conn":
                for fd in fds:
                    self._serve_fd(fd)
            else:
                proto.close_fds(fds)
                if kind == "drain":
                    self._start_drain()

    def _serve_fd(self, fd: int) -> None:
        try:
            if self._sock_args is None:
                sock = socket.socket(fileno=fd)
                self._sock_args = (sock.family, sock.type, sock.proto)
            else:
                sock = socket.socket(*self._sock_args, fileno=fd)
        except OSError:
            os.close(fd)
            self._never_connected()
            return
        if self._make_transport is None:
            coro = self._loop.connect_accepted_socket(lambda: self._protocol(True), sock)
            task = self._loop.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._connected)
            return
        conn, protocol = self._connection(True)
        try:
            sock.setblocking(False)
            transport = self._make_transport(sock, protocol)
        except Exception:  # as the task path: it never became a connection
            sock.close()
            self._never_connected()
            return
        self._made(conn, transport)  # now, not when connection_made runs: a drain counts it

    def _connected(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._never_connected()
        if self._draining:
            self._maybe_finish()

    def _never_connected(self) -> None:
        """A handed fd that never became a connection: the dispatcher's count of what
        this worker holds must still add up, so it is reported closed."""
        if self._chan is not None:
            self._chan.closed += 1
            self._flush()

    def _on_eof(self) -> None:
        assert self._chan is not None
        self._eof = True
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(self._chan.fileno())
        self._start_drain()
        self._loop.call_later(EOF_GRACE, self._abort)

    # ---- drain ---------------------------------------------------------------------

    def _on_signal(self) -> None:
        if self._draining:
            self._abort()  # a second signal: do not wait any longer
        else:
            self._start_drain()

    def _start_drain(self) -> None:
        if self._draining:
            return
        self._draining = True
        _state.draining = True
        if self._server is not None:
            # Accept nothing more from now on, but close the server a turn later: asyncio
            # makes the transports of sockets it accepted in this turn in tasks on the
            # next, and a server already closed then drops them (they are reset). A few
            # more turns pass before an empty connection set means "done".
            for sock in self._server.sockets:
                self._loop.remove_reader(sock.fileno())
            self._loop.call_soon(self._server.close)
            self._settle = _ACCEPT_SETTLE_TURNS
        if self._on_drain is not None:
            result = self._on_drain(self)
            if inspect.isawaitable(result):
                self._hook = asyncio.ensure_future(result)
                self._hook.add_done_callback(lambda _f: self._maybe_finish())
        self._tick()

    def _tick(self) -> None:
        self._timer = None
        if self._done.done():
            return
        now = self._loop.time()
        for conn in list(self._conns):
            if self._idle(conn, now) and conn.transport is not None:
                conn.transport.close()
        self._maybe_finish()
        if not self._done.done():
            self._timer = self._loop.call_later(_DRAIN_TICK, self._tick)

    def _idle(self, conn: _Conn, now: float) -> bool:
        transport = conn.transport
        if transport is None or transport.is_closing():
            return False
        if getattr(transport, "get_write_buffer_size", lambda: 0)():
            return False
        if self._streams:
            # Idle = the handler has been waiting for more input, with none buffered,
            # for idle_grace: between two requests on a keep-alive connection.
            reader = conn.reader
            waiter = getattr(reader, "_waiter", None)
            if waiter is None or getattr(reader, "_buffer", b"x"):
                conn.seen_waiter = None
                return False
            if conn.seen_waiter is not waiter:
                conn.seen_waiter, conn.seen_at = waiter, now
                return False
            return now - conn.seen_at >= self._idle_grace
        drain = getattr(conn.protocol, "drain", None)
        if callable(drain):
            if conn.seen_waiter is None:
                conn.seen_waiter = drain  # the protocol closes itself: tell it once
                drain()
            return False
        return now - conn.last_data >= self._idle_grace

    def _maybe_finish(self) -> None:
        if self._done.done() or not self._draining or self._conns or self._tasks:
            return
        if self._settle:
            self._settle -= 1
            self._loop.call_soon(self._maybe_finish)
            return
        if self._hook is not None and not self._hook.done():
            return
        self._finish()

    def _abort(self) -> None:
        if self._done.done():
            return
        for task in list(self._tasks):
            task.cancel()
        for conn in list(self._conns):
            if conn.transport is not None:
                conn.transport.abort()
        if self._hook is not None:
            self._hook.cancel()
        self._finish()

    def _finish(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.close()
        if self._chan is not None:
            self._chan.flush()
        for sig in self._signals:
            with contextlib.suppress(Exception):
                self._loop.remove_signal_handler(sig)
        self._signals.clear()
        self._done.set_result(None)
        if not self._awaited:
            self._loop.call_soon(_exit_now)


def _exit_now() -> None:
    raise SystemExit(0)


class _StreamProtocol(asyncio.StreamReaderProtocol):
    """asyncio's own, reporting its connection's life to the Server."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        cb: Callable[..., Any],
        server: Server,
        conn: _Conn,
    ) -> None:
        super().__init__(reader, cb)
        conn.reader = reader
        conn.protocol = self
        self._cu_server = server
        self._cu_conn = conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._cu_server._made(self._cu_conn, transport)
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            super().connection_lost(exc)
        finally:
            self._cu_server._lost(self._cu_conn)


async def start_server(
    client_connected_cb: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any],
    *,
    host: str = "0.0.0.0",
    port: int | None = None,
    limit: int = 2**16,
    reuse_port: bool = False,
    backlog: int = 1024,
    on_drain: Callable[[Server], Any] | None = None,
    idle_grace: float = IDLE_GRACE,
    handle_signals: bool = True,
) -> Server:
    """Like asyncio.start_server, wherever the connections come from (see the module doc).

    ``on_drain(server)`` runs when a drain begins; if it returns an awaitable, the
    worker also waits for it before finishing. With ``handle_signals``, SIGINT and
    SIGTERM start a drain (a second one stops at once).
    """

    def factory(server: Server, conn: _Conn) -> asyncio.BaseProtocol:
        return _StreamProtocol(asyncio.StreamReader(limit=limit), client_connected_cb, server, conn)

    server = Server(factory, streams=True, on_drain=on_drain, idle_grace=idle_grace)
    await server._start(host, port, reuse_port, backlog, handle_signals)
    return server


async def create_server(
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    *,
    host: str = "0.0.0.0",
    port: int | None = None,
    reuse_port: bool = False,
    backlog: int = 1024,
    on_drain: Callable[[Server], Any] | None = None,
    idle_grace: float = IDLE_GRACE,
    handle_signals: bool = True,
) -> Server:
    """Like loop.create_server, wherever the connections come from.

    During a drain a protocol instance with a ``drain()`` method has it called once and
    closes itself; any other is closed once it has received nothing for ``idle_grace``
    seconds and has nothing left to write.
    """
    server = Server(protocol_factory, streams=False, on_drain=on_drain, idle_grace=idle_grace)
    await server._start(host, port, reuse_port, backlog, handle_signals)
    return server


def serve(
    client_connected_cb: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[Any]],
    **kwargs: Any,
) -> None:
    """Run start_server(client_connected_cb, **kwargs) until drained, in a new event loop."""

    async def main() -> None:
        server = await start_server(client_connected_cb, **kwargs)
        await server.serve_forever()

    asyncio.run(main())


# ---- blocking servers --------------------------------------------------------------------


class _HandedSocket(socket.socket):
    """A connection from the dispatcher: its final close is counted and reported."""

    __slots__ = ("_on_close",)

    def _real_close(self, *args: Any) -> None:  # type: ignore[override]
        callback = getattr(self, "_on_close", None)
        self._on_close = None
        super()._real_close(*args)
        if callback is not None:
            callback()


class ListeningSocket:
    """Something to accept() connections from: the channel, fd 3, or a socket of our own.

    It stands in for a listening socket wherever one is polled and accepted from
    (``socketserver``'s ``server.socket``, a hand-written accept loop). Under a
    dispatcher its fileno() is an epoll fd that is readable while connections wait.
    ``ready`` is sent the first time it is polled or accepted from.
    """

    def __init__(
        self,
        host: str = "0.0.0.0",
        port: int | None = None,
        *,
        reuse_port: bool = False,
        backlog: int = 128,
    ) -> None:
        self._host = host
        self._port = port
        self._sock: socket.socket | None = None
        self._chan: _Channel | None = None
        self._queue: collections.deque[int] = collections.deque()
        self._timeout: float | None = None
        self._drain_callbacks: list[Callable[[], Any]] = []
        self._draining = False
        self._lock = threading.Lock()
        self._ep: select.epoll | None = None
        self._evfd = -1
        self._sock_args: tuple[int, int, int] | None = None
        shared = _shared_fd() is not None
        self._chan = _claim_channel(self)
        if shared or self._chan is None or not _handoff():
            self.mode = "shared" if shared else "standalone"
            self._sock = _listen_socket(host, port, reuse_port, backlog)
            self.family, self.type, self.proto = (
                self._sock.family,
                self._sock.type,
                self._sock.proto,
            )
        else:
            self.mode = "channel"
            self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
            self.type, self.proto = socket.SOCK_STREAM, 0
            # One pollable fd for "a connection is waiting": the channel, or fds we
            # already received in a batch but have not handed out yet.
            self._ep = select.epoll()
            self._evfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._ep.register(self._chan.fileno(), select.EPOLLIN)
            self._ep.register(self._evfd, select.EPOLLIN)

    # ---- the socket-like surface used by socketserver ----------------------------

    def fileno(self) -> int:
        self.ready()
        if self._sock is not None:
            return self._sock.fileno()
        assert self._ep is not None
        return self._ep.fileno()

    def getsockname(self) -> Any:
        if self._sock is not None:
            return self._sock.getsockname()
        return (self._host, self._port or 0)

    def bind(self, address: Any) -> None:
        """Already bound (or bound by the dispatcher): nothing to do."""

    def listen(self, backlog: int = 0) -> None:
        """Already listening: nothing to do."""

    def setsockopt(self, *args: Any) -> None:
        """Options for bind() (SO_REUSEADDR...) do not apply any more."""

    def gettimeout(self) -> float | None:
        return self._timeout

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout
        if self._sock is not None:
            self._sock.settimeout(timeout)

    def setblocking(self, flag: bool) -> None:
        self.settimeout(None if flag else 0.0)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        if self._ep is not None:
            self._ep.close()
            os.close(self._evfd)
            self._ep = None
        with self._lock:
            proto.close_fds(list(self._queue))
            self._queue.clear()

    def __enter__(self) -> ListeningSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- clusterui ------------------------------------------------------------------

    @property
    def draining(self) -> bool:
        return self._draining

    def ready(self) -> None:
        if self._chan is not None:
            self._chan.ready()

    def on_drain(self, callback: Callable[[], Any]) -> None:
        """Call callback (once, from the accepting thread) when a drain begins.

        Without one, accept() raises SystemExit(0) at that point: a plain
        ``serve_forever()`` or accept loop then ends the program cleanly.
        """
        self._drain_callbacks.append(callback)

    def note_closed(self) -> None:
        if self._chan is not None:
            self._chan.note_closed()
            self._chan.flush()

    def accept(self) -> tuple[socket.socket, Any]:
        self.ready()
        if self._sock is not None:
            return self._sock.accept()
        chan = self._chan
        assert chan is not None
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while True:
            with self._lock:
                if self._queue:
                    fd = self._queue.popleft()
                    if not self._queue:
                        with contextlib.suppress(BlockingIOError):
                            os.eventfd_read(self._evfd)
                    return self._wrap(fd)
            if self._draining:
                self._raise_drained()
            try:
                got = chan.receive()
            except BlockingIOError:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    if self._timeout == 0.0:
                        raise
                    raise TimeoutError("timed out") from None
                select.select([chan.sock], [], [], remaining)
                continue
            except OSError:
                got = None
            chan.flush()
            if got is None:
                self._begin_drain()
                continue
            kind, fds = got
            if kind == "conn":
                with self._lock:
                    self._queue.extend(fds)
                    if len(self._queue) > 1:
                        os.eventfd_write(self._evfd, 1)
            else:
                proto.close_fds(fds)
                if kind == "drain":
                    self._begin_drain()

    def _wrap(self, fd: int) -> tuple[socket.socket, Any]:
        if self._sock_args is None:
            probe = socket.socket(fileno=fd)
            self._sock_args = (probe.family, probe.type, probe.proto)
            probe.detach()
        sock = _HandedSocket(*self._sock_args, fileno=fd)
        sock._on_close = self.note_closed
        try:
            peer = sock.getpeername()
        except OSError:
            peer = ("", 0)
        return sock, peer

    def _begin_drain(self) -> None:
        if not self._draining:
            self._draining = True
            _state.draining = True
            for callback in self._drain_callbacks:
                callback()

    def _raise_drained(self) -> None:
        if not self._drain_callbacks:
            raise SystemExit(0)
        raise Draining("draining: no more connections will come")


def listening_socket(
    *, host: str = "0.0.0.0", port: int | None = None, reuse_port: bool = False, backlog: int = 128
) -> ListeningSocket:
    """A ListeningSocket for blocking servers (see the class)."""
    return ListeningSocket(host, port, reuse_port=reuse_port, backlog=backlog)


_server_classes: dict[type, type] = {}
_handler_classes: dict[type, type] = {}


def _clustered_server_class(server_cls: type) -> type:
    if server_cls in _server_classes:
        return _server_classes[server_cls]

    class Clustered(server_cls):  # type: ignore[valid-type, misc]
        _clusterui_grace = IDLE_GRACE

        def serve_forever(self, poll_interval: float = 0.1) -> None:
            self.socket.ready()
            super().serve_forever(poll_interval)

        def _clusterui_drain(self) -> None:
            # shutdown() waits for serve_forever to return: not from its own thread.
            threading.Thread(target=self.shutdown, daemon=True).start()

        def process_request(self, request: Any, client_address: Any) -> None:
            with self._clusterui_lock:
                self._clusterui_open.add(request)
            super().process_request(request, client_address)

        def shutdown_request(self, request: Any) -> None:
            with self._clusterui_lock:
                self._clusterui_open.discard(request)
                self._clusterui_cond.notify_all()
            super().shutdown_request(request)

        def server_close(self) -> None:
            if self.socket.draining:
                self._clusterui_wait_in_flight()
            super().server_close()

        def _clusterui_wait_in_flight(self) -> None:
            """Requests in flight finish, however long they take (the supervisor's
            kill_timeout bounds a drain); a keep-alive connection idle past the grace
            has its reads ended. Without this wait the program would exit and its
            daemon handler threads would die mid-request: an empty answer."""
            deadline = time.monotonic() + self._clusterui_grace
            ended: set[Any] = set()
            with self._clusterui_lock:
                while self._clusterui_open:
                    now = time.monotonic()
                    if now >= deadline:
                        if self._clusterui_busy is None:  # not HTTP: busy or idle is unknown
                            idle = [r for r in self._clusterui_open if r not in ended]
                        else:
                            idle = [
                                r for r in self._clusterui_open
                                if r not in self._clusterui_busy and r not in ended
                            ]  # fmt: skip
                        for request in idle:
                            ended.add(request)
                            with contextlib.suppress(OSError):
                                request.shutdown(socket.SHUT_RD)
                    self._clusterui_cond.wait(max(0.05, deadline - now) if now < deadline else 0.1)

    Clustered.__name__ = Clustered.__qualname__ = server_cls.__name__
    _server_classes[server_cls] = Clustered
    return Clustered


def _is_http_handler(handler_cls: object) -> bool:
    """A subclass of http.server's request handler. That module is not imported here
    (it costs a worker about a third of this module's import time): a class cannot
    derive from it unless its program imported it already."""
    module = sys.modules.get("http.server")
    return (
        module is not None
        and isinstance(handler_cls, type)
        and issubclass(handler_cls, module.BaseHTTPRequestHandler)
    )


def _clustered_handler_class(handler_cls: type) -> type:
    if not _is_http_handler(handler_cls):
        return handler_cls
    if handler_cls in _handler_classes:
        return _handler_classes[handler_cls]

    class Handler(handler_cls):  # type: ignore[valid-type, misc]
        _cu_started: float | None = None

        def end_headers(self) -> None:
            if _state.draining and not self.close_connection:
                self.send_header("Connection", "close")
            super().end_headers()

        # Request metrics: a request runs from a parsed request line to its handler's end
        # (handle_one_request for http.server, handle() for wsgiref's one-shot handler).
        # It is also "busy" for a drain from then on: waited for, never cut (see
        # server_close); in between requests a keep-alive connection is idle.
        def parse_request(self) -> bool:
            busy = getattr(self.server, "_clusterui_busy", None)
            if busy is not None:
                with self.server._clusterui_lock:
                    busy.add(self.request)
            ok = super().parse_request()
            if ok:
                stats = _request_stats()
                if stats is not None:
                    self._cu_started = stats.begin()
            return ok

        def _cu_finish(self) -> None:
            started, self._cu_started = self._cu_started, None
            stats = _request_stats()
            if started is not None and stats is not None:
                stats.end(started)

        def handle_one_request(self) -> None:
            try:
                super().handle_one_request()
            finally:
                self._cu_finish()
                busy = getattr(self.server, "_clusterui_busy", None)
                if busy is not None:
                    with self.server._clusterui_lock:
                        busy.discard(self.request)
                        self.server._clusterui_cond.notify_all()

        def handle(self) -> None:
            try:
                super().handle()
            finally:
                self._cu_finish()

    Handler.__name__ = Handler.__qualname__ = handler_cls.__name__
    _handler_classes[handler_cls] = Handler
    return Handler


def make_server(
    server_cls: type[socketserver.BaseServer],
    handler_cls: type,
    *,
    host: str = "0.0.0.0",
    port: int | None = None,
    reuse_port: bool = False,
    idle_grace: float = IDLE_GRACE,
    **kwargs: Any,
) -> Any:
    """Build a socketserver-style server (TCPServer, HTTPServer, ThreadingHTTPServer,
    wsgiref's WSGIServer...) on a ListeningSocket.

    ``serve_forever()`` sends ``ready`` and returns once a drain begins; closing the
    server (``server_close()`` or the ``with`` block) then waits for requests in flight.
    ``http.server`` handlers answer with ``Connection: close`` while draining.
    """
    sock = listening_socket(host=host, port=port, reuse_port=reuse_port)
    cls = _clustered_server_class(server_cls)
    try:
        server = cls(
            (host, port or 0),
            _clustered_handler_class(handler_cls),
            bind_and_activate=False,
            **kwargs,
        )
    except BaseException:
        sock.close()
        raise
    server.socket.close()
    server.socket = sock
    server._clusterui_grace = idle_grace
    server._clusterui_lock = threading.Lock()
    server._clusterui_cond = threading.Condition(server._clusterui_lock)
    server._clusterui_open = set()
    # Requests being answered now (HTTP handlers say; None: unknown, the grace applies).
    http_handler = _is_http_handler(handler_cls)
    server._clusterui_busy = set() if http_handler else None
    sock.on_drain(server._clusterui_drain)
    try:
        server.server_bind()  # fills in server_name/port (and WSGI's environ)
        server.server_activate()
    except BaseException:
        server.server_close()
        raise
    return server


def make_wsgi_server(
    app: Callable[..., Any],
    *,
    host: str = "0.0.0.0",
    port: int | None = None,
    server_cls: type | None = None,
    handler_cls: type | None = None,
    **kwargs: Any,
) -> Any:
    """wsgiref.simple_server.make_server, on a ListeningSocket."""
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

    server = make_server(
        server_cls or WSGIServer, handler_cls or WSGIRequestHandler, host=host, port=port, **kwargs
    )
    server.set_app(app)
    return server
