"""Unmodified Node apps in cluster mode, with real Node and a real Express.

The apps in tests/node/ are ordinary: they call `app.listen(port)` themselves and know
nothing of clusterui. Express is pinned in tests/node/package-lock.json and installed
once by `npm ci` (skipped while node_modules matches the lock file).
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from support import Env, Load, free_port, get, wait_for

from clusterui.core import config

NODE_DIR = Path(__file__).parent / "node"
STAMP = NODE_DIR / "node_modules" / ".clusterui-lock.sha256"


@pytest.fixture(scope="session")
def node_apps() -> Path:
    """tests/node with its node_modules installed exactly as the lock file says."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not on PATH: these tests need Node 20 and npm")
    digest = hashlib.sha256((NODE_DIR / "package-lock.json").read_bytes()).hexdigest()
    # One `npm ci` at a time: pytest-xdist's workers each run this fixture.
    with open(NODE_DIR / ".npm-ci.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not STAMP.exists() or STAMP.read_text() != digest:
            subprocess.run(
                ["npm", "ci", "--prefer-offline", "--no-audit", "--no-fund"],
                cwd=NODE_DIR,
                check=True,
                timeout=300,
                stdout=subprocess.DEVNULL,
            )
            STAMP.write_text(digest)
    return NODE_DIR


def pid_of(body: str) -> int:
    m = re.search(r"pid (\d+)", body)
    assert m, body
    return int(m.group(1))


def start(cu: Env, script: Path, *args: str) -> None:
    r = cu.run("start", str(script), *args)
    assert r.returncode == 0, r.stdout + r.stderr


def online(cu: Env, n: int) -> list[dict]:
    return wait_for(
        lambda: (rows := cu.ls()) and [w["status"] for w in rows] == ["online"] * n and rows,
        20,
        f"{n} workers online",
    )


def logs(cu: Env, app: str) -> str:
    return cu.run("logs", app, "--lines", "500").stdout


# ---- round-robin --------------------------------------------------------------------


@pytest.mark.parametrize("script", ["express_app.js", "http_app.js"])
def test_unmodified_app_serves_one_port_in_strict_round_robin(cu, node_apps, script):
    port = free_port()
    cu.env["APP_PORT"] = str(port)
    start(cu, node_apps / script, "-i", "2")  # no exec_mode, no listen: as with PM2
    rows = online(cu, 2)
    described = cu.run("describe", script.removesuffix(".js")).stdout
    assert f"(cluster, round-robin on [::]:{port})" in described
    pids = [pid_of(get(port, expect=200)) for _ in range(10)]
    assert set(pids) == {w["pid"] for w in rows}
    assert pids[0::2] == [pids[0]] * 5 and pids[1::2] == [pids[1]] * 5, pids
    # Every worker's listen() saw the same shared address, as in Node's cluster module.
    out = logs(cu, script.removesuffix(".js"))
    assert out.count(f"listening on {port}") + out.count(f'"port":{port}') == 2, out


def test_request_metrics_from_an_unmodified_express_app(cu, node_apps):
    """The preload counts the app's HTTP requests: req/s, in flight and p50/p99 reach
    `ls --json` like the Python hosts' figures, and the rate falls back to 0."""
    port = free_port()
    cu.env["APP_PORT"] = str(port)
    start(cu, node_apps / "express_app.js", "-i", "2")
    online(cu, 2)
    stop = threading.Event()

    def hammer() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while not stop.is_set():
            conn.request("GET", "/slow?ms=20")  # keep-alive, 20 ms each
            resp = conn.getresponse()
            assert resp.status == 200
            resp.read()
        conn.close()

    def busy() -> list[dict]:
        rows = cu.ls()
        return rows if all((w["req_rate"] or 0) > 0 for w in rows) else []

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        rows = wait_for(busy, 20, "req_rate > 0 on both Node workers")
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    for w in rows:
        m = w["metrics"]
        assert w["req_rate"] == m["req_rate"] > 0, m
        assert 20.0 <= m["p50_ms"] <= m["p99_ms"], m  # the endpoint waits 20 ms
        assert "in_flight" in m
    wait_for(lambda: all(w["req_rate"] == 0 for w in cu.ls()), 15, "req_rate back to 0")


def test_listen_zero_is_one_random_port_for_all_workers(cu, node_apps):
    cu.env["APP_PORT"] = "0"
    start(cu, node_apps / "http_app.js", "-i", "2")
    online(cu, 2)
    ports = set(re.findall(r'"port":(\d+)', logs(cu, "http_app")))
    assert len(ports) == 1 and ports != {"0"}, ports  # one random port, for both
    port = int(ports.pop())
    assert len({pid_of(get(port, expect=200)) for _ in range(4)}) == 2
    assert f"round-robin on [::]:{port})" in cu.run("describe", "http_app").stdout


def test_unix_socket_path_is_shared(cu, node_apps):
    path = str(cu.root / "app.sock")
    cu.env["APP_PORT"] = path
    start(cu, node_apps / "http_app.js", "-i", "2")
    online(cu, 2)
    assert logs(cu, "http_app").count(f"listening on {json.dumps(path)}") == 2
    pids = set()
    for _ in range(4):
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        pids.add(pid_of(data.decode()))
    assert len(pids) == 2


# ---- readiness ----------------------------------------------------------------------


def test_wait_ready_gates_on_process_send_ready(cu, node_apps):
    port = free_port()
    cu.write(
        "ecosystem.yaml",
        f"""apps:
  - name: web
    script: {node_apps / "express_app.js"}
    instances: 2
    wait_ready: true
    listen_timeout: 8000
    env:
      APP_PORT: "{port}"
      SEND_READY: "1"
      READY_DELAY_MS: "1500"
""",
    )
    t0 = time.monotonic()
    r = cu.run("up", "-d")
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    # `up -d` waited for process.send('ready'), which comes 1.5 s after listening.
    assert took >= 1.5, took
    out = logs(cu, "web")
    assert out.count(f"listening on {port}") == 2
    assert len({pid_of(get(port, expect=200)) for _ in range(4)}) == 2


def test_wait_ready_without_ready_is_diagnosed(cu, node_apps):
    port = free_port()
    cu.write(
        "ecosystem.yaml",
        f"""apps:
  - name: web
    script: {node_apps / "express_app.js"}
    instances: 1
    exec_mode: cluster
    wait_ready: true
    listen_timeout: 1000
    env:
      APP_PORT: "{port}"
""",
    )
    assert cu.run("start", "ecosystem.yaml").returncode == 0
    want = "web:0 is not ready after 1 s: with wait_ready it must call process.send('ready')"
    wait_for(lambda: want in cu.run("ls").stdout, 15, "the diagnosis in ls")
    assert cu.ls()[0]["status"] == "launching"
    assert want in cu.run("describe", "web").stdout


# ---- reload, scale-down and stop ----------------------------------------------------


@pytest.mark.timeout(150)
def test_reload_and_scale_down_under_load_fail_no_request(cu, node_apps):
    port = free_port()
    cu.env["APP_PORT"] = str(port)
    start(cu, node_apps / "express_app.js", "-i", "2")
    online(cu, 2)
    for keep_alive in (False, True):
        with Load(port, threads=4, keep_alive=keep_alive) as load:
            before = {w["pid"] for w in cu.ls()}
            r = cu.run("reload", "express_app", timeout=60)
            assert r.returncode == 0, r.stderr
            assert not before & {w["pid"] for w in cu.ls()}
            time.sleep(0.3)
        assert load.failed == [], (keep_alive, load.failed[:5])
        assert load.ok > 50
    with Load(port, threads=4, keep_alive=True) as load:
        assert cu.run("scale", "express_app", "3").returncode == 0
        online(cu, 3)
        time.sleep(0.3)
        assert cu.run("scale", "express_app", "1").returncode == 0
        time.sleep(0.5)
    assert load.failed == [], load.failed[:5]
    assert len(cu.ls()) == 1
    # Each of the 6 old workers (2 reloads of 2, then 2 scaled away) stopped through the
    # app's own SIGINT handler after its drain (the log files keep removed instances).
    files = sorted((cu.home / "logs").glob("express_app-*-out.log"))
    ran = sum(f.read_text().count("SIGINT handler ran") for f in files)
    assert ran == 6, [f.read_text() for f in files]


def test_kept_alive_request_during_drain_gets_connection_close(cu, node_apps):
    port = free_port()
    cu.write(
        "ecosystem.yaml",
        f"""apps:
  - name: express_app
    script: {node_apps / "express_app.js"}
    exec_mode: cluster
    kill_timeout: 20000
    env:
      APP_PORT: "{port}"
""",
    )
    assert cu.run("up", "-d").returncode == 0
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/")
    first = conn.getresponse()
    first.read()
    assert first.getheader("Connection") == "keep-alive"
    old = pid_of_row(cu)
    # A slow request in flight while the reload drains the old worker (the new one is
    # ready well before 6 s; kill_timeout gives the drain 20 s).
    conn.request("GET", "/slow?ms=6000")
    reload = subprocess.Popen(
        [*cu_cmd(), "reload", "express_app"], env=cu.env, stdout=subprocess.DEVNULL
    )
    try:
        resp = conn.getresponse()
        body = resp.read().decode()
        assert pid_of(body) == old  # in flight: it completed on the old worker
        assert resp.getheader("Connection") == "close"
    finally:
        assert reload.wait(60) == 0
        conn.close()


def pid_of_row(cu: Env) -> int:
    return cu.ls()[0]["pid"]


def cu_cmd() -> list[str]:
    return [sys.executable, "-m", "clusterui"]


def test_sigint_handler_runs_on_stop(cu, node_apps):
    cu.env["APP_PORT"] = str(free_port())
    start(cu, node_apps / "express_app.js", "-i", "2")
    online(cu, 2)
    assert cu.run("stop", "express_app").returncode == 0
    rows = wait_for(
        lambda: (r := cu.ls()) and all(w["status"] == "stopped" for w in r) and r, 10, "stopped"
    )
    assert [w["exit_code"] for w in rows] == [0, 0]  # its handler's process.exit(0)
    assert logs(cu, "express_app").count("SIGINT handler ran") == 2


# ---- diagnosis of a worker that never speaks the protocol ---------------------------


def test_python_worker_binding_the_port_itself_is_diagnosed(cu):
    port = free_port()
    cu.write(
        "plain.py",
        "import http.server, os\n"
        "http.server.HTTPServer(('127.0.0.1', int(os.environ['APP_PORT'])),"
        " http.server.SimpleHTTPRequestHandler).serve_forever()\n",
    )
    cu.write(
        "ecosystem.yaml",
        f"""apps:
  - name: web
    script: plain.py
    instances: 2
    listen: 127.0.0.1:{port}
    env:
      APP_PORT: "{port}"
""",
    )
    t0 = time.monotonic()
    r = cu.run("up", "-d")
    assert r.returncode == 1
    assert time.monotonic() - t0 < 15  # not the 30 s of a bare timeout
    want = (
        f"never spoke the handoff protocol; it exited with code 1 with EADDRINUSE on {port} "
        "(it binds the port itself): use dispatch: proxy or shared"
    )
    assert want in r.stderr, r.stderr
    assert "not ready in time" not in r.stderr
    ls = cu.run("ls").stdout
    assert f"EADDRINUSE on {port}" in ls, ls
    described = cu.run("describe", "web").stdout
    assert "use dispatch: proxy or shared, or the worker helper" in described


def test_node_worker_binding_a_second_port_is_diagnosed(cu, node_apps):
    port, second = free_port(), free_port()
    cu.env.update(APP_PORT=str(port), SECOND_PORT=str(second))
    start(cu, node_apps / "http_app.js", "-i", "2")
    # One worker binds the second port; the other crashes on it (Node's own error).
    ls = wait_for(
        lambda: (out := cu.run("ls").stdout) and "EADDRINUSE" in out and out, 20, "diagnosis"
    )
    assert f"never became ready; it exited with code 1 with EADDRINUSE on {second}" in ls


def test_node_worker_that_never_listens_is_diagnosed(cu, node_apps):
    cu.write(
        "ecosystem.yaml",
        f"""apps:
  - name: quiet
    script: {node_apps / "silent_app.js"}
    exec_mode: cluster
    listen: 127.0.0.1:{free_port()}
    listen_timeout: 1000
""",
    )
    assert cu.run("start", "ecosystem.yaml").returncode == 0
    want = "quiet:0 is not ready after 1 s: its server never called listen()"
    wait_for(lambda: want in cu.run("ls").stdout, 15, "the diagnosis in ls")


# ---- PM2's inference ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "keys", "mode"),
    [
        ("app.js", "instances: 2", "cluster"),
        ("app.mjs", "instances: max", "cluster"),
        ("app.cjs", "instances: 0", "cluster"),
        ("app.js", "instances: 2\n    exec_mode: fork", "fork"),
        ("app.js", "instances: 1", "fork"),
        ("app.js", "", "fork"),
        ("app.py", "instances: 2", "fork"),
        ("app.ts", "instances: 2\n    interpreter: tsx", "cluster"),
    ],
)
def test_pm2_cluster_inference(tmp_path, script, keys, mode):
    (tmp_path / script).write_text("")
    (tmp_path / "eco.yaml").write_text(f"apps:\n  - script: {script}\n    {keys}\n")
    result = config.load_ecosystem(str(tmp_path / "eco.yaml"))
    spec = result.apps[0]
    assert spec.exec_mode == mode
    assert spec.listen is None
    assert not [w for w in result.warnings if "dispatch" in str(w)]


