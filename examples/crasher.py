"""An app that crashes now and then, to show the restart policy and its backoff."""

import os
import random
import sys
import time

lifetime = random.uniform(2.0, 6.0)
print(f"crasher (pid {os.getpid()}): up, will crash in {lifetime:.1f} s", flush=True)
time.sleep(lifetime)
print("crasher: something went wrong, exiting with code 1", file=sys.stderr, flush=True)
sys.exit(1)
