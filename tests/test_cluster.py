"""Cluster mode through the real supervisor: dispatch modes, reload and scale under load."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import leaks
import pytest
import support
from support import WEB, Load, free_port, get, wait_for

pytestmark = pytest.mark.timeout(120)


def web_app(cu, port: int, **keys) -> None:
    support.web_app(cu, port, kill_timeout=3000, **keys)


def restart_reasons(cu, app: str) -> list[str]:
    """Each of the app's workers' latest restart reason, from the supervisor's snapshot."""
    ctl = support.Control(cu.home)
    try:
        return [w["restart_history"][-1]["reason"] for w in ctl.workers(app)]
    finally:
        ctl.close()


def all_online(cu, n: int) -> list[dict]:
    """The rows, once there are n and every one is online."""
    return wait_for(lambda: support.online_rows(cu, n), 15, f"{n} online")


def test_round_robin_through_the_supervisor_and_counters(cu):
    port = free_port()
    web_app(cu, port, instances=3)
    pids = [w["pid"] for w in cu.ls()]
    answers = [get(port) for _ in range(30)]
    seen = [int(a.split("pid ")[1]) for a in answers]
    first = seen.index(pids[0])
    order = seen[first:] + seen[:first]
    assert order == (pids * 10)[: len(order)]
    rows = wait_for(
        lambda: (r := cu.ls()) and sum(w["connections"] for w in r) == 30 and r, 5, "counters"
    )
    assert [w["connections"] for w in rows] == [10, 10, 10]


def test_reload_under_load_fails_no_request(cu):
    port = free_port()
    web_app(cu, port)
    for keep_alive in (False, True):
        with Load(port, keep_alive=keep_alive) as load:
            for _ in range(2):
                before = {w["pid"] for w in cu.ls()}
                r = cu.run("reload", "web")
                assert r.returncode == 0, r.stderr
                assert "web: reloaded 2 worker(s)" in r.stdout
                assert not before & {w["pid"] for w in cu.ls()}
                assert restart_reasons(cu, "web") == ["reload"] * 2
                time.sleep(0.3)
        assert load.failed == [], (keep_alive, load.failed[:5])
        assert load.ok > 100


def test_a_worker_on_uvloop_takes_handed_connections_and_reloads_losing_nothing(cu):
    """uvloop's loop has no _make_socket_transport, so the worker helper turns a handed
    fd into a connection through connect_accepted_socket instead (worker.Server
    ._serve_fd): the same round-robin, the same counts, the same lossless reload."""
    script = support.web_wrapper(
        cu,
        """
        import asyncio, uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        probe = asyncio.new_event_loop()
        assert not hasattr(probe, "_make_socket_transport"), "uvloop has it now"
        probe.close()
        """,
    )
    port = free_port()
    web_app(cu, port, script=script)
    pids = {w["pid"] for w in all_online(cu, 2)}
    assert {int(get(port).split("pid ")[1]) for _ in range(10)} == pids
    with Load(port, keep_alive=False) as load:
        r = cu.run("reload", "web")
        assert r.returncode == 0, r.stderr
        time.sleep(0.3)
    assert load.failed == [], load.failed[:5]
    assert load.ok > 100


def test_a_reload_starts_a_stopped_worker_and_records_it_as_a_reload(cu):
    """A slot with nothing serving is started by the reload (a plain start is its
    reload), and its restart is recorded with the reload's reason, like the others."""
    port = free_port()
    web_app(cu, port)
    # The first slot: the reload must go on to the next one after starting it.
    assert cu.run("stop", "web:0").returncode == 0
    wait_for(lambda: [w["status"] for w in cu.ls()] == ["stopped", "online"], 10, "web:0 stopped")
    serving = cu.ls()[1]["pid"]
    r = cu.run("reload", "web")
    assert r.returncode == 0, r.stderr
    assert "web: reloaded 1 worker(s)" in r.stdout  # the one that was serving
    rows = all_online(cu, 2)
    assert serving not in {w["pid"] for w in rows}
    assert restart_reasons(cu, "web") == ["reload", "reload"]
    assert {int(get(port).split("pid ")[1]) for _ in range(4)} == {w["pid"] for w in rows}


