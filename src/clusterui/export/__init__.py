"""`clusterui export FORMAT`: the apps of an ecosystem file as another engine's objects.

One module per format (systemd units, Kubernetes manifests). Each takes the loaded
AppSpec objects (never raw YAML) and an Options, and returns an Export: file names
with their text, plus the warnings about what did not map. Whatever does not map is
also a comment in the output itself, so a reviewer reading the files sees it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from clusterui.core.spec import AppSpec

# Format name → module (under clusterui.export); aliases share a module.
FORMATS: dict[str, str] = {"systemd": "systemd", "kubernetes": "kubernetes", "k8s": "kubernetes"}


class ExportError(Exception):
    """The export cannot be made (a missing option, names that collide); one sentence."""


@dataclass
class Options:
    source: Path  # the ecosystem file, absolute
    env_name: str | None = None  # --env NAME: the units run with it too
    project: str = "clusterui"  # the target / label grouping every app
    clusterui: str = "clusterui"  # the clusterui executable the units run (absolute)
    image: str | None = None  # kubernetes: the container image holding the apps
    workdir: str | None = None  # kubernetes: where the file's directory is in the image
    namespace: str | None = None  # kubernetes


@dataclass
class Export:
    files: dict[str, str] = field(default_factory=dict)  # name → text, in output order
    warnings: list[str] = field(default_factory=list)

    def unmapped(self, app: AppSpec, what: str) -> str:
        """Record one thing that did not map; returns the comment line for the output."""
        self.warnings.append(f"{app.source or app.name}: {app.name}: {what}")
        return f"# not mapped: {what}"


class Exporter(Protocol):
    def export(self, apps: list[AppSpec], opts: Options) -> Export: ...


def exporter(fmt: str) -> Exporter:
    """The module for FORMAT; ExportError naming the known ones if there is none."""
    module = FORMATS.get(fmt)
    if module is None:
        known = ", ".join(FORMATS)
        raise ExportError(f"unknown export format {fmt!r} (known: {known})")
    return importlib.import_module(f"clusterui.export.{module}")  # type: ignore[return-value]


def write(result: Export, directory: Path) -> list[Path]:
    """Write every file into directory (created if missing); returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in result.files.items():
        path = directory / name
        # Replace, never write through: a link planted at the name is not followed.
        tmp = directory / f".{name}.tmp"
        tmp.unlink(missing_ok=True)
        with open(tmp, "x", encoding="utf-8") as fh:
            fh.write(text)
        tmp.replace(path)
        written.append(path)
    return written


def source_note(app: AppSpec) -> str:
    where = app.source or "?"
    return f"{where}:{app.source_line}" if app.source_line else where
