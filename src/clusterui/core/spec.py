"""Validated, fully resolved description of one app: what the supervisor runs.

The config loader (ecosystem files) and `clusterui start SCRIPT` both produce
AppSpec objects; everything downstream reads only these, never raw YAML.
Durations are milliseconds, sizes are bytes, paths are absolute.
"""

from __future__ import annotations

import signal
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

ExecMode = Literal["fork", "cluster"]
DispatchMode = Literal["round-robin", "least-connections", "shared", "proxy"]
DISPATCH_MODES: tuple[str, ...] = ("round-robin", "least-connections", "shared", "proxy")


@dataclass(frozen=True)
class Listen:
    """Where a cluster-mode app listens: TCP host:port or a unix socket path."""

    kind: Literal["tcp", "unix"]
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass
class AppSpec:
    name: str
    # argv[0] of the command: a script path (absolute) or a command name found on PATH.
    script: str
    args: list[str] = field(default_factory=list)
    cwd: str = "."
    # Interpreter executable (absolute path or name on PATH); None means exec the script.
    interpreter: str | None = None
    interpreter_args: list[str] = field(default_factory=list)
    instances: int = 1
    exec_mode: ExecMode = "fork"
    listen: Listen | None = None
    dispatch: DispatchMode = "round-robin"
    # Empty list means watch is off.
    watch: list[str] = field(default_factory=list)
    ignore_watch: list[str] = field(default_factory=list)
    watch_delay: int = 300
    env: dict[str, str] = field(default_factory=dict)
    autorestart: bool = True
    max_restarts: int = 16
    min_uptime: int = 1000
    restart_delay: int = 0
    exp_backoff_restart_delay: int = 0
    kill_timeout: int = 1600
    kill_signal: int = signal.SIGINT
    wait_ready: bool = False
    # PM2: stop a worker with a 'shutdown' IPC message instead of kill_signal (Node).
    shutdown_with_message: bool = False
    listen_timeout: int = 3000
    max_memory_restart: int | None = None
    out_file: str | None = None
    error_file: str | None = None
    merge_logs: bool = False
    log_date_format: str | None = None
    log_max_size: int | None = 10 * 1024 * 1024
    log_retain: int = 5
    # Where this app came from, for messages ("ecosystem.yaml:12").
    source: str = ""
    source_line: int = 0

    def argv(self) -> list[str]:
        """The command line the worker is exec'd with (never through a shell)."""
        head = [self.interpreter, *self.interpreter_args] if self.interpreter else []
        return [*head, self.script, *self.args]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["listen"] = str(self.listen) if self.listen else None
        d["kill_signal"] = signal.Signals(self.kill_signal).name
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AppSpec:
        """Inverse of to_dict (used across the control socket)."""
        d = dict(d)
        listen = d.get("listen")
        d["listen"] = parse_listen(listen) if listen else None
        sig = d.get("kill_signal", "SIGINT")
        d["kill_signal"] = int(signal.Signals[sig]) if isinstance(sig, str) else int(sig)
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in known})


def parse_listen(value: str | int) -> Listen:
    """`8000`, `"host:port"`, `"[::1]:8000"` or `"unix:/path"`; raises ValueError."""
    if isinstance(value, bool):
        raise ValueError("listen must be a port, 'host:port' or 'unix:/path'")
    if isinstance(value, int):
        return Listen("tcp", "0.0.0.0", _port(value))
    text = str(value).strip()
    if text.startswith("unix:"):
        path = text[5:]
        if not path:
            raise ValueError("listen 'unix:' needs a path")
        return Listen("unix", path=path)
    if text.isdigit():
        return Listen("tcp", "0.0.0.0", _port(int(text)))
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"listen {text!r} is not a port, 'host:port' or 'unix:/path'")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return Listen("tcp", host, _port(int(port)))


def _port(n: int) -> int:
    if not 0 <= n <= 65535:
        raise ValueError(f"port {n} is out of range 0-65535")
    return n
