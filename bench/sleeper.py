"""An idle worker for the fleet benchmarks: a Python that sleeps (run with -S)."""

import time

while True:
    time.sleep(3600)
