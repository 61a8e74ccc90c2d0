"""`preload: true`: workers forked from a zygote that imported the app once (core.zygote).

Real supervisors, real forks: what a worker sees (its parent, environment, argv, cwd,
__main__), that the app's modules are imported once per code generation (a marker
module appends the importing pid to a file), that new code means a new zygote, and
that nothing of it outlives `down`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest
import support
from support import free_port, get, wait_for

pytestmark = pytest.mark.timeout(120)

# The marker module logs each import; the script reports what its process saw.
MARKER = """
import os
with open(os.environ["MARKS"], "a") as f:
    f.write(f"{os.getpid()}\\n")
print("marker imported by", os.getpid(), flush=True)
"""
SCRIPT = """
import sys
PRELOADED = "marker" in sys.modules  # before the import below runs
import json
import os
import time
import marker
report = {
    "pid": os.getpid(),
    "ppid": os.getppid(),
    "preloaded": PRELOADED,
    "name": __name__,
    "argv": sys.argv,
    "cwd": os.getcwd(),
    "instance": os.environ.get("CLUSTERUI_INSTANCE"),
    "path0": sys.path[0],
    "sigint": repr(__import__("signal").getsignal(2)),
}
with open(os.environ["REPORTS"], "a") as f:
    f.write(json.dumps(report) + "\\n")
while True:
    time.sleep(1)
"""


def _fork_app(cu, instances: int = 3, also: str = "", **keys) -> tuple[Path, Path]:
    """Start `job` (SCRIPT, preloaded) with more keys, and `also` (more apps, YAML)."""
    marks, reports = cu.root / "marks", cu.root / "reports"
    (cu.root / "work").mkdir(exist_ok=True)
    cu.write("app/marker.py", MARKER)
    cu.write("app/main.py", SCRIPT)
    more = "".join(f"\n            {k}: {v}" for k, v in keys.items())
    cu.write(
        "ecosystem.yaml",
        f"""
        apps:
          - name: job
            script: {cu.root / "app" / "main.py"}
            args: [one, "two words"]
            instances: {instances}
            preload: true
            env:
              MARKS: {marks}
              REPORTS: {reports}{more}
        """
        + textwrap.indent(textwrap.dedent(also), " " * 10),  # as "- name: job" above
    )
    r = cu.run("up", "-d")
    assert r.returncode == 0, r.stderr
    return marks, reports


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _reports(path: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _probe(tmp_path: Path, code: str, *args: object) -> subprocess.CompletedProcess:
    """`code` run by a Python of its own (a zygote makes its parent a child subreaper)."""
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )


def _state_apps(cu) -> list[dict]:
    ctl = support.Control(cu.home)
    try:
        return ctl.result("state")["apps"]
    finally:
        ctl.close()


def _zygotes(cu) -> list[psutil.Process]:
    """The apps' zygotes, as the supervisor names them, each checked to be a zygote
    process of this supervisor's."""
    found = []
    for app in _state_apps(cu):
        pid = (app.get("preload") or {}).get("pid")
        if not pid:
            continue
        proc = psutil.Process(pid)
        assert proc.ppid() == cu.supervisor_pid()
        assert any(a.endswith("zygote/server.py") for a in proc.cmdline()[:4])
        assert proc.environ().get("CLUSTERUI_HOME") == str(cu.home)
        found.append(proc)
    return found


def test_workers_are_forked_from_one_import_and_see_what_an_exec_would_give(cu):
    marks, reports = _fork_app(cu)
    seen = wait_for(lambda: len(r := _reports(reports)) == 3 and r, 20, "3 workers report")
    zygotes = _zygotes(cu)
    assert len(zygotes) == 1
    # Imported once, by the zygote, not by any worker.
    assert _lines(marks) == [str(zygotes[0].pid)]
    supervisor = cu.supervisor_pid()
    app_dir = str((cu.root / "app").resolve())
    assert sorted(r["instance"] for r in seen) == ["0", "1", "2"]
    for r in seen:
        assert r["preloaded"] is True
        assert r["ppid"] == supervisor  # adopted: the supervisor waits for it like any child
        assert r["name"] == "__main__"
        assert r["argv"][1:] == ["one", "two words"]
        assert r["argv"][0].endswith("app/main.py")
        assert r["cwd"] == str(cu.root.resolve())  # the file's folder, as without preload
        assert r["path0"] == app_dir
        assert "default_int_handler" in r["sigint"]
        assert psutil.Process(r["pid"]).ppid() == supervisor
        assert os.getsid(r["pid"]) == r["pid"]  # its own session, as an exec'd worker has
    assert sorted(w["pid"] for w in cu.ls()) == sorted(r["pid"] for r in seen)
    # What the zygote prints while importing is in the app's log, once.
    log = cu.run("logs", "job", "--lines", "100", check=True).stdout
    assert log.count("marker imported by") == 1 and f"by {zygotes[0].pid}" in log
    described = cu.run("describe", "job", check=True).stdout
    assert f"preload    zygote pid {zygotes[0].pid}, 5 module(s) imported" in described


