"""File-watch reload with real files and real processes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from support import WEB, Load, free_port, get, online_rows, wait_for

from clusterui.core.spec import AppSpec
from clusterui.core.watch import WatchFilter

pytestmark = pytest.mark.timeout(90)

APP = """
import time
print("version {v}", flush=True)
time.sleep(600)
"""


def setup_app(cu, instances: int = 2, extra: str = "") -> None:
    cu.write("src/app.py", APP.format(v=1))
    cu.write(
        "ecosystem.yaml",
        f"""
        apps:
          - name: app
            script: src/app.py
            instances: {instances}
            watch: [src]
            watch_delay: 150
            min_uptime: 1500
        {extra}
        """,
    )
    cu.run("up", "-d", check=True)


def restarts(cu) -> list[int]:
    return [w["restarts"] for w in cu.ls()]


def app_info(cu, name: str = "app") -> dict:
    return json.loads(cu.run("describe", name, "--json", check=True).stdout)["app"]


def test_an_edit_reloads_every_worker_once_with_the_new_code(cu):
    setup_app(cu)
    cu.write("src/app.py", APP.format(v=2))
    wait_for(lambda: cu.run("logs", "app").stdout.count("version 2") == 2, 10, "new code")
    assert restarts(cu) == [1, 1]
    assert all(w["status"] == "online" for w in cu.ls())
    assert app_info(cu)["last_watch_event"] == "reloaded: src/app.py changed"


def test_a_50_file_burst_reloads_each_worker_exactly_once(cu):
    # The folder exists first: inotify cannot see files made in a brand-new folder
    # before its watch is added (a `git checkout` mostly rewrites existing folders).
    (cu.root / "src" / "pkg").mkdir(parents=True)
    setup_app(cu)
    for i in range(50):
        cu.write(f"src/pkg/mod{i}.py", f"X = {i}\n")
    wait_for(lambda: restarts(cu) == [1, 1], 10, "one reload")
    # A quiet period twice the debounce and then some: no second reload follows.
    time.sleep(1.5)
    assert restarts(cu) == [1, 1]
    assert "and 49 more changed" in app_info(cu)["last_watch_event"]


def test_ignored_paths_do_not_reload(cu):
    setup_app(cu, 1, extra="    ignore_watch: ['data', '*.tmp']\n")
    info = app_info(cu)
    assert info["watch"] is True
    for path in (
        "src/__pycache__/x.pyc",
        "src/app.log",
        "src/x.tmp",
        "src/.git/HEAD",
        "src/node_modules/m.js",
    ):
        cu.write(path, "ignored\n")
    # Then a real change: the only reload must be for it, and with no ignored path in it.
    time.sleep(0.6)
    cu.write("src/real.py", "X = 1\n")
    wait_for(lambda: restarts(cu) == [1], 10, "reload for the real change")
    assert app_info(cu)["last_watch_event"] == "reloaded: src/real.py changed"


def test_watch_off_stops_reloading_and_on_resumes(cu):
    setup_app(cu, 1)
    r = cu.run("watch", "app", "off")
    assert r.returncode == 0 and "watch off" in r.stdout
    assert app_info(cu)["watch"] is False
    cu.write("src/app.py", APP.format(v=2))
    time.sleep(1.0)
    assert restarts(cu) == [0]
    assert cu.run("watch", "app", "on").returncode == 0
    cu.write("src/app.py", APP.format(v=3))
    wait_for(lambda: "version 3" in cu.run("logs", "app").stdout, 10, "reload after on")


def test_broken_code_waits_for_the_next_change_instead_of_crash_looping(cu):
    setup_app(cu, 1)
    cu.write("src/app.py", "raise SystemExit('syntax is fine, startup is not')\n")
    wait_for(lambda: cu.ls()[0]["status"] == "errored", 10, "errored after the change")
    count = restarts(cu)
    time.sleep(1.0)
    assert restarts(cu) == count  # no crash loop
    assert "waiting for file changes" in app_info(cu)["last_watch_event"]
    cu.write("src/app.py", APP.format(v=4))
    wait_for(lambda: cu.ls()[0]["status"] == "online", 10, "back online after the fix")
    wait_for(lambda: "version 4" in cu.run("logs", "app").stdout, 5, "fixed code")


def test_an_app_writing_into_its_watched_folder_is_caught(cu):
    cu.write(
        "src/app.py",
        """
        import os, time
        with open(os.path.join(os.path.dirname(__file__), "state.json"), "w") as f:
            f.write(str(time.time()))
        print("wrote state", flush=True)
        time.sleep(600)
        """,
    )
    cu.write(
        "ecosystem.yaml",
        """
        apps:
          - name: app
            script: app.py
            watch: true
            cwd: src
            watch_delay: 100
            min_uptime: 100
        """,
    )
    cu.run("up", "-d", check=True)
    info = wait_for(lambda: (i := app_info(cu))["watch"] is False and i, 30, "watch paused")
    assert "watch paused" in info["last_watch_event"]
    assert "ignore_watch" in info["last_watch_event"]
    settled = restarts(cu)
    time.sleep(1.0)
    assert restarts(cu) == settled and settled[0] <= 6


def test_filter_unit(tmp_path):
    spec = AppSpec(name="a", script="x", cwd=str(tmp_path), ignore_watch=["build", "*.tmp"])
    f = WatchFilter(spec, [str(tmp_path / "home")])
    assert f.ignored(str(tmp_path / "build" / "out.js"))
    assert f.ignored(str(tmp_path / "a" / "b.tmp"))
    assert f.ignored(str(tmp_path / "home" / "logs" / "x"))
    assert f.ignored(str(tmp_path / "pkg" / "__pycache__" / "m.cpython-311.pyc"))
    assert not f.ignored(str(tmp_path / "pkg" / "m.py"))
    assert not f.ignored(str(tmp_path / "builder.py"))


def web_project(cu, port: int, greeting: str = "hello", extra: str = "") -> Path:
    """A copy of the example web app in its own watched folder (more keys in extra)."""
    src = cu.root / "web"
    src.mkdir()
    (src / "web.py").write_text(Path(WEB).read_text().replace('"hello"', f'"{greeting}"'))
    cu.write(
        "ecosystem.yaml",
        f"""
        apps:
          - name: web
            script: web/web.py
            exec_mode: cluster
            instances: 2
            listen: 127.0.0.1:{port}
            watch: [web]
            listen_timeout: 1500
            {extra}
        """,
    )
    cu.run("up", "-d", check=True)
    return src / "web.py"


def test_a_watch_reload_of_a_cluster_app_fails_no_request(cu):
    port = free_port()
    script = web_project(cu, port)
    current = "hello"
    with Load(port) as load:
        for word in ("howdy", "hiya"):
            old = {w["pid"] for w in cu.ls()}
            script.write_text(script.read_text().replace(f'"{current}"', f'"{word}"'))
            current = word
            wait_for(lambda w=word: get(port).startswith(w), 10, f"{word} served")
            # Replaced and done draining (draining processes stay listed, issue 11).
            wait_for(
                lambda o=old: (
                    not o
                    & {p for w in cu.ls() for p in [w["pid"], *(w.get("draining_pids") or [])]}
                ),
                10,
                "all replaced",
            )
            # Every worker serves the new code (round-robin: four in a row cover both).
            assert {get(port).split()[0] for _ in range(4)} == {word}
    assert load.failed == [], load.failed[:5]
    assert load.ok > 50
    assert [w["restarts"] for w in cu.ls()] == [2, 2]


def test_broken_code_keeps_the_old_cluster_workers_serving(cu):
    port = free_port()
    script = web_project(cu, port)
    old = [w["pid"] for w in cu.ls()]
    good = script.read_text()
    script.write_text("import sys\nsys.exit('broken at start')\n")
    info = wait_for(
        lambda: (
            (i := app_info(cu, "web"))["last_watch_event"]
            and "reload failed" in i["last_watch_event"]
            and i
        ),
        15,
        "the failed reload",
    )
    assert "the old worker keeps serving" in info["last_watch_event"]
    assert [w["pid"] for w in cu.ls()] == old
    assert [w["restarts"] for w in cu.ls()] == [0, 0]  # a failed replacement is no restart
    assert {int(get(port).split("pid ")[1]) for _ in range(4)} == set(old)
    script.write_text(good.replace('"hello"', '"fixed"'))
    wait_for(lambda: get(port).startswith("fixed"), 15, "the fixed code")


def test_a_watch_reload_starts_a_stopped_cluster_worker_under_the_crash_guard(cu):
    """A change reloads the app; a slot with nothing serving is started by that reload,
    and if the new code dies at once there, it waits for the next save as any worker
    started by a change does, instead of going into the restart policy's loop."""
    port = free_port()
    script = web_project(cu, port)
    assert cu.run("stop", "web:0").returncode == 0
    wait_for(lambda: cu.ls()[0]["status"] == "stopped", 10, "web:0 stopped")
    script.write_text("import sys\nsys.exit('broken at start')\n")
    wait_for(lambda: cu.ls()[0]["status"] == "errored", 15, "web:0 errored after the change")
    time.sleep(1.0)
    row = cu.ls()[0]
    assert row["status"] == "errored"
    assert row["restarts"] == 1, row  # the start by the change; no policy restart after it
    assert "web:0 crashed after the change" in cu.run("logs", "web").stdout


