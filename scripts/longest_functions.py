"""The longest functions in src/, by lines from `def` to the last line of the body.

    python scripts/longest_functions.py [N] [--max LINES]

Prints the N longest (default 5); with --max, exits 1 if one is longer than LINES and is
not marked as a data table (a `# data table` comment on its `def` line).
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def functions(root: Path) -> list[tuple[int, str, bool]]:
    found = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                length = node.end_lineno - start + 1
                table = "# data table" in lines[node.lineno - 1]
                where = f"{path.relative_to(root.parent)}:{node.lineno} {node.name}"
                found.append((length, where, table))
    return sorted(found, reverse=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("n", nargs="?", type=int, default=5)
    parser.add_argument("--max", type=int)
    opts = parser.parse_args()
    found = functions(SRC)
    for length, where, table in found[: opts.n]:
        print(f"{length:4d}  {where}{'  (data table)' if table else ''}")
    if opts.max is not None:
        over = [f for f in found if f[0] > opts.max and not f[2]]
        if over:
            print(f"{len(over)} function(s) longer than {opts.max} lines", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
