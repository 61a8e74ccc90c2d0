"""Worker protocol v1: one JSON object per SEQPACKET datagram, fds as SCM_RIGHTS.

Shared by the dispatcher and `clusterui.worker`, so it imports only the standard
library. Every call here is non-blocking unless the socket itself is blocking and
`block=True` is passed: callers decide what a full channel means for them.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import socket
from dataclasses import dataclass
from typing import Any, Literal

# What a worker may publish in one `metrics` message and keep per slot (the supervisor
# enforces them: core/metric_cap.py; the dispatcher trims what it forwards).
METRIC_NAMES_MAX = 32  # distinct names per worker slot
METRIC_NAME_LEN_MAX = 64  # characters per name

MAX_MESSAGE = 64 * 1024  # bytes of JSON in one datagram
MAX_FDS = 253  # SCM_MAX_FD: the most fds Linux accepts in one message
_FD_SIZE = array.array("i").itemsize
_ANC_SPACE = socket.CMSG_SPACE(MAX_FDS * _FD_SIZE)
_RECV_FLAGS = socket.MSG_DONTWAIT | getattr(socket, "MSG_CMSG_CLOEXEC", 0)

# Pre-encoded hot-path messages.
CONN = b'{"t":"conn"}'
DRAIN = b'{"t":"drain"}'
READY = b'{"t":"ready"}'


@dataclass(frozen=True)
class Mode:
    """One dispatch mode: how its workers are wired at spawn, and how connections are
    routed to them. The supervisor, the dispatcher and the worker helper all read this
    table; nothing else lists the modes.

    dispatcher: a dispatcher process owns the accept loop (else the workers accept
      on the listening socket themselves and the kernel balances).
    handoff: connections reach a worker as fds over its channel (CLUSTERUI_CHANNEL_FD).
    own_port: each worker listens on its own $PORT and the dispatcher forwards bytes.
    listen_fd: the listening socket is the worker's fd 3 (systemd socket activation).
    route: the dispatcher's strategy for picking a worker: "rotate" (the next ready
      worker in turn) or "fewest-open" (the fewest open connections, ties in turn).
    short: a shorter name for narrow columns (the dashboard's mode); empty: the name.
    shareable: several dispatcher processes may serve one listener (`dispatchers: N`):
      each hands connections in turn to every worker over the same channels, so the
      turn stays fair without one dispatcher knowing what the others handed.
    """

    name: str
    dispatcher: bool
    handoff: bool = False
    own_port: bool = False
    listen_fd: bool = False
    route: Literal["rotate", "fewest-open"] | None = None
    short: str = ""
    shareable: bool = False


MODES: dict[str, Mode] = {
    m.name: m
    for m in (
        Mode(
            "round-robin",
            dispatcher=True,
            handoff=True,
            route="rotate",
            short="rr",
            shareable=True,
        ),
        Mode("least-connections", dispatcher=True, handoff=True, route="fewest-open"),
        Mode("shared", dispatcher=False, listen_fd=True),
        Mode("proxy", dispatcher=True, own_port=True, route="rotate"),
    )
}
DEFAULT_MODE = "round-robin"
# CLUSTERUI_DISPATCH_SHARED for one of several dispatchers of a listener: the one that
# reads the workers' channels (their ready, closed and metrics messages; health probes
# go to it), and the helpers that only hand connections and are told the rest.
PRIMARY, HELPER = "primary", "helper"
# The modes a dispatcher process runs.
DISPATCHER_MODES: tuple[str, ...] = tuple(name for name, m in MODES.items() if m.dispatcher)


class ProtocolError(ValueError):
    """A datagram that is not a valid v1 message (bad JSON, not an object, too large)."""


def encode(msg: dict[str, Any]) -> bytes:
    data = json.dumps(msg, separators=(",", ":")).encode()
    if len(data) > MAX_MESSAGE:
        raise ProtocolError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE}")
    return data


def decode(data: bytes) -> dict[str, Any]:
    """Parse one datagram; raise ProtocolError with a short reason if it is not a message."""
    if len(data) > MAX_MESSAGE:
        raise ProtocolError(f"message larger than {MAX_MESSAGE} bytes")
    try:
        msg = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ProtocolError(f"not JSON: {data[:60]!r}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("t"), str):
        raise ProtocolError(f'not a message object with a "t" field: {data[:60]!r}')
    return msg


def fds_ancillary(fds: list[int] | tuple[int, ...]) -> list[tuple[int, int, bytes]]:
    if not fds:
        return []
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]


def send(
    sock: socket.socket,
    msg: dict[str, Any] | bytes,
    fds: list[int] | tuple[int, ...] = (),
    *,
    block: bool = False,
) -> None:
    """Send one message (a dict, or pre-encoded bytes) with optional fds.

    Raises BlockingIOError when the channel is full (unless block=True on a blocking
    socket), and OSError when the peer is gone.
    """
    data = msg if isinstance(msg, bytes) else encode(msg)
    sock.sendmsg([data], fds_ancillary(fds), 0 if block else socket.MSG_DONTWAIT)


def recv(sock: socket.socket, *, block: bool = False) -> tuple[bytes, list[int], bool] | None:
    """Receive one datagram: (data, fds, truncated), or None at end of file.

    Raises BlockingIOError when nothing is queued (non-blocking). Received fds are
    close-on-exec. `truncated` means the datagram exceeded MAX_MESSAGE (or fds were
    dropped); the caller reports it as a protocol error.
    """
    flags = _RECV_FLAGS & ~socket.MSG_DONTWAIT if block else _RECV_FLAGS
    data, anc, msg_flags, _addr = sock.recvmsg(MAX_MESSAGE + 1, _ANC_SPACE, flags)
    fds = unpack_fds(anc)
    if not data and not fds and not anc:
        return None
    truncated = bool(msg_flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC)) or len(data) > MAX_MESSAGE
    return data, fds, truncated


def unpack_fds(anc: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(payload[: len(payload) - len(payload) % _FD_SIZE])
            fds.extend(arr)
    return fds


def close_fds(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
