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
