"""Log capture (core/logs.py) with real pipes and real writer processes."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import os
import re
import signal
import struct
import subprocess
import sys
import termios
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import wait_for_async as until

from clusterui.core.logs import (
    MAX_LINE,
    LogHub,
    LogLine,
    WorkerLogs,
    compile_date_format,
    tail_file,
)
from clusterui.core.spec import AppSpec

pytestmark = pytest.mark.timeout(30)


class Writer:
    """A writer process whose stdout/stderr are pipes; the test keeps the read ends."""

    def __init__(self, code: str, stdin: bool = False) -> None:
        self.out_r, out_w = os.pipe()
        self.err_r, err_w = os.pipe()
        self.stdin_w: int | None = None
        stdin_r = subprocess.DEVNULL
        if stdin:
            stdin_r, self.stdin_w = os.pipe()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code)],
            stdin=stdin_r,
            stdout=out_w,
            stderr=err_w,
            start_new_session=True,
        )
        for fd in (out_w, err_w, stdin_r if stdin else None):
            if fd is not None:
                os.close(fd)

    def send(self, text: str) -> None:
        assert self.stdin_w is not None
        os.write(self.stdin_w, text.encode())

    def close_stdin(self) -> None:
        if self.stdin_w is not None:
            os.close(self.stdin_w)
            self.stdin_w = None

    def kill(self) -> None:
        self.close_stdin()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def spawn() -> Iterator[Callable[..., Writer]]:
    started: list[Writer] = []

    def start(code: str, stdin: bool = False) -> Writer:
        w = Writer(code, stdin)
        started.append(w)
        return w

    yield start
    for w in started:
        w.kill()


@pytest.fixture
async def hub(tmp_path: Path):
    h = LogHub(tmp_path / "logs")
    yield h
    await h.aclose(timeout=0.1)


def spec(**kw) -> AppSpec:
    return AppSpec(name=kw.pop("name", "app"), script="x.py", **kw)


def attach(hub: LogHub, w: Writer, worker: int = 0, sp: AppSpec | None = None) -> WorkerLogs:
    sp = sp or spec()
    return hub.attach(worker, sp.name, worker, sp, w.out_r, w.err_r)


async def closed(cap: WorkerLogs, timeout: float = 10.0) -> None:
    await asyncio.wait_for(cap.wait_closed(), timeout)


def texts(lines: list[LogLine]) -> list[str]:
    return [line.text for line in lines]


# ---- basics ----------------------------------------------------------------------------


async def test_lines_in_order_in_files_and_ring(hub, spawn, tmp_path):
    w = spawn(
        """
        import sys
        for i in range(3000):
            print(f"out {i}")
        sys.stdout.flush()
        sys.stderr.write("err a\\nerr b\\n")
        """
    )
    cap = attach(hub, w)
    await closed(cap)
    out = (tmp_path / "logs" / "app-0-out.log").read_text()
    assert out == "".join(f"out {i}\n" for i in range(3000))
    assert (tmp_path / "logs" / "app-0-err.log").read_text() == "err a\nerr b\n"
    recent = hub.recent([0], 4)
    assert texts(recent) == ["out 2998", "out 2999", "err a", "err b"]
    assert [r.stream for r in recent] == ["out", "out", "err", "err"]
    assert recent[0].to_dict() == {
        "worker": 0,
        "app": "app",
        "instance": 0,
        "stream": "out",
        "time": recent[0].time,
        "text": "out 2998",
    }
    assert abs(recent[0].time - time.time()) < 30


def _unread(fd: int) -> int:
    buf = fcntl.ioctl(fd, termios.FIONREAD, struct.pack("i", 0))
    return struct.unpack("i", buf)[0]


async def test_partial_lines_across_reads_are_joined(hub, tmp_path):
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    cap = hub.attach(0, "app", 0, spec(), out_r, err_r)
    try:
        for piece in (b"hel", b"lo\nwor", b"ld\nsec", b"ond\n"):
            os.write(out_w, piece)
            # The capture has read this piece before the next one is written.
            await until(lambda: _unread(out_r) == 0, what="piece read")
    finally:
        os.close(out_w)
        os.close(err_w)
    await closed(cap)
    assert (tmp_path / "logs" / "app-0-out.log").read_bytes() == b"hello\nworld\nsecond\n"
    assert texts(hub.recent([0], 10)) == ["hello", "world", "second"]


async def test_final_partial_line_is_flushed_at_exit(hub, spawn, tmp_path):
    w = spawn(
        """
        import sys
        sys.stdout.write("a\\nb\\nlast words without newline")
        sys.stderr.write("also here")
        """
    )
    cap = attach(hub, w)
    await closed(cap)
    logs = tmp_path / "logs"
    assert (logs / "app-0-out.log").read_text() == "a\nb\nlast words without newline\n"
    assert (logs / "app-0-err.log").read_text() == "also here\n"
    assert set(texts(hub.recent([0], 2))) == {"last words without newline", "also here"}


async def test_sigkill_after_writing_loses_nothing(hub, spawn, tmp_path):
    w = spawn(
        """
        import os, sys
        sys.stdout.write("".join(f"last {i}\\n" for i in range(5000)))
        sys.stdout.write("no newline at the end")
        sys.stdout.flush()
        os.kill(os.getpid(), 9)
        """
    )
    cap = attach(hub, w)
    await closed(cap)
    assert w.proc.wait() == -signal.SIGKILL
    text = (tmp_path / "logs" / "app-0-out.log").read_text()
    assert text == "".join(f"last {i}\n" for i in range(5000)) + "no newline at the end\n"


async def test_close_drains_a_pipe_a_grandchild_keeps_open(hub, spawn, tmp_path):
    # The worker exits but a grandchild holds the pipe: no EOF. close() takes what was
    # written and finishes the capture.
    w = spawn(
        """
        import subprocess, sys
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        sys.stdout.write("".join(f"line {i}\\n" for i in range(2000)) + "partial")
        """
    )
    cap = attach(hub, w)
    assert w.proc.wait(timeout=10) == 0
    assert not cap.closed
    cap.close()
    await closed(cap, 1)
    text = (tmp_path / "logs" / "app-0-out.log").read_text()
    assert text == "".join(f"line {i}\n" for i in range(2000)) + "partial\n"


async def test_lines_reach_the_file_promptly_while_the_worker_runs(hub, spawn, tmp_path):
    w = spawn(
        """
        import sys
        print("hello", flush=True)
        sys.stdin.read()
        """,
        stdin=True,
    )
    cap = attach(hub, w)
    out = tmp_path / "logs" / "app-0-out.log"
    await until(lambda: out.exists() and out.read_text() == "hello\n", 2, "hello in the file")
    assert w.proc.poll() is None and not cap.closed
    w.close_stdin()
    await closed(cap)


async def test_reopen_after_the_file_was_moved_away(hub, tmp_path):
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    cap = hub.attach(0, "app", 0, spec(), out_r, err_r)
    log = tmp_path / "logs" / "app-0-out.log"
    try:
        os.write(out_w, b"before\n")
        await until(lambda: log.exists() and log.read_text() == "before\n", 2, "first line")
        log.rename(tmp_path / "moved.log")  # what logrotate does
        hub.reopen()
        os.write(out_w, b"after\n")
    finally:
        os.close(out_w)
        os.close(err_w)
    await closed(cap)
    assert (tmp_path / "moved.log").read_text() == "before\n"
    assert log.read_text() == "after\n"


async def test_one_pipe_for_both_streams(hub, tmp_path):
    r, w = os.pipe()
    cap = hub.attach(0, "app", 0, spec(), r, r)  # a worker started with 2>&1
    os.write(w, b"both\n")
    os.close(w)
    await closed(cap)
    assert [(ln.stream, ln.text) for ln in hub.recent([0], 5)] == [("out", "both")]
    assert (tmp_path / "logs" / "app-0-out.log").read_text() == "both\n"


async def test_a_failing_subscriber_does_not_stop_the_others(hub, spawn):
    errors: list[dict] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
    got: list[LogLine] = []
    hub.subscribe(lambda lines: 1 / 0)
    hub.subscribe(got.extend)
    w = spawn("print('a'); print('b')")
    await closed(attach(hub, w))
    await until(lambda: len(got) == 2, what="lines for the good subscriber")
    assert texts(got) == ["a", "b"]
    assert isinstance(errors[0]["exception"], ZeroDivisionError)


async def test_restart_appends_to_the_same_file(hub, spawn, tmp_path):
    for run in range(2):
        w = spawn(f"print('run {run}')")
        await closed(attach(hub, w))
    assert (tmp_path / "logs" / "app-0-out.log").read_text() == "run 0\nrun 1\n"
    assert texts(hub.recent([0], 10)) == ["run 0", "run 1"]


# ---- floods ----------------------------------------------------------------------------

FLOODER = """
    import select, sys
    out = sys.stdout
    i = 0
    while True:
        out.write("".join(f"flood {n} {'x' * 40}\\n" for n in range(i, i + 1000)))
        i += 1000
        if i >= 200000 and select.select([0], [], [], 0)[0]:
            break
    out.flush()
    sys.stderr.write(f"wrote {i}\\n")
