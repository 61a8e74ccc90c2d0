from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import leaks  # noqa: E402
from support import Env  # noqa: E402


@pytest.fixture(autouse=True)
def no_leftover_processes(request):
    """Mark everything the test starts (leaks.py); fail the test if any of it outlives the
    test's own clean-up. Autouse, so torn down after every fixture the test used."""
    test_id = f"{os.getpid()}:{request.node.nodeid}"
    os.environ[leaks.OWNER] = test_id
    try:
        yield
    finally:
        del os.environ[leaks.OWNER]
    leaks.fail_if_leaked(leaks.reap(leaks.owned_by(test_id)), request.node.nodeid)


@pytest.fixture
def cu():
    """A private CLUSTERUI_HOME with the real CLI; everything it started is gone after."""
    env = Env()
    try:
        yield env
    finally:
        env.cleanup()


@pytest.fixture(params=["c-path", "python-path"])
def make(tmp_path, request):
    """Dispatcher harnesses (tests/dispatch_harness.py), every one closed after the test.

    Each test runs twice: with the C hot path (dispatch/_handoff.c, built at install)
    and with the same logic in Python (CLUSTERUI_DISPATCH_PURE), so that both stay right.
    """
    from dispatch_harness import Harness

    from clusterui.dispatch.core import PURE_ENV

    made: list[Harness] = []
    path_env = {PURE_ENV: "1"} if request.param == "python-path" else {}

    def factory(mode: str = "round-robin", env: dict[str, str] | None = None) -> Harness:
        h = Harness(mode, tmp_path, {**path_env, **(env or {})})
        made.append(h)
        return h

    factory.path = request.param  # type: ignore[attr-defined]
    yield factory
    for h in made:
        h.close()