def test_apps_on_one_interpreter_share_a_root_zygote_and_keep_their_own_code(cu):
    """One interpreter start (the root zygote) forks the app zygotes of every preload
    app with the same interpreter, folder and start-up environment; another
    PYTHONHASHSEED gets a root of its own; a reload gives the app a new zygote (new
    code) from the same root; nothing of it outlives down."""
    loop = "import time\nwhile True:\n    time.sleep(1)\n"
    for name in ("a", "b", "c"):
        cu.write(f"{name}.py", loop)
    cu.write(
        "ecosystem.yaml",
        """
        apps:
          - {name: a, script: a.py, instances: 2, preload: true}
          - {name: b, script: b.py, instances: 2, preload: true}
          - {name: c, script: c.py, instances: 1, preload: true, env: {PYTHONHASHSEED: "7"}}
        """,
    )
    assert cu.run("up", "-d").returncode == 0
    wait_for(lambda: support.online_rows(cu, 5), 20, "5 online")

    def preloads() -> dict[str, dict]:
        return {a["name"]: a["preload"] for a in _state_apps(cu)}

    first = wait_for(lambda: all((p := preloads())[n]["pid"] for n in "abc") and p, 10, "zygotes")
    assert first["a"]["root"] and first["a"]["root"] == first["b"]["root"]
    assert first["c"]["root"] and first["c"]["root"] != first["a"]["root"]
    assert len({first[n]["pid"] for n in "abc"}) == 3
    supervisor = cu.supervisor_pid()
    for root in {first["a"]["root"], first["c"]["root"]}:
        proc = psutil.Process(root)
        assert proc.ppid() == supervisor and proc.cmdline()[-1] == "--root"
    assert all(z.ppid() == supervisor for z in _zygotes(cu))
    described = cu.run("describe", "a", check=True).stdout
    assert f"forked by root zygote {first['a']['root']}" in described

    assert cu.run("reload", "a").returncode == 0
    after = wait_for(
        lambda: (p := preloads())["a"]["pid"] not in (None, first["a"]["pid"]) and p, 20, "new"
    )
    assert after["a"]["root"] == first["a"]["root"]
    assert after["b"]["pid"] == first["b"]["pid"]
    wait_for(lambda: not psutil.pid_exists(first["a"]["pid"]), 10, "the old zygote gone")

    roots = [psutil.Process(first[n]["root"]) for n in "ac"]
    assert cu.run("down").returncode == 0
    wait_for(lambda: not any(r.is_running() for r in roots), 10, "the roots gone")


def test_a_stop_while_workers_are_being_forked_stops_them_all(cu):
    """`stop` while the zygote is still forking the first start's workers (some have a
    process, the rest are pending): each worker forked after the stop began is stopped
    too, and the supervisor is left with its root zygote alone."""
    cu.write("sleep.py", "import time\nwhile True:\n    time.sleep(1)\n")
    cu.write(
        "ecosystem.yaml",
        "apps:\n  - {name: many, script: sleep.py, instances: 150, preload: true}\n",
    )
    up = cu.popen("up", "-d")
    try:
        wait_for(lambda: (cu.home / "supervisor.sock").exists(), 20, "the supervisor")
        ctl = support.Control(cu.home)
        try:

            def midway() -> dict | None:
                state = ctl.result("state", history=False)
                rows = state["workers"]
                some = any(w["pid"] for w in rows)
                return state if some and any(w["status"] == "pending" for w in rows) else None

            state = wait_for(midway, 30, "some workers forked and some pending", step=0.001)
        finally:
            ctl.close()
        assert cu.run("stop", "many").returncode == 0
    finally:
        up.wait(timeout=30)
    rows = cu.ls()
    assert len(rows) == 150 and all(w["status"] == "stopped" and not w["pid"] for w in rows)
    (root,) = {a["preload"]["root"] for a in state["apps"]}
    supervisor = psutil.Process(cu.supervisor_pid())

    def forked() -> list[int]:  # the supervisor's children but its guardian
        return [c.pid for c in supervisor.children() if "--daemonize" not in c.cmdline()]

    wait_for(lambda: forked() == [root], 10, lambda: f"only the root {root} left: {forked()}")


