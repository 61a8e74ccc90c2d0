"""The full-screen log's `r` (last restart) finds the supervisor's real lines: a crash,
a manual restart and a rolling reload each write one that vocab/logs.is_restart takes,
and `logs --lines` (what the screen loads first) returns it with the worker's output."""

from __future__ import annotations

import json
import sys

import pytest
from support import Env, wait_for

from clusterui.vocab.logs import is_restart

pytestmark = pytest.mark.timeout(120)

# Exits 3 on its first run (a file marks it), then stays up.
SCRIPT = """
import os, sys, time
here = os.path.dirname(os.path.abspath(__file__))
mark = os.path.join(here, "crashed-once")
print("run", os.getpid(), flush=True)
if not os.path.exists(mark):
    open(mark, "w").close()
    sys.exit(3)
while True:
    time.sleep(1)
"""


def restart_lines(cu: Env) -> list[dict]:
    out = cu.run("logs", "flaky:0", "--lines", "500", "--json", check=True).stdout
    lines = [json.loads(x) for x in out.splitlines()]
    return [x for x in lines if is_restart(x["stream"], x["text"])]


def test_a_crash_a_restart_and_a_reload_each_leave_a_restart_line(cu: Env) -> None:
    cu.write("flaky.py", SCRIPT)
    cu.write(
        "ecosystem.yaml",
        f"""
        apps:
          - name: flaky
            script: flaky.py
            interpreter: {sys.executable}
            restart_delay: 100
        """,
    )
    assert cu.run("up", "-d").returncode in (0, 1)  # its first run fails, on purpose
    crash = wait_for(lambda: restart_lines(cu), 30, "the crash's line")
    assert crash[-1]["text"].startswith("exited with code 3")
    wait_for(lambda: cu.ls()[0]["status"] == "online", 30, "the worker back online")

    assert cu.run("restart", "flaky").returncode == 0
    after = wait_for(
        lambda: len(found := restart_lines(cu)) > len(crash) and found, 30, "the restart's line"
    )
    assert after[-1]["text"].startswith("stopped (")

    assert cu.run("reload", "flaky").returncode == 0
    wait_for(lambda: len(restart_lines(cu)) > len(after), 30, "the reload's line")
    newest = restart_lines(cu)[-1]["text"]
    assert newest.startswith(("old worker ", "stopped (")), newest
