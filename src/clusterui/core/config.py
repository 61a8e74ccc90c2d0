"""Ecosystem file (PM2-compatible YAML) → validated AppSpec objects.

Every problem is reported as `FILE:LINE: message`, all of them at once, and a file with
any error yields no apps. The YAML is composed (not constructed) with the safe loader so
each value keeps its line; values are then turned into plain Python objects here, which
is also where tags, alias bombs and deep nesting are refused.

`spec_from_mapping` runs the same validation on a plain dict (the CLI's
`clusterui start SCRIPT ...`), without line numbers.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
import shutil
import signal
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from yaml.constructor import SafeConstructor

from clusterui.core import nodeapp
from clusterui.core.spec import DISPATCH_MODES, AppSpec, Listen, parse_listen
from clusterui.core.units import parse_duration, parse_size

MAX_FILE_BYTES = 1024 * 1024
# Total values after alias expansion: far above any real file, far below a "billion laughs".
MAX_VALUES = 100_000
MAX_DEPTH = 50
MAX_INSTANCES = 1024
# Node's setTimeout limit; PM2 users know it, and it keeps timers sane.
MAX_DURATION_MS = 2**31 - 1

DEFAULT_FILES = ("ecosystem.yaml", "ecosystem.yml")

Severity = Literal["error", "warning"]


@dataclass
class Problem:
    file: str
    line: int
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        where = self.file
        if self.line > 0:
            where = f"{where}:{self.line}" if where else f"line {self.line}"
        text = f"warning: {self.message}" if self.severity == "warning" else self.message
        return f"{where}: {text}" if where else text


class ConfigError(Exception):
    """The ecosystem (or a CLI app description) is invalid; `.problems` lists every error."""

    def __init__(self, problems: Iterable[Problem], warnings: Iterable[Problem] = ()) -> None:
        self.problems = list(problems)
        self.warnings = list(warnings)
        super().__init__("\n".join(str(p) for p in self.problems))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


@dataclass
class LoadResult:
    apps: list[AppSpec]
    warnings: list[Problem]
    path: str


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --- keys ---------------------------------------------------------------------------------

KEYS: tuple[str, ...] = (
    "name",
    "script",
    "args",
    "cwd",
    "interpreter",
    "interpreter_args",
    "instances",
    "exec_mode",
    "listen",
    "dispatch",
    "watch",
    "ignore_watch",
    "watch_delay",
    "env",
    "autorestart",
    "max_restarts",
    "min_uptime",
    "restart_delay",
    "exp_backoff_restart_delay",
    "kill_timeout",
    "kill_signal",
    "wait_ready",
    "shutdown_with_message",
    "listen_timeout",
    "max_memory_restart",
    "out_file",
    "error_file",
    "merge_logs",
    "log_date_format",
    "log_max_size",
    "log_retain",
)

# PM2's other spellings (lib/API/schema.json) → the key they stand for.
ALIASES: dict[str, str] = {
    "exec": "script",
    "exec_interpreter": "interpreter",
    "node_args": "interpreter_args",
    "interpreterArgs": "interpreter_args",
    "output": "out_file",
    "out": "out_file",
    "out_log": "out_file",
    "error": "error_file",
    "err": "error_file",
    "err_file": "error_file",
    "err_log": "error_file",
    "combine_logs": "merge_logs",
}

# PM2 keys clusterui accepts and ignores, with a hint where there is a useful one.
PM2_UNIMPLEMENTED: dict[str, str] = {
    "name_prefix": "",
    "filter_env": "",
    "namespace": "",
    "install_url": "",
    "log_file": "use out_file and error_file",
    "log": "use out_file and error_file",
    "disable_logs": "",
    "log_type": "",
    "time": "",
    "pid_file": "",
    "pid": "",
    "source_map_support": "",
    "disable_source_map_support": "",
    "cron_restart": "",
    "cron": "",
    "vizion": "",
    "watch_options": "",
    "execute_command": "",
    "force": "",
    "append_env_to_name": "",
    "post_update": "",
    "trace": "",
    "disable_trace": "",
    "v8": "",
    "event_loop_inspector": "",
    "deep_monitoring": "",
    "increment_var": "",
    "instance_var": "CLUSTERUI_INSTANCE and NODE_APP_INSTANCE are set",
    "pmx": "",
    "automation": "",
    "treekill": "the whole process group is always signalled",
    "port": "set PORT in env, or use 'listen'",
    "username": "",
    "uid": "run clusterui as that user",
    "user": "run clusterui as that user",
    "gid": "run clusterui as that group",
    "windowsHide": "",
    "kill_retry_time": "",
    "write": "",
    "io": "",
    "autostart": "",
    "stop_exit_codes": "",
}

_ENV_KEY = re.compile(r"env_[A-Za-z0-9_.-]+")
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_DIGITS = re.compile(r"[0-9]{1,10}")
_MAX_NAME = 64
_TOP_KEYS = ("apps",)
_TOP_PM2_KEYS = ("deploy",)

_INTERPRETERS = {".py": "python", ".js": "node", ".mjs": "node", ".cjs": "node", ".sh": "bash"}


# --- YAML nodes → plain values with lines -------------------------------------------------

_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_TAG + t for t in ("str", "int", "float", "bool", "null")}


class _Invalid:
    """A value that could not be read; already reported, so validation skips it."""

    def __repr__(self) -> str:
        return "<invalid>"


INVALID: Any = _Invalid()


class _TooBig(Exception):
    def __init__(self, line: int) -> None:
        super().__init__(line)
        self.line = line


def _has_invalid(value: Any) -> bool:
    """Whether a value holds something already reported (so it is not reported again)."""
    if value is INVALID:
        return True
    if isinstance(value, dict):
        return any(_has_invalid(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_invalid(v) for v in value)
    return False


def _tag_name(tag: str) -> str:
    return "!!" + tag[len(_TAG) :] if tag.startswith(_TAG) else tag


def _node_line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


class _Reader:
    """Converts a composed node graph to dicts/lists/scalars, recording where each came from.

    `lines[path]` is the line of the value at `path` (a tuple of keys and list indexes from
    the document root); `keylines[path]` the line of the mapping key naming it.
    """

    def __init__(self, errors: list[Problem], file: str) -> None:
        self.errors = errors
        self.file = file
        self.lines: dict[tuple[Any, ...], int] = {}
        self.keylines: dict[tuple[Any, ...], int] = {}
        self.count = 0
        self.active: set[int] = set()
        self.constructor = SafeConstructor()

    def error(self, line: int, message: str) -> None:
        self.errors.append(Problem(self.file, line, message))

    def read(self, node: yaml.Node) -> Any:
        try:
            return self.convert(node, (), 0)
        except _TooBig as e:
            self.error(
                e.line,
                f"the file expands to more than {MAX_VALUES} values (aliases nested too deeply?)",
            )
            return INVALID

    def convert(self, node: yaml.Node, path: tuple[Any, ...], depth: int) -> Any:
        self.count += 1
        line = _node_line(node)
        if self.count > MAX_VALUES:
            raise _TooBig(line)
        self.lines[path] = line
        if depth > MAX_DEPTH:
            self.error(line, f"values are nested more than {MAX_DEPTH} levels deep")
            return INVALID
        if id(node) in self.active:
            self.error(line, "an alias refers to a value that contains it (a recursive alias)")
            return INVALID
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.ScalarNode):
                return self.scalar(node)
            if isinstance(node, yaml.SequenceNode):
                if node.tag != _TAG + "seq":
                    self.error(line, f"unsupported YAML tag '{_tag_name(node.tag)}'")
                    return INVALID
                return self.sequence(node, path, depth)
            if isinstance(node, yaml.MappingNode):
                if node.tag != _TAG + "map":
                    self.error(line, f"unsupported YAML tag '{_tag_name(node.tag)}'")
                    return INVALID
                return self.mapping(node, path, depth)
            self.error(line, "unsupported YAML node")
            return INVALID
        finally:
            self.active.discard(id(node))

    def sequence(self, node: yaml.SequenceNode, path: tuple[Any, ...], depth: int) -> list:
        out = []
        for i, item in enumerate(node.value):
            try:
                out.append(self.convert(item, (*path, i), depth + 1))
            except _TooBig:
                if depth == 0:
                    raise _TooBig(_node_line(item)) from None
                raise
        return out

    def scalar(self, node: yaml.ScalarNode) -> Any:
        tag = node.tag
        if tag == _TAG + "timestamp":
            # A date-looking value is almost always meant as text here.
            return node.value
        if tag not in _SCALAR_TAGS:
            self.error(_node_line(node), f"unsupported YAML tag '{_tag_name(tag)}'")
            return INVALID
        try:
            return self.constructor.yaml_constructors[tag](self.constructor, node)
        except Exception:  # e.g. `!!int abc`, or an integer too long for int()
            shown = node.value if len(node.value) <= 40 else node.value[:37] + "..."
            self.error(_node_line(node), f"cannot read {shown!r} as {_tag_name(tag)}")
            return INVALID

    def mapping(self, node: yaml.MappingNode, path: tuple[Any, ...], depth: int) -> dict:
        result: dict[str, Any] = {}
        seen: dict[str, int] = {}
        merges: list[tuple[dict, dict, dict]] = []
        for key_node, value_node in node.value:
            key_line = _node_line(key_node)
            if key_node.tag == _TAG + "merge":
                merges.extend(self.merge(value_node, path, depth))
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self.error(key_line, "a mapping key must be a plain string, not a list or mapping")
                continue
            # The key's text as written: `on:` or `1:` in env means the name "on" or "1".
            key = key_node.value
            if key in seen:
                self.error(key_line, f"duplicate key {_q(key)} (first on line {seen[key]})")
                continue
            seen[key] = key_line
            self.keylines[(*path, key)] = key_line
            try:
                result[key] = self.convert(value_node, (*path, key), depth + 1)
            except _TooBig:
                if depth == 0:  # name the top-level entry that explodes, not a leaf deep inside
                    raise _TooBig(key_line) from None
                raise
        # Merged keys (`<<: *defaults`) never override keys written in this mapping, and
        # the first merged mapping wins, as in YAML's merge spec.
        n = len(path)
        for merged, lines, keylines in merges:
            for key, value in merged.items():
                if key in result:
                    continue
                result[key] = value
                for src, dst in ((lines, self.lines), (keylines, self.keylines)):
                    for p, line in src.items():
                        if len(p) > n and p[n] == key:
                            dst[p] = line
        return result

    def merge(
        self, node: yaml.Node, path: tuple[Any, ...], depth: int
    ) -> list[tuple[dict, dict, dict]]:
        """Each mapping `<<` names, with the lines recorded while reading it (kept apart so
        they cannot overwrite those of keys written in the merging mapping)."""
        nodes = node.value if isinstance(node, yaml.SequenceNode) else [node]
        out = []
        for item in nodes:
            if not isinstance(item, yaml.MappingNode):
                self.error(_node_line(item), "'<<' (merge) needs a mapping or a list of mappings")
                continue
            saved = self.lines, self.keylines
            self.lines, self.keylines = {}, {}
            try:
                value = self.convert(item, path, depth + 1)
            finally:
                scratch = self.lines, self.keylines
                self.lines, self.keylines = saved
            if isinstance(value, dict):
                out.append((value, *scratch))
        return out


# libyaml when present: the pure-Python parser needs tens of seconds for a hostile 1 MiB file.
_LOADER: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_C_LOADER = _LOADER is not yaml.SafeLoader


class _Refused(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def _precheck(text: str) -> None:
    """Walk the event stream (no nodes, no recursion) and refuse what composing must not see:
    nesting deep enough to exhaust the stack, or more values than any real file has."""
    loader = _LOADER(text)
    try:
        depth = count = 0
        while loader.check_event():
            event = loader.get_event()
            if isinstance(event, yaml.NodeEvent):
                count += 1
                if count > MAX_VALUES:
                    line = event.start_mark.line + 1
                    raise _Refused(line, f"the file has more than {MAX_VALUES} values")
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    line = event.start_mark.line + 1
                    raise _Refused(line, f"values are nested more than {MAX_DEPTH} levels deep")
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    finally:
        loader.dispose()


def _yaml_message(e: yaml.MarkedYAMLError, text: str) -> tuple[int, str]:
    mark = e.problem_mark or e.context_mark
    line = mark.line + 1 if mark else 1
    problem = e.problem or ""
    lines = text.split("\n")
    source_line = lines[line - 1] if mark and 0 < line <= len(lines) else ""
    column = mark.column if mark else 0
    if problem == "found undefined alias":  # libyaml leaves the name out
        m = re.match(r"\*([^\s,\[\]{}]+)", source_line[column:])
        if m:
            problem = f"found undefined alias '{m.group(1)}'"
    message = problem or e.context or "invalid YAML"
    if e.context and problem:
        ctx_line = e.context_mark.line + 1 if e.context_mark else line
        where = f" on line {ctx_line}" if ctx_line != line else ""
        if problem.startswith("but "):  # "expected X (line N), but found Y"
            message = f"{e.context}{where}, {problem}"
        else:
            message = f"{problem} ({e.context}{where})"
    if source_line[column : column + 1] == "\t" and "tab" not in message:
        message += "; YAML indents with spaces, not tabs"
    return line, message


def _compose(text: str, file: str, errors: list[Problem]) -> yaml.Node | None | _Invalid:
    loader = None
    try:
        _precheck(text)
        loader = _LOADER(text)
        return loader.get_single_node()
    except _Refused as e:
        errors.append(Problem(file, e.line, e.message))
    except yaml.MarkedYAMLError as e:
        line, message = _yaml_message(e, text)
        errors.append(Problem(file, line, f"invalid YAML: {message}"))
    except yaml.reader.ReaderError as e:
        # libyaml counts UTF-8 bytes; the Python reader counts characters.
        before = text.encode("utf-8", "surrogatepass")[: e.position] if _C_LOADER else text
        line = before[: max(e.position, 0)].count(b"\n" if _C_LOADER else "\n") + 1
        errors.append(
            Problem(file, line, f"invalid YAML: character U+{e.character:04X} is not allowed")
        )
    except RecursionError:
        line = getattr(loader, "line", 0) + 1
        errors.append(Problem(file, line, "invalid YAML: values are nested too deeply"))
    except yaml.YAMLError as e:
        errors.append(Problem(file, 1, f"invalid YAML: {e}".splitlines()[0]))
    except Exception:  # a parser bug must still end as one clear problem, not a traceback
        line = getattr(loader, "line", 0) + 1
        errors.append(Problem(file, line, "invalid YAML: the parser could not read this"))
    finally:
        if loader is not None:
            loader.dispose()
    return INVALID


# --- validation ---------------------------------------------------------------------------


class _Bad(Exception):
    """A value error; `sub` is the path below the key (e.g. a list index) for its line."""

    def __init__(self, message: str, *sub: Any) -> None:
        super().__init__(message)
        self.message = message
        self.sub = sub


def _show(value: Any) -> str:
    """A value as a user wrote it, for messages."""
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, int) and value.bit_length() > 128:
        return "a very long number"
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _q(text: str) -> str:
    """User text quoted for a one-line message (newlines and control characters escaped)."""
    shown = repr(text)
    return shown if len(shown) <= 42 else shown[:38] + "..." + shown[0]


def _suggest(word: str, choices: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" — did you mean '{match[0]}'?" if match else ""


@dataclass
class _Ctx:
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


def _as_str(value: Any) -> str:
    if not isinstance(value, str):
        raise _Bad(f"must be a string, not {_show(value)}")
    return value


def _as_opt_str(value: Any) -> str | None:
    return None if value is None else _as_str(value)


def _as_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"must be true or false, not {_show(value)}")
    return value


def _as_int(value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad(f"must be a whole number, not {_show(value)}")
    if not low <= value <= high:
        raise _Bad(f"must be between {low} and {high}, not {_show(value)}")
    return value


def _as_duration(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _Bad(f"must be a duration (milliseconds, or e.g. '2s'), not {_show(value)}")
    ms = parse_duration(value)
    if ms > MAX_DURATION_MS:
        raise _Bad(f"is too long (at most {MAX_DURATION_MS} ms, about 24.8 days)")
    return ms


def _as_size(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _Bad(f"must be a size (bytes, or e.g. '300M'), not {_show(value)}")
    return parse_size(value)


def _words(value: Any, what: str) -> list[str]:
    """A list of strings (numbers become strings) or a string split like a shell would."""
    if value is None:
        return []
    if isinstance(value, int | float) and not isinstance(value, bool):
        return [str(value)]
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as e:
            raise _Bad(f"cannot be split into {what}: {str(e).lower()}") from None
    if not isinstance(value, list):
        raise _Bad(f"must be a list of strings or a string, not {_show(value)}")
    out = []
    for i, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            hint = " (a YAML boolean; quote it)" if isinstance(item, bool) else ""
            raise _Bad(f"item {i + 1} must be a string, not {_show(item)}{hint}", i)
        out.append(item if isinstance(item, str) else str(item))
    if any("\0" in s for s in out):
        raise _Bad("must not contain NUL characters")
    return out


def _as_env(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Bad(f"must be a mapping of names to values, not {_show(value)}")
    env: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            raise _Bad(f"has an invalid variable name {_show(key)}", key)
        if isinstance(item, bool):
            env[key] = "true" if item else "false"
        elif isinstance(item, str):
            if "\0" in item:
                raise _Bad(f"value of {_q(key)} contains a NUL character", key)
            env[key] = item
        elif isinstance(item, int | float):
            if isinstance(item, int) and item.bit_length() > 1024:
                raise _Bad(f"value of {_q(key)} is too long a number", key)
            env[key] = str(item)
        elif item is None:
            raise _Bad(
                f'{_q(key)} has no value (write {_q(key)[1:-1]}: "" for an empty string)', key
            )
        else:
            raise _Bad(f"value of {_q(key)} must be a string or a number, not {_show(item)}", key)
    return env


def _as_signal(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _Bad(f"must be a signal name like SIGINT or a number, not {_show(value)}")
    if isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        value = int(value.strip())
    if isinstance(value, int):
        try:
            return int(signal.Signals(value))
        except ValueError:
            raise _Bad(f"{_show(value)} is not a signal number") from None
    name = value.strip().upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    if name.startswith("SIG_") or name not in signal.Signals.__members__:
        names = [s.name for s in signal.Signals]
        raise _Bad(f"unknown signal {_show(value)}{_suggest(name, names)}")
    return int(signal.Signals[name])


def _check_name(name: str) -> str | None:
    """Why `name` cannot be an app name, or None if it can."""
    if not name:
        return "is empty"
    if len(name) > _MAX_NAME:
        return f"is longer than {_MAX_NAME} characters"
    if not _NAME.fullmatch(name):
        return "may only contain letters, digits, '_', '.' and '-'"
    if name.isdigit():
        return "must not be all digits (a number means a worker id)"
    if name.lower() == "all":
        return "must not be 'all' (that means every app)"
    if name.startswith("-"):
        return "must not start with '-'"
    return None


def _inside(base: str, path: str) -> str:
    return os.path.normpath(os.path.join(base, os.path.expanduser(path)))


class _AppBuilder:
    """Validates one app's raw mapping and builds its AppSpec (None when it has errors)."""

    def __init__(
        self, raw: dict, ctx: _Ctx, base_dir: str, env_name: str | None, source: str
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

        cwd = self.get("cwd", _as_opt_str, None)
        cwd_ok = True
        if cwd is None:
            cwd = self.base_dir
        else:
            cwd = _inside(self.base_dir, cwd)
            if not os.path.isdir(cwd):
                self.error("cwd", f"directory {cwd!r} does not exist")
                cwd_ok = False
        self.cwd = cwd

        script, script_args, script_is_file = self.script(cwd_ok)
        name = self.name(script)
        args = self.get("args", lambda v: _words(v, "arguments"), [])
        interpreter, interpreter_args = self.interpreter(script, script_is_file)

        instances = self.get("instances", self.instances, 1)
        exec_mode = self.get("exec_mode", self.exec_mode, None)
        listen = self.get("listen", self.listen, None)
        if listen is not None and exec_mode == "fork":
            self.error("listen", "needs exec_mode cluster (exec_mode is fork)")
        node = script is not None and nodeapp.is_node_script(script, interpreter)
        if exec_mode is None:
            # PM2: a Node script with more than one instance runs in cluster mode.
            raw = self.values["instances"][1] if "instances" in self.values else 1
            spread = instances > 1 or raw == "max" or (_is_int(raw) and raw <= 0)
            inferred = "cluster" if node and spread else "fork"
            exec_mode = "cluster" if listen is not None else inferred
        dispatch = self.get("dispatch", self.dispatch, "round-robin")
        learned = node and exec_mode == "cluster" and listen is None
        if learned and dispatch not in nodeapp.HANDOFF_MODES:
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

        watch = self.get("watch", self.watch, [])
        ignore_watch = self.get("ignore_watch", self.ignore_watch, [])
        env = self.env()

        spec_kwargs: dict[str, Any] = {}
        for key in (
            "watch_delay",
            "min_uptime",
            "restart_delay",
            "exp_backoff_restart_delay",
            "kill_timeout",
            "listen_timeout",
        ):
            if key in self.values:
                spec_kwargs[key] = self.get(key, _as_duration, 0)
        for key in ("autorestart", "wait_ready", "merge_logs", "shutdown_with_message"):
            if key in self.values:
                spec_kwargs[key] = self.get(key, _as_bool, False)
        if "max_restarts" in self.values:
            spec_kwargs["max_restarts"] = self.get(
                "max_restarts", lambda v: _as_int(v, 0, 1_000_000_000), 0
            )
        if "log_retain" in self.values:
            spec_kwargs["log_retain"] = self.get("log_retain", lambda v: _as_int(v, 0, 1000), 0)
        if "kill_signal" in self.values:
            spec_kwargs["kill_signal"] = self.get("kill_signal", _as_signal, signal.SIGINT)
        if "max_memory_restart" in self.values:
            spec_kwargs["max_memory_restart"] = self.get(
                "max_memory_restart", self.memory_limit, None
            )
        if "log_max_size" in self.values:
            spec_kwargs["log_max_size"] = self.get("log_max_size", self.log_max_size, None)
        for key in ("out_file", "error_file"):
            if key in self.values:
                spec_kwargs[key] = self.get(key, self.log_path, None)
        if "log_date_format" in self.values:
            spec_kwargs["log_date_format"] = self.get("log_date_format", _as_opt_str, None)

        if len(ctx.errors) > before or script is None or name is None:
            return None
        return AppSpec(
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
            watch=watch,
            ignore_watch=ignore_watch,
            env=env,
            source=self.source,
            source_line=ctx.fallback,
            **spec_kwargs,
        )

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
                self.ctx.error(f"key {_show(key)} is not a string")
                continue
            if key in KEYS or _ENV_KEY.fullmatch(key):
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
                continue
            else:
                self.ctx.error(f"unknown key {_q(key)}{_suggest(key, known)}", key)
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
        if _has_invalid(value):
            return default
        try:
            return convert(value)
        except _Bad as e:
            self.error(key, e.message, *e.sub)
        except ValueError as e:  # from units / parse_listen: already a sentence
            self.error(key, str(e))
        return default

    # -- fields

    def script(self, cwd_ok: bool) -> tuple[str | None, list[str], bool]:
        """(argv[0], leading args, whether argv[0] is a file)."""
        if "script" not in self.values:
            self.ctx.error("'script' is missing: every app needs a script or command to run")
            return None, [], False
        text = self.get("script", _as_str, None)
        if text is None:
            return None, [], False
        if not text.strip() or "\0" in text:
            self.error("script", "must name a file or a command")
            return None, [], False
        direct = _inside(self.cwd, text)
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
        path = _inside(self.cwd, head)
        if os.path.isfile(path):
            return path, rest, True
        if not cwd_ok:
            return head, rest, False
        if os.path.isdir(path):
            self.error("script", f"{head!r} is a directory, not a script")
            return None, [], False
        looks_like_path = "/" in head or os.path.splitext(head)[1] in _INTERPRETERS
        if looks_like_path:
            self.error("script", f"{head!r} not found (looked in {self.cwd})")
            return None, [], False
        if shutil.which(head) is None:
            self.warn("script", f"{head!r} is neither a file in {self.cwd} nor a command on PATH")
        return head, rest, False

    def name(self, script: str | None) -> str | None:
        if "name" in self.values:
            name = self.get("name", _as_str, None)
            if name is None:
                return None
            why = _check_name(name)
            if why:
                self.error("name", f"{name!r} {why}")
                return None
            return name
        if script is None:
            return None
        derived = os.path.splitext(os.path.basename(script))[0]
        if _check_name(derived):
            self.ctx.error(f"'name' is missing and cannot be derived from script {script!r}")
            return None
        return derived

    def interpreter(self, script: str | None, is_file: bool) -> tuple[str | None, list[str]]:
        extra = self.get("interpreter_args", lambda v: _words(v, "arguments"), [])
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
        kind = _INTERPRETERS.get(os.path.splitext(script)[1].lower())
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
        text = self.get("interpreter", _as_str, None)
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
            head = _inside(self.cwd, head)
            if not os.path.isfile(head):
                self.error("interpreter", f"{head!r} not found")
        elif shutil.which(head) is None:
            self.warn("interpreter", f"{head!r} is not on PATH")
        return [head, *words[1:]]

    def instances(self, value: Any) -> int:
        cpus = os.cpu_count() or 1
        if isinstance(value, str) and value.strip().lower() == "max":
            return cpus
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Bad(f"must be a whole number, 'max', 0 or -N, not {_show(value)}")
        if value == 0:
            return cpus
        if value < 0:
            return max(1, cpus + max(value, -MAX_INSTANCES))
        if value > MAX_INSTANCES:
            raise _Bad(f"must be at most {MAX_INSTANCES}, not {_show(value)}")
        return value

    def exec_mode(self, value: Any) -> str:
        if isinstance(value, str):
            mode = value.strip().lower().removesuffix("_mode")
            if mode in ("fork", "cluster"):
                return mode
        raise _Bad(f"must be 'fork' or 'cluster', not {_show(value)}")

    def listen(self, value: Any) -> Listen:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise _Bad(f"must be a port, 'host:port' or 'unix:/path', not {_show(value)}")
        if isinstance(value, int) and not 0 <= value <= 65535:
            raise _Bad(f"port {_show(value)} is out of range 0-65535")
        if isinstance(value, str) and "\0" in value:
            raise _Bad("must not contain NUL characters")
        try:
            listen = parse_listen(value)
        except ValueError as e:
            raise _Bad(str(e).removeprefix("listen ")) from None
        if listen.kind == "unix":
            return Listen("unix", path=_inside(self.cwd, listen.path))
        return listen

    def dispatch(self, value: Any) -> str:
        if isinstance(value, str) and value in DISPATCH_MODES:
            return value
        choices = ", ".join(DISPATCH_MODES)
        hint = _suggest(value, DISPATCH_MODES) if isinstance(value, str) else ""
        raise _Bad(f"must be one of {choices}, not {_show(value)}{hint}")

    def watch(self, value: Any) -> list[str]:
        if value is None or value is False:
            return []
        if value is True:
            return [self.cwd]
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list):
            raise _Bad(f"must be true, false, a path or a list of paths, not {_show(value)}")
        paths = []
        for i, item in enumerate(items):
            sub = (i,) if isinstance(value, list) else ()
            if not isinstance(item, str) or not item or "\0" in item:
                raise _Bad(f"paths must be strings, not {_show(item)}", *sub)
            path = _inside(self.cwd, item)
            if not os.path.exists(path):
                self.warn("watch", f"{path!r} does not exist", *sub)
            paths.append(path)
        return paths

    def ignore_watch(self, value: Any) -> list[str]:
        if value is None:
            return []
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list):
            raise _Bad(f"must be a pattern or a list of patterns, not {_show(value)}")
        for i, item in enumerate(items):
            if not isinstance(item, str) or not item:
                raise _Bad(f"patterns must be strings, not {_show(item)}", i)
        return list(items)

    def env(self) -> dict[str, str]:
        env = self.get("env", _as_env, {})
        selected = f"env_{self.env_name}" if self.env_name else None
        for key in self.values:
            if _ENV_KEY.fullmatch(key):
                chosen = self.get(key, _as_env, {})
                if key == selected:
                    env = {**env, **chosen}
        return env

    def memory_limit(self, value: Any) -> int | None:
        if value is None:
            return None
        size = _as_size(value)
        if size < 1:
            raise _Bad("must be more than 0 (leave it out for no limit)")
        return size

    def log_max_size(self, value: Any) -> int | None:
        if value is None or value is False:
            return None
        return _as_size(value) or None

    def log_path(self, value: Any) -> str | None:
        if value is None:
            return None
        text = _as_str(value)
        if not text or "\0" in text:
            raise _Bad("must be a file path")
        return _inside(self.cwd, text)


