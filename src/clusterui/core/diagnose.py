"""Why a round-robin worker never got ready: one sentence for `up -d`, `ls`, `describe`.

A handoff-mode worker serves only once it says ready on its channel. An ordinary
server that binds the port itself never does: it crashes on EADDRINUSE against the
supervisor's socket, or runs deaf. These functions turn what we know (its exit, the
last lines it wrote, the app's settings) into the reason and the way out. Only the
numbers are taken from the worker's output, never its text, so the message is safe to
print to a terminal.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_IN_USE = re.compile(r"EADDRINUSE|address already in use", re.IGNORECASE)
# Node: "listen EADDRINUSE: address already in use :::3000"; never "[Errno 98]".
_PORT_AFTER = re.compile(r"EADDRINUSE\D{0,40}?(\d{1,5})(?!\d)")
_LATE_PORT = re.compile(r"(?::|port\s|',\s)(\d{1,5})(?!\d)", re.IGNORECASE)

WAYS_OUT = "use dispatch: proxy or shared, or the worker helper (clusterui.worker)"


def port_in_use(lines: Iterable[str]) -> tuple[bool, int | None]:
    """(an EADDRINUSE is in these lines, its port if the line names one)."""
    found = False
    for text in lines:
        if not _IN_USE.search(text):
            continue
        found = True
        for pattern in (_PORT_AFTER, _LATE_PORT):
            m = pattern.search(text)
            if m and 0 < int(m.group(1)) < 65536:
                return True, int(m.group(1))
    return found, None


def exited_before_ready(
    label: str, what: str, lines: Iterable[str], *, node: bool, port: int | None
) -> str:
    """A handoff worker exited (`what`: "exited with code 1") before it was ready."""
    in_use, seen_port = port_in_use(lines)
    if in_use:
        where = seen_port or port
        on = f" on {where}" if where else ""
        if node:
            return (
                f"{label} never became ready; it {what} with EADDRINUSE{on}: it binds a "
                f"port itself that clusterui does not take over (a second port, a handle or "
                f"an fd): listen on one port, or {WAYS_OUT}"
            )
        return (
            f"{label} never spoke the handoff protocol; it {what} with EADDRINUSE{on} "
            f"(it binds the port itself): {WAYS_OUT}"
        )
    if node:
        return f"{label} {what} before it was ready (see its log)"
    return f"{label} {what} before it spoke the handoff protocol (see its log)"


def not_ready_in_time(label: str, seconds: float, *, node: bool, wait_ready: bool) -> str:
    """A handoff worker still running after listen_timeout without saying ready."""
    if node:
        if wait_ready:
            return (
                f"{label} is not ready after {seconds:g} s: with wait_ready it must call "
                "process.send('ready') once its server listens"
            )
        return f"{label} is not ready after {seconds:g} s: its server never called listen()"
    return (
        f"{label} never spoke the handoff protocol within {seconds:g} s (no "
        f'{{"t":"ready"}} on CLUSTERUI_CHANNEL_FD; a server that binds the port itself '
        f"never does): {WAYS_OUT}"
    )
