"""The CLI verbs PM2 users run on ecosystem files and on the saved set:

`start|reload|restart|stop|delete FILE` (the file's apps), `save`, `resurrect`,
`startup [--user]`, `unstartup`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from clusterui.cli import startup
from clusterui.client import Client, ClientError
from clusterui.core import config, environ, formats
from clusterui.core.home import Home


def caller_env() -> dict[str, str]:
    """This command's environment, sent with the apps it starts (core/environ.py)."""
    env, refused = environ.capture(os.environ)
    if refused:
        print(environ.owned_warning(refused, "your environment"), file=sys.stderr)
    return env


def only_names(opts: argparse.Namespace) -> list[str] | None:
    only = getattr(opts, "only", None)
    return [n.strip() for n in only.split(",") if n.strip()] if only else None


def report(result: dict[str, Any], written: str | None = None) -> None:
    """Warnings (once, with the file named as the user wrote it), then errors and advice."""
    absolute = str(Path(written).absolute()) if written else None
    for line in result.get("warnings", []):
        if absolute and written and line.startswith(absolute):
            line = written + line[len(absolute) :]
        print(line, file=sys.stderr)
    for line in result.get("errors", []):
        print(f"clusterui: {line}", file=sys.stderr)
    for line in result.get("needs_restart", []):
        print(f"clusterui: {line}", file=sys.stderr)
    if result.get("kept"):
        print(f"already loaded, left as is: {', '.join(result['kept'])}", file=sys.stderr)


def file_target(opts: argparse.Namespace) -> str | None:
    """The ecosystem file a stop/restart/reload/delete names (PM2 style), if it does."""
    targets = opts.targets
    if len(targets) == 1 and formats.is_ecosystem_file(targets[0]):
        return targets[0]
    return None


async def file_verb(client: Client, verb: str, file: str, opts: argparse.Namespace) -> int:
    """`VERB FILE`: the verb on the apps the file describes."""
    only = only_names(opts)
    env_name = getattr(opts, "env", None)
    update = bool(getattr(opts, "update_env", False))
    if verb in ("reload", "restart"):
        result = await client.load(
            file,
            env=env_name,
            only=only,
            caller_env=caller_env(),
            apply=True,
            restart=verb == "restart",
            update_env=update,
            prune=bool(getattr(opts, "prune", False)),
        )
        report(result, file)
        print(result["message"])
        return 1 if result["errors"] or result.get("needs_restart") else 0
    # stop / delete: the file's apps that are loaded.
    loaded_file = config.load_ecosystem(
        file, env_name=env_name, only=only, caller_env=dict(os.environ)
    )
    names = [s.name for s in loaded_file.apps]
    state = await client.state(history=False)
    loaded = {a["name"] for a in state["apps"]}
    present = [n for n in names if n in loaded]
    if not present:
        raise ClientError(f"none of {file}'s apps is loaded ({', '.join(names)})")
    result = await getattr(client, verb)(present)
    print(result["message"])
    return 0


async def start_file(client: Client, file: str, opts: argparse.Namespace) -> int:
    """`start FILE`: start the file's apps that are not loaded, and any stopped workers of
    those that are (loaded apps keep their spec: `reload FILE` applies a changed file)."""
    result = await client.load(
        file, env=getattr(opts, "env", None), only=only_names(opts), caller_env=caller_env()
    )
    report(result, file)
    if result.get("kept"):
        await client.start(result["kept"])
    print(f"started {', '.join(result['started']) or 'nothing new'}")
    return 1 if result["errors"] else 0


async def save(client: Client) -> int:
    result = await client.call("save")
    print(result["message"])
    return 0


async def resurrect(client: Client) -> int:
    result = await client.call("resurrect", caller_env=caller_env())
    report(result)
    print(result["message"])
    return 1 if result["errors"] else 0


def startup_verb(opts: argparse.Namespace, home: Home) -> int:
    root = Path(opts.root or "/").absolute()
    user_unit = opts.user or os.geteuid() != 0
    try:
        if opts.verb == "startup":
            if not opts.user and os.geteuid() != 0:
                print("not root: writing a user unit (as root: a system unit)", file=sys.stderr)
            lines = startup.install(home, user_unit, root)
        else:
            lines = startup.uninstall(user_unit, root)
    except (startup.StartupError, OSError) as exc:
        raise ClientError(str(exc)) from None
    print("\n".join(lines))
    return 0