# --- public API ---------------------------------------------------------------------------


def spec_from_mapping(
    mapping: dict,
    base_dir: str,
    source: str = "",
    line: int = 0,
    *,
    env_name: str | None = None,
    warnings: list[Problem] | None = None,
) -> AppSpec:
    """One AppSpec from a plain dict of ecosystem keys (e.g. built by the CLI).

    Raises ConfigError listing every problem; warnings are appended to `warnings` if given.
    """
    errors: list[Problem] = []
    found: list[Problem] = []
    if not isinstance(mapping, dict):
        raise ConfigError([Problem(source, line, "an app must be a mapping of keys to values")])
    ctx = _Ctx(source, line, errors, found)
    spec = _AppBuilder(mapping, ctx, os.path.abspath(base_dir), env_name, source).build()
    if warnings is not None:
        warnings.extend(found)
    if errors or spec is None:
        raise ConfigError(errors or [Problem(source, line, "invalid app")], found)
    return spec


def find_default_file(cwd: Path) -> Path:
    """./ecosystem.yaml, else ./ecosystem.yml; ConfigError when neither exists."""
    cwd = Path(cwd)
    for name in DEFAULT_FILES:
        candidate = cwd / name
        if candidate.is_file():
            return candidate
    message = (
        f"no ecosystem.yaml or ecosystem.yml in {cwd}; name a file, or start from"
        " ecosystem.example.yaml"
    )
    if (cwd / "ecosystem.config.js").exists():
        message += " (clusterui reads YAML, not ecosystem.config.js)"
    raise ConfigError([Problem("", 0, message)])


