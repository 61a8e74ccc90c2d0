"""The loader's entry points: an ecosystem file, or a plain mapping from the CLI, → AppSpecs.

Every problem is reported as `FILE:LINE: message`, all of them at once, and a file with
any error yields no apps.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clusterui.core import formats
from clusterui.core.config import upkeep
from clusterui.core.config.builder import AppBuilder, Ctx
from clusterui.core.config.keys import TOP_KEYS, TOP_METRICS_KEYS, TOP_PM2_KEYS
from clusterui.core.config.problems import ConfigError, Problem, quote, show, suggest
from clusterui.core.config.yamlfile import INVALID, Reader, compose, node_line
from clusterui.core.spec import AppSpec

MAX_FILE_BYTES = 1024 * 1024
# The source of an app started by `clusterui start SCRIPT`, for messages.
COMMAND_LINE = "command line"

DEFAULT_FILES = formats.DEFAULT_FILES


@dataclass
class LoadResult:
    apps: list[AppSpec]
    warnings: list[Problem]
    path: str
    metrics_listen: str | None = None  # top-level: serve Prometheus metrics there
    metrics_public: bool = False  # explicitly allowed on a non-loopback address


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
    ctx = Ctx(source, line, errors, found)
    spec = AppBuilder(mapping, ctx, os.path.abspath(base_dir), env_name, source).build()
    if warnings is not None:
        warnings.extend(found)
    if errors or spec is None:
        raise ConfigError(errors or [Problem(source, line, "invalid app")], found)
    return spec


def find_default_file(cwd: Path) -> Path:
    """The first of DEFAULT_FILES in cwd; ConfigError when there is none."""
    cwd = Path(cwd)
    for name in DEFAULT_FILES:
        candidate = cwd / name
        if candidate.is_file():
            return candidate
    message = (
        f"no ecosystem file in {cwd} (looked for {', '.join(DEFAULT_FILES)}); name a file,"
        " or start from ecosystem.example.yaml"
    )
    raise ConfigError([Problem("", 0, message)])


def load_ecosystem(
    path: str | Path,
    env_name: str | None = None,
    only: list[str] | None = None,
    caller_env: dict[str, str] | None = None,
) -> LoadResult:
    """Read and validate an ecosystem file (any PM2 format, core/formats.py); raises
    ConfigError listing every error. `caller_env` is what a JS file is evaluated with."""
    file = str(path)
    text = _read_text(path, file, [])
    try:
        source = formats.to_source(file, text, caller_env, MAX_FILE_BYTES)
    except formats.SourceError as e:
        raise ConfigError([Problem(file, e.line, e.message)]) from None
    if not source.synthetic:
        return _load_text(source.text, file, env_name, only)
    # Evaluated JS: its problems name the app (by name and index), not a line.
    label = formats.app_labels(source.text)

    def relabel(problems: list[Problem]) -> list[Problem]:
        out = []
        for p in problems:
            where = label(p.line) if p.line > 0 else None
            message = f"{where}: {p.message}" if where else p.message
            out.append(Problem(p.file, 0, message, p.severity))
        return out

    try:
        result = _load_text(source.text, file, env_name, only)
    except ConfigError as exc:
        raise ConfigError(relabel(exc.problems), relabel(exc.warnings)) from None
    result.warnings = relabel(result.warnings)
    return result


def _load_text(text: str, file: str, env_name: str | None, only: list[str] | None) -> LoadResult:
    errors: list[Problem] = []
    warnings: list[Problem] = []
    reader = Reader(errors, file)
    apps, apps_path, top = _apps_list(text, file, reader, errors, warnings)
    apps_line = reader.keylines.get(apps_path, 1)

    abs_file = os.path.abspath(file)
    # (name if known, raw mapping) for every app, including broken ones.
    named: list[tuple[str | None, dict]] = []
    specs = _build_apps(apps, apps_path, apps_line, reader, warnings, abs_file, env_name, named)
    errors.extend(upkeep.dependency_problems(named, apps_path, apps_line, reader, file))
    selected_raw = [r for _, r in named]
    if only:
        specs, selected_raw = _select_only(only, specs, named, apps_line, file, errors)
    if env_name and not any(f"env_{env_name}" in r for r in selected_raw):
        errors.append(Problem(file, apps_line, f"no app has {quote('env_' + env_name)}"))

    if errors:
        errors.sort(key=lambda p: p.line)
        raise ConfigError(errors, warnings)
    warnings.sort(key=lambda p: p.line)
    return LoadResult(
        specs,
        warnings,
        abs_file,
        metrics_listen=top.get("metrics_listen"),
        metrics_public=top.get("metrics_public") is True,
    )


def _read_text(path: str | Path, file: str, warnings: list[Problem]) -> str:
    """The file's text, or ConfigError (missing, unreadable, too large, not UTF-8)."""

    def fail(message: str, line: int = 0) -> ConfigError:
        return ConfigError([Problem(file, line, message)], warnings)

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
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise fail(f"the file is not UTF-8 text (byte 0x{data[e.start]:02x})", line) from None


