"""Following one connection to the supervisor: subscribe, the first state, the log
backlog, then the event stream, with the lines both of them carry passed on once.

Textual-free, so the app only says what to do with each piece (`Sink`); the app decides
how to show it and when to reconnect.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from clusterui.vocab import delta

# Log lines per supervisor batch (20 a second) the dashboard asks for: 10,000 lines/s is
# more than anyone reads; past it a "sys" line counts what the files have and the view
# skipped, and the CPU a key press needs is not spent decoding lines nobody sees (at
# 2,000 a batch, a 20k lines/s flood kept the dashboard 70 % busy and key presses waited
# up to 300 ms; bench/dashboard.py).
LIVE_LINES = 500


class ShownLine(Protocol):
    """A log line already on screen (the log view's record)."""

    worker: Any
    time: float
    stream: str
    text: str


@dataclass
class Sink:
    """Where the pieces go, in this order: state, backlog, loaded, then events."""

    state: Callable[[dict[str, Any]], None]
    backlog: Callable[[list[dict[str, Any]]], None]
    loaded: Callable[[], None]
    logs: Callable[[list[dict[str, Any]]], None]
    notice: Callable[[str, str], None]


def line_id(line: dict[str, Any]) -> tuple[Any, ...]:
    return (line.get("worker"), line.get("time"), line.get("stream"), line.get("text"))


def unseen(lines: list[dict[str, Any]], shown: Sequence[ShownLine]) -> list[dict[str, Any]]:
    """The backlog lines not already on screen (after a reconnect most of it is)."""
    if not shown:
        return lines
    newest = shown[-1].time
    ids = {(r.worker, r.time, r.stream, r.text) for r in reversed(shown) if r.time >= newest - 1}
    return [
        line
        for line in lines
        if float(line.get("time", 0)) >= newest - 1 and line_id(line) not in ids
    ]


async def follow(
    client: Any, sink: Sink, *, backlog: int, shown: Callable[[], Sequence[ShownLine]]
) -> str:
    """Follow one connection until it ends; returns why it ended (never raises, except
    for cancellation)."""
    try:
        # The workers' series come once, with state(); the dashboard keeps them from
        # there (model.History), so the events every second carry only current figures,
        # and only those that changed (vocab/delta.py).
        await client.subscribe(
            state=True, logs=True, live_lines=LIVE_LINES, history=False, delta=True
        )
        sink.state(await client.state())
        lines = list(await client.logs(None, backlog)) if backlog else []
        lines = unseen(lines, shown())
        if lines:
            sink.backlog(lines)
        sink.loaded()
        await _events(client, sink, lines)
        return "the supervisor closed the connection"
    except asyncio.CancelledError:
        raise
    except Exception as err:  # a lost socket, a ClientError: shown, never raised
        return message_of(err)


async def _events(client: Any, sink: Sink, backlog: list[dict[str, Any]]) -> None:
    # Lines that arrived between subscribe() and logs() are in both: drop repeats until
    # the stream passes the newest backlog line.
    seen = {line_id(line) for line in backlog}
    newest = max((float(line.get("time", 0)) for line in backlog), default=0.0)
    held: dict[str, Any] | None = None  # the last state event's snapshot, for deltas
    async for event in client.events():
        kind = event.get("event")
        if kind == delta.WHOLE:
            held = event.get("data") or {}
            sink.state(held)
        elif kind == delta.DELTA:
            held = delta.apply(held, event.get("data") or {})  # ValueError: reconnect
            sink.state(held)
        elif kind == "logs":
            lines = list(event.get("lines") or [])
            if seen:
                lines = [line for line in lines if line_id(line) not in seen]
                if any(float(line.get("time", 0)) > newest for line in lines):
                    seen.clear()
            if lines:
                sink.logs(lines)
        elif kind == "notice":
            sink.notice(str(event.get("level", "info")), str(event.get("message", "")))


def message_of(err: BaseException) -> str:
    """The one sentence to show for an error (ClientError carries .message)."""
    msg = getattr(err, "message", None)
    if isinstance(msg, str) and msg.strip():
        return msg.strip()
    text = str(err).strip()
    return text.splitlines()[0] if text else f"{type(err).__name__} (no details)"
