"""clusterui.worker: every way of serving, in real worker processes."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections import Counter

import pytest
from dispatch_harness import (
    ECHO_WORKER,
    WEB,
    instance_of,
    kill_group,
    read_all,
)
from support import free_port, http_worker, wait_for

from clusterui.dispatch import protocol as proto

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def procs():
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        kill_group(p)


def spawn(procs, argv, env=None, pass_fds=(), **kw) -> subprocess.Popen:
    full = {k: v for k, v in os.environ.items() if k not in ("CLUSTERUI_CHANNEL_FD", "PORT")}
    full.update(env or {})
    p = subprocess.Popen(argv, env=full, pass_fds=pass_fds, start_new_session=True, **kw)
    procs.append(p)
    return p


def write(tmp_path, name: str, source: str):
    path = tmp_path / name
    path.write_text(source)
    return path


def connectable(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def http_get(port: int, path: str = "/") -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        return read_all(s).decode().partition("\r\n\r\n")[2]


class Channel:
    """Play the dispatcher by hand: one worker, one channel, fds we accepted ourselves."""

    def __init__(self) -> None:
        self.ours, self.theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)

    def spawn(self, procs, argv, env=None, **kw) -> subprocess.Popen:
        env = {"CLUSTERUI_CHANNEL_FD": str(self.theirs.fileno()), **(env or {})}
        p = spawn(procs, argv, env, pass_fds=(self.theirs.fileno(),), **kw)
        self.theirs.close()
        return p

    def recv(self, timeout: float = 10.0) -> dict:
        assert select.select([self.ours], [], [], timeout)[0], "no message from the worker"
        return json.loads(self.ours.recv(proto.MAX_MESSAGE))

    def hand(self, n: int, line: bytes = b"hi\n") -> list[socket.socket]:
        """n client connections, handed over in one conn message (a batch)."""
        clients, served = [], []
        for _ in range(n):
            c = socket.create_connection(self.listener.getsockname(), timeout=10)
            c.sendall(line)
            clients.append(c)
            served.append(self.listener.accept()[0])
        proto.send(self.ours, proto.CONN, [s.fileno() for s in served], block=True)
        for s in served:
            s.close()
        return clients

    def closed_total(self, want: int, timeout: float = 10.0) -> int:
        total = 0
        deadline = time.monotonic() + timeout
        while total < want and time.monotonic() < deadline:
            msg = self.recv(max(0.1, deadline - time.monotonic()))
            if msg["t"] == "closed":
                total += msg["n"]
        return total

    def close(self) -> None:
        self.ours.close()
        self.listener.close()


@pytest.fixture
def channel():
    ch = Channel()
    yield ch
    ch.close()


# ---- the module itself ---------------------------------------------------------------


def test_worker_module_imports_nothing_heavy():
    code = (
        "import sys, clusterui.worker as w; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('textual', 'rich', 'psutil', 'yaml', 'watchfiles') or m == 'clusterui.dispatch.core'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_instance_and_metrics_outside_clusterui(monkeypatch):
    from clusterui import worker

    monkeypatch.delenv("CLUSTERUI_INSTANCE", raising=False)
    monkeypatch.delenv("NODE_APP_INSTANCE", raising=False)
    assert worker.instance() == 0
    monkeypatch.setenv("NODE_APP_INSTANCE", "4")
    assert worker.instance() == 4
    monkeypatch.setenv("CLUSTERUI_INSTANCE", "2")
    assert worker.instance() == 2
    assert worker.mode() == "standalone"
    worker.metrics(queue=3)  # nobody to tell: a no-op
    with pytest.raises(TypeError, match="'queue' must be a number"):
        worker.metrics(queue="three")
    assert worker.draining is False


# ---- asyncio streams ---------------------------------------------------------------------


def test_handed_batch_is_served_and_closes_are_reported(channel, procs, tmp_path):
    script = write(tmp_path, "echo.py", ECHO_WORKER)
    worker = channel.spawn(procs, [sys.executable, str(script)], {"CLUSTERUI_INSTANCE": "6"})
    assert channel.recv() == {"t": "ready"}
    clients = channel.hand(5)
    answers = [read_all(c).decode().split() for c in clients]
    assert [a[0] for a in answers] == ["6"] * 5 and {a[2] for a in answers} == {"channel"}
    assert channel.closed_total(5) == 5
    channel.ours.close()  # the dispatcher is gone: the worker leaves
    assert worker.wait(timeout=10) == 0


def test_drain_closes_idle_keepalive_and_exits_0(make):
    h = make()
    worker = h.add_worker(1)
    h.wait_ready(1)
    idle = h.connect()
    idle.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    first = idle.recv(4096).decode()
    assert "web instance 1" in first and "Connection: close" not in first
    h.drain(1)
    started = time.monotonic()
    assert worker.wait(timeout=10) == 0
    assert time.monotonic() - started < 5
    assert idle.recv(4096) == b""  # closed by the worker, between two requests
    idle.close()


def test_keepalive_request_during_drain_gets_connection_close(channel, procs):
    worker = channel.spawn(procs, [sys.executable, str(WEB)], {"CLUSTERUI_INSTANCE": "1"})
    assert channel.recv() == {"t": "ready"}
    (client,) = channel.hand(1, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"Connection: close" not in client.recv(4096)
    proto.send(channel.ours, proto.DRAIN, block=True)
    # The connection is busy (a request on it every few ms): each answer comes until
    # the worker has seen the drain, then it says Connection: close and hangs up.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = read_answer(client)
        if b"Connection: close" in answer:
            break
    else:
        raise AssertionError("never answered with Connection: close")
    assert client.recv(100) == b""
    assert worker.wait(timeout=10) == 0


def read_answer(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += sock.recv(4096)
    return head + b"\r\n\r\n" + body


def test_standalone_binds_port(procs):
    port = free_port()
    spawn(procs, [sys.executable, str(WEB)], {"PORT": str(port)})
    wait_for(lambda: connectable(port), what="web.py listening")
    assert http_get(port).startswith("hello from web instance 0 pid ")


def test_channel_for_ready_only_when_not_handing_off(channel, procs):
    # A fork-mode app with wait_ready: the supervisor's channel carries ready and
    # drain, the app binds $PORT itself.
    port = free_port()
    env = {"PORT": str(port), "CLUSTERUI_DISPATCH": "none"}
    worker = channel.spawn(procs, [sys.executable, str(WEB)], env)
    assert channel.recv() == {"t": "ready"}
    assert http_get(port).startswith("hello from web instance 0 pid ")
    proto.send(channel.ours, proto.DRAIN, block=True)
    assert worker.wait(timeout=10) == 0


def test_standalone_reuseport_copies_share_the_port(procs):
    port = free_port()
    for _ in range(2):
        spawn(procs, [sys.executable, str(WEB), "--reuseport", "--port", str(port)])
    wait_for(lambda: connectable(port), what="listening")
    pids = set()
    deadline = time.monotonic() + 10
    while len(pids) < 2 and time.monotonic() < deadline:
        pids.add(http_get(port).split()[-1])
    assert len(pids) == 2


def test_sigterm_drains_and_exits_0(procs, tmp_path):
    port = free_port()
    script = write(tmp_path, "echo.py", ECHO_WORKER)
    worker = spawn(procs, [sys.executable, str(script)], {"PORT": str(port)})
    wait_for(lambda: connectable(port), what="listening")
    held = socket.create_connection(("127.0.0.1", port), timeout=10)
    held.sendall(b"hold\n")
    assert held.recv(100).split()[2] == b"standalone"
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=10) == 0
    assert held.recv(100) == b""
    held.close()


SHARED_TRAMPOLINE = """
import os, sys
fd = int(sys.argv[1])
os.dup2(fd, 3)
os.close(fd)
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()))
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""

