"""Run chosen mutants of a scripts/mutation.sh target against chosen tests, without mutmut.

mutmut keeps a mutant's first result, and re-collects its statistics (a full run of the
target's tests) before anything else. After adding a test, this checks the mutants it was
written for in minutes: it copies the current tests/ (and bench/) into the target's
work directory, then runs pytest once per mutant with MUTANT_UNDER_TEST set, which the
mutated copy's trampolines read, in the test process and in every process it starts.
Run from the target's work directory, in mutation.sh's environment:

    cd /tmp/clusterui-mutation/reload
    PATH=$ROOT/.venv/bin:$PATH PYTHONPATH=$PWD/mutants/src:$ROOT/scripts/mutmut \\
      nice -n 10 python $ROOT/scripts/mutmut/rerun.py \\
      'clusterui.core.apps.xǁAppǁ_keep_old__mutmut_8' \\
      -- tests/test_cluster.py -k dies_during

Mutant names may be globs (matched against `mutmut results --all true`). Prints
`mutant: killed (test)` or `mutant: survived` per mutant; mutmut's own results are left
as they were.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path


def main() -> None:
    args = sys.argv[1:]
    split = args.index("--") if "--" in args else len(args)
    patterns, pytest_args = args[:split], args[split + 1 :]
    work = Path.cwd()
    root = Path(__file__).resolve().parents[2]
    for folder in ("tests", "bench"):
        shutil.copytree(root / folder, work / "mutants" / folder, dirs_exist_ok=True)
    listed = subprocess.run(
        ["mutmut", "results", "--all", "true"], capture_output=True, text=True, check=True
    ).stdout
    names = [line.split(":")[0].strip() for line in listed.splitlines() if ":" in line]
    chosen = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    if not chosen:
        sys.exit(f"no mutant matches {patterns}")
    # The unmutated code first: a test failing without a mutant would "kill" them all.
    for name in ["", *chosen]:
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *pytest_args],
            cwd=work / "mutants",
            env=dict(os.environ, MUTANT_UNDER_TEST=name),
            capture_output=True,
            text=True,
        )
        if not name:
            if run.returncode != 0:
                sys.exit(f"the tests fail without a mutant:\n{run.stdout[-3000:]}")
            continue
        failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", run.stdout, re.M)
        if run.returncode == 0:
            verdict = "survived"
        elif failed:
            verdict = f"killed ({failed[0]})"
        else:
            verdict = f"pytest exited {run.returncode} without a failed test: check by hand"
        print(f"{name}: {verdict}", flush=True)


if __name__ == "__main__":
    main()
