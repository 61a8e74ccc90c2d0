from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import Env  # noqa: E402


@pytest.fixture
def cu():
    """A private CLUSTERUI_HOME with the real CLI; everything it started is gone after."""
    env = Env()
    try:
        yield env
    finally:
        env.cleanup()


@pytest.fixture
def make(tmp_path):
    """Dispatcher harnesses (tests/dispatch_harness.py), every one closed after the test."""
    from dispatch_harness import Harness

    made: list[Harness] = []

    def factory(mode: str = "round-robin") -> Harness:
        h = Harness(mode, tmp_path)
        made.append(h)
        return h

    yield factory
    for h in made:
        h.close()
