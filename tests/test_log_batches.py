"""Live log batches (core/logs.py LogHub): bounded by bytes as well as by lines.

Long lines must not make one batch tens of MB (5,000 lines × 4 KB); the lines left out
of the live view are counted in a "sys" line and are all in the files.
"""

from __future__ import annotations

import contextlib
import json
import socket

import pytest
import test_logs
from helpers import wait_for
from test_logs import attach, closed, spec

from clusterui.core.logs import MAX_LINE, LogHub, LogLine

pytestmark = pytest.mark.timeout(60)

spawn = test_logs.spawn  # the fixture: writer processes, killed after the test

LONG = """
import os, time
n, size, rounds = {n}, {size}, {rounds}
lines = [f"{{i:05d}} " + "x" * (size - 7) + "\\n" for i in range(n)]
for r in range(rounds):
    os.write(1, "".join(lines[r * n // rounds : (r + 1) * n // rounds]).encode())
    time.sleep(0.01)
"""


def long_lines(n: int, size: int, rounds: int = 1) -> str:
    """A writer of n numbered lines of `size` bytes (newline included), in `rounds` writes
    10 ms apart."""
    return LONG.format(n=n, size=size, rounds=rounds)


def shown(batches: list[list[LogLine]], worker: int | None = None) -> list[LogLine]:
    return [
        ln
        for b in batches
        for ln in b
        if ln.stream != "sys" and (worker is None or ln.worker == worker)
    ]


def skipped(batches: list[list[LogLine]], worker: int | None = None) -> int:
    notes = [
        ln
        for b in batches
        for ln in b
        if ln.stream == "sys" and (worker is None or ln.worker == worker)
    ]
    assert all(n.text.endswith("not shown live (too fast to follow); the log file has them all")
               for n in notes)  # fmt: skip
    return sum(int(n.text.split()[0]) for n in notes)


async def test_batches_are_capped_by_bytes_and_the_files_keep_everything(tmp_path, spawn):
    hub = LogHub(tmp_path / "logs", live_bytes=100_000)
    batches: list[list[LogLine]] = []
    hub.subscribe(batches.append)
    w = spawn(long_lines(3000, 4000))  # 12 MB: 120 batches' worth
    await closed(attach(hub, w, sp=spec(log_max_size=None)))
    # Between ticks the waiting blocks are bounded too: the newer ones hold less than a batch.
    box = hub._outbox
    assert len(box) <= 1 or hub._outbox_bytes - len(box[0][3]) < 100_000
    await hub.aclose()
    for b in batches:
        assert sum(len(ln.text) + 1 for ln in b if ln.stream != "sys") <= 100_000
    lines = shown(batches)
    numbers = [int(ln.text[:5]) for ln in lines]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    assert numbers[-1] == 2999  # the newest line is always shown
    assert skipped(batches) > 0 and skipped(batches) + len(lines) == 3000
    # Within a batch the lines shown are the newest, without gaps.
    for b in batches:
        got = [int(ln.text[:5]) for ln in b if ln.stream != "sys"]
        assert got == list(range(got[0], got[0] + len(got)))
    data = (tmp_path / "logs" / "app-0-out.log").read_text().splitlines()
    assert [int(x[:5]) for x in data] == list(range(3000))


async def test_a_line_longer_than_the_byte_cap_is_still_shown(tmp_path, spawn):
    hub = LogHub(tmp_path / "logs", live_bytes=1000)
    batches: list[list[LogLine]] = []
    hub.subscribe(batches.append)
    w = spawn(long_lines(3, 5000))  # one read, one block: three lines over the cap
    await closed(attach(hub, w))
    await hub.aclose()
    lines = shown(batches)
    assert lines and lines[-1].text.startswith("00002 ") and len(lines[-1].text) == 4999
    assert skipped(batches) + len(lines) == 3
    assert all(len(ln.text) < MAX_LINE for ln in lines)
    # Each line alone is over the cap: a batch shows one at most.
    assert all(len([ln for ln in b if ln.stream != "sys"]) <= 1 for b in batches)


