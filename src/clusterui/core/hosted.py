"""`asgi:` / `wsgi:` apps: checking MODULE:ATTR before anything starts.

The worker itself is `python -m clusterui.web` (see clusterui.web); this module only
validates what the ecosystem file or `clusterui start --asgi/--wsgi` says, so that a
typo is a FILE:LINE error rather than a crash loop.
"""

from __future__ import annotations

import importlib.util
import os
import re

from clusterui.web import EXTRA_HINT, KINDS, missing

__all__ = ["KINDS", "check_target", "derive_name", "extra_error", "module_warning"]

_TARGET = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def check_target(value: str) -> str:
    """The MODULE:ATTR as written, or ValueError with a one-line reason."""
    text = value.strip()
    if not _TARGET.fullmatch(text):
        raise ValueError(f"must be MODULE:ATTR (e.g. main:app), not {value!r}")
    return text


def derive_name(target: str) -> str:
    """The app name when none is given: the module's first component ("mysite")."""
    return target.split(":", 1)[0].split(".", 1)[0]


def module_warning(target: str, cwd: str) -> str | None:
    """A warning when the module is neither in cwd nor importable here."""
    top = target.split(":", 1)[0].split(".", 1)[0]
    if os.path.isfile(os.path.join(cwd, top + ".py")) or os.path.isdir(os.path.join(cwd, top)):
        return None
    try:
        if importlib.util.find_spec(top) is not None:
            return None
    except (ImportError, ValueError):
        pass
    return f"module {top!r} is neither in {cwd} nor importable"


def extra_error(kind: str) -> str | None:
    """Why this Python cannot host `kind` apps (the `web` extra is missing), or None."""
    absent = missing(kind)
    if absent is None:
        return None
    return f"{kind} apps need the 'web' extra ({absent} is missing): {EXTRA_HINT}"
