"""Node's IPC framing, as the dispatcher speaks it to a Node worker's preload.

The channel is a SOCK_STREAM unix socket pair whose worker end Node opens from
``NODE_CHANNEL_FD`` (serialization ``json``): newline-delimited JSON both ways. A
connection goes as one ``sendmsg`` carrying one NODE_HANDLE line and the accepted fd as
SCM_RIGHTS (Node takes at most one handle per read, and the kernel never merges two
fd-carrying writes into one read). Node answers each with NODE_HANDLE_ACK, which is how
we count what the worker has taken. Our own messages are internal to Node
(``"cmd":"NODE_CLUSTERUI"``): the app's ``process.on('message')`` never sees them.
"""

from __future__ import annotations

import json
import socket
from typing import Any

TAG = "NODE_CLUSTERUI"
CONN = b'{"cmd":"NODE_HANDLE","type":"net.Native","msg":{"cmd":"NODE_CLUSTERUI","t":"conn"}}\n'
DRAIN = b'{"cmd":"NODE_CLUSTERUI","t":"drain"}\n'
# Written into a worker's end by the supervisor after a dispatcher was replaced.
READY = b'{"cmd":"NODE_CLUSTERUI","t":"ready"}\n'
ACK = b'{"cmd":"NODE_HANDLE_ACK"}'
NACK = b'{"cmd":"NODE_HANDLE_NACK"}'
MAX_LINE = 1 << 20  # a longer line from a worker is dropped (and reported)
READ_SIZE = 64 * 1024


def line(msg: dict[str, Any]) -> bytes:
    return json.dumps({"cmd": TAG, **msg}, separators=(",", ":")).encode() + b"\n"


def split_lines(buffer: bytes, data: bytes) -> tuple[list[bytes], bytes, bool]:
    """(complete lines, the rest, overflowed): `buffer` is what an earlier read left."""
    data = buffer + data if buffer else data
    lines = data.split(b"\n")
    rest = lines.pop()
    if len(rest) > MAX_LINE:
        return lines, b"", True
    return lines, rest, False


def parse(raw: bytes) -> dict[str, Any] | None:
    """One of our messages from a worker, or None (the app's own messages, junk)."""
    if TAG.encode() not in raw:
        return None
    try:
        msg = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(msg, dict) or msg.get("cmd") != TAG or not isinstance(msg.get("t"), str):
        return None
    return msg


def address_of(sock: socket.socket) -> dict[str, Any]:
    """What `server.address()` shows in the worker: Node's names for the bound address."""
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return {"path": name if isinstance(name, str) else name.decode(errors="replace")}
    family = "IPv6" if sock.family == socket.AF_INET6 else "IPv4"
    return {"address": name[0], "family": family, "port": name[1]}
