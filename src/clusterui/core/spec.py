"""Validated, fully resolved description of one app: what the supervisor runs.

The config loader (ecosystem files) and `clusterui start SCRIPT` both produce
AppSpec objects; everything downstream reads only these, never raw YAML.
Durations are milliseconds, sizes are bytes, paths are absolute.
"""

from __future__ import annotations

import signal
import sys
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from clusterui.dispatch.protocol import DEFAULT_MODE, MODES

ExecMode = Literal["fork", "cluster"]
DispatchMode = str  # a key of clusterui.dispatch.protocol.MODES
DISPATCH_MODES: tuple[str, ...] = tuple(MODES)


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


HEALTH_KINDS: tuple[str, ...] = ("http", "tcp", "exec")
DEPENDENCY_CONDITIONS: tuple[str, ...] = ("started", "online", "healthy", "completed")


@dataclass
class HealthCheck:
    """A probe run against every worker of an app (see core.health)."""

    kind: Literal["http", "tcp", "exec"]
    path: str = "/"  # http
    status: int = 200  # http: the status a healthy worker answers with
    command: list[str] = field(default_factory=list)  # exec: exit 0 is healthy
    port: int | None = None  # http/tcp for an app without `listen`
    interval: int = 10_000  # ms between probes of one worker
    timeout: int = 2_000  # ms
    failures: int = 3  # consecutive failures before the worker is replaced
    initial_delay: int = 0  # ms after the worker is online before the first probe


def key(kind: str, **options: Any) -> dict[str, Any]:
    """Field metadata marking an AppSpec field as an ecosystem key of the same name.

    `kind` says how clusterui.core.config reads it: "app" for the keys the app builder
    works out together (script, name, cwd, listen, ...), else the name of a converter
    ("duration", "bool", "count" with `high`, "signal", "memory", "log_size", "log_path",
    "text"). A plain new key is one field here with an existing kind.
    """
    return {"key": kind, **options}


APP = key("app")
DURATION = key("duration")
BOOL = key("bool")


@dataclass
class AppSpec:
    name: str = field(metadata=APP)
    # argv[0] of the command: a script path (absolute) or a command name found on PATH.
    script: str = field(metadata=APP)
    args: list[str] = field(default_factory=list, metadata=APP)
    cwd: str = field(default=".", metadata=APP)
    # Interpreter executable (absolute path or name on PATH); None means exec the script.
    interpreter: str | None = field(default=None, metadata=APP)
    interpreter_args: list[str] = field(default_factory=list, metadata=APP)
    instances: int = field(default=1, metadata=APP)
    exec_mode: ExecMode = field(default="fork", metadata=APP)
    listen: Listen | None = field(default=None, metadata=APP)
    dispatch: DispatchMode = field(default=DEFAULT_MODE, metadata=APP)
    # Dispatcher processes sharing the listener (a shareable mode only; see Listener).
    dispatchers: int = field(default=1, metadata=APP)
    # Empty list means watch is off.
    watch: list[str] = field(default_factory=list, metadata=APP)
    ignore_watch: list[str] = field(default_factory=list, metadata=APP)
    watch_delay: int = field(default=300, metadata=DURATION)
    # The file's env with env_NAME merged in (above the caller's environment).
    env: dict[str, str] = field(default_factory=dict, metadata=APP)
    # The environment of the command that started the app (core/environ.py); not a key.
    # It may hold secrets: only names leave the supervisor unless a client asks for values.
    caller_env: dict[str, str] = field(default_factory=dict)
    autorestart: bool = field(default=True, metadata=BOOL)
    max_restarts: int = field(default=16, metadata=key("count", high=1_000_000_000))
    min_uptime: int = field(default=1000, metadata=DURATION)
    restart_delay: int = field(default=0, metadata=DURATION)
    exp_backoff_restart_delay: int = field(default=0, metadata=DURATION)
    kill_timeout: int = field(default=1600, metadata=DURATION)
    kill_signal: int = field(default=signal.SIGINT, metadata=key("signal"))
    wait_ready: bool = field(default=False, metadata=BOOL)
    # PM2: a drained Node worker is stopped with a 'shutdown' message, not kill_signal.
    shutdown_with_message: bool = field(default=False, metadata=BOOL)
    # Fork Python workers from a process that imported the app once (core.zygote).
    preload: bool = field(default=False, metadata=BOOL)
    listen_timeout: int = field(default=3000, metadata=DURATION)
    max_memory_restart: int | None = field(default=None, metadata=key("memory"))
    out_file: str | None = field(default=None, metadata=key("log_path"))
    error_file: str | None = field(default=None, metadata=key("log_path"))
    merge_logs: bool = field(default=False, metadata=BOOL)
    log_date_format: str | None = field(default=None, metadata=key("text"))
    log_max_size: int | None = field(default=10 * 1024 * 1024, metadata=key("log_size"))
    log_retain: int = field(default=5, metadata=key("count", high=1000))
    # core.config.upkeep reads these three (their kind is the key's own name).
    health_check: HealthCheck | None = field(default=None, metadata=key("health_check"))
    depends_on: dict[str, str] = field(default_factory=dict, metadata=key("depends_on"))
    cron_restart: str | None = field(default=None, metadata=key("cron_restart"))
    # PM2's uid/user/gid: not keys of clusterui's own (apps run as its user; the loader
    # warns), kept for `clusterui export` (systemd User=/Group=).
    user: str | None = None
    group: str | None = None
    # Where this app came from, for messages ("ecosystem.yaml:12"); not a key.
    source: str = ""
    source_line: int = 0
    # `asgi: MODULE:ATTR` / `wsgi: MODULE:ATTR` instead of a script: the worker is
    # clusterui's host (python -m clusterui.web), `args` are its options.
    asgi: str | None = field(default=None, metadata=APP)
    wsgi: str | None = field(default=None, metadata=APP)

    @property
    def web(self) -> tuple[str, str] | None:
        """("asgi"|"wsgi", "MODULE:ATTR") for a hosted app, else None."""
        if self.asgi:
            return "asgi", self.asgi
        if self.wsgi:
            return "wsgi", self.wsgi
        return None

    @property
    def own_port(self) -> bool:
        """Whether each worker is given its own $PORT (the dispatch mode says so)."""
        return self.listen is not None and MODES[self.dispatch].own_port

    def argv(self) -> list[str]:
        """The command line the worker is exec'd with (never through a shell)."""
        if self.web is not None:
            kind, target = self.web
            python = self.interpreter or sys.executable
            return [python, *self.interpreter_args, "-m", "clusterui.web", kind, target, *self.args]
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
        check = d.get("health_check")
        if isinstance(check, dict):
            d["health_check"] = HealthCheck(**check)
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


# The ecosystem keys, in AppSpec's order, with the kind each is read as.
KEY_KINDS: dict[str, str] = {
    f.name: f.metadata["key"] for f in fields(AppSpec) if "key" in f.metadata
}