def _after_ticks(cu, n: int) -> None:
    """Wait until the supervisor has ticked n more times (each tick stamps every worker's
    series, and starts with the orphan sweep)."""
    ctl = support.Control(cu.home)
    try:

        def stamps() -> list[float]:
            return ctl.result("state")["workers"][0]["history"]["time"]

        since = stamps()[-1]
        wait_for(lambda: sum(t > since for t in stamps()) >= n, n + 10, f"{n} ticks")
    finally:
        ctl.close()


def test_a_crashed_worker_comes_back_from_the_same_zygote_and_new_code_makes_a_new_one(cu):
    # The subreaper fallback sweeps every tick, and kills what it does not know.
    cu.env["CLUSTERUI_NO_CGROUPS"] = "1"
    marks, reports = _fork_app(cu, instances=2)
    wait_for(lambda: len(_reports(reports)) == 2, 20, "2 workers")
    _after_ticks(cu, 2)  # the zygote is known: not swept as an orphan
    (zygote,) = _zygotes(cu)
    victim = cu.ls()[0]["pid"]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(_reports(reports)) == 3, 20, "a replacement")
    assert _lines(marks) == [str(zygote.pid)]  # no new import for a crash
    assert [z.pid for z in _zygotes(cu)] == [zygote.pid]

    for verb in ("restart", "reload"):
        before = len(_lines(marks))
        assert cu.run(verb, "job").returncode == 0
        wait_for(lambda b=before: len(_lines(marks)) == b + 1, 20, f"a new import on {verb}")
        (new,) = wait_for(lambda: len(z := _zygotes(cu)) == 1 and z, 10, "one zygote")
        assert _lines(marks)[-1] == str(new.pid) != str(zygote.pid)
        old = zygote.pid
        wait_for(lambda o=old: not psutil.pid_exists(o), 10, "the old zygote gone")
        zygote = new
        rows = wait_for(lambda: support.online_rows(cu, 2), 20, "2 online")
        assert all(psutil.Process(w["pid"]).ppid() == cu.supervisor_pid() for w in rows)

    assert cu.run("stop", "job").returncode == 0
    wait_for(lambda: not _zygotes(cu), 10, "no zygote once every worker is stopped")


def test_a_cluster_app_serves_from_preloaded_workers_and_recovers(cu):
    port = support.web_app(cu, free_port(), instances=2, preload="true")
    rows = wait_for(lambda: support.online_rows(cu, 2), 20, "2 online")
    (zygote,) = _zygotes(cu)
    pids = {w["pid"] for w in rows}
    answered = {int(get(port).split("pid ")[1]) for _ in range(6)}
    assert answered == pids
    os.kill(rows[0]["pid"], signal.SIGKILL)
    new = wait_for(
        lambda: (r := support.online_rows(cu, 2)) and {w["pid"] for w in r} - pids, 20, "replaced"
    )
    (replacement,) = new
    assert psutil.Process(replacement).ppid() == cu.supervisor_pid()
    assert [z.pid for z in _zygotes(cu)] == [zygote.pid]
    answered = {int(get(port).split("pid ")[1]) for _ in range(6)}
    assert replacement in answered


def test_down_leaves_no_zygote_and_no_worker(cu):
    _fork_app(cu, instances=2)
    wait_for(lambda: len(_zygotes(cu)) == 1, 20, "a zygote")
    (zygote,) = _zygotes(cu)
    assert cu.run("down").returncode == 0
    wait_for(lambda: not psutil.pid_exists(zygote.pid), 10, "the zygote gone")
    # cu's cleanup fails the test on anything else left with this home


