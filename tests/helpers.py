"""The old name of tests/support.py, kept for tests written against it."""

from support import *  # noqa: F403
from support import __all__  # noqa: F401
