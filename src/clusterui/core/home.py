"""CLUSTERUI_HOME: where one supervisor keeps its socket, pid file and logs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from clusterui.core import safefs
from clusterui.core.homeroot import SOCKET_NAME, home_root


@dataclass(frozen=True)
class Home:
    root: Path

    @classmethod
    def from_env(cls, override: str | os.PathLike | None = None) -> Home:
        return cls(Path(home_root(override)))

    @property
    def socket(self) -> Path:
        return self.root / SOCKET_NAME

    @property
    def pidfile(self) -> Path:
        return self.root / "supervisor.pid"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def supervisor_log(self) -> Path:
        return self.root / "supervisor.log"

    @property
    def events(self) -> Path:
        """The events timeline, kept across supervisors (core.eventlog)."""
        return self.root / "events.jsonl"

    def ensure(self) -> None:
        """Create the home and logs/ 0700 (tightening ours); refuse, with an UnsafePath
        (an OSError) that says why in one sentence, a home or logs/ that another user
        owns or can write, or reaches through a link another user owns (core/safefs)."""
        safefs.ensure_private_folder(self.root, parents=True)
        safefs.ensure_private_folder(self.logs)
        if not os.access(self.root, os.W_OK):
            raise PermissionError(f"{self.root} is not writable")

    def open_file(self, path: Path, flags: int, mode: int = 0o600) -> int:
        """Open a file of the home (pid file, supervisor.log) with the same checks."""
        return safefs.open_file(path, flags, mode)