"""

ECHO = """
    import sys
    for line in sys.stdin:
        print("pong", line.strip(), flush=True)
"""


async def test_flood_is_captured_whole_while_another_worker_stays_prompt(hub, spawn, tmp_path):
    echo = spawn(ECHO, stdin=True)
    attach(hub, echo, worker=1, sp=spec(name="echo"))
    flood = spawn(FLOODER, stdin=True)
    flood_cap = attach(hub, flood, worker=0, sp=spec(name="flood", log_max_size=None))
    await until(lambda: hub.recent([0], 1), what="the flood to start")
    worst = 0.0
    for k in range(20):
        sent = time.monotonic()
        echo.send(f"{k}\n")
        await until(lambda k=k: f"pong {k}" in texts(hub.recent([1], 3)), 5, f"pong {k}")
        worst = max(worst, time.monotonic() - sent)
    # Every round trip above happened while the flood was still going.
    assert flood.proc.poll() is None
    # Each pong had 5 s (a starved capture never answers); the speed is a figure.
    print(f"\nslowest round trip through the capture during the flood: {worst:.3f}s")
    flood.close_stdin()
    await closed(flood_cap, 20)
    wrote = (tmp_path / "logs" / "flood-0-err.log").read_text()
    n = int(re.fullmatch(r"wrote (\d+)\n", wrote).group(1))
    assert n >= 200000
    data = (tmp_path / "logs" / "flood-0-out.log").read_bytes()
    assert data.count(b"\n") == n
    assert data == "".join(f"flood {i} {'x' * 40}\n" for i in range(n)).encode()


async def test_long_line_is_split_into_pieces(hub, spawn, tmp_path):
    size = 200 * 1024
    w = spawn(
        f"""
        import sys
        sys.stdout.write("a" * 100 + "\\n")
        sys.stdout.write("b" * {size})
        sys.stdout.flush()
        sys.stdout.write("\\nshort\\n" + "c" * {MAX_LINE + 10})
        """
    )
    cap = attach(hub, w)
    await closed(cap)
    got = texts(hub.recent([0], 100))
    assert got[0] == "a" * 100
    bs = got[1 : 1 + -(-size // MAX_LINE)]
    assert all(len(piece) <= MAX_LINE for piece in got)
    assert "".join(bs) == "b" * size
    assert got[len(bs) + 1] == "short"
    assert got[len(bs) + 2 :] == ["c" * MAX_LINE, "c" * 10]
    lines = (tmp_path / "logs" / "app-0-out.log").read_text().split("\n")
    assert lines[:-1] == got  # the file has the same pieces, one per line


async def test_long_line_joined_from_a_partial_is_split(hub, tmp_path):
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    cap = hub.attach(0, "app", 0, spec(), out_r, err_r)
    try:
        for piece in (b"e" * 40000, b"e" * 40000 + b"\nf\n"):
            os.write(out_w, piece)
            await until(lambda: _unread(out_r) == 0, what="piece read")
    finally:
        os.close(out_w)
        os.close(err_w)
    await closed(cap)
    assert texts(hub.recent([0], 10)) == ["e" * MAX_LINE, "e" * (80000 - MAX_LINE), "f"]


async def test_invalid_utf8_is_replaced_in_memory_but_raw_in_files(hub, spawn, tmp_path):
    w = spawn(
        """
        import os
        os.write(1, b"caf\\xe9 ok\\n\\xff\\xfe\\ncaf\\xc3\\xa9\\n")
        """
    )
    cap = attach(hub, w)
    await closed(cap)
    assert texts(hub.recent([0], 3)) == ["caf\ufffd ok", "\ufffd\ufffd", "café"]
    raw = (tmp_path / "logs" / "app-0-out.log").read_bytes()
    assert raw == b"caf\xe9 ok\n\xff\xfe\ncaf\xc3\xa9\n"


# ---- timestamps ------------------------------------------------------------------------


@pytest.fixture
def tz_plus_0530(monkeypatch):
    monkeypatch.setenv("TZ", "XYZ-05:30")  # POSIX: five and a half hours east of UTC
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_date_format_tokens(tz_plus_0530):
    t = dt.datetime(2026, 11, 26, 21, 40, 1, 123456, dt.timezone(dt.timedelta(hours=5.5)))
    ts = t.timestamp()
    assert compile_date_format("YYYY-MM-DD HH:mm:ss")(ts) == b"2026-11-26 21:40:01: "
    assert compile_date_format("YYYY-MM-DD HH:mm:ss.SSS Z")(ts) == (
        b"2026-11-26 21:40:01.123 +05:30: "
    )
    assert compile_date_format("YY/M/D hh:mm A ZZ")(ts) == b"26/11/26 09:40 PM +0530: "
    assert compile_date_format("ddd MMM DD h a")(ts) == b"Thu Nov 26 9 pm: "
    # [...] is literal, and so are % and braces.
    assert compile_date_format("[at] YYYY 100% {x}")(ts) == b"at 2026 100% {x}: "
    # Milliseconds change within one second (no stale cache).
    stamp = compile_date_format("ss.SSS")
    assert stamp(ts) == b"01.123: " and stamp(ts + 0.5) == b"01.623: "


async def test_timestamp_prefix_in_files_only(hub, spawn, tmp_path):
    w = spawn("print('one'); print('two')")
    cap = attach(hub, w, sp=spec(log_date_format="YYYY-MM-DD HH:mm:ss.SSS"))
    await closed(cap)
    lines = hub.recent([0], 2)
    assert texts(lines) == ["one", "two"]
    got = (tmp_path / "logs" / "app-0-out.log").read_text().splitlines()
    for line, rec in zip(got, lines, strict=True):
        when = dt.datetime.fromtimestamp(rec.time)
        stamp = when.strftime("%Y-%m-%d %H:%M:%S.") + f"{int(rec.time * 1000) % 1000:03d}"
        assert line == f"{stamp}: {rec.text}"


# ---- rotation --------------------------------------------------------------------------


@pytest.mark.parametrize("retain", [0, 2])
async def test_rotation_keeps_disk_use_bounded(hub, spawn, tmp_path, retain):
    max_size = 10_000
    w = spawn(
        """
        import sys
        for i in range(5000):
            sys.stdout.write(f"line {i:05d} " + "x" * 30 + "\\n")
            if i % 97 == 0:
                sys.stdout.flush()
        """
    )
    sp = spec(log_max_size=max_size, log_retain=retain, log_date_format="HH:mm:ss")
    cap = attach(hub, w, sp=sp)
    await closed(cap)
    base = tmp_path / "logs" / "app-0-out.log"
    files = [base] + [Path(f"{base}.{i}") for i in range(1, retain + 1)]
    assert all(f.exists() for f in files)
    assert sorted(p.name for p in base.parent.glob("app-0-out.log*")) == sorted(
        f.name for f in files
    )
    sizes = [f.stat().st_size for f in files]
    assert all(s <= max_size for s in sizes), sizes
    assert sum(sizes) <= max_size * (retain + 1)
    # Newest files hold the newest lines, whole and contiguous across the rotations.
    lines = [ln for f in reversed(files) for ln in f.read_text().splitlines()]
    numbers = [
        int(re.fullmatch(r"\d\d:\d\d:\d\d: line (\d{5}) x{30}", ln).group(1)) for ln in lines
    ]
    assert numbers == list(range(numbers[0], 5000))
    # Rotated files were filled up to the limit (less than one 52-byte line short).
    assert all(s > max_size - 52 for s in sizes[1:]), sizes


async def test_no_rotation_without_a_size(hub, spawn, tmp_path):
    w = spawn("print('y' * 100000)")
    cap = attach(hub, w, sp=spec(log_max_size=None))
    await closed(cap)
    assert [p.name for p in (tmp_path / "logs").glob("app-0-out.log*")] == ["app-0-out.log"]
    assert (tmp_path / "logs" / "app-0-out.log").stat().st_size == 100001 + 1  # split at 64K


# ---- shared files ----------------------------------------------------------------------

HALVES = """
    import sys
    tag = sys.argv[1] if len(sys.argv) > 1 else "{tag}"
    for i in range(20000):
        line = f"{{tag}}-{{i:05d}}-" + tag * 150
        sys.stdout.write(line[:70]); sys.stdout.flush()
        sys.stdout.write(line[70:] + "\\n"); sys.stdout.flush() if i % 3 else None
