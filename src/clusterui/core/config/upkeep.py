"""The keys of health checks, start order, scheduled restarts and metrics: their
validation (the builder and the loader call these).

Each reader raises KeyProblem(message, *sub), sub being the path below the key (for the
line number of the exact value).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any

from clusterui.core.config.problems import quote
from clusterui.core.spec import DEPENDENCY_CONDITIONS, HEALTH_KINDS, HealthCheck
from clusterui.core.units import parse_duration

HEALTH_FIELDS = (
    "type",
    "path",
    "status",
    "command",
    "port",
    "interval",
    "timeout",
    "failures",
    "initial_delay",
)
MAX_MS = 2**31 - 1


class KeyProblem(ValueError):
    def __init__(self, message: str, *sub: Any) -> None:
        super().__init__(message)
        self.sub = sub


def _duration(value: Any, key: str, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise KeyProblem(f"{key} must be a duration (ms, or e.g. '2s')", key)
    try:
        ms = parse_duration(value)
    except ValueError as exc:
        raise KeyProblem(f"{key}: {exc}", key) from None
    if not low <= ms <= MAX_MS:
        raise KeyProblem(f"{key} must be between {low} ms and {MAX_MS} ms", key)
    return ms


def _int(value: Any, key: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise KeyProblem(f"{key} must be a whole number from {low} to {high}", key)
    return value


def health_check(value: Any) -> HealthCheck:
    """`health_check: {type: http|tcp|exec, ...}` → HealthCheck."""
    if not isinstance(value, dict):
        raise KeyProblem("must be a mapping with 'type: http', 'tcp' or 'exec'")
    for key in value:
        if key not in HEALTH_FIELDS:
            raise KeyProblem(f"unknown key {key!r} (known: {', '.join(HEALTH_FIELDS)})", key)
    kind = value.get("type")
    if kind not in HEALTH_KINDS:
        raise KeyProblem(f"type must be one of {', '.join(HEALTH_KINDS)}", "type")
    out: dict[str, Any] = {"kind": kind}
    if kind == "http":
        path = value.get("path", "/")
        if not isinstance(path, str) or not path.startswith("/") or any(c in path for c in " \r\n"):
            raise KeyProblem("path must start with '/' and hold no spaces", "path")
        out["path"] = path
        if "status" in value:
            out["status"] = _int(value["status"], "status", 100, 599)
    elif "path" in value or "status" in value:
        where = "path" if "path" in value else "status"
        raise KeyProblem("path and status go with type: http", where)
    if kind == "exec":
        command = value.get("command")
        if isinstance(command, str):
            try:
                command = shlex.split(command)
            except ValueError as exc:
                raise KeyProblem(f"command: {exc}", "command") from None
        if (
            not isinstance(command, list)
            or not command
            or not all(isinstance(c, str) and "\0" not in c for c in command)
        ):
            raise KeyProblem("type exec needs a command (a string or a list)", "command")
        out["command"] = command
    elif "command" in value:
        raise KeyProblem("command goes with type: exec", "command")
    if "port" in value:
        if kind == "exec":
            raise KeyProblem("port goes with type http or tcp", "port")
        out["port"] = _int(value["port"], "port", 1, 65535)
    if "interval" in value:
        out["interval"] = _duration(value["interval"], "interval", 50)
    if "timeout" in value:
        out["timeout"] = _duration(value["timeout"], "timeout", 10)
    elif "interval" in value:  # the default timeout, but never longer than the interval
        out["timeout"] = min(HealthCheck.timeout, out["interval"])
    if "failures" in value:
        out["failures"] = _int(value["failures"], "failures", 1, 1000)
    if "initial_delay" in value:
        out["initial_delay"] = _duration(value["initial_delay"], "initial_delay")
    return HealthCheck(**out)


def depends_on(value: Any) -> dict[str, str]:
    """A mapping {app: condition}, or a list of names (condition `started`)."""
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list):
        out = {}
        for i, name in enumerate(value):
            if not isinstance(name, str):
                raise KeyProblem(f"item {i + 1} must be an app name", i)
            out[name] = "started"
        return out
    if not isinstance(value, dict):
        raise KeyProblem("must be a mapping of app names to conditions")
    out = {}
    for name, condition in value.items():
        if not isinstance(name, str):
            raise KeyProblem("app names must be strings")
        if condition not in DEPENDENCY_CONDITIONS:
            raise KeyProblem(
                f"{_name(name)}: condition must be one of {', '.join(DEPENDENCY_CONDITIONS)}",
                name,
            )
        out[name] = condition
    return out


def cron_restart(value: Any) -> str:
    from clusterui.core.cron import check_expression

    why = check_expression(value)
    if why:
        raise KeyProblem(why)
    return value.strip()


def check_app(spec: Any) -> list[tuple[str, tuple[Any, ...], str]]:
    """Problems of one built spec that need more than one key: (key, sub, message)."""
    problems = []
    check = spec.health_check
    if check is not None and check.kind != "exec":
        if spec.listen is not None and spec.dispatch == "shared":
            problems.append(
                (
                    "health_check",
                    ("type",),
                    "an http or tcp probe cannot reach one worker of a shared socket "
                    "(the kernel picks); use type: exec or another dispatch mode",
                )
            )
        elif spec.listen is None and check.port is None:
            problems.append(
                ("health_check", ("type",), "needs a port to probe (the app has no listen)")
            )
    if check is not None and check.timeout > check.interval:
        problems.append(("health_check", ("timeout",), "timeout must not exceed interval"))
    if spec.preload:
        from clusterui.core.zygote import preloadable

        why = preloadable(spec)
        if why is not None:
            problems.append(("preload", (), why))
    return problems


def check_graph(
    depends: Mapping[str, Mapping[str, str]], has_health: Mapping[str, bool]
) -> list[tuple[str, Any, str]]:
    """Problems across apps: (app, dependency name or None, message)."""
    from clusterui.core.deps import find_cycle

    problems: list[tuple[str, Any, str]] = []
    for app, needs in depends.items():
        for dep, condition in needs.items():
            if dep == app:
                problems.append((app, dep, f"{_name(app)} cannot depend on itself"))
            elif dep not in depends:
                known = ", ".join(_name(n) for n in sorted(depends)) or "none"
                problems.append(
                    (app, dep, f"{quote(dep)} is not an app in this file (apps: {known})")
                )
            elif condition == "healthy" and not has_health.get(dep):
                problems.append(
                    (app, dep, f"{_name(dep)}: healthy needs a health_check on {_name(dep)}")
                )
    cycle = find_cycle({a: [d for d in n if d != a] for a, n in depends.items()})
    if cycle:
        shown = " -> ".join(_name(n) for n in cycle)
        problems.append((cycle[0], cycle[1], f"dependency cycle: {shown}"))
    return problems


def keys_of(spec: Any) -> dict[str, Any]:
    """The ecosystem keys that give back spec's health_check, depends_on and cron_restart
    (for `clusterui save`): the inverse of the readers above."""
    out: dict[str, Any] = {}
    check: HealthCheck | None = spec.health_check
    if check is not None:
        mapping: dict[str, Any] = {"type": check.kind}
        if check.kind == "http":
            mapping.update(path=check.path, status=check.status)
        if check.kind == "exec":
            mapping["command"] = list(check.command)
        if check.port is not None:
            mapping["port"] = check.port
        mapping.update(
            interval=check.interval,
            timeout=check.timeout,
            failures=check.failures,
            initial_delay=check.initial_delay,
        )
        out["health_check"] = mapping
    if spec.depends_on:
        out["depends_on"] = dict(spec.depends_on)
    if spec.cron_restart:
        out["cron_restart"] = spec.cron_restart
    return out


def _name(name: str) -> str:
    """An app name as written when it is plain, else quoted (one line, no control bytes)."""
    plain = name.isprintable() and not any(c.isspace() for c in name) and len(name) <= 64
    return name if plain else quote(name)


def metrics_listen(value: Any, public: bool) -> str:
    from clusterui.core.metrics import is_loopback, parse_address

    if isinstance(value, bool) or not isinstance(value, int | str):
        raise KeyProblem("must be PORT or HOST:PORT")
    try:
        host, _port = parse_address(str(value))
    except ValueError as exc:
        raise KeyProblem(str(exc)) from None
    if not is_loopback(host) and not public:
        raise KeyProblem(
            f"{_name(host)} is not a loopback address; add 'metrics_public: true' to serve "
            "metrics to other machines (without authentication)"
        )
    return str(value)


def dependency_problems(
    named: list[tuple[str | None, dict]],
    apps_path: tuple[Any, ...],
    apps_line: int,
    reader: Any,
    file: str,
) -> list[Any]:
    """Unknown names, `healthy` without a health_check, cycles: FILE:LINE problems at the
    depends_on entry that causes them."""
    from clusterui.core.config.problems import Problem
    from clusterui.core.config.yamlfile import has_invalid

    def readable(raw: dict) -> dict[str, str]:
        value = raw.get("depends_on", {})
        if has_invalid(value):
            return {}
        try:
            return depends_on(value)
        except ValueError:
            return {}  # reported by the app's own validation

    index = {n: i for i, (n, _) in enumerate(named) if n is not None}
    depends = {n: readable(r) for n, r in named if n is not None}
    has_health = {n: isinstance(r.get("health_check"), dict) for n, r in named if n}
    problems = []
    for app, dep, message in check_graph(depends, has_health):
        key = (*apps_path, index[app], "depends_on")
        fallback = reader.lines.get((*apps_path, index[app]), apps_line)
        line = reader.keylines.get((*key, dep), reader.keylines.get(key, fallback))
        problems.append(Problem(file, line, f"depends_on: {message}"))
    return problems


def top_level_problem(key: str, doc: dict) -> str | None:
    try:
        if key == "metrics_listen":
            metrics_listen(doc[key], doc.get("metrics_public") is True)
        elif not isinstance(doc[key], bool):
            return "must be true or false"
    except ValueError as exc:
        return str(exc)
    return None