@pytest.mark.parametrize("mode", ["fork", "cluster"])
def test_a_reload_without_a_listener_restarts_each_worker(cu, mode):
    """No listener, so nothing to hand over: each worker is restarted in turn (stopped
    before its replacement starts, so an instance never runs twice), and each restart is
    recorded with the reload's reason."""
    cu.write(
        "idle.py",
        """
        import os, signal, sys, time
        def say(what):
            with open("lifetimes", "a") as f:
                f.write(f"{what} {os.getpid()}\\n")
        def stop(*_):
            say("stop")
            sys.exit(0)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        say("start")
        time.sleep(600)
        """,
    )
    cu.write(
        "ecosystem.yaml",
        f"""
        apps:
          - name: jobs
            script: idle.py
            exec_mode: {mode}
            instances: 2
        """,
    )
    assert cu.run("up", "-d").returncode == 0
    before = {w["instance"]: w["pid"] for w in all_online(cu, 2)}
    r = cu.run("reload", "jobs")
    assert r.returncode == 0, r.stderr
    assert "jobs: reloaded 2 worker(s)" in r.stdout
    after = {w["instance"]: w["pid"] for w in all_online(cu, 2)}
    assert not set(before.values()) & set(after.values())
    assert restart_reasons(cu, "jobs") == ["reload", "reload"]
    lines = wait_for(
        lambda: (t := (cu.root / "lifetimes").read_text().splitlines()) and len(t) == 6 and t,
        10,
        "two starts, two stops and two starts",
    )
    for i in (0, 1):
        assert lines.index(f"stop {before[i]}") < lines.index(f"start {after[i]}"), lines


def test_a_reload_whose_new_worker_cannot_start_keeps_the_old_one_serving(cu):
    """The replacement's exec fails (its cwd is gone): the reload stops at once with the
    reason, and the old worker stays in its slot, online and serving."""
    site = cu.root / "site"
    site.mkdir()
    port = free_port()
    web_app(cu, port, cwd=site)
    before = [w["pid"] for w in all_online(cu, 2)]
    site.rmdir()
    r = cu.run("reload", "web")
    assert r.returncode != 0
    assert "reload of web stopped at instance 0: the new worker failed to start" in r.stderr
    assert "the old worker keeps serving" in r.stderr
    assert [w["pid"] for w in all_online(cu, 2)] == before
    assert {int(get(port).split("pid ")[1]) for _ in range(4)} == set(before)


def test_a_shared_mode_reload_of_a_worker_that_never_accepts_goes_on_at_listen_timeout(cu):
    """Shared mode cannot see a worker that never waits in accept() (a select() loop, or
    here none at all) get ready: as with PM2, it is online at listen_timeout, and a
    reload waits for that rather than giving up at the same moment."""
    cu.write("idle.py", "import time\ntime.sleep(600)\n")
    cu.write(
        "ecosystem.yaml",
        f"""
        apps:
          - name: quiet
            script: idle.py
            exec_mode: cluster
            instances: 2
            listen: 127.0.0.1:{free_port()}
            dispatch: shared
            listen_timeout: 1000
        """,
    )
    assert cu.run("up", "-d").returncode == 0
    before = {w["pid"] for w in all_online(cu, 2)}
    r = cu.run("reload", "quiet")
    assert r.returncode == 0, r.stderr
    assert "quiet: reloaded 2 worker(s)" in r.stdout
    assert not before & {w["pid"] for w in all_online(cu, 2)}


def test_reloading_an_app_scaled_to_nothing_is_refused(cu):
    cu.write("idle.py", "import time\ntime.sleep(600)\n")
    cu.write("ecosystem.yaml", "apps:\n  - name: jobs\n    script: idle.py\n")
    assert cu.run("up", "-d").returncode == 0
    all_online(cu, 1)
    assert cu.run("scale", "jobs", "0").returncode == 0
    r = cu.run("reload", "jobs")
    assert r.returncode != 0
    assert "jobs has no workers to reload" in r.stderr


def test_scale_down_under_load_fails_no_request(cu):
    port = free_port()
    web_app(cu, port, instances=4)
    with Load(port) as load:
        assert cu.run("scale", "web", "1").returncode == 0
        time.sleep(0.5)
        assert cu.run("scale", "web", "3").returncode == 0
        wait_for(lambda: [w["status"] for w in cu.ls()] == ["online"] * 3, 10, "3 online")
        time.sleep(0.5)
    assert load.failed == [], load.failed[:5]


def write_hangs_when_broken(cu) -> None:
    """app.py: the example web worker, or, once a file `broken` exists, a worker that
    hangs before serving and so never sends ready; it leaves `hung.<pid>` to say so."""
    support.web_wrapper(
        cu,
        """
        import os, time
        if os.path.exists("broken"):
            open(f"hung.{os.getpid()}", "w").close()
            time.sleep(600)
        """,
    )