def load_ecosystem(
    path: str | Path, env_name: str | None = None, only: list[str] | None = None
) -> LoadResult:
    """Read and validate an ecosystem file; raises ConfigError listing every error."""
    file = str(path)
    errors: list[Problem] = []
    warnings: list[Problem] = []

    def fail(message: str, line: int = 0) -> ConfigError:
        return ConfigError([*errors, Problem(file, line, message)], warnings)

    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise fail("file not found") from None
    except IsADirectoryError:
        raise fail("is a directory, not an ecosystem file") from None
    except OSError as e:
        raise fail(f"cannot read the file: {e.strerror or e}") from None
    if len(data) > MAX_FILE_BYTES:
        raise fail(f"the file is larger than {MAX_FILE_BYTES // 1024} KiB", 1)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise fail(f"the file is not UTF-8 text (byte 0x{data[e.start]:02x})", line) from None

    root = _compose(text, file, errors)
    if root is INVALID:
        raise ConfigError(errors, warnings)
    if root is None:
        raise fail("the file is empty; it needs an 'apps' list", 1)

    reader = _Reader(errors, file)
    doc = reader.read(root)
    apps_path: tuple[Any, ...] = ()
    apps: Any = INVALID
    if isinstance(doc, list):
        apps = doc
    elif isinstance(doc, dict):
        apps_path = ("apps",)
        apps = _top_level(doc, file, reader, errors, warnings)
    elif doc is not INVALID:
        errors.append(
            Problem(
                file,
                _node_line(root),
                f"the file must be a mapping with an 'apps' list, not {_show(doc)}",
            )
        )
    if apps is INVALID:
        raise ConfigError(errors, warnings)
    apps_line = reader.keylines.get(apps_path, 1)
    if not isinstance(apps, list):
        errors.append(Problem(file, apps_line, f"'apps' must be a list, not {_show(apps)}"))
        raise ConfigError(errors, warnings)
    if not apps:
        errors.append(Problem(file, apps_line, "'apps' is empty: there is nothing to run"))
        raise ConfigError(errors, warnings)

    abs_file = os.path.abspath(file)
    base_dir = os.path.dirname(abs_file)
    specs: list[AppSpec] = []
    names_seen: dict[str, int] = {}
    # (name if known, raw mapping) for every app, including broken ones.
    named: list[tuple[str | None, dict]] = []
    for i, raw in enumerate(apps):
        path = (*apps_path, i)
        line = reader.lines.get(path, apps_line)
        if raw is INVALID:
            continue
        if not isinstance(raw, dict):
            errors.append(
                Problem(
                    file,
                    line,
                    f"app {i + 1} must be a mapping (name: ..., script: ...), not {_show(raw)}",
                )
            )
            continue
        ctx = _Ctx(file, line, errors, warnings, reader.lines, reader.keylines, path)
        spec = _AppBuilder(raw, ctx, base_dir, env_name, abs_file).build()
        name = spec.name if spec else raw.get("name")
        named.append((name if isinstance(name, str) else None, raw))
        if isinstance(name, str):
            if name in names_seen:
                errors.append(
                    Problem(
                        file,
                        ctx.line("name"),
                        f"duplicate app name {name!r} (first on line {names_seen[name]})",
                    )
                )
                continue
            names_seen[name] = line
        if spec is not None:
            specs.append(spec)

    all_names = [n for n, _ in named if n is not None]
    selected_raw = [r for _, r in named]
    if only:
        wanted = [n.strip() for item in only for n in str(item).split(",") if n.strip()]
        for n in wanted:
            if n not in all_names:
                known = ", ".join(all_names) or "none"
                errors.append(
                    Problem(
                        file,
                        apps_line,
                        f"--only names {n!r}, which is not an app in this file"
                        f" (apps: {known}){_suggest(n, all_names)}",
                    )
                )
        specs = [s for s in specs if s.name in wanted]
        selected_raw = [r for n, r in named if n in wanted] or selected_raw
    if env_name and not any(f"env_{env_name}" in r for r in selected_raw):
        errors.append(Problem(file, apps_line, f"no app has {_q('env_' + env_name)}"))

    if errors:
        errors.sort(key=lambda p: p.line)
        raise ConfigError(errors, warnings)
    warnings.sort(key=lambda p: p.line)
    return LoadResult(specs, warnings, abs_file)