def test_a_fork_that_cannot_enter_its_directory_fails_as_an_exec_would(cu):
    marks, reports = _fork_app(cu, instances=1, cwd="work")
    wait_for(lambda: len(_reports(reports)) == 1, 20, "one worker")
    (zygote,) = _zygotes(cu)
    (cu.root / "work").rmdir()  # under the running app: the next fork cannot chdir
    os.kill(cu.ls()[0]["pid"], signal.SIGKILL)
    log = wait_for(
        lambda: "does not exist" in (t := cu.run("logs", "job", "--lines", "50").stdout) and t,
        20,
        "the failed start in the app's log",
    )
    assert "failed to start: working directory" in log
    assert [z.pid for z in _zygotes(cu)] == [zygote.pid]  # the zygote itself is fine


def test_preload_is_refused_for_an_app_that_is_not_python(cu):
    cu.write("run.sh", "#!/bin/sh\nsleep 60\n").chmod(0o755)
    path = cu.write(
        "ecosystem.yaml",
        """
        apps:
          - name: sh
            script: run.sh
            preload: true
        """,
    )
    r = cu.run("up", "-d")
    assert r.returncode != 0
    assert f"{path}:5" in r.stderr or f"{path.name}:5" in r.stderr, r.stderr
    assert "preload" in r.stderr and "Python" in r.stderr


def test_the_zygote_forks_a_hosted_wsgi_app_it_imported(cu):
    marks = cu.root / "marks"
    cu.write(
        "site/hello.py",
        MARKER
        + """
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"hello from {os.getpid()}".encode()]
""",
    )
    port = free_port()
    cu.write(
        "ecosystem.yaml",
        f"""
        apps:
          - name: site
            wsgi: hello:app
            cwd: site
            instances: 2
            exec_mode: cluster
            listen: 127.0.0.1:{port}
            preload: true
            env:
              MARKS: {marks}
        """,
    )
    r = cu.run("up", "-d")
    assert r.returncode == 0, r.stderr
    rows = wait_for(lambda: support.online_rows(cu, 2), 30, "2 online")
    (zygote,) = _zygotes(cu)
    assert _lines(marks) == [str(zygote.pid)]
    answered = {get(port) for _ in range(4)}
    assert answered == {f"hello from {w['pid']}" for w in rows}


def test_the_zygote_reports_a_failed_start_with_the_exec_paths_exit_code():
    """The zygote cannot import clusterui.vocab (it runs under the app's interpreter),
    so its copy of the code must stay the same as the exec path's."""
    from clusterui.vocab.exits import Exit
    from clusterui.zygote import server

    assert server.FAILED_START == Exit.EXEC_FAILED


def test_a_crash_prints_the_traceback_an_exec_would(cu):
    cu.write("boom.py", 'def fail():\n    raise RuntimeError("boom")\n\n\nfail()\n')
    cu.write(
        "ecosystem.yaml",
        """
        apps:
          - name: boom
            script: boom.py
            preload: true
            autorestart: false
        """,
    )
    cu.run("up", "-d")
    log = wait_for(
        lambda: "RuntimeError: boom" in (t := cu.run("logs", "boom", "--lines", "50").stdout) and t,
        20,
        "the traceback",
    )
    frames = [line for line in log.splitlines() if '  File "' in line]
    assert frames and all("boom.py" in f for f in frames), log
    assert len(frames) == 2  # <module>, then fail
    assert [w["exit_code"] for w in cu.ls()] == [1]