ENV_ECHO = ECHO_WORKER.replace(
    '{worker.mode()}\\n"', "{worker.mode()} {os.environ.get('LISTEN_FDS')}\\n\""
)


def test_shared_mode_serves_fd_3(procs, tmp_path):
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(64)
    script = write(tmp_path, "echo.py", ENV_ECHO)
    workers, channels = [], []
    for i in (1, 2):
        # As the supervisor does with wait_ready: a channel beside fd 3, for `ready` only.
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        workers.append(
            spawn(
                procs,
                [sys.executable, "-c", SHARED_TRAMPOLINE, str(lsock.fileno()), str(script)],
                {"CLUSTERUI_INSTANCE": str(i), "CLUSTERUI_CHANNEL_FD": str(theirs.fileno())},
                pass_fds=(lsock.fileno(), theirs.fileno()),
            )
        )
        theirs.close()
        assert select.select([ours], [], [], 10)[0]
        assert json.loads(ours.recv(100)) == {"t": "ready"}
        channels.append(ours)  # closing it would tell the worker to leave
    answers = []
    for _ in range(12):
        with socket.create_connection(lsock.getsockname(), timeout=10) as c:
            c.sendall(b"hi\n")
            answers.append(read_all(c).decode().split())
    # Served by the workers (the kernel spreads them), each on the inherited socket,
    # which it hid from its own children.
    assert {a[2] for a in answers} == {"shared"} and {a[3] for a in answers} == {"None"}
    assert {a[0] for a in answers} <= {"1", "2"}
    lsock.close()
    for w in workers:
        w.send_signal(signal.SIGTERM)
        assert w.wait(timeout=10) == 0
    for c in channels:
        c.close()


