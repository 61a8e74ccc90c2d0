"""The control socket: newline-delimited JSON over a unix stream socket.

Request  {"id": 1, "op": "ls", "args": {...}}
Response {"id": 1, "ok": true, "result": ...}  or  {"id": 1, "ok": false, "error": "...", "code": 1}
Event    {"event": "state" | "state_delta" | "logs" | "notice", ...}   (after "subscribe")

Only the socket's owner may talk to it: the file is 0600 inside a 0700 home, and
every connection's peer uid (SO_PEERCRED) is checked as well.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from clusterui.vocab.delta import DELTA, WHOLE, Mirror
from clusterui.vocab.exits import Exit, OpError

__all__ = ["OpError", "ControlServer", "encode"]

MAX_REQUEST = 1 << 20  # a request line longer than this is refused
# A subscriber that lets this much pile up unread is cut off, so it cannot grow our memory.
MAX_PENDING_EVENTS = 8 << 20
SUN_PATH_MAX = 107
# Connections the kernel queues before we accept them. asyncio's default (100) is
# too few for a burst of clients (a dashboard per terminal, scripts in a loop): past
# it a non-blocking connect fails with EAGAIN. The kernel clamps this to somaxconn.
LISTEN_BACKLOG = 4096


def encode(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str).encode() + b"\n"


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


class Connection:
    """One client connection on the supervisor side."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.subscribed_state = False
        # State events with each worker's history (the series the dashboard draws), or
        # without: a client that keeps its own from one state() call needs them once.
        self.state_history = True
        # State as deltas (vocab/delta.py): one whole event first (`delta_whole`), then
        # only what changed.
        self.state_delta = False
        self.delta_whole = False
        self.subscribed_logs = False
        self.live_lines: int | None = None  # most log lines per event this client wants
        self.closed = False

    def send(self, obj: Any) -> None:
        self.send_encoded(encode(obj))

    def send_encoded(self, data: bytes) -> None:
        if self.closed:
            return
        transport = self.writer.transport
        if transport.get_write_buffer_size() > MAX_PENDING_EVENTS:
            # A client that stopped reading must not make us buffer without bound.
            self.close()
            return
        self.writer.write(data)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.close()


Handler = Callable[[Connection, str, dict[str, Any]], Awaitable[Any]]


class ControlServer:
    def __init__(self, path: str, handler: Handler):
        self.path = path
        self.handler = handler
        self.connections: set[Connection] = set()
        self._server: asyncio.base_events.Server | None = None
        self._mirror: Mirror | None = None  # what the delta subscribers hold

    async def start(self) -> None:
        if len(os.fsencode(self.path)) > SUN_PATH_MAX:
            raise OpError(
                f"socket path {self.path} is longer than {SUN_PATH_MAX} bytes; "
                "set CLUSTERUI_HOME to a shorter path",
                2,
            )
        old_umask = os.umask(0o177)  # the socket is created 0600, with no window
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=self.path, limit=MAX_REQUEST, backlog=LISTEN_BACKLOG
            )
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        for conn in list(self.connections):
            conn.close()
        if self._server:
            self._server.close()

    def broadcast_state(self, make: Callable[[bool], dict[str, Any]]) -> None:
        """A state event to each state subscriber: make(history) builds the snapshot, at
        most once per kind, encoded once for every subscriber that wants that kind; the
        delta subscribers share one delta (vocab/delta.py)."""
        subscribers = [c for c in self.connections if c.subscribed_state and not c.closed]
        if not any(c.state_delta for c in subscribers):
            self._mirror = None  # nobody holds what it mirrors
        made: dict[bool, dict[str, Any]] = {}
        encoded: dict[bool, bytes] = {}

        def snapshot(history: bool) -> dict[str, Any]:
            if history not in made:
                made[history] = make(history)
            return made[history]

        def whole(history: bool) -> bytes:
            if history not in encoded:
                encoded[history] = encode({"event": WHOLE, "data": snapshot(history)})
            return encoded[history]

        delta: bytes | None = None
        for conn in subscribers:
            if not conn.state_delta:
                conn.send_encoded(whole(conn.state_history))
                continue
            if delta is None:
                if self._mirror is None:
                    self._mirror = Mirror()
                changes = self._mirror.delta(snapshot(False))
                delta = encode({"event": DELTA, "data": changes})
            if conn.delta_whole:
                conn.delta_whole = False
                conn.send_encoded(whole(False))
            else:
                conn.send_encoded(delta)

    def broadcast(self, obj: Any, *, logs: bool = False) -> None:
        data = None  # encoded once, for every subscriber
        for conn in list(self.connections):
            if (conn.subscribed_logs if logs else conn.subscribed_state) and not conn.closed:
                if data is None:
                    data = encode(obj)
                conn.send_encoded(data)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        try:
            if peer_uid(sock) != os.getuid():
                writer.close()
                return
        except OSError:
            writer.close()
            return
        conn = Connection(reader, writer)
        self.connections.add(conn)
        try:
            await self._loop(conn)
        except asyncio.CancelledError:
            pass  # the supervisor is shutting down: nothing to report
        finally:
            self.connections.discard(conn)
            conn.close()

    async def _loop(self, conn: Connection) -> None:
        while not conn.closed:
            try:
                line = await conn.reader.readuntil(b"\n")
            except asyncio.IncompleteReadError:
                return  # the client went away (possibly mid-request): nothing to do
            except asyncio.LimitOverrunError:
                conn.send(
                    {"id": None, "ok": False, "error": "request too large", "code": Exit.USAGE}
                )
                return
            except (ConnectionError, OSError):
                return
            try:
                req = json.loads(line)
                if not isinstance(req, dict) or not isinstance(req.get("op"), str):
                    raise ValueError
                args = req.get("args") or {}
                if not isinstance(args, dict):
                    raise ValueError
            except (ValueError, UnicodeDecodeError, RecursionError):
                conn.send(
                    {"id": None, "ok": False, "error": "malformed request", "code": Exit.USAGE}
                )
                continue
            # Each request runs on its own so a slow one (a reload) does not hold up others.
            asyncio.ensure_future(self._answer(conn, req.get("id"), req["op"], args))

    async def _answer(self, conn: Connection, rid: Any, op: str, args: dict[str, Any]) -> None:
        try:
            result = await self.handler(conn, op, args)
            conn.send({"id": rid, "ok": True, "result": result})
        except OpError as exc:
            conn.send({"id": rid, "ok": False, "error": exc.message, "code": exc.code})
        except TypeError as exc:
            conn.send(
                {
                    "id": rid,
                    "ok": False,
                    "error": f"bad arguments for {op}: {exc}",
                    "code": Exit.USAGE,
                }
            )
        except Exception as exc:  # a bug must not take the supervisor down; say what it was
            conn.send({"id": rid, "ok": False, "error": f"internal error in {op}: {exc!r}"})
