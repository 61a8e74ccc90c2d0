"""`clusterui save` / `resurrect` (PM2's `pm2 save` / `pm2 resurrect`): CLUSTERUI_HOME/dump.yaml.

The dump is an ordinary ecosystem file a person can read and `clusterui check`: each app's
effective spec (absolute paths, durations in ms, sizes in bytes, its current instance
count and watch on/off). What an ecosystem file cannot say goes in a top-level
`x-clusterui` block, which the loader ignores ('x-' keys are free): each app's caller
environment, its source file and exact instance count. That block is written last and
ends with `complete: true`, so a file cut short is refused instead of half-resurrected.

It is written atomically (a temporary file in the same directory, fsync, rename) and
0600: env and caller env values may be secrets.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from clusterui.core.config import upkeep
from clusterui.core.spec import AppSpec

DUMP_NAME = "dump.yaml"
MARKER = "x-clusterui"
FORMAT = 1

_DEFAULTS = AppSpec(name="-", script="-")
# Written whatever their value: what a reader needs to see what runs.
_ALWAYS = ("name", "script", "args", "cwd", "instances", "exec_mode")
_DURATIONS = (
    "watch_delay",
    "min_uptime",
    "restart_delay",
    "exp_backoff_restart_delay",
    "kill_timeout",
    "listen_timeout",
)


class DumpError(Exception):
    """The dump cannot be resurrected; str() is `FILE:LINE: why` (LINE when there is one)."""


def app_mapping(spec: AppSpec, watch_on: bool) -> dict[str, Any]:
    """The ecosystem keys that reproduce `spec` (defaults left out, except the basics)."""
    out: dict[str, Any] = {
        "name": spec.name,
        "script": spec.script,
        "args": list(spec.args),
        "cwd": spec.cwd,
        # The interpreter clusterui chose (e.g. this Python for a .py) is written out, so
        # the app runs the same way whatever the default is at resurrect time.
        "interpreter": spec.interpreter if spec.interpreter else "none",
        "instances": spec.instances,
        "exec_mode": spec.exec_mode,
    }
    if spec.interpreter_args:
        out["interpreter_args"] = list(spec.interpreter_args)
    if spec.listen is not None:
        out["listen"] = str(spec.listen)
        out["dispatch"] = spec.dispatch
        if spec.dispatchers != 1:
            out["dispatchers"] = spec.dispatchers
    out["watch"] = list(spec.watch) if watch_on and spec.watch else False
    if spec.ignore_watch:
        out["ignore_watch"] = list(spec.ignore_watch)
    if spec.env:
        out["env"] = dict(spec.env)
    for key in (
        *_DURATIONS,
        "autorestart",
        "max_restarts",
        "wait_ready",
        "merge_logs",
        "log_retain",
        "max_memory_restart",
        "out_file",
        "error_file",
        "log_date_format",
    ):
        value = getattr(spec, key)
        if value != getattr(_DEFAULTS, key) and value is not None:
            out[key] = value
    if spec.log_max_size != _DEFAULTS.log_max_size:
        out["log_max_size"] = spec.log_max_size if spec.log_max_size else False
    if spec.kill_signal != _DEFAULTS.kill_signal:
        out["kill_signal"] = signal.Signals(spec.kill_signal).name
    out.update(upkeep.keys_of(spec))
    return out


def render(apps: list[tuple[AppSpec, bool, int]]) -> str:
    """The dump's text for (spec, watch on, current instance count) of each app."""
    header = (
        f"# Written by `clusterui save` on {time.strftime('%Y-%m-%d %H:%M:%S %z')}.\n"
        "# `clusterui resurrect` starts these apps again; it is also an ordinary ecosystem\n"
        "# file (`clusterui check`). env values may be secrets: keep this file private.\n"
    )
    body = {"apps": [app_mapping(spec, watch) for spec, watch, _n in apps]}
    meta = {
        "format": FORMAT,
        "saved_at": round(time.time(), 3),
        "apps": {
            spec.name: {
                "instances": count,
                "source": spec.source,
                "caller_env": dict(spec.caller_env),
            }
            for spec, _w, count in apps
        },
        "complete": True,  # last: a file cut anywhere before this is refused
    }
    dump = lambda obj: yaml.safe_dump(  # noqa: E731
        obj, sort_keys=False, default_flow_style=False, allow_unicode=True, width=1000
    )
    return header + dump(body) + "\n" + dump({MARKER: meta})


def write(path: Path, text: str) -> None:
    """Atomically replace `path` with `text` (0600): readers see the old or the new file."""
    fd, tmp = tempfile.mkstemp(prefix=".dump-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # a symlink planted at `path` is replaced, never followed
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@dataclass
class Saved:
    """What `x-clusterui` says about one app."""

    instances: int | None = None
    source: str = ""
    caller_env: dict[str, str] = field(default_factory=dict)


def read_meta(path: Path, text: str, app_names: list[str]) -> dict[str, Saved]:
    """The `x-clusterui` block of a dump the loader has already accepted as an ecosystem
    file; DumpError (with the line) when it is missing, cut short or does not match."""
    lines = text.count("\n") + (0 if text.endswith("\n") else 1)
    end = f"{path}:{max(lines, 1)}"
    doc = yaml.safe_load(text)  # already parsed once by the loader: no surprises left
    meta = doc.get(MARKER) if isinstance(doc, dict) else None
    if not isinstance(meta, dict):
        raise DumpError(
            f"{end}: the '{MARKER}' block is missing: the file was cut short or is not a"
            " dump written by `clusterui save`; nothing was started"
        )
    marker_line = _line_of(text, f"{MARKER}:")
    if meta.get("complete") is not True:
        raise DumpError(
            f"{end}: the dump ends before 'complete: true' (written only in part?);"
            " nothing was started"
        )
    if meta.get("format") != FORMAT:
        raise DumpError(
            f"{path}:{marker_line}: dump format {meta.get('format')!r} is not {FORMAT};"
            " nothing was started"
        )
    apps = meta.get("apps")
    if not isinstance(apps, dict) or sorted(apps) != sorted(app_names):
        raise DumpError(
            f"{path}:{marker_line}: '{MARKER}' lists other apps than 'apps' does"
            " (edited by hand?); nothing was started"
        )
    out: dict[str, Saved] = {}
    for name, raw in apps.items():
        saved = Saved()
        if isinstance(raw, dict):
            n = raw.get("instances")
            if isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= 1024:
                saved.instances = n
            if isinstance(raw.get("source"), str):
                saved.source = raw["source"]
            env = raw.get("caller_env")
            if isinstance(env, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in env.items()
            ):
                saved.caller_env = dict(env)
            elif env is not None:
                raise DumpError(
                    f"{path}:{_line_of(text, 'caller_env:', marker_line)}: caller_env of"
                    f" {name!r} must map names to strings; nothing was started"
                )
        out[str(name)] = saved
    return out


def _line_of(text: str, needle: str, after: int = 0) -> int:
    for i, line in enumerate(text.splitlines(), 1):
        if i > after and line.lstrip().startswith(needle):
            return i
    return 1
