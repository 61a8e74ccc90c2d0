"""pytest plugin for mutation runs: credit a test with the functions that other processes
(the supervisor, the dispatcher) called while it ran; see sitecustomize.py here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_DIR = os.environ.get("CLUSTERUI_MUTMUT_HITS")
_read: dict[str, int] = {}  # bytes of each hits file already credited


def _new_generation() -> None:
    assert _DIR
    tmp = Path(_DIR, "generation.tmp")
    tmp.write_text("")
    os.replace(tmp, Path(_DIR, "generation"))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if _DIR and os.environ.get("MUTANT_UNDER_TEST") == "stats":
        _new_generation()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    if not _DIR or os.environ.get("MUTANT_UNDER_TEST") != "stats":
        return
    from mutmut.stats import record_trampoline_hit

    for path in Path(_DIR).glob("hits.*"):
        with open(path, "rb") as f:
            f.seek(_read.get(path.name, 0))
            data = f.read()
        end = data.rfind(b"\n") + 1  # a line still being written waits for the next test
        _read[path.name] = _read.get(path.name, 0) + end
        for name in data[:end].decode().split():
            record_trampoline_hit(name)


# The tests' timeouts are set for a normal run. Under `nice` on a busy shared machine, with
# every call recorded (the stats run), a test can take several times as long, and one
# pytest-timeout failure in the stats run stops mutmut ("failed to collect stats"): that
# was the "hang" of the reload and loghub targets. Mutant runs have mutmut's own timeout.
FACTOR = float(os.environ.get("CLUSTERUI_MUTATION_TIMEOUT_FACTOR", "5"))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        default = float(config.getini("timeout") or 0)
    except (ValueError, KeyError):
        return  # pytest-timeout is not installed
    for item in items:
        mark = item.get_closest_marker("timeout")
        seconds = default
        if mark is not None:
            seconds = float(mark.args[0] if mark.args else mark.kwargs.get("timeout", default))
        if seconds > 0:
            item.add_marker(pytest.mark.timeout(seconds * FACTOR), append=False)
