"""PM2's everyday commands on ecosystem files and the saved set, against a real supervisor:
`start|stop|restart|delete FILE`, `reload FILE` applying a changed file under load,
`save` → `down` → `resurrect`, a damaged dump refused, `startup`/`unstartup` units."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from support import WEB, Env, Load, free_port, get, wait_for

from clusterui.client import Client

pytestmark = pytest.mark.timeout(120)

SLEEPER = """
import signal, sys, time
signal.signal(signal.SIGINT, lambda *a: sys.exit(0))
while True:
    time.sleep(1)
"""


def run_env(cu: Env, extra: dict[str, str], *args: str):
    saved = cu.env
    cu.env = saved | extra
    try:
        return cu.run(*args)
    finally:
        cu.env = saved


def pids(cu: Env, app: str | None = None) -> dict[tuple[str, int], int]:
    return {(w["app"], w["instance"]): w["pid"] for w in cu.ls() if app in (None, w["app"])}


def supervisor_files(cu: Env) -> list[str]:
    """The ecosystem files the supervisor says apps come from now."""

    async def ask() -> list[str]:
        client = await Client.connect(cu.home)
        try:
            return (await client.state(history=False))["supervisor"]["files"]
        finally:
            await client.close()

    return asyncio.run(ask())


def all_online(cu: Env) -> bool:
    rows = cu.ls()
    return bool(rows) and all(w["status"] == "online" for w in rows)


def watch_state(cu: Env) -> dict[str, bool]:
    import json

    return {
        a: json.loads(cu.run("describe", a, "--json", check=True).stdout)["app"]["watch"]
        for a in {w["app"] for w in cu.ls()}
    }


# ---- FILE verbs --------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_start_stop_restart_delete_a_js_file(cu):
    cu.write("sleeper.py", SLEEPER)
    cu.write(
        "ecosystem.config.js",
        """
        module.exports = {
          apps: [
            { name: "one", script: "sleeper.py", instances: "2",
              env: { MODE: process.env.NODE_ENV || "dev" } },
            { name: "two", script: "sleeper.py", node_args: "-u" },
          ],
        };
        """,
    )
    r = run_env(cu, {"NODE_ENV": "staging"}, "start", "ecosystem.config.js")
    assert r.returncode == 0, r.stderr
    assert "started one, two" in r.stdout
    wait_for(lambda: all_online(cu), what="online")
    first = pids(cu)
    assert sorted(first) == [("one", 0), ("one", 1), ("two", 0)]
    # The config read process.env of the command that ran it.
    assert psutil.Process(first[("one", 0)]).environ()["MODE"] == "staging"
    # describe's command line is the one the process got, interpreter arguments included.
    described = cu.run("describe", "two", check=True).stdout
    command = next(x for x in described.splitlines() if x.startswith("command"))
    assert command.split()[1:] == psutil.Process(first[("two", 0)]).cmdline()
    assert "-u" in command
    assert supervisor_files(cu) == [str(cu.root / "ecosystem.config.js")]

    assert cu.run("stop", "ecosystem.config.js").returncode == 0
    assert {w["status"] for w in cu.ls()} == {"stopped"}
    assert cu.run("start", "ecosystem.config.js").returncode == 0  # starts the stopped ones
    wait_for(lambda: all_online(cu), what="online again")

    before = pids(cu)
    r = cu.run("restart", "ecosystem.config.js")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: all_online(cu), what="online after restart")
    after = pids(cu)
    assert sorted(after) == sorted(before)
    assert not set(after.values()) & set(before.values())

    r = cu.run("delete", "ecosystem.config.js")
    assert r.returncode == 0, r.stderr
    assert cu.ls() == []
    assert supervisor_files(cu) == []  # what the dashboard's header names
    assert cu.run("stop", "ecosystem.config.js").returncode != 0  # nothing of it is loaded


def test_start_process_json_and_up_warns_once(cu):
    cu.write("sleeper.py", SLEEPER)
    cu.write(
        "process.json",
        """
        {
          "apps": [
            {"name": "pj", "script": "sleeper.py", "instances": "2", "max_restarts": "10",
             "vizion": false}
          ]
        }
        """,
    )
    r = cu.run("start", "process.json")
    assert r.returncode == 0, r.stderr
    assert len(pids(cu, "pj")) == 2
    r = cu.run("up", "-d", "process.json")
    assert r.returncode == 0, r.stderr
    warned = [line for line in r.stderr.splitlines() if "vizion" in line]
    assert len(warned) == 1 and warned[0].startswith("process.json:"), r.stderr


# ---- apply a changed file --------------------------------------------------------------


def test_reload_file_under_keep_alive_load(cu):
    cu.write("sleeper.py", SLEEPER)
    p1, p2 = free_port(), free_port()

    def eco(greeting: str, count_instances: int) -> None:
        cu.write(
            "eco.yaml",
            f"""
            apps:
              - name: greet
                script: {WEB}
                exec_mode: cluster
                instances: 2
                listen: 127.0.0.1:{p1}
                env: {{GREETING: {greeting}}}
              - name: count
                script: {WEB}
                exec_mode: cluster
                instances: {count_instances}
                listen: 127.0.0.1:{p2}
              - name: still
                script: sleeper.py
            """,
        )

    eco("hello", 2)
    r = cu.run("up", "-d", "eco.yaml")
    assert r.returncode == 0, r.stderr
    before = pids(cu)
    assert get(p1).startswith("hello from")
    with Load(p1, keep_alive=True) as load1, Load(p2, keep_alive=True) as load2:
        eco("hola", 3)
        r = cu.run("reload", "eco.yaml")
        assert r.returncode == 0, r.stderr
        assert "reloaded greet (env)" in r.stdout and "scaled count (2 -> 3)" in r.stdout
        assert "unchanged still" in r.stdout
        n1, n2 = load1.ok, load2.ok
        wait_for(lambda: load1.ok > n1 + 50 and load2.ok > n2 + 50, 30, "load after the reload")
    assert load1.failed == [] and load2.failed == [], (load1.failed[:3], load2.failed[:3])
    after = pids(cu)
    assert after[("still", 0)] == before[("still", 0)]  # unchanged: left alone
    assert after[("greet", 0)] != before[("greet", 0)]
    assert after[("greet", 1)] != before[("greet", 1)]
    assert get(p1).startswith("hola from")
    # Scaled up: the two that ran keep running, one more joined.
    assert [after[("count", i)] for i in (0, 1)] == [before[("count", i)] for i in (0, 1)]
    assert ("count", 2) in after


def test_apply_lists_dropped_apps_and_prunes_only_when_asked(cu):
    cu.write("sleeper.py", SLEEPER)
    p = free_port()
    cu.write(
        "eco.yaml", f"apps:\n  - {{name: a, script: {WEB}}}\n  - {{name: b, script: sleeper.py}}\n"
    )
    assert cu.run("up", "-d", "eco.yaml").returncode == 0
    cu.write(
        "eco.yaml",
        f"apps:\n  - {{name: a, script: {WEB}, exec_mode: cluster, listen: 127.0.0.1:{p}}}\n"
        "  - {name: c, script: sleeper.py}\n",
    )
    a_pid = pids(cu, "a")[("a", 0)]
    r = cu.run("reload", "eco.yaml")
    assert r.returncode == 1  # a needs a restart: said, not done
    assert "started c" in r.stdout
    assert "no longer in the file (kept; --prune removes): b" in r.stdout
    assert "a: listen none -> 127.0.0.1:" in r.stderr and "needs a restart of a" in r.stderr
    assert pids(cu, "a")[("a", 0)] == a_pid and pids(cu, "b")
    r = cu.run("up", "-d", "eco.yaml", "--prune")
    assert "removed b" in r.stdout, r.stdout
    assert not pids(cu, "b")
    # `restart FILE` is how the listener moves.
    assert cu.run("restart", "eco.yaml").returncode == 0
    wait_for(lambda: cu.ls()[0]["status"] == "online", what="a online on its listener")
    assert get(p).startswith("hello from")
    import json

    app = json.loads(cu.run("describe", "a", "--json", check=True).stdout)["app"]
    assert app["listen"] == f"127.0.0.1:{p}"


# ---- save / resurrect ------------------------------------------------------------------


def test_save_down_resurrect_same_apps_scale_watch_and_env(cu):
    cu.write("sleeper.py", SLEEPER)
    (cu.root / "src").mkdir()
    cu.write(
        "eco.yaml",
        """
        apps:
          - name: api
            script: sleeper.py
            instances: 2
            env: {FROM_FILE: f}
          - name: watched
            script: sleeper.py
            watch: [src]
          - name: plain
            script: sleeper.py
        """,
    )
    r = run_env(cu, {"FOO": "saved-value"}, "up", "-d", "eco.yaml")
    assert r.returncode == 0, r.stderr
    assert cu.run("scale", "api", "3").returncode == 0
    r = run_env(cu, {"FOO": "updated"}, "restart", "api", "--update-env")
    assert r.returncode == 0, r.stderr
    assert cu.run("watch", "plain", "on").returncode == 0
    assert cu.run("watch", "watched", "off").returncode == 0
    wait_for(lambda: all_online(cu), what="online")
    shape = sorted(pids(cu))
    watches = watch_state(cu)
    assert watches == {"api": False, "watched": False, "plain": True}

    r = cu.run("save")
    assert r.returncode == 0, r.stderr
    dump = cu.home / "dump.yaml"
    assert stat.S_IMODE(dump.stat().st_mode) == 0o600
    assert cu.run("check", str(dump)).returncode == 0  # an ordinary ecosystem file
    assert cu.run("down").returncode == 0
    assert not cu.supervisor_alive()

    r = run_env(cu, {"FOO": "other"}, "resurrect")
    assert r.returncode == 0, r.stderr
    assert "resurrected api, watched, plain" in r.stdout
    wait_for(lambda: all_online(cu), what="resurrected apps online")
    assert sorted(pids(cu)) == shape
    assert watch_state(cu) == watches
    # Each app's saved caller environment, --update-env included, not the resurrecting shell's.
    env = psutil.Process(pids(cu)[("api", 0)]).environ()
    assert (env["FOO"], env["FROM_FILE"]) == ("updated", "f")
    assert psutil.Process(pids(cu)[("plain", 0)]).environ()["FOO"] == "saved-value"

    # Again: nothing is started twice.
    running = pids(cu)
    r = cu.run("resurrect")
    assert r.returncode == 0 and "resurrected nothing new" in r.stdout
    assert "left as is: api, watched, plain" in r.stderr
    assert pids(cu) == running


def test_damaged_dump_is_refused_with_a_line_and_starts_nothing(cu):
    cu.write("sleeper.py", SLEEPER)
    cu.write("eco.yaml", "apps:\n  - {name: a, script: sleeper.py, instances: 2}\n")
    assert cu.run("up", "-d", "eco.yaml").returncode == 0
    assert cu.run("save").returncode == 0
    dump = cu.home / "dump.yaml"
    good = dump.read_text()
    assert cu.run("down").returncode == 0

    broken = {
        "cut at 40%": good[: len(good) * 2 // 5],
        "cut at 70%": good[: len(good) * 7 // 10],
        "cut inside the last line": good[: len(good) - 4],
        "a broken line": good.replace("  script:", "  script: [oops", 1),
        "marker missing": good[: good.index("x-clusterui")],
    }
    for what, text in broken.items():
        dump.write_text(text)
        r = cu.run("resurrect")
        assert r.returncode == 2, (what, r.stdout, r.stderr)
        assert re.search(r"dump\.yaml:\d+: ", r.stderr), (what, r.stderr)
        assert cu.ls() == [], what

    dump.write_text(good)
    assert cu.run("resurrect").returncode == 0
    running = pids(cu)
    assert len(running) == 2
    dump.write_text(broken["cut at 70%"])
    assert cu.run("resurrect").returncode == 2
    assert pids(cu) == running  # what runs is not touched


# ---- startup / unstartup ---------------------------------------------------------------


def unit_values(text: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(key + "=")]


def systemd_unquote(value: str) -> str:
    words = shlex.split(value)
    assert len(words) == 1
    return words[0].replace("%%", "%").replace("$$", "$")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_startup_units_verify_and_resurrect(cu, tmp_path):
    root = tmp_path / "root"
    as_root = os.geteuid() == 0
    units = []
    for extra in (["--user"], [] if as_root else None):
        if extra is None:
            continue
        r = cu.run("startup", "--root", str(root), *extra)
        assert r.returncode == 0, r.stderr
        assert "undo: clusterui unstartup" in r.stdout
        assert "nothing is saved yet" in r.stdout
        wrote = Path(re.search(r"^wrote (.+)$", r.stdout, re.M).group(1))
        assert str(wrote).startswith(str(root))
        wants = (
            wrote.parent
            / ("default.target.wants" if extra else "multi-user.target.wants")
            / wrote.name
        )
        assert wants.is_symlink() and wants.resolve() == wrote.resolve()
        if extra:
            assert "loginctl enable-linger" in r.stdout
        v = subprocess.run(
            ["systemd-analyze", "verify", str(wrote)], capture_output=True, text=True, timeout=60
        )
        assert v.returncode == 0, v.stderr
        units.append((extra, wrote, wants))

    # What the unit runs at boot does start the supervisor and the saved apps.
    cu.write("sleeper.py", SLEEPER)
    cu.write("eco.yaml", "apps:\n  - {name: boot, script: sleeper.py}\n")
    assert cu.run("up", "-d", "eco.yaml").returncode == 0
    assert cu.run("save").returncode == 0
    assert cu.run("down").returncode == 0
    text = units[0][1].read_text()
    env = {"PATH": os.environ["PATH"]}  # systemd's own minimal environment
    for value in unit_values(text, "Environment"):
        k, _, v = systemd_unquote(value).partition("=")
        env[k] = v
    assert env["CLUSTERUI_HOME"] == str(cu.home)
    start = shlex.split(unit_values(text, "ExecStart")[0])
    assert start[0] == sys.executable
    r = subprocess.run(start, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    pidfile = Path(unit_values(text, "PIDFile")[0])
    wait_for(lambda: [w["status"] for w in cu.ls()] == ["online"], what="resurrected at boot")
    assert int(pidfile.read_text()) == cu.supervisor_pid() and cu.supervisor_alive()
    stop = shlex.split(unit_values(text, "ExecStop")[0])
    assert subprocess.run(stop, env=env, capture_output=True, timeout=60).returncode == 0
    assert not cu.supervisor_alive()

    # A unit someone else wrote is never overwritten or removed.
    extra, wrote, wants = units[0]
    r = cu.run("unstartup", "--root", str(root), *extra)
    assert r.returncode == 0 and "removed" in r.stdout
    assert not wrote.exists() and not wants.is_symlink()
    wrote.write_text("[Unit]\nDescription=not ours\n")
    assert cu.run("startup", "--root", str(root), *extra).returncode != 0
    assert cu.run("unstartup", "--root", str(root), *extra).returncode != 0
    assert wrote.read_text() == "[Unit]\nDescription=not ours\n"
    for extra, wrote, _wants in units[1:]:
        assert cu.run("unstartup", "--root", str(root), *extra).returncode == 0
        assert not wrote.exists()
