"""asgi:/wsgi: keys, start --asgi, $NAME expansion, the web extra, shared-mode readiness."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from support import Env, free_port, get, wait_for
from test_web import assert_round_robin, setup_apps

from clusterui.core import config, hosted
from clusterui.core.expand import ExpandError, check_expansion, expand


def check(cu: Env, text: str) -> subprocess.CompletedProcess:
    setup_apps(cu)
    path = cu.write("ecosystem.yaml", text)
    r = cu.run("check", str(path))
    return r


def test_exactly_one_of_script_asgi_wsgi_with_file_and_line(cu):
    r = check(
        cu,
        """\
        apps:
          - name: a
            script: fastapi_main.py
            asgi: fastapi_main:app
          - name: b
            asgi: fastapi_main:app
            wsgi: flask_app:app
          - name: c
            asgi: fastapi_main
          - name: d
            wsgi: "flask_app:app; rm -rf /"
        """,
    )
    assert r.returncode == 2, r.stdout + r.stderr
    err = r.stderr
    assert "ecosystem.yaml:4: asgi: 'script' and 'asgi' cannot be used together" in err, err
    assert "ecosystem.yaml:7: wsgi: 'asgi' and 'wsgi' cannot be used together" in err, err
    assert "ecosystem.yaml:9: asgi: must be MODULE:ATTR (e.g. main:app)" in err, err
    assert "ecosystem.yaml:11: wsgi: must be MODULE:ATTR" in err, err


def test_valid_hosted_app_checks_and_describes(cu):
    r = check(
        cu,
        """\
        apps:
          - wsgi: mysite.wsgi:application
            args: --threads 4 --port ${PORT_HINT}
        """,
    )
    assert r.returncode == 0, r.stderr
    spec = config.load_ecosystem(cu.root / "ecosystem.yaml").apps[0]
    assert spec.name == "mysite" and spec.wsgi == "mysite.wsgi:application"
    assert spec.argv()[1:6] == [
        "-m",
        "clusterui.web",
        "wsgi",
        "mysite.wsgi:application",
        "--threads",
    ]


def test_missing_web_extra_is_one_line_naming_it(cu, monkeypatch):
    monkeypatch.setattr(hosted, "missing", lambda kind: "uvicorn")
    with pytest.raises(config.ConfigError) as err:
        config.spec_from_mapping({"asgi": "main:app"}, str(cu.root), source="x.yaml", line=3)
    assert "pip install 'clusterui[web]'" in str(err.value)
    # The host itself says the same when run by a Python without the extra.
    code = (
        "import sys; sys.modules['uvicorn'] = None; from clusterui.web.cli import main;"
        " sys.exit(main(['asgi', 'main:app']))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "clusterui: asgi apps need the 'web' extra (uvicorn is missing): "
        "pip install 'clusterui[web]'"
    ]


def test_bad_expansion_syntax_is_a_file_line_error(cu):
    r = check(
        cu,
        """\
        apps:
          - name: a
            script: fastapi_main.py
            args: --port ${PORT
        """,
    )
    assert r.returncode == 2
    assert "ecosystem.yaml:4: args: unclosed '${'" in r.stderr, r.stderr


def test_expand_words():
    env = {"PORT": "8123", "NAME": "x"}
    assert expand("--port=$PORT", env) == "--port=8123"
    assert expand("${NAME}_y", env) == "x_y"
    assert expand("$$PORT costs $5", env) == "$PORT costs $5"
    assert expand("a$", env) == "a$"
    with pytest.raises(ExpandError, match=r"\$MISSING is not set"):
        expand("$MISSING", env)
    assert check_expansion("${1x}") is not None
    assert check_expansion("$${literal") is None


def test_start_asgi_on_the_command_line_round_robin(cu):
    setup_apps(cu)
    port = free_port()
    r = cu.run(
        "start",
        "--asgi",
        "fastapi_main:app",
        "-i",
        "2",
        "--listen",
        f"127.0.0.1:{port}",
        "--",
        "--no-access-log",
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    wait_for(lambda: all(w["status"] == "online" for w in cu.ls()), 30, "online")
    assert_round_robin([get(port) for _ in range(6)], 2)
    assert "asgi fastapi_main:app --no-access-log" in cu.run("describe", "fastapi_main").stdout
    r = cu.run("start", "app.py", "--asgi", "x:y")
    assert r.returncode == 2 and "one of SCRIPT, --asgi" in r.stderr


def test_unset_variable_fails_that_start_with_its_name(cu):
    cu.write("app.py", "import time\ntime.sleep(60)\n")
    cu.write(
        "ecosystem.yaml",
        """\
        apps:
          - name: a
            script: app.py
            args: --x $NOT_THERE_AT_ALL
            autorestart: false
        """,
    )
    cu.run("up", "-d", timeout=30)
    wait_for(lambda: [w for w in cu.ls() if w["status"] == "errored"], 10, "errored")
    logs = cu.run("logs", "a").stdout
    assert "$NOT_THERE_AT_ALL is not set in the worker's environment" in logs, logs


SLOW_SHARED = """\
import os, socket, sys, time
time.sleep(float(os.environ["DELAY"]))  # importing a big app
sock = socket.socket(fileno=3)
print("accepting", flush=True)
while True:
    conn, _ = sock.accept()
    conn.recv(65536)
    conn.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\nConnection: close\\r\\n\\r\\nok")
    conn.close()
"""


def test_shared_mode_is_online_only_once_accepting_so_reload_rolls(cu):
    cu.write("slow.py", SLOW_SHARED)
    port = free_port()
    cu.write(
        "ecosystem.yaml",
        f"""\
        apps:
          - name: s
            script: slow.py
            instances: 2
            listen: 127.0.0.1:{port}
            dispatch: shared
            listen_timeout: 20s
            kill_signal: SIGTERM
            env:
              DELAY: "1.5"
        """,
    )
    started = time.monotonic()
    r = cu.run("up", "-d", timeout=60)
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - started >= 1.5  # `up -d` waited for the accept
    assert all(w["status"] == "online" for w in cu.ls())
    old = {w["pid"] for w in cu.ls()}
    reload = subprocess.Popen(
        [sys.executable, "-m", "clusterui", "reload", "s"], env=cu.env, stdout=subprocess.PIPE
    )
    try:
        # While the first new worker sleeps, it is launching and both old ones serve.
        def one_launching() -> list[dict]:
            rows = cu.ls()
            return rows if [w["status"] for w in rows].count("launching") == 1 else []

        rows = wait_for(one_launching, 10, "a launching replacement")
        launching = next(w for w in rows if w["status"] == "launching")
        assert launching["pid"] not in old and os.path.exists(f"/proc/{launching['pid']}")
        # One at a time: the other instance is online meanwhile, and the port answers.
        assert [w["status"] for w in rows].count("online") == 1
        assert get(port) == "ok"
    finally:
        reload.communicate(timeout=60)
    assert reload.returncode == 0
    assert not old & {w["pid"] for w in cu.ls()}


def test_request_stats_rate_percentiles_and_quiet_when_idle():
    from clusterui import reqstats

    now = [0.0]
    stats = reqstats.RequestStats(clock=lambda: now[0])
    for ms in range(1, 101):  # 100 requests of 1..100 ms, one after the other
        started = stats.begin()
        now[0] += ms / 1000
        stats.end(started)
    now[0] = 10.0
    figures = stats.report()
    assert figures[reqstats.REQ_RATE] == 10.0  # 100 requests over 10 s
    assert figures[reqstats.IN_FLIGHT] == 0
    assert figures[reqstats.P50] == 50.0 and figures[reqstats.P99] == 99.0
    now[0] = 11.0
    assert stats.report() == {reqstats.REQ_RATE: 0.0}  # idle: one 0, latencies kept
    now[0] = 12.0
    assert stats.report() == {}  # and then nothing
    stats.begin()
    now[0] = 13.0
    assert stats.report() == {reqstats.IN_FLIGHT: 1}


NODELAY_SHARED = """\
import socket
sock = socket.socket(fileno=3)  # what uvicorn --fd 3 does: it never sets TCP_NODELAY
while True:
    conn, _ = sock.accept()
    conn.recv(65536)
    flag = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    body = f"nodelay {flag}".encode()
    conn.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n%s" % (len(body), body))
    conn.close()
"""


def test_shared_fd_3_connections_have_tcp_nodelay(cu):
    cu.write("nodelay.py", NODELAY_SHARED)
    port = free_port()
    cu.write(
        "ecosystem.yaml",
        f"""\
        apps:
          - name: n
            script: nodelay.py
            listen: 127.0.0.1:{port}
            dispatch: shared
        """,
    )
    assert cu.run("up", "-d", timeout=60).returncode == 0
    assert get(port) == "nodelay 1"


def test_drain_answers_pipelined_requests_and_closes_idle_after_grace(tmp_path):
    """The host alone (no supervisor): SIGTERM starts the same drain a reload does."""
    import shutil
    import signal
    import socket

    from test_web import APPS

    shutil.copy(APPS / "fastapi_main.py", tmp_path / "fastapi_main.py")
    port = free_port()
    host = subprocess.Popen(
        [sys.executable, "-m", "clusterui.web", "asgi", "fastapi_main:app", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k != "CLUSTERUI_CHANNEL_FD"},
    )
    try:
        wait_for(lambda: _answers(port), 30, "the host serving")
        busy = socket.create_connection(("127.0.0.1", port), timeout=10)
        idle = socket.create_connection(("127.0.0.1", port), timeout=10)
        for s in (busy, idle):
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _read_responses(s, 1)[0].startswith(b"HTTP/1.1 200")
        host.send_signal(signal.SIGTERM)
        drain_began = time.monotonic()
        time.sleep(0.3)
        # Three pipelined requests on a kept-alive connection during the drain: all
        # answered, and only the last answer closes the connection.
        busy.sendall(b"GET /sleep?ms=20 HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
        answers = _read_responses(busy, 3)
        assert [b"connection: close" in a.lower() for a in answers] == [False, False, True]
        assert busy.recv(100) == b""  # then it closed
        # The idle one was kept for the grace (1 s), then closed without an answer.
        assert idle.recv(100) == b""
        assert time.monotonic() - drain_began >= 0.8
        assert host.wait(10) == 0
    finally:
        if host.poll() is None:
            host.kill()
            host.wait()


def _answers(port: int) -> bool:
    try:
        return get(port).status == 200
    except OSError:
        return False


def _read_responses(sock, n: int) -> list[bytes]:
    """n HTTP responses with Content-Length bodies, as raw bytes each."""
    data, out = b"", []
    while len(out) < n:
        head_end = data.find(b"\r\n\r\n")
        if head_end >= 0:
            head = data[:head_end].lower()
            length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
            end = head_end + 4 + length
            if len(data) >= end:
                out.append(data[:end])
                data = data[end:]
                continue
        chunk = sock.recv(65536)
        assert chunk, (out, data)
        data += chunk
    return out
