"""The caller's environment reaches the app (PM2's `FOO=a pm2 start app.js`), with a
supervisor that is already running, and clusterui's own variables cannot be overridden."""

from __future__ import annotations

import json

import leaks
import psutil
import pytest
from support import Env, wait_for

pytestmark = pytest.mark.timeout(90)

SLEEPER = """
import signal, sys, time
signal.signal(signal.SIGINT, lambda *a: sys.exit(0))
while True:
    time.sleep(1)
"""


def run_env(cu: Env, extra: dict[str, str], *args: str, drop: tuple[str, ...] = ()):
    """`clusterui ARGS` from a shell whose environment has `extra` set (and `drop` unset)."""
    saved = cu.env
    cu.env = {k: v for k, v in saved.items() if k not in drop} | extra
    try:
        return cu.run(*args)
    finally:
        cu.env = saved


def worker_env(cu: Env, app: str) -> dict[str, str]:
    """The environment of the live process itself, read from /proc."""
    row = wait_for(
        lambda: next((w for w in cu.ls() if w["app"] == app and w["status"] == "online"), None),
        what=f"{app} online",
    )
    return psutil.Process(row["pid"]).environ()


def pid_of(cu: Env, app: str) -> int:
    return next(w["pid"] for w in cu.ls() if w["app"] == app)


@pytest.fixture
def running(cu):
    """A supervisor already up (started by an unrelated first command) before the test's."""
    cu.write("sleeper.py", SLEEPER)
    r = run_env(cu, {"SUPERVISOR_ONLY": "leak"}, "start", "sleeper.py", "--name", "first")
    assert r.returncode == 0, r.stderr
    assert cu.supervisor_alive()
    return cu


def test_caller_env_per_app_and_update_env(running):
    cu = running
    assert run_env(cu, {"FOO": "a"}, "start", "sleeper.py", "--name", "e1").returncode == 0
    assert worker_env(cu, "e1")["FOO"] == "a"
    assert run_env(cu, {"FOO": "b"}, "start", "sleeper.py", "--name", "e2").returncode == 0
    assert worker_env(cu, "e2")["FOO"] == "b"
    assert worker_env(cu, "e1")["FOO"] == "a"  # the second command left the first app alone

    old = pid_of(cu, "e1")
    r = run_env(cu, {"FOO": "c"}, "restart", "e1")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: pid_of(cu, "e1") not in (None, old), what="a new e1 process")
    assert worker_env(cu, "e1")["FOO"] == "a"  # restart keeps what the app started with

    old = pid_of(cu, "e1")
    r = run_env(cu, {"FOO": "c"}, "restart", "e1", "--update-env")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: pid_of(cu, "e1") not in (None, old), what="a new e1 process")
    assert worker_env(cu, "e1")["FOO"] == "c"

    old = pid_of(cu, "e2")
    r = run_env(cu, {"FOO": "d"}, "reload", "e2", "--update-env")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: pid_of(cu, "e2") not in (None, old), what="a new e2 process")
    assert worker_env(cu, "e2")["FOO"] == "d"
    assert worker_env(cu, "e1")["FOO"] == "c"


def test_supervisor_env_does_not_leak(running):
    cu = running
    r = run_env(cu, {}, "start", "sleeper.py", "--name", "later", drop=("LANG",))
    assert r.returncode == 0, r.stderr
    env = worker_env(cu, "later")
    # The supervisor was started by a command that had SUPERVISOR_ONLY; this one had not.
    assert "SUPERVISOR_ONLY" not in env
    assert worker_env(cu, "first")["SUPERVISOR_ONLY"] == "leak"
    assert env["PATH"] and env["CLUSTERUI_HOME"] == str(cu.home)
    assert env["CLUSTERUI_APP"] == "later" and env["NODE_APP_INSTANCE"] == "0"


