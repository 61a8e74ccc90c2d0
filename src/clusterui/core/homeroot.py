"""Where CLUSTERUI_HOME is, with the standard library's lightest modules only.

core.home.Home builds on this; the quick CLI verbs (cli/quick.py) use it directly,
so finding the socket costs them no dataclasses or pathlib import.
"""

from __future__ import annotations

import os

SOCKET_NAME = "supervisor.sock"


def home_root(override: str | os.PathLike[str] | None = None) -> str:
    """The home's absolute path: `override`, else $CLUSTERUI_HOME, else ~/.clusterui.

    Absolute as pathlib's Path.absolute() makes it: the working directory joined in,
    `..` kept (it may cross a symlink), repeated and trailing slashes dropped.
    """
    raw = os.fspath(override or os.environ.get("CLUSTERUI_HOME") or "~/.clusterui")
    path = os.path.expanduser(raw)
    if not os.path.isabs(path):
        path = os.path.join(os.getcwd(), path)
    parts = [p for p in path.split("/") if p and p != "."]
    return "/" + "/".join(parts)