"""


async def test_merge_logs_writers_never_interleave_partial_lines(hub, spawn, tmp_path):
    sp = spec(merge_logs=True, instances=2, exec_mode="cluster")
    caps = []
    for inst, tag in enumerate("AB"):
        w = spawn(HALVES.format(tag=tag))
        caps.append(hub.attach(inst, sp.name, inst, sp, w.out_r, w.err_r))
    await asyncio.wait_for(asyncio.gather(*(c.wait_closed() for c in caps)), 20)
    lines = (tmp_path / "logs" / "app-out.log").read_text().splitlines()
    seen = {"A": [], "B": []}
    for line in lines:
        m = re.fullmatch(r"([AB])-(\d{5})-([AB]{150})", line)
        assert m and m.group(3) == m.group(1) * 150, line[:100]
        seen[m.group(1)].append(int(m.group(2)))
    assert seen["A"] == list(range(20000)) and seen["B"] == list(range(20000))
    assert not (tmp_path / "logs" / "app-0-out.log").exists()


def test_paths():
    h = LogHub("/home/u/.clusterui/logs")
    logs = "/home/u/.clusterui/logs"
    assert h.paths("web", 1, spec()) == (f"{logs}/web-1-out.log", f"{logs}/web-1-err.log")
    assert h.paths("web", 1, spec(merge_logs=True)) == (
        f"{logs}/web-out.log",
        f"{logs}/web-err.log",
    )
    given = spec(out_file="/var/log/web.log", error_file="/var/log/web.err", instances=2)
    assert h.paths("web", 1, given) == ("/var/log/web-1.log", "/var/log/web-1.err")
    merged = spec(out_file="/var/log/web.log", merge_logs=True, instances=2)
    assert h.paths("web", 1, merged)[0] == "/var/log/web.log"
    single = spec(out_file="/var/log/web.log")  # one fork instance: as given (PM2)
    assert h.paths("web", 0, single)[0] == "/var/log/web.log"
    assert h.paths("web", 3, spec(out_file="/dev/null", instances=4))[0] == "/dev/null"


async def test_dev_null_and_unopenable_files(tmp_path, spawn):
    notices: list[tuple[str, str]] = []
    hub = LogHub(tmp_path / "logs", notice=lambda level, msg: notices.append((level, msg)))
    (tmp_path / "blocker").write_text("a file, not a directory")
    sp = spec(out_file="/dev/null", error_file=str(tmp_path / "blocker" / "err.log"))
    w = spawn("import sys; print('to nowhere'); sys.stderr.write('still kept\\n')")
    cap = attach(hub, w, worker=1, sp=sp)
    await closed(cap)
    await hub.aclose()
    # The refusal is in the worker's own lines too (a sys line), not only a notice.
    refusal, *output = hub.recent([1], 5)
    assert texts(output) == ["to nowhere", "still kept"]
    why = refusal.text
    assert why == f"cannot open log file {tmp_path}/blocker/err.log: File exists"
    # ...labelled with the worker's app and instance, so `logs app:1` shows it.
    assert (refusal.app, refusal.instance, refusal.stream) == ("app", 1, "sys")
    assert [lvl for lvl, _ in notices] == ["error"]
    assert notices[0][1] == why
    # Nothing but the supervisor's own line file.
    assert {p.name for p in (tmp_path / "logs").iterdir()} <= {"clusterui.log"}


async def test_stderr_is_captured_when_stdout_is_not(hub, spawn):
    """attach() takes None for a stream it is not given: the other is still read."""
    w = spawn("import sys; sys.stderr.write('only err\\n')")
    os.close(w.out_r)  # not given to the hub, so not its to close
    cap = hub.attach(0, "app", 0, spec(), None, w.err_r)
    await closed(cap)
    assert [(line.stream, line.text) for line in hub.recent([0], 5)] == [("err", "only err")]


async def test_a_log_folder_it_creates_is_private(hub, spawn, tmp_path):
    folder = tmp_path / "made" / "here"
    sp = spec(out_file=str(folder / "out.log"))
    await closed(attach(hub, spawn("print('x')"), sp=sp))
    assert (folder / "out.log").read_text() == "x\n"
    assert os.stat(folder).st_mode & 0o777 == 0o700  # other users cannot list the logs


async def test_a_shared_log_file_stays_open_while_any_writer_has_it(hub, spawn, tmp_path):
    sp = spec(merge_logs=True, instances=2, exec_mode="cluster")
    first = spawn("print('first')")
    second = spawn("import sys; print(sys.stdin.readline().strip())", stdin=True)
    caps = [attach(hub, first, worker=0, sp=sp), attach(hub, second, worker=1, sp=sp)]
    await closed(caps[0])  # the first writer is done with the file
    second.send("second\n")
    second.close_stdin()
    await closed(caps[1])
    await hub.aclose()
    assert (tmp_path / "logs" / "app-out.log").read_text() == "first\nsecond\n"


# ---- memory, subscribers, supervisor lines ---------------------------------------------


async def test_ring_is_bounded(tmp_path, spawn):
    hub = LogHub(tmp_path / "logs", ring_lines=100, ring_bytes=200_000)
    w = spawn("for i in range(20000): print(i)")
    await closed(attach(hub, w))
    assert texts(hub.recent([0], 1000)) == [str(i) for i in range(19900, 20000)]
    # Kept in memory: whole blocks as read, no more than needed for the last 100 lines.
    ring = hub._rings[0]
    assert ring.lines >= 100 and ring.lines - ring.entries[0][3] < 100
    # Long lines: the byte bound holds even when the line bound does not bite.
    w = spawn("for i in range(100): print(str(i) * 30000)")
    await closed(attach(hub, w, worker=1))
    got = texts(hub.recent([1], 1000))
    assert 0 < len(got) < 100 and got[-1] == "99" * 30000
    assert sum(len(t) for t in got) <= 200_000 + 2 * MAX_LINE
    await hub.aclose()


async def test_subscribers_get_batches_in_order_and_can_leave(hub, spawn):
    batches: list[list[LogLine]] = []
    unsubscribe = hub.subscribe(batches.append)
    w = spawn(
        """
        import sys, time
        for i in range(500):
            print(i, flush=True)
        """
    )
    await closed(attach(hub, w))
    await until(lambda: sum(map(len, batches)) >= 500, what="all lines delivered")
    assert [line.text for b in batches for line in b] == [str(i) for i in range(500)]
    assert len(batches) < 500  # batched, not one call per line
    unsubscribe()
    before = len(batches)
    later: list[LogLine] = []
    hub.subscribe(later.extend)
    hub.emit(0, "app", 0, "after")
    await until(lambda: later, what="the batch after unsubscribing")
    assert texts(later) == ["after"]
    assert len(batches) == before


async def test_live_view_is_capped_but_files_are_not(tmp_path, spawn):
    hub = LogHub(tmp_path / "logs", live_lines=200)
    batches: list[list[LogLine]] = []
    hub.subscribe(batches.append)
    w = spawn("print(''.join(f'{i}\\n' for i in range(50000)), end='')")
    await closed(attach(hub, w))
    # Between two batches the waiting lines are bounded too (whole blocks, as read).
    box = hub._outbox
    assert len(box) <= 1 or hub._outbox_lines - box[0][4] < 200
    await hub.aclose()
    assert all(len(b) <= 200 + 1 for b in batches)
    notes = [ln for b in batches for ln in b if ln.stream == "sys"]
    shown = [ln for b in batches for ln in b if ln.stream == "out"]
    skipped = sum(int(n.text.split()[0]) for n in notes)
    assert notes and "not shown live" in notes[0].text
    assert skipped + len(shown) == 50000
    assert shown[-1].text == "49999"
    assert (tmp_path / "logs" / "app-0-out.log").read_bytes().count(b"\n") == 50000


async def test_emit_reaches_ring_subscribers_and_supervisor_log(hub, spawn, tmp_path):
    got: list[LogLine] = []
    hub.subscribe(got.extend)
    w = spawn("print('app line')")
    await closed(attach(hub, w))
    hub.emit(0, "app", 0, "exited with code 1")
    await until(lambda: len(got) == 2, what="both lines delivered")
    assert [(ln.stream, ln.text) for ln in got] == [
        ("out", "app line"),
        ("sys", "exited with code 1"),
    ]
    assert [(ln.stream, ln.text) for ln in hub.recent([0], 5)] == [
        ("out", "app line"),
        ("sys", "exited with code 1"),
    ]
    sup = (tmp_path / "logs" / "clusterui.log").read_text()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d: app:0 exited with code 1\n", sup)
    # The app's own file holds exactly what the app wrote.
    assert (tmp_path / "logs" / "app-0-out.log").read_text() == "app line\n"


async def test_recent_merges_workers_by_time(hub):
    hub.emit(1, "b", 0, "first")
    hub.emit(0, "a", 0, "second")
    hub.emit(1, "b", 0, "third")
    assert texts(hub.recent(None, 10)) == ["first", "second", "third"]
    assert texts(hub.recent([1], 10)) == ["first", "third"]
    assert texts(hub.recent([0, 1], 2)) == ["second", "third"]
    assert hub.recent([7], 10) == [] and hub.recent(None, 0) == []
    hub.forget(1)
    assert texts(hub.recent(None, 10)) == ["second"]


# ---- tail_file ---------------------------------------------------------------------------


def test_tail_file(tmp_path):
    f = tmp_path / "x.log"
    assert tail_file(f, 5) == []  # missing
    f.write_text("")
    assert tail_file(f, 5) == []
    f.write_text("a\nb\nc\n")
    assert tail_file(f, 2) == ["b", "c"]
    assert tail_file(f, 10) == ["a", "b", "c"]
    assert tail_file(f, 0) == []
    f.write_text("a\n\nc")  # empty line kept, last line without newline counts
    assert tail_file(f, 3) == ["a", "", "c"]
    # Lines crossing the 64 KiB read blocks, in a file far bigger than what is read.
    lines = [f"{i} " + "z" * (i % 300) for i in range(20000)]
    f.write_text("\n".join(lines) + "\n")
    for n in (1, 7, 500, 1999):
        assert tail_file(f, n) == lines[-n:]
    f.write_bytes(b"ok\n\xff\n")
    assert tail_file(f, 1) == ["\ufffd"]
    # Continuing into rotated files.
    Path(f"{f}.1").write_text("r1 a\nr1 b\n")
    Path(f"{f}.2").write_text("r2 a\n")
    f.write_text("now\n")
    assert tail_file(f, 3) == ["now"]
    assert tail_file(f, 3, rotated=True) == ["r1 a", "r1 b", "now"]
    assert tail_file(f, 10, rotated=True) == ["r2 a", "r1 a", "r1 b", "now"]


def open_paths() -> set[str]:
    """What this process's file descriptors point at."""
    paths = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own fd, gone by now
            paths.add(os.readlink(f"/proc/self/fd/{fd}"))
    return paths


async def test_a_log_file_is_closed_once_its_last_writer_is_done(hub, spawn, tmp_path):
    """A supervisor runs for months while apps come and go: a file two workers shared is
    closed when the second is done with it, not kept open until shutdown."""
    sp = spec(merge_logs=True, instances=2, exec_mode="cluster")
    waiting = spawn("import sys; print(sys.stdin.readline().strip())", stdin=True)
    second = attach(hub, waiting, worker=1, sp=sp)
    await closed(attach(hub, spawn("print('first')"), worker=0, sp=sp))
    path = str(tmp_path / "logs" / "app-out.log")
    assert path in open_paths()  # the second writer still has it
    waiting.send("second\n")
    waiting.close_stdin()
    await closed(second)
    assert path not in open_paths()
    assert sorted(Path(path).read_text().split()) == ["first", "second"]
