"""The `clusterui` command: the quick verbs first (cli/quick.py), else the full CLI.

Nothing heavy is imported here, so `clusterui ls` costs no more than its own module.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from clusterui.cli import quick

    code = quick.main(argv)
    if code is not None:
        return code
    from clusterui.cli.main import main as full

    return full(argv)
