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
# What a host imports on its way to serving (its own module, and what uvicorn's config
# loads by name: protocol classes, lifespan, the loop), for a zygote to import once
# (`preload: true`, core.zygote); those not installed are skipped.
PRELOAD = (
    "clusterui.web.host",
    "uvicorn.protocols.http.httptools_impl",
    "uvicorn.protocols.http.h11_impl",
    "uvicorn.protocols.websockets.websockets_impl",
    "uvicorn.protocols.websockets.wsproto_impl",
    "uvicorn.lifespan.on",
    "uvloop",
    "a2wsgi",
)


def missing(kind: str) -> str | None:
    """The first package `kind` needs that is not importable here, or None."""
    for module in REQUIRED[kind]:
        if importlib.util.find_spec(module) is None:
            return module
    return None
