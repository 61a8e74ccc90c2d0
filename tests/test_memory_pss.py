"""max_memory_restart compares PSS over the worker's process tree, not the sum of RSS.

A worker touches 40 MiB and then forks 6 children that keep (share, copy-on-write) it:
the RSS sum is about 280 MiB, the PSS about 40 MiB. With a 150M limit it must not be
restarted; the same worker alone over the limit (tests/test_supervisor.py) still is.
"""

from __future__ import annotations

import time

from support import Env, wait_for

from clusterui.core.stats import Sampler

FORKER = """
import os, time
data = bytearray(40 * 1024 * 1024)
for i in range(0, len(data), 4096):
    data[i] = 1
kids = []
for _ in range(6):
    pid = os.fork()
    if pid == 0:
        time.sleep(600)
        os._exit(0)
    kids.append(pid)
print("forked", flush=True)
time.sleep(600)
"""


def test_a_forked_tree_sharing_its_pages_is_not_restarted(cu: Env) -> None:
    cu.write("forker.py", FORKER)
    cu.write(
        "ecosystem.yaml",
        "apps:\n  - name: forker\n    script: forker.py\n    max_memory_restart: 150M\n",
    )
    cu.run("up", "-d", check=True)
    wait_for(lambda: "forked" in cu.run("logs", "forker").stdout, 15, "the forks")
    # RSS over the tree is well over the limit (the supervisor samples it each second)...
    row = wait_for(
        lambda: (r := cu.ls()[0]) and r["memory"] > 200 * 1024**2 and r, 10, "the RSS sum"
    )
    assert Sampler.pss_tree(row["pid"]) < 100 * 1024**2
    time.sleep(4)  # four more ticks
    row = cu.ls()[0]
    assert row["restarts"] == 0 and row["status"] == "online", row
