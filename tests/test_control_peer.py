"""The control socket is its owner's alone: created 0600 with no window, and every
connection's peer uid checked (SO_PEERCRED), in a real ControlServer in this process."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import socket
import stat
import tempfile
from pathlib import Path
from typing import Any

import pytest
from support import ask_as_nobody

from clusterui.core.control import ControlServer, OpError, peer_uid

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="connecting as another uid needs root (setuid); CI runs as root"
)


async def handler(conn: Any, op: str, args: dict[str, Any]) -> Any:
    if op == "fail":
        raise OpError("no such thing", 3)
    return {"op": op, "args": args}


async def server(tmp_path: Path) -> ControlServer:
    srv = ControlServer(str(tmp_path / "s.sock"), handler)
    await srv.start()
    return srv


async def ask(path: str, request: bytes) -> dict[str, Any]:
    reader, writer = await asyncio.open_unix_connection(path, limit=1 << 22)
    writer.write(request)
    line = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    return json.loads(line)


def test_peer_uid_is_the_uid_at_the_other_end():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        assert peer_uid(a) == os.getuid()


@needs_root
def test_peer_uid_reports_another_uid():
    nobody = pwd.getpwnam("nobody").pw_uid
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(f"\0clusterui-test-{os.getpid()}")  # abstract: no file modes involved
    listener.listen()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child connects as nobody
        try:
            os.setuid(nobody)
            c = socket.socket(socket.AF_UNIX)
            c.connect(listener.getsockname())
            c.recv(1)
        finally:
            os._exit(0)
    try:
        listener.settimeout(10)
        conn, _ = listener.accept()
        with conn:
            assert peer_uid(conn) == nobody != os.getuid()
    finally:
        listener.close()
        os.waitpid(pid, 0)


async def test_the_socket_is_created_0600_and_the_umask_is_restored(tmp_path):
    os.chmod(tmp_path, 0o755)
    before = os.umask(0o022)
    try:
        srv = await server(tmp_path)
        assert os.umask(0o022) == 0o022  # start() put ours back
        mode = (tmp_path / "s.sock").stat().st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        await srv.close()
    finally:
        os.umask(before)


async def test_our_own_uid_is_answered(tmp_path):
    srv = await server(tmp_path)
    path = str(tmp_path / "s.sock")
    assert await ask(path, b'{"id":7,"op":"ping","args":{"x":1}}\n') == {
        "id": 7,
        "ok": True,
        "result": {"op": "ping", "args": {"x": 1}},
    }
    assert await ask(path, b'{"id":8,"op":"fail"}\n') == {
        "id": 8,
        "ok": False,
        "error": "no such thing",
        "code": 3,
    }
    await srv.close()


@needs_root
async def test_another_uid_is_refused_even_when_the_file_modes_allow_it():
    top = Path(tempfile.mkdtemp(prefix="cu-peer-", dir="/tmp"))  # pytest's tmp is 0700
    try:
        srv = await server(top)
        path = top / "s.sock"
        os.chmod(top, 0o755)
        os.chmod(path, 0o777)  # only SO_PEERCRED stands between nobody and the server
        said = await asyncio.get_running_loop().run_in_executor(
            None, ask_as_nobody, str(path), b'{"id":1,"op":"ping"}\n'
        )
        assert said == "connected; refused"
        assert not srv.connections
        assert (await ask(str(path), b'{"id":1,"op":"ping"}\n'))["ok"] is True
        await srv.close()
    finally:
        shutil.rmtree(top, ignore_errors=True)


async def test_the_socket_has_mode_0600_from_its_creation_not_only_after(tmp_path, monkeypatch):
    seen = []
    real_chmod = os.chmod

    def spy(path, mode, *args, **kwargs):
        if str(path).endswith("s.sock"):
            seen.append(stat.S_IMODE(os.stat(path).st_mode))  # as bind() created it
        return real_chmod(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "chmod", spy)
    srv = await server(tmp_path)
    await srv.close()
    assert seen == [0o600]


async def test_a_socket_path_of_107_bytes_works_and_108_is_refused(tmp_path):
    base = str(tmp_path / "d") + "/"
    os.makedirs(base)
    ok = base + "x" * (107 - len(base))
    srv = ControlServer(ok, handler)
    await srv.start()
    assert (await ask(ok, b'{"id":1,"op":"ping"}\n'))["ok"] is True
    await srv.close()
    long = base + "y" * (108 - len(base))
    with pytest.raises(OpError) as err:
        await ControlServer(long, handler).start()
    assert err.value.code == 2
    assert err.value.message == (
        f"socket path {long} is longer than 107 bytes; set CLUSTERUI_HOME to a shorter path"
    )


async def test_a_large_request_is_answered(tmp_path):
    srv = await server(tmp_path)
    blob = "z" * 500_000  # far over asyncio's 64 KiB default line limit, under ours
    request = json.dumps({"id": 1, "op": "big", "args": {"b": blob}}).encode() + b"\n"
    answer = await ask(str(tmp_path / "s.sock"), request)
    assert answer["ok"] is True and answer["result"]["args"]["b"] == blob
    await srv.close()


async def test_a_burst_of_connections_waits_in_the_backlog(tmp_path):
    srv = await server(tmp_path)
    path = str(tmp_path / "s.sock")
    socks, refused = [], 0
    try:
        for _ in range(500):  # the loop does not run meanwhile: nothing is accepted yet
            s = socket.socket(socket.AF_UNIX)
            s.setblocking(False)
            socks.append(s)
            try:
                s.connect(path)
            except BlockingIOError:
                refused += 1
        assert refused == 0, f"{refused} of 500 connects refused (backlog too small)"
    finally:
        for s in socks:
            s.close()
        await srv.close()