DIES_ON_CUE = """from __future__ import annotations
import os, threading, time
def _die_on_cue() -> None:
    while not os.path.exists("die"):
        time.sleep(0.05)
    os._exit(4)
threading.Thread(target=_die_on_cue, daemon=True).start()
"""


def test_new_code_that_serves_then_dies_after_a_watch_reload_waits_for_the_next_change(cu):
    """The crash guard also covers workers a watch reload handed the socket to: new code
    that takes over, then dies within min_uptime, waits for the next save rather than
    going into the restart policy's loop."""
    port = free_port()
    script = web_project(cu, port, extra="min_uptime: 60000")
    old = {w["pid"] for w in wait_for(lambda: online_rows(cu, 2), 15, "2 online")}
    text = script.read_text().replace("from __future__ import annotations\n", DIES_ON_CUE)
    script.write_text(text)
    rows = wait_for(
        lambda: (r := online_rows(cu, 2)) and not old & {w["pid"] for w in r} and r,
        20,
        "both workers replaced by the change",
    )
    assert get(port).status == 200  # the new code serves
    counts = [w["restarts"] for w in rows]
    (cu.root / "die").write_text("")  # outside the watched folder
    wait_for(lambda: [w["status"] for w in cu.ls()] == ["errored"] * 2, 15, "both errored")
    time.sleep(1.0)
    assert [w["restarts"] for w in cu.ls()] == counts  # no restart by the policy
    assert [w["status"] for w in cu.ls()] == ["errored"] * 2
    assert "web:0 crashed after the change" in cu.run("logs", "web").stdout
