"""A stopped (SIGSTOP) supervisor: every CLI command gives up with one sentence and exit 3."""

from __future__ import annotations

import os
import signal
import time

from support import Env, wait_for, web_app


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


def test_a_long_operation_is_waited_for_past_the_timeout(cu: Env) -> None:
    """--timeout is about a supervisor that stopped answering, not a slow operation: a stop
    that takes kill_timeout (3 s) succeeds with --timeout 1, since pings are answered."""
    cu.write(
        "stubborn.py",
        "import signal, time\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "time.sleep(1000)\n",
    )
    cu.write(
        "ecosystem.yaml",
        """
        apps:
          - name: stubborn
            script: stubborn.py
            kill_timeout: 3s
        """,
    )
    assert cu.run("up", "-d").returncode == 0
    for verb in ("restart", "stop"):  # each waits out the running worker's kill_timeout
        t0 = time.monotonic()
        r = cu.run(verb, "stubborn", "--timeout", "1", timeout=30)
        took = time.monotonic() - t0
        assert r.returncode == 0, (verb, r.stderr)
        assert took > 2.0, (verb, took)  # it did wait out kill_timeout, past --timeout
