"""The supervisor as a process: isolation, security, faults, restart policy, log capture."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import signal
import socket
import stat
import subprocess
import sys
import time

import psutil
import pytest
from support import ask_as_nobody, wait_for

pytestmark = pytest.mark.timeout(90)


def start_sleepers(cu, n: int = 2, extra: str = "") -> list[dict]:
    cu.write(
        "sleep.py",
        """
        import time
        print("up", flush=True)
        while True:
            time.sleep(1)
        """,
    )
    cu.write(
        "ecosystem.yaml",
        f"""
        apps:
          - name: s
            script: sleep.py
            instances: {n}
        {extra}
        """,
    )
    cu.run("up", "-d", check=True)
    return cu.ls()


def test_core_never_imports_textual_or_rich():
    code = (
        "import sys, clusterui.core.supervisor, clusterui.client, clusterui.cli.main, "
        "clusterui.core.apps; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('textual', 'rich')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_home_and_socket_are_private(cu):
    start_sleepers(cu, 1)
    assert stat.S_IMODE(cu.home.stat().st_mode) == 0o700
    sock = cu.home / "supervisor.sock"
    assert stat.S_ISSOCK(sock.stat().st_mode)
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600


@pytest.mark.skipif(
    os.geteuid() != 0, reason="connecting as another uid needs root (setuid); CI runs as root"
)
def test_another_uid_is_refused_even_when_the_file_modes_allow_it(cu):
    start_sleepers(cu, 1)
    nobody = pwd.getpwnam("nobody")
    # Open the file modes so only SO_PEERCRED stands between nobody and the socket.
    os.chmod(cu.root, 0o755)
    os.chmod(cu.home, 0o755)
    os.chmod(cu.home / "supervisor.sock", 0o777)
    said = ask_as_nobody(str(cu.home / "supervisor.sock"), b'{"id":1,"op":"state"}\n')
    assert os.getuid() != nobody.pw_uid
    assert said == "connected; refused"  # it got through the file modes, not past the uid check
    # The same request from our own uid is answered.
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(cu.home / "supervisor.sock"))
    s.sendall(b'{"id":1,"op":"ping"}\n')
    assert json.loads(s.makefile().readline())["ok"] is True
    s.close()


def test_garbage_on_the_socket_never_hurts_the_supervisor(cu):
    start_sleepers(cu, 1)
    path = str(cu.home / "supervisor.sock")
    payloads = [
        b"not json\n",
        b"\xff\xfe\x00garbage\n",
        b"[1,2,3]\n",
        b'{"op": 5}\n',
        b'{"id": 1, "op": "no-such-op"}\n',
        b'{"id": 2, "op": "scale", "args": {"wrong": 1}}\n',
        b'{"id": 3, "op": "stop", "args": []}\n',
        b"x" * (2 << 20),  # huge, no newline
        b'{"id": 4, "op": "st',  # half-written, then hang up
    ]
    for payload in payloads:
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        with contextlib.suppress(OSError):
            s.sendall(payload)
        s.close()
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    f = s.makefile("rwb")
    f.write(b'nonsense\n{"id": 9, "op": "no-such-op"}\n{"id": 10, "op": "ping"}\n')
    f.flush()
    answers = [json.loads(f.readline()) for _ in range(3)]
    s.close()
    assert answers[0] == {"id": None, "ok": False, "error": "malformed request", "code": 2}
    assert answers[1]["ok"] is False and "unknown operation" in answers[1]["error"]
    assert answers[2]["ok"] is True
    assert [w["status"] for w in cu.ls()] == ["online"]


def test_sigkill_of_the_supervisor_leaves_no_orphans(cu):
    cu.write(
        "forker.py",
        """
        import subprocess, sys, time
        # A grandchild too: PDEATHSIG reaches the worker, the group kill reaches the rest.
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        print("ready", flush=True)
        time.sleep(600)
        """,
    )
    cu.write(
        "ecosystem.yaml",
        """
        apps:
          - name: f
            script: forker.py
            instances: 3
        """,
    )
    cu.run("up", "-d", check=True)
    wait_for(lambda: cu.run("logs", "f").stdout.count("ready") == 3, 10, "workers ready")
    sup = cu.supervisor_pid()
    family = psutil.Process(sup).children(recursive=True)
    assert len(family) >= 6
    os.kill(sup, signal.SIGKILL)
    wait_for(
        lambda: not any(p.is_running() and p.status() != "zombie" for p in family),
        1.0,
        "every worker to die within a second",
    )


def test_stale_socket_and_pid_file_are_recovered(cu):
    start_sleepers(cu, 1)
    sup = cu.supervisor_pid()
    os.kill(sup, signal.SIGKILL)
    wait_for(lambda: not cu.supervisor_alive(), 5, "supervisor dead")
    assert (cu.home / "supervisor.sock").exists()  # left behind by the SIGKILL
    assert cu.run("ls").returncode == 3
    r = cu.run("up", "-d")
    assert r.returncode == 0, r.stderr
    assert cu.supervisor_pid() != sup and [w["status"] for w in cu.ls()] == ["online"]


def test_home_not_writable_and_socket_path_too_long_say_why(cu):
    cu.write("sleep.py", "import time\ntime.sleep(60)\n")
    cu.write("ecosystem.yaml", "apps:\n  - name: s\n    script: sleep.py\n")
    long_home = cu.root / ("h" * 120)
    env = dict(cu.env, CLUSTERUI_HOME=str(long_home))
    r = subprocess.run(
        [sys.executable, "-m", "clusterui", "up", "-d"],
        cwd=cu.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 1
    assert "longer than 107 bytes" in r.stderr and "CLUSTERUI_HOME" in r.stderr
    blocked = cu.root / "file-not-dir"
    blocked.write_text("")
    env = dict(cu.env, CLUSTERUI_HOME=str(blocked / "home"))
    r = subprocess.run(
        [sys.executable, "-m", "clusterui", "up", "-d"],
        cwd=cu.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 1 and "cannot use" in r.stderr and "Traceback" not in r.stderr


def test_crash_loop_ends_errored_after_max_restarts(cu):
    cu.write("crash.py", "import sys\nprint('dying', flush=True)\nsys.exit(4)\n")
    cu.write(
        "ecosystem.yaml",
        """
        apps:
          - name: c
            script: crash.py
            max_restarts: 3
            min_uptime: 5s
            restart_delay: 50
        """,
    )
    cu.run("up", "-d")
    row = wait_for(lambda: [w for w in cu.ls() if w["status"] == "errored"], 15, "errored")[0]
    assert row["restarts"] == 2  # started once, restarted twice, third unstable exit: errored
    assert row["exit_code"] == 4
    out = cu.run("logs", "c", "--lines", "50").stdout
    assert out.count("dying") == 3
    assert "3 unstable restarts" in out


def test_exponential_backoff_spaces_restarts(cu):
    cu.write("crash.py", "import sys\nsys.exit(1)\n")
    cu.write(
        "ecosystem.yaml",
        """
        apps:
          - name: c
            script: crash.py
            min_uptime: 0
            exp_backoff_restart_delay: 200
        """,
    )
    cu.run("up", "-d")
    wait_for(lambda: cu.ls()[0]["restarts"] >= 4, 15, "four restarts")
    out = cu.run("logs", "c", "--lines", "50").stdout
    assert "restarting in 200 ms" in out
    assert "restarting in 300 ms" in out
    assert "restarting in 450 ms" in out
    hist = json.loads(cu.run("describe", "c", "--json").stdout)["workers"][0]["restart_history"]
    gaps = [b["time"] - a["time"] for a, b in zip(hist, hist[1:], strict=False)]
    assert gaps[0] >= 0.29 and gaps[1] >= 0.44  # the delays were really waited


def test_stop_escalates_to_sigkill_after_kill_timeout(cu):
    cu.write(
        "stubborn.py",
        """
        import signal, time
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ignoring signals", flush=True)
        time.sleep(600)
        """,
    )
    cu.write(
        "ecosystem.yaml",
        """
        apps:
          - name: st
            script: stubborn.py
            kill_timeout: 700
        """,
    )
    cu.run("up", "-d", check=True)
    wait_for(lambda: "ignoring" in cu.run("logs", "st").stdout, 5, "handlers installed")
    t0 = time.monotonic()
    assert cu.run("stop", "st").returncode == 0
    took = time.monotonic() - t0
    assert 0.6 < took < 5
    row = cu.ls()[0]
    assert row["status"] == "stopped" and row["exit_signal"] == "SIGKILL"


def test_max_memory_restart(cu):
    cu.write(
        "hog.py",
        """
        import time
        data = bytearray(80 * 1024 * 1024)
        for i in range(0, len(data), 4096):
            data[i] = 1
        print("allocated", flush=True)
        time.sleep(600)
        """,
    )
    cu.write(
        "ecosystem.yaml",
        """
        apps:
          - name: hog
            script: hog.py
            max_memory_restart: 40M
        """,
    )
    cu.run("up", "-d")
    row = wait_for(lambda: [w for w in cu.ls() if w["restarts"] >= 1], 15, "memory restart")[0]
    assert row["app"] == "hog"
    info = json.loads(cu.run("describe", "hog", "--json").stdout)["workers"][0]
    assert info["restart_history"][0]["reason"] == "memory"
    timeline = json.loads(cu.run("events", "hog", "--json").stdout)
    assert (timeline[0]["kind"], timeline[0]["instance"], timeline[0]["reason"]) == (
        "restart",
        0,
        f"memory over max_memory_restart ({40 * 1024 * 1024} bytes)",
    )


def test_a_200000_line_flood_is_fully_in_the_log_files(cu):
    cu.write(
        "flood.py",
        """
        import sys, time
        out = sys.stdout
        for i in range(200000):
            out.write(f"line {i} " + "x" * 40 + "\\n")
        out.flush()
        sys.stderr.write("done\\n")
        time.sleep(600)
        """,
    )
    cu.write(
        "ecosystem.yaml",
        """
        apps:
          - name: flood
            script: flood.py
            log_max_size: 0
          - name: calm
            script: flood.py
            args: []
        """,
    )
    cu.run("up", "-d", "--only", "flood", check=True)
    log = cu.home / "logs" / "flood-0-out.log"
    wait_for(lambda: "done" in cu.run("logs", "flood").stdout, 30, "flood done")
    wait_for(lambda: log.read_bytes().count(b"\n") == 200000, 10, "all lines on disk")
    lines = log.read_text().splitlines()
    assert lines[0].startswith("line 0 ") and lines[-1].startswith("line 199999 ")
    assert [int(x.split()[1]) for x in lines] == list(range(200000))


def test_lines_written_just_before_a_crash_are_kept(cu):
    cu.write(
        "lastwords.py",
        """
        import os, sys
        sys.stdout.write("".join(f"last {i}\\n" for i in range(5000)))
        sys.stdout.write("no newline at the end")
        sys.stdout.flush()
        os.kill(os.getpid(), 9)
        """,
    )
    cu.write(
        "ecosystem.yaml",
        """
        apps:
          - name: lw
            script: lastwords.py
            autorestart: false
        """,
    )
    cu.run("up", "-d")
    wait_for(lambda: cu.ls()[0]["status"] == "stopped", 10, "stopped")
    text = wait_for(
        lambda: (
            (t := (cu.home / "logs" / "lw-0-out.log").read_text()).endswith(
                "no newline at the end\n"
            )
            and t
        ),
        5,
        "the partial last line",
    )
    assert text.count("last ") == 5000
