"""Live log batches (core/logs.py LogHub): bounded by bytes as well as by lines.

Long lines must not make one batch tens of MB (5,000 lines × 4 KB); the lines left out
of the live view are counted in a "sys" line and are all in the files.
"""

from __future__ import annotations

import contextlib
import json
import socket
from typing import Any

import pytest
import test_logs
from support import wait_for
from test_logs import attach, closed, spec

from clusterui.core.logs import MAX_LINE, LogHub, LogLine, live_cut, skipped_note

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


def test_live_cut_keeps_the_newest_lines_and_counts_the_rest_per_worker() -> None:
    lines = [LogLine(i % 2, "a", i % 2, "out", float(i), f"line {i}") for i in range(10)]
    lines.insert(0, skipped_note(0, "a", 0, 7, 0.0))  # from the hub: 7 lines left out
    cut = live_cut(lines, 4)
    notes, kept = cut[:-4], cut[-4:]
    assert [ln.text for ln in kept] == ["line 6", "line 7", "line 8", "line 9"]
    # worker 0 lost lines 0, 2, 4 and the 7 an earlier note stood for; worker 1 lost 1, 3, 5
    assert {(n.worker, n.text.split()[0]) for n in notes} == {(0, "10"), (1, "3")}
    assert all(n.stream == "sys" and n.time == 6.0 for n in notes)
    assert live_cut(lines, 100) is lines


def test_a_subscriber_can_ask_for_fewer_lines_per_event(cu):
    """subscribe(live_lines=N): at most N lines (plus the notes) per event for that client;
    shown plus counted is everything; another client, with no cap, gets every line."""
    cu.write(
        "burst.py",
        """
        import os, sys, time
        for r in range(20):  # 20,000 lines in 20 bursts, 50 ms apart: ~1,000 per batch
            os.write(1, "".join(f"{r * 1000 + i} burst\\n" for i in range(1000)).encode())
            time.sleep(0.05)
        print("burst done", flush=True)
        time.sleep(600)
        """,
    )
    cu.write("sleep.py", "import time\nprint('idle', flush=True)\ntime.sleep(600)\n")
    cu.write("ecosystem.yaml", "apps:\n  - name: idle\n    script: sleep.py\n")
    assert cu.run("up", "-d").returncode == 0

    def subscriber(args: str) -> tuple[socket.socket, Any]:
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(str(cu.home / "supervisor.sock"))
        sock.sendall(b'{"id":1,"op":"subscribe","args":{"state":false,"logs":true%s}}\n' % args)
        sock.settimeout(30)
        reader = sock.makefile("rb")
        return sock, reader

    capped, capped_reader = subscriber(b',"live_lines":100')
    full, full_reader = subscriber(b"")
    try:
        for reader in (capped_reader, full_reader):
            assert json.loads(reader.readline())["ok"]
        assert cu.run("start", str(cu.root / "burst.py"), "--name", "burst").returncode == 0

        def follow(reader: Any) -> tuple[int, int, int]:
            shown = counted = most = 0
            while True:
                event = json.loads(reader.readline())
                if event.get("event") != "logs":
                    continue
                ours = [ln for ln in event["lines"] if ln["app"] == "burst"]
                out = [ln for ln in ours if ln["stream"] == "out"]
                most = max(most, len(out))
                shown += len(out)
                counted += sum(
                    int(ln["text"].split()[0])
                    for ln in ours
                    if ln["stream"] == "sys" and "not shown live" in ln["text"]
                )
                if any(ln["text"] == "burst done" for ln in out):
                    return shown, counted, most

        shown, counted, most = follow(capped_reader)
        assert most <= 100 and shown + counted == 20_001 and counted > 0
        print(f"\nlive_lines 100: {shown} lines shown, {counted} counted, {most} at most")
        shown, counted, most = follow(full_reader)
        assert (shown, counted) == (20_001, 0) and most > 100
        print(f"no cap: all {shown} lines shown, up to {most} per event")
    finally:
        capped.close()
        full.close()
    bad = socket.socket(socket.AF_UNIX)
    with contextlib.closing(bad):
        bad.connect(str(cu.home / "supervisor.sock"))
        bad.sendall(b'{"id":1,"op":"subscribe","args":{"live_lines":0}}\n')
        answer = json.loads(bad.makefile("rb").readline())
        assert not answer["ok"] and "live_lines" in answer["error"]
