"""CLUSTERUI_HOME: where one supervisor keeps its socket, pid file and logs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

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

    def ensure(self) -> None:
        """Create the home 0700 (and tighten it if it exists); raise OSError with a reason."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.root.stat().st_uid != os.getuid():
            raise PermissionError(f"{self.root} belongs to another user")
        os.chmod(self.root, 0o700)
        self.logs.mkdir(mode=0o700, exist_ok=True)
        if not os.access(self.root, os.W_OK):
            raise PermissionError(f"{self.root} is not writable")
