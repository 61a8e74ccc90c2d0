"""ASGI and WSGI apps on clusterui's handoff protocol, with uvicorn's HTTP/1.1.

``asgi: main:app`` / ``wsgi: mysite.wsgi:application`` in an ecosystem file (or
``clusterui start --asgi main:app``) runs each worker as
``python -m clusterui.web asgi|wsgi MODULE:ATTR [options]``. The connections the
dispatcher hands over are served by uvicorn's own protocol classes (httptools or h11,
websockets or wsproto) on an event loop driven by ``clusterui.worker``; WSGI apps run
in a bounded thread pool (a2wsgi). Needs the ``web`` extra: ``pip install 'clusterui[web]'``.
"""

from __future__ import annotations

import importlib.util

EXTRA_HINT = "pip install 'clusterui[web]'"
# What the host imports; the supervisor checks these exist before starting an app.
REQUIRED = {"asgi": ("uvicorn",), "wsgi": ("uvicorn", "a2wsgi")}
KINDS = tuple(REQUIRED)


def missing(kind: str) -> str | None:
    """The first package `kind` needs that is not importable here, or None."""
    for module in REQUIRED[kind]:
        if importlib.util.find_spec(module) is None:
            return module
    return None
