"""Messages the event consumer posts to the app."""

from __future__ import annotations

from typing import Any

from textual.message import Message


class StateUpdated(Message):
    """A new supervisor snapshot. Only the newest matters, so a queued one is replaced."""

    def __init__(self, snapshot: dict[str, Any]) -> None:
        super().__init__()
        self.snapshot = snapshot

    def can_replace(self, message: Message) -> bool:
        # Textual asks the message being handled whether the next queued one supersedes
        # it; when True the older snapshot is dropped unseen.
        return isinstance(message, StateUpdated)


class LogsArrived(Message):
    """A batch of log lines (every batch matters; they are appended)."""

    def __init__(self, lines: list[dict[str, Any]]) -> None:
        super().__init__()
        self.lines = lines


class NoticeArrived(Message):
    def __init__(self, level: str, message: str) -> None:
        super().__init__()
        self.level = level
        self.message = message


class ConnectionChanged(Message):
    """The link to the supervisor went down (connected=False) or came back."""

    def __init__(self, connected: bool, reason: str = "", client: Any = None) -> None:
        super().__init__()
        self.connected = connected
        self.reason = reason
        self.client = client  # connected: the new client (the app's may be gone again)
