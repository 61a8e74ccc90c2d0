"""A stopped (SIGSTOP) supervisor: every CLI command gives up with one sentence and exit 3."""

from __future__ import annotations

import os
import signal
import time

from helpers import Env, wait_for, web_app


def test_commands_time_out_on_a_stopped_supervisor(cu: Env) -> None:
    web_app(cu, instances=1)
    pid = cu.supervisor_pid()
    assert pid
    os.kill(pid, signal.SIGSTOP)
    try:
        for args in (("ls",), ("describe", "web"), ("scale", "web", "2"), ("logs", "web")):
            t0 = time.monotonic()
            r = cu.run(*args, "--timeout", "1.5", timeout=20)
            took = time.monotonic() - t0
            assert r.returncode == 3, (args, r.stdout, r.stderr)
            err = r.stderr.strip()
            assert len(err.splitlines()) == 1, err
            assert "is stopped" in err and f"kill -CONT {pid}" in err, err
            assert took < 15, took
    finally:
        os.kill(pid, signal.SIGCONT)
    # Nothing was harmed: it answers again, and the queued scale ran once resumed.
    wait_for(lambda: [w["status"] for w in cu.ls()] == ["online", "online"], 20, "the scale")


def test_timeout_option_is_checked(cu: Env) -> None:
    r = cu.run("ls", "--timeout", "soon")
    assert r.returncode == 2
    assert "not a number of seconds" in r.stderr