def test_a_killed_dispatcher_is_replaced_and_node_workers_keep_serving(cu, node_apps):
    port = free_port()
    cu.env["APP_PORT"] = str(port)
    start(cu, node_apps / "http_app.js", "-i", "2")
    rows = online(cu, 2)
    supervisor = psutil.Process(cu.supervisor_pid())
    [dispatcher] = [p for p in supervisor.children() if "clusterui.dispatch" in p.cmdline()]
    dispatcher.kill()
    dispatcher.wait(5)
    # The new dispatcher takes over the same workers (told they are ready, in Node's
    # framing) and the same socket; the workers never notice.
    pids = wait_for(lambda: _two_pids(port), 10, "both workers answering again")
    assert pids == {w["pid"] for w in rows} == {w["pid"] for w in cu.ls()}


def _two_pids(port: int) -> set[int] | None:
    try:
        pids = {pid_of(get(port, expect=200)) for _ in range(4)}
    except OSError:
        return None
    return pids if len(pids) == 2 else None


def test_shutdown_with_message_stops_a_drained_worker_with_a_message(cu, node_apps):
    port = free_port()
    cu.write(
        "ecosystem.yaml",
        f"""apps:
  - name: web
    script: {node_apps / "express_app.js"}
    exec_mode: cluster
    shutdown_with_message: true
    env:
      APP_PORT: "{port}"
""",
    )
    assert cu.run("up", "-d").returncode == 0
    old = cu.ls()[0]["pid"]
    assert cu.run("reload", "web").returncode == 0
    wait_for(lambda: "shutdown message handled" in logs(cu, "web"), 10, "the message")
    wait_for(lambda: f"old worker {old} exited with code 0" in logs(cu, "web"), 10, "exit")
    assert "SIGINT handler ran" not in logs(cu, "web")
