"""The garbage collector's pace in the dashboard's own process.

Textual's line strips keep caches of their crops and divisions, and a strip divided into
a single piece caches itself, so a strip that leaves the screen is freed by the cycle
collector, not by reference counting. Under a log flood Python's own full collections
then come every second or two and take 40-90 ms each (some 100,000 tracked objects on a
200x60 screen), and a key pressed meanwhile waits for them (bench/README.md,
dashboard.py). So, once the first screen is loaded:

- what exists then (modules, widgets, styles, the first lines) is frozen: it lives as
  long as the app and is never scanned again;
- young collections stay automatic: they free most strips, which die within a frame;
- full collections run on a timer, every FULL_EVERY seconds, instead of whenever the
  old generation has grown by a quarter. What dies after reaching the old generation
  waits at most that long to be freed.
"""

from __future__ import annotations

import gc

FULL_EVERY = 60.0  # seconds between full collections
_NEVER = 2**31 - 1  # the old generation's threshold: never reached


def settle() -> None:
    """Freeze what exists now and stop automatic full collections."""
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, _NEVER)


def collect_all() -> None:
    """The timed full collection (never of what settle() froze)."""
    gc.collect()
