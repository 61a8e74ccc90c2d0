"""A background worker that logs steadily: one line a second, an error line now and then."""

import os
import signal
import sys
import time

instance = os.environ.get("CLUSTERUI_INSTANCE", "0")
interval = float(os.environ.get("TICK_SECONDS", "1"))
running = True


def stop(signum, frame):
    global running
    running = False


signal.signal(signal.SIGINT, stop)
signal.signal(signal.SIGTERM, stop)

n = 0
while running:
    n += 1
    print(f"worker {instance}: processed job {n}", flush=True)
    if n % 10 == 0:
        slow = f"worker {instance}: job {n} was slow (simulated warning)"
        print(slow, file=sys.stderr, flush=True)
    time.sleep(interval)
print(f"worker {instance}: finishing cleanly after {n} jobs", flush=True)