def _top_level(
    doc: dict, file: str, reader: _Reader, errors: list[Problem], warnings: list[Problem]
) -> Any:
    """The `apps` value of a top-level mapping (INVALID if absent), checking other keys."""
    if "apps" not in doc:
        line = min(reader.keylines.values(), default=1)
        if "script" in doc:
            errors.append(
                Problem(file, line, "this looks like a single app: put it in a list under 'apps:'")
            )
        elif not any(_suggest(key, _TOP_KEYS) for key in doc):
            errors.append(Problem(file, line, "no 'apps' list: the file needs 'apps:' at the top"))
    for key in doc:
        line = reader.keylines.get((key,), 1)
        if key in _TOP_KEYS or key.startswith("x-"):
            continue
        if key in _TOP_PM2_KEYS:
            warnings.append(
                Problem(
                    file,
                    line,
                    f"'{key}' is a PM2 key clusterui does not implement; ignored",
                    "warning",
                )
            )
        elif "apps" in doc or "script" not in doc:
            errors.append(
                Problem(
                    file,
                    line,
                    f"unknown top-level key {_q(key)}{_suggest(key, _TOP_KEYS)}"
                    " (only 'apps' is read; 'x-' keys are free for anchors)",
                )
            )
    return doc.get("apps", INVALID)
