"""``python -m clusterui.web asgi|wsgi MODULE:ATTR [options]``: what a host worker runs.

The options are uvicorn's names for the same settings; an app's ``args`` in the
ecosystem file are passed here (e.g. ``args: --root-path /api --no-access-log``).
"""

from __future__ import annotations

import argparse
import os
import sys

from clusterui.web import EXTRA_HINT, KINDS, missing


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m clusterui.web",
        description="Serve an ASGI or WSGI app on clusterui's handoff protocol (or alone).",
    )
    p.add_argument("kind", choices=KINDS)
    p.add_argument("app", metavar="MODULE:ATTR")
    p.add_argument("--app-dir", default=".", help="prepended to sys.path (default: the cwd)")
    p.add_argument("--factory", action="store_true", help="MODULE:ATTR is a factory to call")
    p.add_argument("--host", default="127.0.0.1", help="standalone only (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="standalone only ($PORT, else 8000)")
    p.add_argument("--http", default="auto", choices=("auto", "httptools", "h11"))
    p.add_argument(
        "--ws",
        default="auto",
        choices=("auto", "none", "websockets", "websockets-sansio", "wsproto"),
    )
    p.add_argument("--lifespan", default="auto", choices=("auto", "on", "off"))
    p.add_argument("--root-path", default="")
    p.add_argument(
        "--proxy-headers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="trust X-Forwarded-Proto/For from --forwarded-allow-ips (uvicorn's default)",
    )
    p.add_argument("--forwarded-allow-ips", default=None)
    p.add_argument("--timeout-keep-alive", type=int, default=5)
    p.add_argument("--limit-concurrency", type=int, default=None)
    p.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--log-level", default="info")
    p.add_argument("--threads", type=int, default=10, help="WSGI thread pool size")
    p.add_argument(
        "--idle-grace",
        type=float,
        default=1.0,
        help="seconds an idle keep-alive connection is kept open once a drain begins",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    opts = parser().parse_args(argv)
    absent = missing(opts.kind)
    if absent is not None:
        print(
            f"clusterui: {opts.kind} apps need the 'web' extra ({absent} is missing): {EXTRA_HINT}",
            file=sys.stderr,
        )
        return 1
    if opts.threads < 1:
        print("clusterui: --threads must be at least 1", file=sys.stderr)
        return 2
    sys.path.insert(0, os.path.abspath(opts.app_dir))
    from clusterui.web.host import run

    return run(opts)