@pytest.mark.skipif(os.geteuid() != 0, reason="a cgroup per worker needs root here")
def test_with_cgroups_an_orphan_the_worker_leaves_lives_as_long_as_its_worker(cu):
    """The supervisor adopts zygote-forked workers as a subreaper, so it also adopts what a
    worker daemonizes; with cgroups that must change nothing: the orphan is not swept while
    its worker runs (as without preload), and goes with the worker's cgroup."""
    orphans = cu.root / "orphans"
    cu.write(
        "daemonizes.py",
        f"""
        import os, subprocess, time
        # sh starts two sleeps in the background and exits at once: they are orphans.
        # The short one exits soon, and shows when the sweep has reaped it.
        subprocess.run(
            ["sh", "-c", "sleep 600 & echo $! >> {orphans}; sleep 0.1 & echo $! >> {orphans}"],
            check=True,
        )
        while True:
            time.sleep(1)
        """,
    )
    cu.write(
        "ecosystem.yaml",
        """
        apps:
          - name: d
            script: daemonizes.py
            preload: true
        """,
    )
    assert cu.run("up", "-d").returncode == 0
    orphan, short = wait_for(
        lambda: len(p := _lines(orphans)) == 2 and [int(x) for x in p], 20, "the pids"
    )
    assert psutil.Process(orphan).ppid() == cu.supervisor_pid()  # adopted
    # A sweep has run once the short orphan, exited, has been reaped (every 10 ticks).
    wait_for(lambda: not psutil.pid_exists(short), 20, "the exited orphan reaped")
    assert psutil.Process(orphan).status() != psutil.STATUS_ZOMBIE
    assert cu.run("stop", "d").returncode == 0

    def gone() -> bool:  # killed with the worker's cgroup, and reaped (no zombie)
        return not psutil.pid_exists(orphan)

    wait_for(gone, 10, "the orphan killed and reaped")


HOSTILE = """
import json, os, socket
ctl = socket.socket(fileno=int(os.environ["CLUSTERUI_ZYGOTE_FD"]))
evil = [["\\x1b[2J", "\\x1b]0;x\\x07"]]  # a module name and a reason: escape sequences
ctl.send(json.dumps({"t": "ready", "preloaded": 0, "failed": evil}).encode())
while ctl.recvmsg(1 << 20, 4096)[0]:
    ctl.send(json.dumps({"t": "spawned", "pid": 1}).encode())
"""
PROBE = """
import asyncio, os, sys
from clusterui.core import zygote
from clusterui.core.process import SpawnSpec
from clusterui.core.spec import AppSpec
zygote.SERVER = sys.argv[1]

async def main():
    spec = AppSpec(name="h", script=sys.argv[2], interpreter=sys.executable, cwd=os.getcwd())
    z = zygote.Zygote(spec, dict(os.environ), [sys.argv[2]], lambda o, e: None, lambda z: None)
    await z.ready_soon()
    print("failed:", *z.failed[0])  # as the notice would show them
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        ask = SpawnSpec(argv=spec.argv(), cwd=os.getcwd(), env={}, stdout=null, stderr=null)
        z.spawn(ask, [sys.argv[2]])
    except zygote.Unavailable as exc:
        print("refused:", exc)
    print("broken:", z.broken)

asyncio.run(main())
"""


DRAIN = """
import array, asyncio, fcntl, os, signal, sys, termios, time
from clusterui.core import zygote
from clusterui.core.process import SpawnSpec
from clusterui.core.spec import AppSpec

async def main():
    spec = AppSpec(name="d", script=sys.argv[1], interpreter=sys.executable, cwd=os.getcwd())
    z = zygote.Zygote(spec, dict(os.environ), [sys.argv[1]], None, lambda z: None)
    await z.ready_soon()
    null = os.open(os.devnull, os.O_WRONLY)
    ask = SpawnSpec(argv=spec.argv(), cwd=os.getcwd(), env={}, stdout=null, stderr=null)
    owed = [z.request(ask, [sys.argv[1]]) for _ in range(3)]
    # The loop does not run, so the answers wait in the socket. FIONREAD counts every
    # byte queued on a SOCK_SEQPACKET socket; an answer, '{"t": "spawned", "pid": N}',
    # is 26 to 32 bytes, so 78 bytes or more are all three.
    queued = array.array("i", [0])
    deadline = time.monotonic() + 30
    while queued[0] < 78 and time.monotonic() < deadline:
        time.sleep(0.01)
        fcntl.ioctl(z._sock.fileno(), termios.FIONREAD, queued)
    z.close(now=True)
    pids = [f.result() for f in owed]  # raises Unavailable if one was dropped
    for pid in pids:
        ppid = open(f"/proc/{pid}/stat").read().rsplit(") ", 1)[1].split()[1]
        print("worker", pid, "ppid", ppid, "me", os.getpid())
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)

asyncio.run(main())
"""


def test_a_zygote_dropped_with_answers_waiting_still_names_those_workers(tmp_path):
    """A zygote closed at once (it broke) while forks were owed: the answers it had
    already sent are taken, so the app knows (and can stop) each worker it forked,
    instead of leaving them running unknown. Run in a process of its own."""
    script = tmp_path / "app.py"
    script.write_text("import time\nwhile True:\n    time.sleep(1)\n")
    out = _probe(tmp_path, DRAIN, str(script))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")[:3]
    assert len(lines) == 3 and all(ln.startswith("worker ") for ln in lines), out.stdout
    for line in lines:
        _, pid, _, ppid, _, me = line.split()
        assert ppid == me  # forked, adopted: ours