async def test_each_worker_is_counted_apart(tmp_path, spawn):
    """A worker printing long lines and one printing short ones: the sys lines say how many
    of each were left out, and together with those shown they make up everything."""
    hub = LogHub(tmp_path / "logs", live_bytes=50_000, live_lines=300)
    batches: list[list[LogLine]] = []
    hub.subscribe(batches.append)
    big = spawn(long_lines(2000, 2000, rounds=20))
    small = spawn(long_lines(20000, 20, rounds=20))
    caps = [attach(hub, big, worker=0), attach(hub, small, worker=1, sp=spec(name="small"))]
    for cap in caps:
        await closed(cap)
    await hub.aclose()
    for b in batches:
        assert len([ln for ln in b if ln.stream != "sys"]) <= 300
        assert sum(len(ln.text) + 1 for ln in b if ln.stream != "sys") <= 50_000
    for worker, total in ((0, 2000), (1, 20000)):
        lines = shown(batches, worker)
        assert skipped(batches, worker) + len(lines) == total, worker
    # One batch for all workers: the newest lines of all of them, whoever wrote them.
    assert int(shown(batches)[-1].text[:5]) in (1999, 19999)


def test_supervisor_events_stay_small_under_a_flood_of_long_lines(cu):
    """End to end: a client subscribed to logs while an app prints 40 MB in 4 KB lines gets
    events of about 1 MiB at most (before the byte cap: up to 5,000 × 4 KB = 20 MB)."""
    cu.write(
        "flood.py",
        """
        import sys, time
        line = "x" * 4000 + "\\n"
        for i in range(10_000):
            sys.stdout.write(line)
        sys.stdout.flush()
        print("flood done", flush=True)
        time.sleep(600)
        """,
    )
    cu.write("sleep.py", "import time\nprint('idle', flush=True)\ntime.sleep(600)\n")
    cu.write("ecosystem.yaml", "apps:\n  - name: idle\n    script: sleep.py\n")
    assert cu.run("up", "-d").returncode == 0
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(cu.home / "supervisor.sock"))
    try:
        sock.sendall(b'{"id":1,"op":"subscribe","args":{"state":false,"logs":true}}\n')
        reader = sock.makefile("rb")
        assert json.loads(reader.readline())["ok"]
        assert cu.run("start", str(cu.root / "flood.py"), "--name", "flooder").returncode == 0
        biggest = lines = left_out = 0
        sock.settimeout(30)
        while True:
            raw = reader.readline()
            assert raw, "the supervisor closed the subscription"
            event = json.loads(raw)
            if event.get("event") != "logs":
                continue
            biggest = max(biggest, len(raw))
            for ln in event["lines"]:
                if ln["app"] != "flooder":
                    continue
                if ln["stream"] == "sys" and "not shown live" in ln["text"]:
                    left_out += int(ln["text"].split()[0])
                elif ln["stream"] == "out":
                    lines += 1
            if any(ln["text"] == "flood done" for ln in event["lines"]):
                break
    finally:
        sock.close()
    print(f"\n40 MB of 4 KB lines: biggest event {biggest / 2**20:.2f} MiB; {lines} lines live")
    assert lines + left_out == 10_001  # the flood and "flood done"
    # 1 MiB of text plus the JSON around each line (~100 bytes).
    assert biggest <= (1 << 20) + 300 * 150, biggest
    logs = cu.home / "logs"  # 40 MB: rotated at the default 10 MiB, 5 kept

    def on_disk() -> int:
        n = 0
        for p in logs.glob("flooder-0-out.log*"):
            with contextlib.suppress(FileNotFoundError):  # rotated since the listing
                n += p.read_bytes().count(b"\n")
        return n

    wait_for(lambda: on_disk() == 10_001, 10, "every line in the files")