def test_a_reload_whose_new_worker_never_gets_ready_keeps_the_old_one(cu):
    port = free_port()
    write_hangs_when_broken(cu)
    cu.write(
        "ecosystem.yaml",
        f"""
        apps:
          - name: web
            script: app.py
            listen: 127.0.0.1:{port}
            instances: 2
            listen_timeout: 800
        """,
    )
    assert cu.run("up", "-d").returncode == 0
    old = [w["pid"] for w in cu.ls()]
    (cu.root / "broken").write_text("")
    r = cu.run("reload", "web")
    assert r.returncode == 1
    assert "stopped at instance 0: the new worker was not ready within 0.8 s" in r.stderr
    assert "the old worker keeps serving" in r.stderr
    assert [w["pid"] for w in cu.ls()] == old
    assert [w["status"] for w in cu.ls()] == ["online", "online"]
    # Serving again, not listed as draining too (it was, while its replacement started).
    assert [w["draining_pids"] for w in cu.ls()] == [[], []]
    assert {int(get(port).split("pid ")[1]) for _ in range(4)} == set(old)
    # The replacement that never got ready was stopped, not left running unlisted.
    running = {
        p.pid for p in leaks.running(*leaks.home_is(cu.home)) if "app.py" in " ".join(p.cmdline())
    }
    assert running == set(old), f"running {sorted(running)}, listed {sorted(old)}"


def test_a_reload_whose_new_worker_exits_says_so_and_keeps_the_old_one(cu):
    script = support.web_wrapper(
        cu,
        """
        import os, sys
        if os.path.exists("broken"):
            sys.exit(3)
        """,
    )
    port = free_port()
    web_app(cu, port, script=script, listen_timeout=20000)
    old = [w["pid"] for w in all_online(cu, 2)]
    (cu.root / "broken").write_text("")
    r = cu.run("reload", "web")
    assert r.returncode == 1
    # Said as soon as it exits, not after listen_timeout, and named for what happened.
    assert (
        "stopped at instance 0: the new worker exited (exit code 3); the old worker keeps serving"
    ) in r.stderr
    assert [w["pid"] for w in all_online(cu, 2)] == old
    assert {int(get(port).split("pid ")[1]) for _ in range(4)} == set(old)


def test_an_old_worker_that_dies_during_a_failed_reload_is_replaced(cu):
    """The reload gives up on a replacement that never gets ready, and the old worker it
    would have gone back to died meanwhile: the slot starts afresh, as after a crash."""
    port = free_port()
    write_hangs_when_broken(cu)
    # listen_timeout: time enough to kill the old worker while the reload waits.
    cu.write(
        "ecosystem.yaml",
        f"""
        apps:
          - name: web
            script: app.py
            listen: 127.0.0.1:{port}
            instances: 1
            listen_timeout: 20000
        """,
    )
    assert cu.run("up", "-d").returncode == 0
    [old] = [w["pid"] for w in cu.ls()]
    (cu.root / "broken").write_text("")
    reload = cu.popen("reload", "web", stderr=subprocess.PIPE)
    try:
        # The replacement started: the old worker is listed as draining from then on.
        wait_for(lambda: cu.ls()[0]["draining_pids"] == [old], 30, "the reload to start")
        # ...and has seen `broken`: under load it can take longer to get there than
        # this test takes to remove it, and would then serve and the reload succeed.
        wait_for(lambda: any(cu.root.glob("hung.*")), 30, "the replacement to hang")
        os.kill(old, signal.SIGKILL)
        (cu.root / "broken").unlink()  # what starts next serves
        _, err = reload.communicate(timeout=60)
    finally:
        if reload.poll() is None:
            reload.kill()
            reload.wait()
    assert reload.returncode == 1, err
    assert "the new worker was not ready within 20 s" in err
    row = wait_for(
        lambda: (w := cu.ls()[0])["status"] == "online" and w["pid"] not in (None, old) and w,
        30,
        "a fresh worker in the slot",
    )
    assert row["draining_pids"] == []
    assert int(get(port).split("pid ")[1]) == row["pid"]


def test_killed_worker_is_replaced_and_others_keep_serving(cu):
    port = free_port()
    web_app(cu, port)
    victim = cu.ls()[0]["pid"]
    os.kill(victim, signal.SIGKILL)
    wait_for(
        lambda: (
            [w["status"] for w in cu.ls()] == ["online", "online"] and cu.ls()[0]["pid"] != victim
        ),
        5,
        "replacement online",
    )
    pids = {int(get(port).split("pid ")[1]) for _ in range(6)}
    assert pids == {w["pid"] for w in cu.ls()}


def test_a_taken_port_fails_that_app_alone(cu):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    taken = blocker.getsockname()[1]
    try:
        cu.write("idle.py", "import time\ntime.sleep(600)\n")
        cu.write(
            "ecosystem.yaml",
            f"""
            apps:
              - name: web
                script: {WEB}
                listen: 127.0.0.1:{taken}
              - name: idle
                script: idle.py
            """,
        )
        r = cu.run("up", "-d")
        assert r.returncode == 1
        assert f"web: cannot listen on 127.0.0.1:{taken}: the address is already in use" in (
            r.stderr
        )
        assert [w["app"] for w in cu.ls()] == ["idle"]
        assert cu.ls()[0]["status"] == "online"
    finally:
        blocker.close()


