"""Imported at start-up by every Python process of a mutation run (scripts/mutation.sh puts
this directory on PYTHONPATH).

mutmut 3 learns which tests cover which function by recording calls in the test process.
Most of clusterui runs in other processes (the supervisor, the dispatcher), whose calls
that recording never sees, so mutmut would call those mutants untested. While mutmut
collects its statistics, this records each process's calls to a file of its own in
$CLUSTERUI_MUTMUT_HITS; mutmut_hits.py (a pytest plugin) adds them to the test that ran.
"""

import os

_dir = os.environ.get("CLUSTERUI_MUTMUT_HITS")
if _dir and os.environ.get("MUTANT_UNDER_TEST") == "stats":
    import mutmut.mutation.trampoline as _trampoline

    _gen_path = os.path.join(_dir, "generation")
    _out_path = os.path.join(_dir, f"hits.{os.getpid()}")
    _seen: set[str] = set()
    _gen = [0]

    def _record(name: str, caller: str | None = None) -> None:
        try:
            gen = os.stat(_gen_path).st_ino  # replaced at each test's start
        except OSError:
            gen = 0
        if gen != _gen[0]:
            _gen[0] = gen
            _seen.clear()  # a new test: report every function again
        if name in _seen:
            return
        _seen.add(name)
        with open(_out_path, "a") as f:
            f.write(name + "\n")

    _trampoline.record_trampoline_hit = _record
