"""Every CLI verb against a real supervisor, real processes and real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import psutil
import pytest
from support import wait_for

pytestmark = pytest.mark.timeout(90)

SLEEPER = """
import os, signal, sys, time
signal.signal(signal.SIGINT, lambda *a: sys.exit(0))
print("hello from", os.environ["CLUSTERUI_APP"], os.environ["CLUSTERUI_INSTANCE"],
      os.environ.get("GREETING", ""), flush=True)
while True:
    time.sleep(1)
"""


def two_apps(cu, extra: str = "") -> str:
    cu.write("sleeper.py", SLEEPER)
    cu.write(
        "ecosystem.yaml",
        f"""
        apps:
          - name: alpha
            script: sleeper.py
            instances: 2
            env: {{GREETING: hi}}
            env_production: {{GREETING: prod}}
          - name: beta
            script: sleeper.py
        {extra}
        """,
    )
    return "ecosystem.yaml"


def by_app(rows):
    out = {}
    for r in rows:
        out.setdefault(r["app"], []).append(r)
    return out


def test_version_and_help(cu):
    r = cu.run("--version")
    assert r.returncode == 0 and r.stdout.startswith("clusterui ")
    assert "scale" in cu.run("--help").stdout


def test_up_detached_ls_json_and_down(cu):
    two_apps(cu)
    r = cu.run("up", "-d")
    assert r.returncode == 0, r.stderr
    assert "alpha" in r.stdout and "online" in r.stdout
    rows = cu.ls()
    assert [(w["app"], w["instance"]) for w in rows] == [("alpha", 0), ("alpha", 1), ("beta", 0)]
    for w in rows:
        for key in (
            "id",
            "pid",
            "status",
            "restarts",
            "uptime",
            "cpu",
            "memory",
            "connections",
            "active",
        ):
            assert key in w
        assert w["status"] == "online"
        assert psutil.pid_exists(w["pid"])
    assert len({w["id"] for w in rows}) == 3
    pids = [w["pid"] for w in rows]
    assert cu.run("down").returncode == 0
    wait_for(lambda: not any(psutil.pid_exists(p) for p in pids), 5, "workers to exit")
    assert not cu.supervisor_alive()
    assert cu.run("ls").returncode == 3


def test_env_selection_and_instance_variables(cu):
    two_apps(cu)
    assert cu.run("up", "-d", "--env", "production", "--only", "alpha").returncode == 0
    rows = cu.ls()
    assert {w["app"] for w in rows} == {"alpha"}
    wait_for(lambda: "prod" in cu.run("logs", "alpha", "--lines", "10").stdout, 5, "greeting")
    out = cu.run("logs", "alpha", "--lines", "10").stdout
    assert "hello from alpha 0 prod" in out and "hello from alpha 1 prod" in out


def test_targets_stop_start_restart_by_name_instance_id_and_all(cu):
    two_apps(cu)
    cu.run("up", "-d", check=True)
    rows = cu.ls()
    beta_id = next(w["id"] for w in rows if w["app"] == "beta")
    assert cu.run("stop", "alpha:1").returncode == 0
    status = {(w["app"], w["instance"]): w["status"] for w in cu.ls()}
    assert status[("alpha", 1)] == "stopped" and status[("alpha", 0)] == "online"
    assert cu.run("stop", str(beta_id)).returncode == 0
    assert by_app(cu.ls())["beta"][0]["status"] == "stopped"
    assert cu.run("start", "all").returncode == 0
    wait_for(lambda: all(w["status"] == "online" for w in cu.ls()), 5, "all online")
    before = {w["id"]: w["pid"] for w in cu.ls()}
    assert cu.run("restart", "alpha").returncode == 0
    after = cu.ls()
    for w in after:
        if w["app"] == "alpha":
            assert w["pid"] != before[w["id"]] and w["restarts"] == 1
        else:
            assert w["pid"] == before[w["id"]] and w["restarts"] == 0
    assert cu.run("stop", "all").returncode == 0
    assert {w["status"] for w in cu.ls()} == {"stopped"}


def test_unknown_targets_and_bad_scale_are_clear_errors(cu):
    two_apps(cu)
    cu.run("up", "-d", check=True)
    before = cu.ls()
    for args, fragment in [
        (("stop", "nope"), "no app or worker named 'nope'"),
        (("restart", "alpha:7"), "alpha has no instance '7'"),
        (("stop", "99"), "no worker with id 99"),
        (("scale", "alpha", "-99"), "cannot scale alpha to -97"),
        (("scale", "ghost", "2"), "no app named 'ghost'"),
        (("scale", "alpha", "lots"), "scale takes N, +N or -N"),
        (("describe", "nope"), "no app or worker named"),
    ]:
        r = cu.run(*args)
        assert r.returncode in (1, 2), (args, r)
        assert fragment in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    after = cu.ls()
    assert [(w["pid"], w["status"]) for w in after] == [(w["pid"], w["status"]) for w in before]


def test_scale_up_down_and_absolute(cu):
    two_apps(cu)
    cu.run("up", "-d", check=True)
    assert cu.run("scale", "alpha", "+2").returncode == 0
    wait_for(lambda: len(by_app(cu.ls())["alpha"]) == 4, 5, "4 alpha")
    wait_for(lambda: all(w["status"] == "online" for w in cu.ls()), 5, "online")
    assert [w["instance"] for w in by_app(cu.ls())["alpha"]] == [0, 1, 2, 3]
    gone = [w["pid"] for w in by_app(cu.ls())["alpha"] if w["instance"] >= 1]
    assert cu.run("scale", "alpha", "1").returncode == 0
    assert [w["instance"] for w in by_app(cu.ls())["alpha"]] == [0]
    wait_for(lambda: not any(psutil.pid_exists(p) for p in gone), 5, "scaled-down exit")
    assert cu.run("scale", "alpha", "-1").returncode == 0
    assert "alpha" not in by_app(cu.ls())


def test_delete_removes_the_app(cu):
    two_apps(cu)
    cu.run("up", "-d", check=True)
    pid = by_app(cu.ls())["beta"][0]["pid"]
    assert cu.run("delete", "beta").returncode == 0
    assert "beta" not in by_app(cu.ls())
    wait_for(lambda: not psutil.pid_exists(pid), 5, "beta exit")


def test_start_script_pm2_style_with_args_and_aliases(cu):
    cu.write(
        "echo_args.py",
        """
        import sys, time
        print("args:", sys.argv[1:], flush=True)
        time.sleep(60)
        """,
    )
    r = cu.run("start", "echo_args.py", "-i", "3", "--name", "echo", "--", "--flag", "x y")
    assert r.returncode == 0, r.stderr
    rows = cu.ls()
    assert [w["instance"] for w in rows] == [0, 1, 2]
    assert {w["app"] for w in rows} == {"echo"}
    wait_for(lambda: "--flag" in cu.run("log", "echo:2").stdout, 5, "log alias")
    assert "args: ['--flag', 'x y']" in cu.run("logs", "echo:2").stdout
    assert [w["id"] for w in json.loads(cu.run("list", "--json").stdout)] == [w["id"] for w in rows]
    shown = cu.run("show", "echo")
    assert shown.returncode == 0 and "echo_args.py" in shown.stdout
    assert cu.run("kill").returncode == 0
    assert not cu.supervisor_alive()


def test_describe_shows_spec_logs_and_last_exit(cu):
    two_apps(cu)
    cu.run("up", "-d", check=True)
    info = json.loads(cu.run("describe", "alpha:1", "--json").stdout)
    assert info["spec"]["instances"] == 2 and info["spec"]["kill_signal"] == "SIGINT"
    (w,) = info["workers"]
    assert w["out_file"].endswith("alpha-1-out.log") and w["err_file"].endswith("alpha-1-err.log")
    assert info["app"]["env_names"] == ["GREETING"]
    os.kill(w["pid"], signal.SIGKILL)
    wait_for(
        lambda: (
            json.loads(cu.run("describe", "alpha:1", "--json").stdout)["workers"][0]["exit_signal"]
            == "SIGKILL"
        ),
        5,
        "exit signal recorded",
    )
    text = cu.run("describe", "alpha:1").stdout
    assert "SIGKILL" in text and "crashed" in text


def test_logs_json_and_follow(cu):
    cu.write(
        "ticker.py",
        """
        import itertools, sys, time
        for i in itertools.count():
            print("tick", i, flush=True)
            print("warn", i, file=sys.stderr, flush=True)
            time.sleep(0.05)
        """,
    )
    cu.run("start", "ticker.py", "--name", "ticker", check=True)
    wait_for(lambda: "tick 3" in cu.run("logs", "ticker").stdout, 5, "ticks")
    out = cu.run("logs", "ticker", "--json", "--lines", "6").stdout
    lines = [json.loads(x) for x in out.splitlines()]
    assert len(lines) == 6
    assert {x["stream"] for x in lines} >= {"out", "err"}
    assert all(x["app"] == "ticker" and x["instance"] == 0 for x in lines)
    follow = cu.popen("logs", "ticker", "-f", "--lines", "0", stdout=subprocess.PIPE, stderr=None)
    try:
        seen = [follow.stdout.readline() for _ in range(6)]
        assert all(line.startswith("ticker:0 ") for line in seen), seen
        assert any("tick" in line for line in seen) and any("warn" in line for line in seen)
    finally:
        follow.send_signal(signal.SIGINT)
        assert follow.wait(10) == 0


def test_check_good_and_bad_files(cu):
    path = two_apps(cu)
    r = cu.run("check", path)
    assert r.returncode == 0 and "2 app(s)" in r.stdout
    cu.write(
        "bad.yaml",
        """
        apps:
          - name: web
            script: sleeper.py
            instance: 2
          - name: other
            script: sleeper.py
            kill_timeout: soon
        """,
    )
    r = cu.run("check", "bad.yaml")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("bad.yaml:5:") and "did you mean 'instances'" in lines[0]
    assert lines[1].startswith("bad.yaml:8:")
    # A broken file starts nothing: no supervisor either.
    r = cu.run("up", "-d", "bad.yaml")
    assert r.returncode == 2 and not cu.supervisor_alive()


def test_missing_default_file_names_the_example(cu):
    r = cu.run("up", "-d")
    assert r.returncode == 2
    assert "ecosystem.example.yaml" in r.stderr


def test_verbs_without_a_supervisor_exit_3(cu):
    for verb in (("ls",), ("stop", "all"), ("logs",), ("down",), ("scale", "a", "1")):
        r = cu.run(*verb)
        assert r.returncode == 3, verb
        assert "no supervisor is running" in r.stderr


def test_up_detached_fails_when_a_worker_cannot_start(cu):
    cu.write("boom.py", "raise SystemExit(3)\n")
    cu.write(
        "ecosystem.yaml",
        """
        apps:
          - name: boom
            script: boom.py
            max_restarts: 2
          - name: nosuch
            script: definitely-not-a-command-xyz
        """,
    )
    r = cu.run("up", "-d")
    assert r.returncode == 1
    assert "boom:0 failed to start" in r.stderr
    assert "nosuch:0 failed to start" in r.stderr and "not found" in r.stderr


def test_up_foreground_prints_prefixed_logs_and_sigterm_stops_everything(cu):
    two_apps(cu)
    up = cu.popen("up", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        seen = set()
        while len(seen) < 3:
            line = up.stdout.readline()
            assert line, up.stderr.read()
            if "hello from" in line:
                seen.add(line.split(" | ")[0])
        assert seen == {"alpha:0", "alpha:1", "beta:0"}
        pids = [w["pid"] for w in cu.ls()]
        up.send_signal(signal.SIGTERM)
        assert up.wait(20) == 0
        wait_for(lambda: not any(psutil.pid_exists(p) for p in pids), 5, "workers gone")
        wait_for(lambda: not cu.supervisor_alive(), 5, "supervisor gone")
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