def test_file_env_wins_over_the_shell(running):
    cu = running
    cu.write(
        "eco.yaml",
        """
        apps:
          - name: filed
            script: sleeper.py
            env: {FOO: file, ONLY_FILE: x}
            env_production: {FOO: prod}
        """,
    )
    shell = {"FOO": "shell", "ONLY_SHELL": "y"}
    assert run_env(cu, shell, "up", "-d", "eco.yaml").returncode == 0
    env = worker_env(cu, "filed")
    assert (env["FOO"], env["ONLY_FILE"], env["ONLY_SHELL"]) == ("file", "x", "y")
    assert cu.run("delete", "filed").returncode == 0
    assert run_env(cu, shell, "up", "-d", "eco.yaml", "--env", "production").returncode == 0
    env = worker_env(cu, "filed")
    assert (env["FOO"], env["ONLY_SHELL"]) == ("prod", "y")


def test_env_verb_names_without_values(running):
    cu = running
    secret = "s3cr3t-value-42"
    r = run_env(cu, {"API_TOKEN": secret}, "start", "sleeper.py", "--name", "sec")
    assert r.returncode == 0, r.stderr
    worker_env(cu, "sec")
    r = cu.run("env", "sec")
    assert r.returncode == 0, r.stderr
    assert "API_TOKEN" in r.stdout and secret not in r.stdout
    line = next(x for x in r.stdout.splitlines() if "API_TOKEN" in x)
    assert line.split()[-1] == "caller"
    assert "NODE_APP_INSTANCE" in r.stdout
    rows = json.loads(cu.run("env", "sec", "--json").stdout)
    assert rows[0]["values"] is None and rows[0]["names"]["CLUSTERUI_APP"] == "clusterui"
    # Every variable clusterui sets for a worker is one it owns (environ.OWNED_NAMES), so
    # a file or a shell cannot override it; the harness's own mark is just a variable.
    ours = {
        n: layer for n, layer in rows[0]["names"].items() if n.startswith(("CLUSTERUI_", "LISTEN_"))
    }
    ours.pop(leaks.OWNER, None)
    assert set(ours.values()) == {"clusterui"}, ours
    assert f"API_TOKEN={secret}" in cu.run("env", "sec", "--values").stdout
    assert secret not in cu.run("describe", "sec", "--json").stdout
    # Never written to clusterui's own logs.
    for path in [cu.home / "supervisor.log", *(cu.home / "logs").rglob("*")]:
        if path.is_file():
            assert secret not in path.read_text(errors="replace"), path
    assert cu.run("env", "nope").returncode != 0


def test_owned_variables_warned_and_kept(running):
    cu = running
    r = run_env(
        cu,
        {"NODE_APP_INSTANCE": "7", "CLUSTERUI_APP": "fake"},
        "start",
        "sleeper.py",
        "--name",
        "own",
    )
    assert r.returncode == 0, r.stderr
    assert "CLUSTERUI_APP, NODE_APP_INSTANCE" in r.stderr and "warning" in r.stderr
    env = worker_env(cu, "own")
    assert (env["NODE_APP_INSTANCE"], env["CLUSTERUI_APP"]) == ("0", "own")


def test_file_setting_owned_variables_is_warned_with_its_line(tmp_path):
    from clusterui.core.config import load_ecosystem

    (tmp_path / "app.py").write_text("")
    path = tmp_path / "eco.yaml"
    path.write_text(
        "apps:\n"
        "  - name: p\n"
        "    script: app.py\n"
        "    exec_mode: cluster\n"
        "    listen: 127.0.0.1:0\n"
        "    dispatch: proxy\n"
        "    env: {PORT: '1', NODE_APP_INSTANCE: '3', OTHER: x}\n"
        "  - name: f\n"
        "    script: app.py\n"
        "    env: {PORT: '1'}\n"  # PORT is the app's own outside proxy mode
    )
    warnings = [str(w) for w in load_ecosystem(path).warnings]
    assert warnings == [
        f"{path}:7: warning: env: sets NODE_APP_INSTANCE, PORT, which clusterui sets for each"
        " worker; ignored"
    ]
