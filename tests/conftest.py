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