# ---- asyncio protocols --------------------------------------------------------------------

PROTOCOL_WORKER = """
import asyncio, os
from clusterui import worker

class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
    def data_received(self, data):
        self.transport.write(b"pong " + str(worker.instance()).encode() + b"\\n")

class Polite(Echo):
    def drain(self):
        self.transport.write(b"bye\\n")
        self.transport.close()

async def main():
    cls = Polite if os.environ.get("POLITE") else Echo
    server = await worker.create_server(cls, idle_grace=0.3)
    await server.serve_forever()

asyncio.run(main())
"""


@pytest.mark.parametrize("polite", [False, True])
def test_protocol_server_under_dispatcher(make, polite):
    h = make()
    env = {"POLITE": "1"} if polite else {}
    workers = {w: h.add_worker(w, source=PROTOCOL_WORKER, env=env) for w in (1, 2)}
    h.wait_ready(1)
    h.wait_ready(2)
    conns = [h.connect() for _ in range(4)]
    seen = []
    for c in conns:
        c.sendall(b"ping")
        seen.append(c.recv(100))
    assert sorted(seen) == [b"pong 1\n", b"pong 1\n", b"pong 2\n", b"pong 2\n"]
    h.wait_stats(lambda s: all(w["open"] == 2 for w in s["workers"].values()))
    h.drain(1)
    assert workers[1].wait(timeout=10) == 0
    ends = [read_all(c) for c, s in zip(conns, seen, strict=True) if s == b"pong 1\n"]
    assert ends == ([b"bye\n"] * 2 if polite else [b""] * 2)
    assert workers[2].poll() is None
    for c in conns:
        c.close()


# ---- blocking servers ---------------------------------------------------------------------

HTTP_WORKER = http_worker(
    """
    if self.path == "/slow":
        time.sleep(1)
    body = f"{worker.instance()} {os.getpid()} {worker.mode()}\\n".encode()
    """
)

WSGI_WORKER = """
import os
from clusterui import worker

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"wsgi {worker.instance()} {environ['PATH_INFO']}".encode()]

class Quiet(__import__("wsgiref.simple_server").simple_server.WSGIRequestHandler):
    def log_message(self, *args):
        pass

with worker.make_wsgi_server(app, handler_cls=Quiet) as httpd:
    httpd.serve_forever()
"""

ACCEPT_LOOP_WORKER = """
from clusterui import worker

with worker.listening_socket() as ls:
    while True:
        conn, addr = ls.accept()  # after a drain: SystemExit(0)
        with conn:
            conn.recv(100)
            conn.sendall(f"loop {worker.instance()} {addr[0]}\\n".encode())
"""