def test_shared_mode_passes_the_socket_systemd_style(cu):
    port = free_port()
    cu.write(
        "shared.py",
        """
        import os, socket
        from http.server import BaseHTTPRequestHandler, HTTPServer
        assert os.environ["LISTEN_FDS"] == "1" and int(os.environ["LISTEN_PID"]) == os.getpid()
        class H(BaseHTTPRequestHandler):
            def do_GET(self):
                body = f"hello shared pid {os.getpid()}\\n".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            def log_message(self, *a):
                pass
        srv = HTTPServer(("127.0.0.1", 0), H, bind_and_activate=False)
        srv.socket.close()
        srv.socket = socket.socket(fileno=3)
        srv.serve_forever()
        """,
    )
    cu.write(
        "ecosystem.yaml",
        f"""
        apps:
          - name: shared
            script: shared.py
            instances: 2
            listen: 127.0.0.1:{port}
            dispatch: shared
        """,
    )
    assert cu.run("up", "-d").returncode == 0
    assert "hello shared pid" in get(port)
    assert {w["status"] for w in cu.ls()} == {"online"}


def test_proxy_mode_forwards_to_each_workers_own_port(cu):
    port = free_port()
    cu.write(
        "plain.py",
        """
        import os
        from http.server import BaseHTTPRequestHandler, HTTPServer
        class H(BaseHTTPRequestHandler):
            def do_GET(self):
                body = f"hello proxied pid {os.getpid()}\\n".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            def log_message(self, *a):
                pass
        HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
        """,
    )
    cu.write(
        "ecosystem.yaml",
        f"""
        apps:
          - name: proxied
            script: plain.py
            instances: 2
            listen: 127.0.0.1:{port}
            dispatch: proxy
        """,
    )
    r = cu.run("up", "-d")
    assert r.returncode == 0, r.stderr
    pids = {int(get(port).split("pid ")[1]) for _ in range(8)}
    assert pids == {w["pid"] for w in cu.ls()}


def test_supervisor_sigkill_frees_the_port_for_the_next_one(cu):
    port = free_port()
    web_app(cu, port)
    os.kill(cu.supervisor_pid(), signal.SIGKILL)
    wait_for(lambda: not cu.supervisor_alive(), 5, "supervisor gone")
    r = cu.run("up", "-d")
    assert r.returncode == 0, r.stderr
    assert "hello" in get(port)


# A worker that does not treat signals as a drain (handle_signals=False): a signal stops
# it at once. It records how it was stopped, so a reload that signals instead of draining
# shows. The "slow" request holds its answer for a second.
HOW_STOPPED = """
import asyncio, os, signal, sys
from clusterui import worker

def record(how):
    with open(f"stopped-{os.getpid()}", "w") as f:
        f.write(how)

def on_signal(*_):
    record("signal")
    os._exit(1)

async def handle(reader, writer):
    line = await reader.readline()
    if line.startswith(b"slow"):
        await asyncio.sleep(1)
    writer.write(f"{os.getpid()}\\n".encode())
    writer.close()

async def main():
    server = await worker.start_server(handle, handle_signals=False)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    await server.serve_forever()
    record("drained")

asyncio.run(main())
"""


def test_a_rolling_reload_drains_the_old_workers_rather_than_signalling_them(cu):
    port = free_port()
    cu.write("how.py", HOW_STOPPED)
    cu.write(
        "ecosystem.yaml",
        f"""
        apps:
          - name: how
            script: how.py
            listen: 127.0.0.1:{port}
            instances: 2
            kill_timeout: 5000
        """,
    )
    assert cu.run("up", "-d").returncode == 0
    old = [w["pid"] for w in cu.ls()]
    # One request in flight across the reload: a drained worker finishes it.
    slow = socket.create_connection(("127.0.0.1", port), timeout=10)
    slow.sendall(b"slow\n")
    time.sleep(0.2)
    r = cu.run("reload", "how")
    assert r.returncode == 0, r.stderr
    assert int(slow.makefile().readline()) in old
    slow.close()
    files = [cu.root / f"stopped-{pid}" for pid in old]
    # Written whole before we read: the file exists from open() on, empty until written.
    wait_for(lambda: all(f.exists() and f.read_text() for f in files), 10, "the old workers")
    assert [f.read_text() for f in files] == ["drained", "drained"]
    assert not set(old) & {w["pid"] for w in cu.ls()}
