"""`clusterui export FORMAT [FILE] [DIR]`: write (or print) another engine's objects."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from clusterui.core import config
from clusterui.export import FORMATS, ExportError, Options, exporter, write


def add_parser(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser(
        "export",
        help="systemd units or Kubernetes manifests for FILE's apps",
        description="Write FILE's apps as systemd units or Kubernetes manifests into DIR "
        "(or print them when DIR is not given).",
    )
    sp.add_argument("format", choices=list(FORMATS), metavar="FORMAT",
                    help=f"one of {', '.join(FORMATS)}")  # fmt: skip
    sp.add_argument("paths", nargs="*", metavar="FILE|DIR", help="[FILE] [DIR]")
    sp.add_argument("--only", help="comma-separated app names to export")
    sp.add_argument("--env", help="use env_NAME from each app")
    sp.add_argument("--name", default="clusterui",
                    help="project name: the systemd target / Kubernetes part-of label")  # fmt: skip
    sp.add_argument("--image", help="kubernetes: the container image holding the apps")
    sp.add_argument("--workdir",
                    help="kubernetes: where FILE's directory is inside the image")  # fmt: skip
    sp.add_argument("--namespace", help="kubernetes: the namespace of every object")
    sp.add_argument("--clusterui", help="systemd: the clusterui executable the units run")


def _split_paths(paths: list[str]) -> tuple[str | None, str | None]:
    if len(paths) > 2:
        raise ExportError("export takes at most FILE and DIR")
    if len(paths) == 2:
        return paths[0], paths[1]
    if len(paths) == 1 and Path(paths[0]).is_dir():
        return None, paths[0]
    return (paths[0] if paths else None), None


def _clusterui_path(given: str | None) -> str:
    if given:
        return str(Path(given).absolute())
    argv0 = Path(sys.argv[0])
    if argv0.name == "clusterui" and argv0.exists():
        return str(argv0.absolute())
    return shutil.which("clusterui") or str(Path(sys.executable).parent / "clusterui")


def cmd_export(opts: argparse.Namespace) -> int:
    try:
        file, directory = _split_paths(opts.paths)
        path = Path(file) if file else config.find_default_file(Path.cwd())
        only = [n.strip() for n in opts.only.split(",") if n.strip()] if opts.only else None
        loaded = config.load_ecosystem(path, env_name=opts.env, only=only)
        for warning in loaded.warnings:
            print(str(warning), file=sys.stderr)
        options = Options(
            source=Path(os.path.abspath(loaded.path)),
            env_name=opts.env,
            project=opts.name,
            clusterui=_clusterui_path(opts.clusterui),
            image=opts.image,
            workdir=opts.workdir,
            namespace=opts.namespace,
        )
        result = exporter(opts.format).export(loaded.apps, options)
    except ExportError as exc:
        print(f"clusterui: {exc}", file=sys.stderr)
        return 2
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if directory is None:
        for name, text in result.files.items():
            sys.stdout.write(f"# ==> {name} <==\n{text}")
        return 0
    try:
        written = write(result, Path(directory))
    except OSError as exc:
        print(f"clusterui: cannot write into {directory}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    for p in written:
        print(p)
    return 0