def test_threading_http_server_under_dispatcher(make):
    h = make()
    workers = {w: h.add_worker(w, source=HTTP_WORKER, stdout=subprocess.PIPE) for w in (1, 2)}
    h.wait_ready(1)
    h.wait_ready(2)
    order = [instance_of(h.get()) for _ in range(6)]
    assert order == order[:2] * 3 and sorted(order[:2]) == [1, 2]
    stats = h.wait_stats(lambda s: all(w["open"] == 0 for w in s["workers"].values()))
    assert stats["workers"]["1"]["handed"] == 3  # closes are counted in blocking mode too
    # A keep-alive connection on worker 1 and a slow request in flight there.
    keep = h.connect()
    keep.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    first = read_answer(keep)
    slow = h.connect()
    slow.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    wid = instance_of(first.partition(b"\r\n\r\n")[2].decode())
    other = 3 - wid
    assert b"Connection: close" not in first
    h.wait_stats(lambda s: s["workers"][str(other)]["open"] == 1)  # the slow one went there
    h.drain(other)
    assert workers[other].stdout.readline() == b"draining\n"
    assert [instance_of(h.get()) for _ in range(3)] == [wid] * 3
    assert instance_of(read_all(slow).decode().partition("\r\n\r\n")[2]) == other
    assert workers[other].wait(timeout=10) == 0
    assert workers[other].stdout.read() == b"drained\n"
    # Drain the keep-alive holder: its next answer says Connection: close.
    h.drain(wid)
    assert workers[wid].stdout.readline() == b"draining\n"
    keep.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"Connection: close" in read_answer(keep)
    assert keep.recv(100) == b""
    assert workers[wid].wait(timeout=10) == 0
    for p in workers.values():
        p.stdout.close()
    keep.close()
    slow.close()


def test_wsgiref_under_dispatcher(make):
    h = make()
    worker = h.add_worker(4, source=WSGI_WORKER)
    h.wait_ready(4)
    assert h.get("/here") == "wsgi 4 /here"
    assert h.get("/there") == "wsgi 4 /there"
    h.wait_stats(lambda s: s["workers"]["4"] == {"handed": 2, "open": 0})
    h.drain(4)
    assert worker.wait(timeout=10) == 0


def test_plain_accept_loop_takes_batches_and_exits_on_drain(channel, procs, tmp_path):
    script = write(tmp_path, "loop.py", ACCEPT_LOOP_WORKER)
    worker = channel.spawn(procs, [sys.executable, str(script)], {"CLUSTERUI_INSTANCE": "3"})
    assert channel.recv() == {"t": "ready"}
    clients = channel.hand(4)
    assert [read_all(c) for c in clients] == [b"loop 3 127.0.0.1\n"] * 4
    assert channel.closed_total(4) == 4
    proto.send(channel.ours, proto.DRAIN, block=True)
    assert worker.wait(timeout=10) == 0


def test_blocking_servers_standalone_and_shared(procs, tmp_path):
    port = free_port()
    script = write(tmp_path, "httpworker.py", HTTP_WORKER)
    spawn(procs, [sys.executable, str(script)], {"PORT": str(port), "CLUSTERUI_INSTANCE": "5"})
    wait_for(lambda: connectable(port), what="listening")
    assert http_get(port).split()[::2] == ["5", "standalone"]
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)
    spawn(
        procs,
        [sys.executable, "-c", SHARED_TRAMPOLINE, str(lsock.fileno()), str(script)],
        pass_fds=(lsock.fileno(),),
    )
    assert http_get(lsock.getsockname()[1]).split()[::2] == ["0", "shared"]
    lsock.close()


def test_metrics_reach_the_channel(channel, procs, tmp_path):
    script = write(tmp_path, "echo.py", ECHO_WORKER)
    channel.spawn(procs, [sys.executable, str(script)])
    assert channel.recv() == {"t": "ready"}
    (client,) = channel.hand(1, b"metrics\n")
    read_all(client)
    messages = [channel.recv(), channel.recv()]
    kinds = Counter(m["t"] for m in messages)
    assert kinds == {"metrics": 1, "closed": 1}
    assert next(m for m in messages if m["t"] == "metrics")["values"] == {
        "requests": 7,
        "load": 0.5,
    }


def test_piled_up_metrics_go_out_in_datagrams_that_fit() -> None:
    """Names piled up while the channel was full are split, never one oversized datagram
    (which made the helper raise and the worker crash)."""
    from clusterui.dispatch import protocol as proto
    from clusterui.worker import _metrics_chunk

    values = {f"flood{i}": float(i) for i in range(20_000)}
    values["x" * 70_000] = 1.0  # can never fit: dropped
    left = dict(values)
    sent: dict[str, float] = {}
    while left:
        data, names = _metrics_chunk(left)
        if data is not None:
            assert len(data) <= proto.MAX_MESSAGE
            sent.update(proto.decode(data)["values"])
        for name in names:
            del left[name]
    assert sent == {k: v for k, v in values.items() if len(k) < 70_000}
