"""Name the test that kills each mutant of a finished scripts/mutation.sh target.

mutmut records that a mutant was killed, not by which test. This reruns the target's test
files against each killed mutant (pytest -x, so the first failing test) and prints
`mutant | diff line(s) | test`. Run from the target's work directory, e.g.

    cd /tmp/clusterui-mutation/policy && python /path/to/scripts/mutmut/killers.py [N]

(N: at most N mutants, default all). Same environment as mutation.sh.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path


def main() -> None:
    limit = int(sys.argv[1]) if len(sys.argv) > 1 else None
    work = Path.cwd()
    conf = tomllib.loads((work / "pyproject.toml").read_text())["tool"]["mutmut"]
    tests = conf["pytest_add_cli_args_test_selection"]
    killed = [
        line.split(":")[0].strip()
        for line in (work / "results.txt").read_text().splitlines()
        if line.endswith(": killed")
    ][:limit]
    env = dict(os.environ, PYTHONPATH=f"{work / 'mutants' / 'src'}:{Path(__file__).parent}")
    for name in killed:
        diff = subprocess.run(["mutmut", "show", name], capture_output=True, text=True).stdout
        change = " / ".join(
            line[:90] for line in diff.splitlines() if re.match(r"^[-+](?![-+])", line)
        )
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
            cwd=work / "mutants",
            env=dict(env, MUTANT_UNDER_TEST=name),
            capture_output=True,
            text=True,
        )
        failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", run.stdout, re.M)
        print(f"{name} | {change} | {failed[0] if failed else 'NOT KILLED on rerun'}", flush=True)


if __name__ == "__main__":
    main()