def _apps_list(
    text: str, file: str, reader: Reader, errors: list[Problem], warnings: list[Problem]
) -> tuple[list, tuple[Any, ...], dict]:
    """The non-empty `apps` list (or the top-level list), its path and the top-level
    mapping ({} for a bare list); else ConfigError."""
    root = compose(text, file, errors)
    if root is INVALID:
        raise ConfigError(errors, warnings)
    if root is None:
        raise ConfigError(
            [*errors, Problem(file, 1, "the file is empty; it needs an 'apps' list")], warnings
        )
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
                node_line(root),
                f"the file must be a mapping with an 'apps' list, not {show(doc)}",
            )
        )
    if apps is INVALID:
        raise ConfigError(errors, warnings)
    apps_line = reader.keylines.get(apps_path, 1)
    if not isinstance(apps, list):
        errors.append(Problem(file, apps_line, f"'apps' must be a list, not {show(apps)}"))
        raise ConfigError(errors, warnings)
    if not apps:
        errors.append(Problem(file, apps_line, "'apps' is empty: there is nothing to run"))
        raise ConfigError(errors, warnings)
    return apps, apps_path, doc if isinstance(doc, dict) else {}


def _build_apps(
    apps: list,
    apps_path: tuple[Any, ...],
    apps_line: int,
    reader: Reader,
    warnings: list[Problem],
    abs_file: str,
    env_name: str | None,
    named: list[tuple[str | None, dict]],
) -> list[AppSpec]:
    """An AppSpec for each valid app; every app's (name, mapping) is added to `named`."""
    errors, file = reader.errors, reader.file
    base_dir = os.path.dirname(abs_file)
    specs: list[AppSpec] = []
    names_seen: dict[str, int] = {}
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
                    f"app {i + 1} must be a mapping (name: ..., script: ...), not {show(raw)}",
                )
            )
            continue
        ctx = Ctx(file, line, errors, warnings, reader.lines, reader.keylines, path)
        spec = AppBuilder(raw, ctx, base_dir, env_name, abs_file).build()
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
    return specs


def _select_only(
    only: list[str],
    specs: list[AppSpec],
    named: list[tuple[str | None, dict]],
    apps_line: int,
    file: str,
    errors: list[Problem],
) -> tuple[list[AppSpec], list[dict]]:
    """`--only a,b`: the apps named (and their raw mappings); unknown names are errors."""
    all_names = [n for n, _ in named if n is not None]
    wanted = [n.strip() for item in only for n in str(item).split(",") if n.strip()]
    for n in wanted:
        if n not in all_names:
            known = ", ".join(all_names) or "none"
            errors.append(
                Problem(
                    file,
                    apps_line,
                    f"--only names {n!r}, which is not an app in this file"
                    f" (apps: {known}){suggest(n, all_names)}",
                )
            )
    selected_raw = [r for n, r in named if n in wanted] or [r for _, r in named]
    return [s for s in specs if s.name in wanted], selected_raw


def _top_level(
    doc: dict, file: str, reader: Reader, errors: list[Problem], warnings: list[Problem]
) -> Any:
    """The `apps` value of a top-level mapping (INVALID if absent), checking other keys."""
    if "apps" not in doc:
        line = min(reader.keylines.values(), default=1)
        if "script" in doc:
            errors.append(
                Problem(file, line, "this looks like a single app: put it in a list under 'apps:'")
            )
        elif not any(suggest(key, TOP_KEYS) for key in doc):
            errors.append(Problem(file, line, "no 'apps' list: the file needs 'apps:' at the top"))
    for key in doc:
        line = reader.keylines.get((key,), 1)
        if key in TOP_KEYS or key.startswith("x-"):
            continue
        if key in TOP_METRICS_KEYS:
            problem = upkeep.top_level_problem(key, doc)
            if problem:
                errors.append(Problem(file, line, f"{key}: {problem}"))
            continue
        if key in TOP_PM2_KEYS:
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
                    f"unknown top-level key {quote(key)}{suggest(key, TOP_KEYS)}"
                    " (only 'apps' is read; 'x-' keys are free for anchors)",
                )
            )
    return doc.get("apps", INVALID)
