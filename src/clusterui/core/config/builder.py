"""One app's raw mapping → a validated AppSpec, reporting each problem at its line."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from clusterui.core import environ, hosted, nodeapp
from clusterui.core.config import upkeep
from clusterui.core.config.convert import (
    MAX_DISPATCHERS,
    MAX_INSTANCES,
    Bad,
    as_account,
    as_bool,
    as_duration,
    as_env,
    as_int,
    as_opt_str,
    as_signal,
    as_size,
    as_str,
    check_name,
    inside,
    numeric,
    words,
)
from clusterui.core.config.keys import (
    ALIASES,
    ENV_KEY,
    EXPORT_ONLY,
    INTERPRETERS,
    KEYS,
    PM2_UNIMPLEMENTED,
)
from clusterui.core.config.problems import Problem, quote, show, suggest
from clusterui.core.config.yamlfile import has_invalid
from clusterui.core.expand import check_expansion
from clusterui.core.spec import DISPATCH_MODES, AppSpec, Listen, parse_listen
from clusterui.dispatch.protocol import DEFAULT_MODE, MODES


@dataclass
class Ctx:
    """Where problems go, and how to find the line of a key inside the current app."""

    file: str
    fallback: int
    errors: list[Problem]
    warnings: list[Problem]
    lines: dict[tuple[Any, ...], int] = field(default_factory=dict)
    keylines: dict[tuple[Any, ...], int] = field(default_factory=dict)
    prefix: tuple[Any, ...] = ()

    def line(self, *path: Any) -> int:
        full = (*self.prefix, *path)
        while len(full) > len(self.prefix):
            if full in self.keylines:
                return self.keylines[full]
            if full in self.lines:
                return self.lines[full]
            full = full[:-1]
        return self.fallback

    def error(self, message: str, *path: Any) -> None:
        self.errors.append(Problem(self.file, self.line(*path), message))

    def warn(self, message: str, *path: Any) -> None:
        self.warnings.append(Problem(self.file, self.line(*path), message, "warning"))


class AppBuilder:
    """Validates one app's raw mapping and builds its AppSpec (None when it has errors)."""

    def __init__(
        self, raw: dict, ctx: Ctx, base_dir: str, env_name: str | None, source: str
    ) -> None:
        self.raw = raw
        self.source = source
        self.ctx = ctx
        self.base_dir = base_dir
        self.env_name = env_name
        # canonical key → (key as written, value)
        self.values: dict[str, tuple[str, Any]] = {}

    def build(self) -> AppSpec | None:
        ctx = self.ctx
        before = len(ctx.errors)
        self.collect_keys()

        cwd, cwd_ok = self.working_dir()
        web = self.hosted(cwd_ok)
        if web is None:
            script, script_args, script_is_file = self.script(cwd_ok)
        else:
            script, script_args, script_is_file = web[1], [], False
        name = self.name(hosted.derive_name(script) if web and script else script)
        args = self.get("args", lambda v: words(v, "arguments"), [])
        for i, word in enumerate([*script_args, *args]):
            why = check_expansion(word)
            if why:
                self.error("script" if i < len(script_args) else "args", why)
        interpreter, interpreter_args = self.interpreter(script, script_is_file)

        instances = self.get("instances", self.instances, 1)
        exec_mode, listen, dispatch = self.placement(instances, script, interpreter)
        dispatchers = self.dispatcher_count(listen, dispatch, script, interpreter)
        watch = self.get("watch", self.watch, [])
        ignore_watch = self.get("ignore_watch", self.ignore_watch, [])
        env = self.env()
        self.owned_env(env, listen is not None and MODES[dispatch].own_port)
        spec_kwargs = self.plain_fields()

        if len(ctx.errors) > before or script is None or name is None:
            return None
        spec = AppSpec(
            name=name,
            script=script,
            args=[*script_args, *args],
            cwd=cwd,
            interpreter=interpreter,
            interpreter_args=interpreter_args,
            instances=instances,
            exec_mode=exec_mode,
            listen=listen,
            dispatch=dispatch,
            dispatchers=dispatchers,
            watch=watch,
            ignore_watch=ignore_watch,
            env=env,
            source=self.source,
            source_line=ctx.fallback,
            asgi=web[1] if web and web[0] == "asgi" else None,
            wsgi=web[1] if web and web[0] == "wsgi" else None,
            **spec_kwargs,
        )
        for key, sub, message in upkeep.check_app(spec):
            self.error(key, message, *sub)
        return None if len(ctx.errors) > before else spec

    def working_dir(self) -> tuple[str, bool]:
        """(the app's cwd, whether it exists); also kept as self.cwd for the other keys."""
        cwd = self.get("cwd", as_opt_str, None)
        cwd_ok = True
        if cwd is None:
            cwd = self.base_dir
        else:
            cwd = inside(self.base_dir, cwd)
            if not os.path.isdir(cwd):
                self.error("cwd", f"directory {cwd!r} does not exist")
                cwd_ok = False
        self.cwd = cwd
        return cwd, cwd_ok

    def placement(
        self, instances: int, script: str | None, interpreter: str | None
    ) -> tuple[str, Listen | None, str]:
        """(exec_mode, listen, dispatch), checked against each other."""
        exec_mode = self.get("exec_mode", self.exec_mode, None)
        listen = self.get("listen", self.listen, None)
        if listen is not None and exec_mode == "fork":
            self.error("listen", "needs exec_mode cluster (exec_mode is fork)")
        node = script is not None and nodeapp.is_node_script(script, interpreter)
        if exec_mode is None:
            # PM2: a Node script with more than one instance runs in cluster mode.
            raw = self.values["instances"][1] if "instances" in self.values else 1
            # instances 'max', 0 or -N: "as many as the CPUs allow", cluster even on one CPU.
            text = str(raw).strip().lower()
            many = instances > 1 or text in ("max", "0") or text.startswith("-")
            inferred = "cluster" if node and many else "fork"
            exec_mode = "cluster" if listen is not None else inferred
        dispatch = self.get("dispatch", self.dispatch, DEFAULT_MODE)
        # A Node app in cluster mode without 'listen' takes the port from its own listen().
        learned = node and exec_mode == "cluster" and listen is None
        if learned and not nodeapp.handoff(dispatch):
            self.error(
                "dispatch",
                f"{dispatch} needs 'listen'; only round-robin and least-connections "
                "take the port from a Node app's own listen()",
            )
        if exec_mode == "cluster" and listen is None and "exec_mode" in self.values and not node:
            self.warn(
                "exec_mode",
                f"cluster mode without 'listen' runs {instances} instance(s) with no dispatch",
            )
        if "dispatch" in self.values and listen is None and not learned:
            self.warn("dispatch", "'dispatch' has no effect without 'listen'")
        return exec_mode, listen, dispatch

    def dispatcher_count(
        self, listen: Listen | None, dispatch: str, script: str | None, interpreter: str | None
    ) -> int:
        """`dispatchers`: a number, or 'auto' (one per CPU where it can share, else 1)."""
        raw = self.values["dispatchers"][1] if "dispatchers" in self.values else 1
        auto = isinstance(raw, str) and raw.strip().lower() == "auto"
        count = 1 if auto else self.get("dispatchers", self.dispatchers, 1)
        node = script is not None and nodeapp.is_node_script(script, interpreter)
        if listen is None or not MODES[dispatch].shareable or node:
            if count > 1:
                why = (
                    "needs 'listen'"
                    if listen is None
                    else "cannot be shared by a Node app's workers (Node's IPC is a stream)"
                    if node
                    else f"needs dispatch round-robin ({dispatch} runs one dispatcher)"
                )
                self.error("dispatchers", f"{count} dispatchers {why}")
            return 1
        return min(os.cpu_count() or 1, MAX_DISPATCHERS) if auto else count

    def dispatchers(self, value: Any) -> int:
        value = numeric(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise Bad(f"must be a whole number from 1 or 'auto', not {show(value)}")
        if value > MAX_DISPATCHERS:
            raise Bad(f"must be at most {MAX_DISPATCHERS}, not {show(value)}")
        return value

    def plain_fields(self) -> dict[str, Any]:
        """The keys given that need only a converter; absent ones keep AppSpec's default."""
        spec_kwargs: dict[str, Any] = {}
        for f in fields(AppSpec):
            kind = f.metadata.get("key")
            if kind is None or kind == "app" or f.name not in self.values:
                continue
            spec_kwargs[f.name] = self.get(f.name, self.converter(kind, f.metadata), None)
        for name in ("user", "group"):  # kept from PM2's uid/user/gid for `export`
            if name in self.values:
                spec_kwargs[name] = self.get(name, as_account, None)
        return spec_kwargs

    def converter(self, kind: str, options: Mapping[str, Any]) -> Callable[[Any], Any]:
        if kind == "count":
            high = options["high"]
            return lambda v: as_int(v, 0, high)
        if kind in ("health_check", "depends_on", "cron_restart"):
            return getattr(upkeep, kind)
        return {
            "duration": as_duration,
            "bool": as_bool,
            "signal": as_signal,
            "memory": self.memory_limit,
            "log_size": self.log_max_size,
            "log_path": self.log_path,
            "text": as_opt_str,
        }[kind]

    # -- plumbing

    def error(self, key: str, message: str, *sub: Any) -> None:
        written = self.values[key][0] if key in self.values else key
        self.ctx.error(f"{written}: {message}", written, *sub)

    def warn(self, key: str, message: str, *sub: Any) -> None:
        written = self.values[key][0] if key in self.values else key
        self.ctx.warn(f"{written}: {message}", written, *sub)

    def collect_keys(self) -> None:
        known = (*KEYS, *ALIASES)
        for key, value in self.raw.items():
            if not isinstance(key, str):
                self.ctx.error(f"key {show(key)} is not a string")
                continue
            if key in KEYS or ENV_KEY.fullmatch(key):
                canonical = key
            elif key in ALIASES:
                canonical = ALIASES[key]
            elif key in PM2_UNIMPLEMENTED:
                hint = PM2_UNIMPLEMENTED[key]
                self.ctx.warn(
                    f"'{key}' is a PM2 key clusterui does not implement; ignored"
                    + (f" ({hint})" if hint else ""),
                    key,
                )
                if key in EXPORT_ONLY:
                    self.values.setdefault(EXPORT_ONLY[key], (key, value))
                continue
            else:
                self.ctx.error(f"unknown key {quote(key)}{suggest(key, known)}", key)
                continue
            if canonical in self.values:
                other = self.values[canonical][0]
                self.ctx.error(f"'{key}' and '{other}' are the same setting; keep one", key)
                continue
            self.values[canonical] = (key, value)

    def get(self, key: str, convert: Callable[[Any], Any], default: Any) -> Any:
        if key not in self.values:
            return default
        value = self.values[key][1]
        if has_invalid(value):
            return default
        try:
            return convert(value)
        except Bad as e:
            self.error(key, e.message, *e.sub)
        except ValueError as e:  # from units / parse_listen: already a sentence
            self.error(key, str(e), *getattr(e, "sub", ()))
        return default

    # -- fields

    def hosted(self, cwd_ok: bool) -> tuple[str, str | None] | None:
        """("asgi"|"wsgi", MODULE:ATTR or None if invalid) for a hosted app, else None."""
        given = [k for k in ("script", *hosted.KINDS) if k in self.values]
        if not any(k in hosted.KINDS for k in given):
            return None
        if len(given) > 1:
            keys = " and ".join(repr(self.values[k][0]) for k in given)
            self.error(given[1], f"{keys} cannot be used together: an app runs one of them")
        kind = next(k for k in given if k in hosted.KINDS)
        target = self.get(kind, lambda v: hosted.check_target(as_str(v)), None)
        if target is None:
            return kind, None
        if cwd_ok:
            warning = hosted.module_warning(target, self.cwd)
            if warning:
                self.warn(kind, warning)
        explicit = "interpreter" in self.values and self.values["interpreter"][1] is not None
        why = None if explicit else hosted.extra_error(kind)
        if why:
            self.error(kind, why)
        return kind, target

    def script(self, cwd_ok: bool) -> tuple[str | None, list[str], bool]:
        """(argv[0], leading args, whether argv[0] is a file)."""
        if "script" not in self.values:
            self.ctx.error(
                "'script' is missing: every app needs a script or command to run"
                " (or 'asgi'/'wsgi': MODULE:ATTR)"
            )
            return None, [], False
        text = self.get("script", as_str, None)
        if text is None:
            return None, [], False
        if not text.strip() or "\0" in text:
            self.error("script", "must name a file or a command")
            return None, [], False
        direct = inside(self.cwd, text)
        if os.path.isfile(direct):
            return direct, [], True
        try:
            words = shlex.split(text)
        except ValueError as e:
            self.error("script", f"cannot be split into words: {str(e).lower()}")
            return None, [], False
        if not words:
            self.error("script", "must name a file or a command")
            return None, [], False
        head, rest = words[0], words[1:]
        path = inside(self.cwd, head)
        if os.path.isfile(path):
            return path, rest, True
        if not cwd_ok:
            return head, rest, False
        if os.path.isdir(path):
            self.error("script", f"{head!r} is a directory, not a script")
            return None, [], False
        looks_like_path = "/" in head or os.path.splitext(head)[1] in INTERPRETERS
        if looks_like_path:
            self.error("script", f"{head!r} not found (looked in {self.cwd})")
            return None, [], False
        if shutil.which(head) is None:
            self.warn("script", f"{head!r} is neither a file in {self.cwd} nor a command on PATH")
        return head, rest, False

    def name(self, script: str | None) -> str | None:
        if "name" in self.values:
            name = self.get("name", as_str, None)
            if name is None:
                return None
            why = check_name(name)
            if why:
                self.error("name", f"{name!r} {why}")
                return None
            return name
        if script is None:
            return None
        derived = os.path.splitext(os.path.basename(script))[0]
        if check_name(derived):
            self.ctx.error(f"'name' is missing and cannot be derived from script {script!r}")
            return None
        return derived

    def interpreter(self, script: str | None, is_file: bool) -> tuple[str | None, list[str]]:
        extra = self.get("interpreter_args", lambda v: words(v, "arguments"), [])
        if "interpreter" in self.values and self.values["interpreter"][1] is not None:
            program = self.explicit_interpreter()
        else:
            program = self.inferred_interpreter(script, is_file)
        if program is None:
            if extra:
                self.warn("interpreter_args", "has no effect without an interpreter")
            return None, []
        head, *rest = program
        return head, [*rest, *extra]

    def inferred_interpreter(self, script: str | None, is_file: bool) -> list[str] | None:
        if not is_file or script is None:
            return None  # a command found on PATH runs as it is
        kind = INTERPRETERS.get(os.path.splitext(script)[1].lower())
        if kind == "python":
            return [sys.executable]
        if kind is not None:
            if shutil.which(kind) is None:
                self.warn("script", f"{script!r} needs '{kind}', which is not on PATH")
            return [kind]
        if not os.access(script, os.X_OK):
            self.warn(
                "script",
                f"{script!r} is not executable and has no known extension; set 'interpreter'",
            )
        return None

    def explicit_interpreter(self) -> list[str] | None:
        """The interpreter as written, split like a shell would ("python3 -u")."""
        text = self.get("interpreter", as_str, None)
        if text is None or text.strip().lower() == "none":
            return None
        try:
            words = shlex.split(text)
        except ValueError as e:
            self.error("interpreter", f"cannot be split into words: {str(e).lower()}")
            return None
        if not words or "\0" in text:
            self.error("interpreter", "must name a program, or be 'none'")
            return None
        head = words[0]
        if "/" in head:
            head = inside(self.cwd, head)
            if not os.path.isfile(head):
                self.error("interpreter", f"{head!r} not found")
        elif shutil.which(head) is None:
            self.warn("interpreter", f"{head!r} is not on PATH")
        return [head, *words[1:]]

    def instances(self, value: Any) -> int:
        cpus = os.cpu_count() or 1
        if isinstance(value, str) and value.strip().lower() == "max":
            return cpus
        value = numeric(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise Bad(f"must be a whole number, 'max', 0 or -N, not {show(value)}")
        if value == 0:
            return cpus
        if value < 0:
            return max(1, cpus + max(value, -MAX_INSTANCES))
        if value > MAX_INSTANCES:
            raise Bad(f"must be at most {MAX_INSTANCES}, not {show(value)}")
        return value

    def exec_mode(self, value: Any) -> str:
        if isinstance(value, str):
            mode = value.strip().lower().removesuffix("_mode")
            if mode in ("fork", "cluster"):
                return mode
        raise Bad(f"must be 'fork' or 'cluster', not {show(value)}")

    def listen(self, value: Any) -> Listen:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise Bad(f"must be a port, 'host:port' or 'unix:/path', not {show(value)}")
        if isinstance(value, int) and not 0 <= value <= 65535:
            raise Bad(f"port {show(value)} is out of range 0-65535")
        if isinstance(value, str) and "\0" in value:
            raise Bad("must not contain NUL characters")
        try:
            listen = parse_listen(value)
        except ValueError as e:
            raise Bad(str(e).removeprefix("listen ")) from None
        if listen.kind == "unix":
            return Listen("unix", path=inside(self.cwd, listen.path))
        return listen

    def dispatch(self, value: Any) -> str:
        if isinstance(value, str) and value in DISPATCH_MODES:
            return value
        choices = ", ".join(DISPATCH_MODES)
        hint = suggest(value, DISPATCH_MODES) if isinstance(value, str) else ""
        raise Bad(f"must be one of {choices}, not {show(value)}{hint}")

    def watch(self, value: Any) -> list[str]:
        if value is None or value is False:
            return []
        if value is True:
            return [self.cwd]
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list):
            raise Bad(f"must be true, false, a path or a list of paths, not {show(value)}")
        paths = []
        for i, item in enumerate(items):
            sub = (i,) if isinstance(value, list) else ()
            if not isinstance(item, str) or not item or "\0" in item:
                raise Bad(f"paths must be strings, not {show(item)}", *sub)
            path = inside(self.cwd, item)
            if not os.path.exists(path):
                self.warn("watch", f"{path!r} does not exist", *sub)
            paths.append(path)
        return paths

    def ignore_watch(self, value: Any) -> list[str]:
        if value is None:
            return []
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list):
            raise Bad(f"must be a pattern or a list of patterns, not {show(value)}")
        for i, item in enumerate(items):
            if not isinstance(item, str) or not item:
                raise Bad(f"patterns must be strings, not {show(item)}", i)
        return list(items)

    def owned_env(self, env: dict[str, str], proxy: bool) -> None:
        """The file may not set what clusterui sets for each worker (core/environ.py)."""
        taken = sorted(k for k in env if environ.owned(k, proxy))
        if taken:
            self.warn("env", environ.owned_warning(taken, "env").removeprefix("warning: env "))

    def env(self) -> dict[str, str]:
        env = self.get("env", as_env, {})
        selected = f"env_{self.env_name}" if self.env_name else None
        for key in self.values:
            if ENV_KEY.fullmatch(key):
                chosen = self.get(key, as_env, {})
                if key == selected:
                    env = {**env, **chosen}
        return env

    def memory_limit(self, value: Any) -> int | None:
        if value is None:
            return None
        size = as_size(value)
        if size < 1:
            raise Bad("must be more than 0 (leave it out for no limit)")
        return size

    def log_max_size(self, value: Any) -> int | None:
        if value is None or value is False:
            return None
        return as_size(value) or None

    def log_path(self, value: Any) -> str | None:
        if value is None:
            return None
        text = as_str(value)
        if not text or "\0" in text:
            raise Bad("must be a file path")
        return inside(self.cwd, text)