def test_a_zygote_that_names_a_process_not_ours_is_refused(tmp_path):
    """The zygote runs the app's code: a pid it names that is not the supervisor's own
    child (here pid 1) is refused, the zygote is dropped, and its text arrives escaped.
    Run in a process of its own: the zygote makes it a child subreaper."""
    hostile = tmp_path / "hostile.py"
    hostile.write_text(HOSTILE)
    script = tmp_path / "app.py"
    script.write_text("")
    out = _probe(tmp_path, PROBE, str(hostile), str(script))
    assert out.returncode == 0, out.stderr
    assert "refused: named process 1, which is not a child of the supervisor" in out.stdout
    assert "broken: named process 1" in out.stdout
    assert "\x1b" not in out.stdout and "\\x1b[2J" in out.stdout


def test_start_preload_on_the_command_line(cu):
    """`clusterui start app.py -i 2 --preload`, PM2 style, without a file."""
    marks, reports = cu.root / "marks", cu.root / "reports"
    cu.write("app/marker.py", MARKER)
    cu.write("app/main.py", SCRIPT)
    cu.env.update(MARKS=str(marks), REPORTS=str(reports))
    r = cu.run("start", "app/main.py", "-i", "2", "--preload")
    assert r.returncode == 0, r.stderr
    seen = wait_for(lambda: len(r := _reports(reports)) == 2 and r, 20, "2 workers report")
    (zygote,) = _zygotes(cu)
    assert _lines(marks) == [str(zygote.pid)]
    assert all(r["preloaded"] for r in seen)
    cu.write("run.sh", "#!/bin/sh\nsleep 60\n").chmod(0o755)
    r = cu.run("start", "run.sh", "--preload")
    assert r.returncode != 0 and "preload" in r.stderr


def test_an_app_that_waits_for_its_dependencies_is_still_forked_from_its_zygote(cu):
    cu.write("db.py", "import time\ntime.sleep(1)\nwhile True:\n    time.sleep(1)\n")
    db = """
    - name: db
      script: db.py
    """
    marks, reports = _fork_app(cu, instances=2, also=db, depends_on="{db: started}")
    seen = wait_for(lambda: len(r := _reports(reports)) == 2 and r, 20, "2 workers report")
    (zygote,) = _zygotes(cu)
    assert _lines(marks) == [str(zygote.pid)]
    assert all(r["preloaded"] for r in seen)


MANY_FDS = """
import asyncio, os, resource, signal, sys
from clusterui.core import zygote
from clusterui.core.process import SpawnSpec
from clusterui.core.spec import AppSpec

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]  # a supervisor of 2,000 workers

async def main():
    spec = AppSpec(name="m", script=sys.argv[1], interpreter=sys.executable, cwd=os.getcwd())
    z = zygote.Zygote(spec, dict(os.environ), [sys.argv[1]], lambda o, e: None, lambda z: None)
    await z.ready_soon()
    null = os.open(os.devnull, os.O_WRONLY)
    ask = SpawnSpec(argv=spec.argv(), cwd=os.getcwd(), env={}, stdout=null, stderr=null)
    pid = z.spawn(ask, [sys.argv[1]])
    ppid = open(f"/proc/{pid}/stat").read().split(") ")[1].split()[1]
    print("fd", z._sock.fileno(), "pid", pid, "ppid", ppid, "me", os.getpid())
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    z.close()

asyncio.run(main())
"""


def test_a_zygote_past_fd_1024_still_answers(tmp_path):
    """At 2,000 workers the supervisor holds thousands of fds: its zygote channel is
    past select()'s 1,024, where select() raised and stranded the app's start."""
    script = tmp_path / "app.py"
    script.write_text("import time\ntime.sleep(60)\n")
    out = _probe(tmp_path, MANY_FDS, str(script))
    assert out.returncode == 0, out.stderr
    words = out.stdout.split()
    assert int(words[1]) > 1024
    assert words[5] == words[7]  # the worker is the probe's own child
