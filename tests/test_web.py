"""ASGI/WSGI hosts (`asgi:`/`wsgi:`) with real FastAPI, Django and Flask apps.

Real supervisor, dispatcher, worker processes and sockets; the apps in tests/webapps
are ordinary framework code with nothing clusterui-specific in them.
"""

from __future__ import annotations

import http.client
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import Control, Env, Load, free_port, get, wait_for
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

APPS = Path(__file__).parent / "webapps"


def setup_apps(cu: Env) -> None:
    for item in APPS.iterdir():
        if item.name == "__pycache__":
            continue
        dest = cu.root / item.name
        if item.is_dir():
            shutil.copytree(item, dest, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(item, dest)


def up(cu: Env, apps: str) -> None:
    setup_apps(cu)
    cu.write("ecosystem.yaml", apps)
    r = cu.run("up", "-d", timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def pids_of(cu: Env, app: str) -> list[int]:
    return [w["pid"] for w in cu.ls() if w["app"] == app and w["status"] == "online"]


def assert_round_robin(bodies: list[str], n: int) -> None:
    """Consecutive new connections go to the workers in turn: period n, all n seen."""
    assert len(set(bodies)) == n, bodies
    for i in range(n, len(bodies)):
        assert bodies[i] == bodies[i - n], f"not round-robin at {i}: {bodies}"


def fastapi_and_django(cu: Env, api_instances: int, api_key: str, site_key: str = "") -> tuple:
    """`up` the FastAPI app as `api` and the Django site as `site` (2 workers), each with
    one more key line; returns their ports."""
    api, site = free_port(), free_port()
    up(
        cu,
        f"""
        apps:
          - name: api
            asgi: fastapi_main:app
            instances: {api_instances}
            listen: 127.0.0.1:{api}
            listen_timeout: 20s
            {api_key}
          - name: site
            wsgi: mysite.wsgi:application
            instances: 2
            listen: 127.0.0.1:{site}
            listen_timeout: 20s
            {site_key}
        """,
    )
    return api, site


def test_fastapi_and_django_unchanged_behind_one_port_in_round_robin(cu):
    api, site = fastapi_and_django(cu, 3, "args: --no-access-log --root-path /api")
    bodies = [get(api) for _ in range(9)]
    assert {b.split()[1] for b in bodies} == {str(p) for p in pids_of(cu, "api")}
    assert_round_robin(bodies, 3)
    bodies = [get(site) for _ in range(6)]
    assert {b.split()[1] for b in bodies} == {str(p) for p in pids_of(cu, "site")}
    assert_round_robin(bodies, 2)

    # HTTP/1.1 as uvicorn serves it: bodies, streaming, pipelining on one connection.
    conn = http.client.HTTPConnection("127.0.0.1", api, timeout=10)
    conn.request("POST", "/echo", body=b"x" * 200_000)
    assert conn.getresponse().read() == b"x" * 200_000
    conn.request("GET", "/stream?n=4")
    resp = conn.getresponse()
    assert resp.getheader("transfer-encoding") == "chunked"
    assert resp.read() == b"".join(f"chunk {i}\n".encode() for i in range(4))
    conn.close()
    import socket

    with socket.create_connection(("127.0.0.1", api), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
        data = b""
        while data.count(b"HTTP/1.1 200") < 3:
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk
    # root_path and proxy headers as uvicorn does them (the peer, 127.0.0.1, is trusted).
    conn = http.client.HTTPConnection("127.0.0.1", api, timeout=10)
    conn.request(
        "GET", "/where", headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "10.1.2.3"}
    )
    assert conn.getresponse().read() == b"/api https 10.1.2.3"
    conn.close()


def test_websocket_echo_survives_until_drain_then_gets_1001(cu):
    port = free_port()
    events = cu.root / "events.log"
    up(
        cu,
        f"""
        apps:
          - name: api
            asgi: fastapi_main:app
            instances: 1
            listen: 127.0.0.1:{port}
            listen_timeout: 20s
            kill_timeout: 3s
            env:
              LIFESPAN_LOG: {events}
        """,
    )
    old = pids_of(cu, "api")[0]
    with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=10) as ws:
        ws.send("before")
        assert ws.recv(timeout=5) == f"{old} before"
        reload = subprocess.Popen(
            [sys.executable, "-m", "clusterui", "reload", "api"],
            env=cu.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            wait_for(lambda: [p for p in pids_of(cu, "api") if p != old], 20, "new pid")
            started = time.monotonic()
            # The old worker is draining: the WebSocket still echoes...
            ws.send("during")
            assert ws.recv(timeout=5) == f"{old} during"
            # ...until shortly before kill_timeout, when it gets 1001 (going away).
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    ws.recv(timeout=5)
            elapsed = time.monotonic() - started
        finally:
            out, err = reload.communicate(timeout=30)
    assert reload.returncode == 0, err
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    assert elapsed < 3.0
    # The old worker then ran its lifespan shutdown and exited 0 (not SIGKILL).
    wait_for(lambda: f"shutdown {old}" in events.read_text(), 10, "old worker's shutdown")
    assert f"ws-closed-1001 {old}" in events.read_text()
    # The supervisor writes the exit line once it has reaped the old worker, which can be
    # a moment after the worker's last event.
    wait_for(
        lambda: f"old worker {old} exited" in cu.run("logs", "api", "--lines", "200").stdout,
        10,
        "the old worker's exit line",
    )
    logs = cu.run("logs", "api", "--lines", "200").stdout
    assert f"old worker {old} exited with code 0" in logs, logs


def test_lifespan_startup_and_shutdown_once_per_worker(cu):
    port = free_port()
    events = cu.root / "events.log"
    up(
        cu,
        f"""
        apps:
          - name: api
            asgi: fastapi_main:app
            instances: 2
            listen: 127.0.0.1:{port}
            listen_timeout: 20s
            env:
              LIFESPAN_LOG: {events}
        """,
    )
    first = pids_of(cu, "api")
    for _ in range(4):
        assert get(port).status == 200
    r = cu.run("reload", "api", timeout=60)
    assert r.returncode == 0, r.stderr
    second = pids_of(cu, "api")
    assert not set(first) & set(second)
    r = cu.run("stop", "api", timeout=60)
    assert r.returncode == 0, r.stderr
    lines = events.read_text().split()
    pairs = list(zip(lines[::2], lines[1::2], strict=True))
    for pid in first + second:
        assert pairs.count(("startup", str(pid))) == 1, pairs
        assert pairs.count(("shutdown", str(pid))) == 1, pairs
    # Startup before the worker took connections, shutdown after its last one.
    for pid in first:
        assert pairs.index(("startup", str(pid))) < pairs.index(("shutdown", str(pid)))


def test_request_metrics_in_ls_json_move_under_load(cu):
    port = free_port()
    up(
        cu,
        f"""
        apps:
          - name: api
            asgi: fastapi_main:app
            instances: 2
            listen: 127.0.0.1:{port}
            listen_timeout: 20s
            args: --no-access-log
        """,
    )

    def busy() -> list[dict]:
        rows = cu.ls()
        return rows if all((w["req_rate"] or 0) > 0 for w in rows) else []

    with Load(port, 4, keep_alive=True, path="/sleep?ms=5", warmup=0, expect_pid=False):
        rows = wait_for(busy, 15, "req_rate > 0 on every worker")
    for w in rows:
        m = w["metrics"]
        assert w["req_rate"] == m["req_rate"] > 0
        assert 5.0 <= m["p50_ms"] <= m["p99_ms"], m  # the endpoint sleeps 5 ms
        assert "in_flight" in m
    # Load gone: the rate falls back to 0.
    wait_for(lambda: all(w["req_rate"] == 0 for w in cu.ls()), 15, "req_rate back to 0")
    # The table's history has the series too (what the dashboard's sparkline draws).
    ctl = Control(cu.home)
    try:
        workers = [w for w in ctl.result("state")["workers"] if w["app"] == "api"]
    finally:
        ctl.close()
    assert len(workers) == 2
    for w in workers:
        series = w["history"]["req_rate"]
        assert len(series) == len(w["history"]["time"]) and max(series) > 0, series


@pytest.mark.timeout(150)
@pytest.mark.parametrize(
    ("kind", "target"), [("asgi", "fastapi_main:app"), ("wsgi", "flask_app:app")]
)
def test_zero_failed_requests_across_rolling_reloads(cu, kind, target):
    port = free_port()
    up(
        cu,
        f"""
        apps:
          - name: web
            {kind}: {target}
            instances: 2
            listen: 127.0.0.1:{port}
            listen_timeout: 20s
            args: --no-access-log
        """,
    )
    for keep_alive in (True, False):
        before = set(pids_of(cu, "web"))
        with Load(port, 4, keep_alive=keep_alive, warmup=0, expect_pid=False) as load:
            wait_for(lambda load=load: load.ok > 50, 10, "load to get going")
            r = cu.run("reload", "web", timeout=60)  # both workers, one after the other
            assert r.returncode == 0, r.stderr
            served = load.ok
            wait_for(lambda load=load, n=served: load.ok > n + 50, 10, "load after reload")
        assert load.failed == [], load.failed[:20]
        after = set(pids_of(cu, "web"))
        assert not before & after
        # The new workers served too.
        assert any(str(p) in body for body in load.bodies for p in after)
        if keep_alive:
            assert load.closes_seen > 0  # draining workers said Connection: close


WSGIREF_WORKER = """\
from clusterui import worker


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"pid " + str(__import__("os").getpid()).encode()]


with worker.make_wsgi_server(app) as server:
    server.serve_forever()
"""


def test_clusterui_worker_servers_report_request_metrics_too(cu):
    port = free_port()
    cu.write("wsgiref_app.py", WSGIREF_WORKER)
    cu.write(
        "ecosystem.yaml",
        f"""\
        apps:
          - name: plain
            script: wsgiref_app.py
            instances: 2
            listen: 127.0.0.1:{port}
        """,
    )
    r = cu.run("up", "-d", timeout=60)
    assert r.returncode == 0, r.stderr
    with Load(port, 2, keep_alive=False, warmup=0, expect_pid=False):
        rows = wait_for(
            lambda: [w for w in cu.ls() if (w["req_rate"] or 0) > 0], 15, "req_rate from wsgiref"
        )
    assert {"req_rate", "in_flight", "p50_ms", "p99_ms"} <= set(rows[0]["metrics"])


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_fastapi_and_django_preloaded_serve_and_come_back_from_their_zygotes(cu):
    """`preload: true` on unmodified FastAPI and Django apps: the zygote has imported the
    app (FastAPI's pydantic_core extension is mapped in it before any worker runs), the
    workers serve in round-robin, and a killed worker is replaced from the same zygote."""
    api, site = fastapi_and_django(cu, 2, "preload: true", "preload: true")
    ctl = Control(cu.home)
    try:
        apps = {a["name"]: a for a in ctl.result("state")["apps"]}
    finally:
        ctl.close()
    zygotes = {name: apps[name]["preload"]["pid"] for name in ("api", "site")}
    assert all(zygotes.values()), apps
    assert "pydantic_core" in _maps(zygotes["api"])  # FastAPI imported before the fork
    # and what the host loads on its way to serving (uvicorn's protocol classes, uvloop)
    assert "uvloop" in _maps(zygotes["api"]) and "httptools" in _maps(zygotes["site"])
    for name, port in (("api", api), ("site", site)):
        pids = pids_of(cu, name)
        bodies = [get(port) for _ in range(4)]
        assert {b.split()[1] for b in bodies} == {str(p) for p in pids}
        assert_round_robin(bodies, 2)
        victim = pids[0]
        subprocess.run(["kill", "-9", str(victim)], check=True)
        wait_for(
            lambda n=name, v=victim: len(p := pids_of(cu, n)) == 2 and v not in p, 20, "replaced"
        )
        (new,) = set(pids_of(cu, name)) - set(pids)
        assert int(Path(f"/proc/{new}/stat").read_text().split(") ")[1].split()[1]) == (
            cu.supervisor_pid()
        )
        assert {get(port).split()[1] for _ in range(4)} == {str(p) for p in pids_of(cu, name)}
    ctl = Control(cu.home)
    try:
        after = {a["name"]: a["preload"]["pid"] for a in ctl.result("state")["apps"]}
    finally:
        ctl.close()
    assert after == zygotes  # the crashes did not start new zygotes
