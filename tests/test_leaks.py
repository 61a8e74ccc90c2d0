"""The leak checks themselves: a process left behind fails the test and is named."""

from __future__ import annotations

import os
import subprocess
import sys

import leaks
import psutil
import pytest
from support import Env, wait_for


def test_a_process_left_behind_by_the_test_is_named_and_killed(request):
    test_id = os.environ[leaks.OWNER]
    assert test_id.endswith(request.node.nodeid)  # the autouse fixture marked this test
    stray = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)  # stray-marker"],
        start_new_session=True,  # as a daemon would: not in our process group
    )
    try:
        names = leaks.reap(leaks.owned_by(test_id), grace=0.2)
        assert len(names) == 1 and f"pid {stray.pid} " in names[0] and "stray-marker" in names[0]
        stray.wait(5)  # reap killed it
        with pytest.raises(AssertionError, match=f"left 1 process.*pid {stray.pid} "):
            leaks.fail_if_leaked(names, request.node.nodeid)
    finally:
        stray.kill()
        stray.wait()


def test_a_process_that_is_exiting_gets_its_grace_and_is_no_leak():
    test_id = os.environ[leaks.OWNER]
    slow = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])
    try:
        assert leaks.reap(leaks.owned_by(test_id), grace=10) == []
    finally:
        slow.wait()


def test_env_cleanup_fails_naming_a_process_that_outlived_down():
    env = Env()
    # Started "by the supervisor's home" but outside any supervisor: `down` cannot stop it.
    stray = subprocess.Popen(
        ["sleep", "60"], env=dict(os.environ, CLUSTERUI_HOME=str(env.home)), start_new_session=True
    )
    try:
        wait_for(lambda: psutil.Process(stray.pid).environ(), 5, "the stray to start")
        with pytest.raises(AssertionError, match=rf"pid {stray.pid} \(sleep 60\)"):
            env.cleanup()
        assert stray.wait(5) == -9
    finally:
        stray.kill()
        stray.wait()
