"""Log floods through a real supervisor (issue 6): 200,000 lines/s from one worker for 10 s.

Every line reaches the files, rotation keeps the disk bounded, another app's dispatch and
the supervisor's control socket stay responsive, and the flooding worker is never blocked
for long. Run with -s to see the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from pathlib import Path

import pytest
from support import WEB, free_port, get, wait_for

from clusterui.client import Client
from clusterui.core.units import parse_size

pytestmark = pytest.mark.timeout(90)

RATE = 200_000  # lines/s
# Tells a stall (a blocked write, an unanswered request) from slowness on two busy, shared
# cores; the measured times are printed as figures.
HANG = 10.0
SECONDS = 10.0
LINE = 60  # bytes per line, newline included
TOTAL = int(RATE * SECONDS)

# The flooding worker is bench/flood.py's (`--writer RATE SECONDS LINE RESULT`): paced
# numbered lines ("0000000042 xxx…\n"), one os.write per 10 ms step, every write timed; it
# writes its figures to RESULT at the end, then idles so it is not restarted.
WRITER = str(Path(__file__).resolve().parents[1] / "bench" / "flood.py")


def expected(first: int, count: int) -> bytes:
    pad = "x" * (LINE - 12)
    return "".join([f"{i:010d} {pad}\n" for i in range(first, first + count)]).encode()


def check_lines(files: list[Path], first: int | None = None) -> tuple[int, int]:
    """The files (oldest first) hold consecutive whole lines ending with TOTAL-1, each number
    once and in order (starting at `first` when given). Returns (first number, lines)."""
    start = None
    n = 0
    for f in files:
        data = f.read_bytes()
        if not data:
            continue
        if start is None:
            start = int(data[:10])
            if first is not None:
                assert start == first, f"{f.name} starts with line {start}, not {first}"
        assert len(data) % LINE == 0, f"{f.name}: {len(data)} bytes is not whole lines"
        want = expected(start + n, len(data) // LINE)
        if data != want:
            bad = next(
                i for i in range(0, len(data), LINE) if data[i : i + LINE] != want[i : i + LINE]
            )
            raise AssertionError(
                f"{f.name}: line {bad // LINE} is {data[bad : bad + LINE]!r}, "
                f"expected {want[bad : bad + LINE]!r}"
            )
        n += len(data) // LINE
    assert start is not None, "no lines in the files"
    assert start + n == TOTAL, f"the files end at line {start + n - 1}, not {TOTAL - 1}"
    return start, n


def log_files(logs: Path) -> list[Path]:
    """The flood app's files, oldest first: out.log.K … out.log.1, out.log, then err."""
    rotated = sorted(logs.glob("flood-0-out.log.*"), key=lambda p: -int(p.suffix[1:]))
    return [*rotated, logs / "flood-0-out.log"]


def on_disk(logs: Path) -> int:
    total = 0
    for f in logs.glob("flood-0-*"):
        with contextlib.suppress(FileNotFoundError):  # rotated away since the listing
            total += f.stat().st_size
    return total


def write_apps(cu, max_size: str, retain: int, web_port: int | None) -> Path:
    result = cu.root / "flood.json"
    web = f"""
          - name: web
            script: {WEB}
            exec_mode: cluster
            instances: 2
            listen: 127.0.0.1:{web_port}
        """
    cu.write(
        "ecosystem.yaml",
        f"""
        apps:
          - name: flood
            script: {WRITER}
            args: ["--writer", "{RATE}", "{SECONDS}", "{LINE}", "{result}"]
            log_max_size: {max_size}
            log_retain: {retain}
            autorestart: false
        {web if web_port else ""}
        """,
    )
    return result


def wait_result(result: Path, cu) -> dict:
    def state() -> str:
        """What a timeout says: how far the lines got, and where the writer is."""
        flood = [w for w in cu.ls() if w["app"] == "flood"]
        where = ""
        for w in flood:
            with contextlib.suppress(OSError, TypeError):
                wchan = Path(f"/proc/{w['pid']}/wchan").read_text()
                where += f"; pid {w['pid']} waits in {wchan}"
        return (
            f"the flood to finish ({on_disk(cu.home / 'logs')} bytes of its logs on disk, "
            f"load {os.getloadavg()[0]:.1f}; {flood}{where})"
        )

    wait_for(result.exists, SECONDS + 20, state)
    return json.loads(result.read_text())


class Probe(threading.Thread):
    """Calls fn() in a loop until stopped; keeps (epoch start, duration) and failures."""

    def __init__(self, fn, pause: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.pause = pause
        self.samples: list[tuple[float, float]] = []
        self.failed: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            t = time.time()
            p = time.perf_counter()
            try:
                self.fn()
            except Exception as exc:
                self.failed.append(repr(exc))
            else:
                self.samples.append((t, time.perf_counter() - p))
            self.stop.wait(self.pause)

    def during(self, start: float, end: float) -> list[float]:
        return [d for t, d in self.samples if start <= t <= end]


class StateProbe(Probe):
    """What `clusterui ls` asks (state without history), over one client connection."""

    def __init__(self, home: Path, pause: float) -> None:
        super().__init__(lambda: None, pause)
        self.home = home

    def run(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        client = await Client.connect(self.home)
        try:
            while not self.stop.is_set():
                t = time.time()
                p = time.perf_counter()
                try:
                    state = await client.state(history=False)
                    assert state["workers"], "no workers in the state"
                except Exception as exc:
                    self.failed.append(repr(exc))
                else:
                    self.samples.append((t, time.perf_counter() - p))
                await asyncio.sleep(self.pause)
        finally:
            await client.close()


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def test_a_200k_lines_per_second_flood_is_whole_bounded_and_others_stay_responsive(cu):
    port = free_port()
    max_size, retain = "40M", 4
    result = write_apps(cu, max_size, retain, port)
    cu.run("up", "-d", "--only", "web", check=True)
    wait_for(lambda: "hello" in get(port), 10, "the web app to answer")

    http = [Probe(lambda: get(port)) for _ in range(2)]
    ls = StateProbe(cu.home, pause=0.05)
    for p in [*http, ls]:
        p.start()
    try:
        wait_for(lambda: all(p.samples for p in [*http, ls]), 10, "the probes to get going")
        cu.run("up", "-d", "--only", "flood", check=True)
        flood = wait_result(result, cu)
    finally:
        for p in [*http, ls]:
            p.stop.set()
        for p in [*http, ls]:
            p.join(15)

    start, end = flood["start"], flood["end"]
    answers = [d for p in http for d in p.during(start, end)]
    states = ls.during(start, end)
    print(
        f"\nflood: {flood['lines']:,} lines at {flood['rate']:,.0f} lines/s "
        f"({flood['writes']} writes), worst write {ms(flood['worst_write'])}, "
        f"{flood['writes_over_10ms']} writes > 10 ms, at most {ms(flood['most_late'])} behind"
    )
    print(
        f"during it: web {len(answers)} answers ({len(answers) / (end - start):.0f}/s), "
        f"worst {ms(max(answers, default=0))}; ls {len(states)} answers, "
        f"worst {ms(max(states, default=0))}"
    )

    assert flood["lines"] == TOTAL
    # A blocked writer (a pipe nobody reads) stalls for good; CPU starvation on a busy
    # machine only slows it, so the rate and the worst write are figures (printed above),
    # and the bound only tells a stall from slowness.
    assert flood["worst_write"] < HANG, f"a write blocked for {ms(flood['worst_write'])}"
    assert not [f for p in http for f in p.failed], http[0].failed or http[1].failed
    assert not ls.failed, ls.failed
    assert len(answers) >= 50 and max(answers) < HANG
    assert len(states) >= 20 and max(states) < HANG

    logs = cu.home / "logs"
    # Flushed within a tick of the last write; the data arrived before the result file did.
    wait_for(
        lambda: on_disk(logs) >= TOTAL * LINE,
        10,
        "every line on disk",
    )
    files = log_files(logs)
    began = time.perf_counter()
    first, n = check_lines(files, first=0)
    checked = time.perf_counter() - began
    bound = parse_size(max_size) * (retain + 1)
    sizes = {f.name: f.stat().st_size for f in logs.glob("flood-0-*")}
    print(
        f"files: {sizes} ({sum(sizes.values()):,} of {bound:,} bytes allowed); "
        f"lines checked in {checked:.1f} s"
    )
    assert n == TOTAL
    assert sum(sizes.values()) <= bound
    assert all(s <= parse_size(max_size) for s in sizes.values()), sizes


class DirProbe(threading.Thread):
    """Samples the flood app's log files every few ms: total bytes, the biggest file, names."""

    def __init__(self, logs: Path) -> None:
        super().__init__(daemon=True)
        self.logs = logs
        self.stop = threading.Event()
        self.samples = 0
        self.most_total = 0
        self.most_file = 0
        self.names: set[str] = set()

    def run(self) -> None:
        while not self.stop.is_set():
            total = 0
            try:
                entries = list(os.scandir(self.logs))
            except FileNotFoundError:
                entries = []
            for e in entries:
                if not e.name.startswith("flood-0-"):
                    continue
                try:
                    size = e.stat().st_size
                except FileNotFoundError:  # renamed away by a rotation since the listing
                    continue
                self.names.add(e.name)
                total += size
                self.most_file = max(self.most_file, size)
            self.most_total = max(self.most_total, total)
            self.samples += 1
            self.stop.wait(0.005)


def test_small_rotation_keeps_disk_bounded_at_every_sample_of_a_flood(cu):
    max_size, retain = "2M", 2
    size = parse_size(max_size)
    result = write_apps(cu, max_size, retain, None)
    logs = cu.home / "logs"
    probe = DirProbe(logs)
    probe.start()
    try:
        cu.run("up", "-d", check=True)
        flood = wait_result(result, cu)
        # The last line is on disk within a tick or so.
        last = expected(TOTAL - 1, 1)
        wait_for(lambda: (logs / "flood-0-out.log").read_bytes().endswith(last), 10, "last line")
    finally:
        probe.stop.set()
        probe.join(5)

    bound = size * (retain + 1)
    files = log_files(logs)
    first, n = check_lines(files)
    print(
        f"\nflood: {flood['lines']:,} lines at {flood['rate']:,.0f} lines/s, worst write "
        f"{ms(flood['worst_write'])}; {probe.samples} samples of the folder: at most "
        f"{probe.most_total:,} bytes ({bound:,} allowed), biggest file {probe.most_file:,}; "
        f"kept lines {first:,}..{TOTAL - 1:,} ({n:,})"
    )
    assert flood["lines"] == TOTAL
    assert flood["worst_write"] < HANG, f"a write blocked for {ms(flood['worst_write'])}"
    assert probe.samples >= 100
    assert probe.most_total <= bound and probe.most_file <= size
    want = {"flood-0-out.log", "flood-0-err.log"} | {
        f"flood-0-out.log.{i}" for i in range(1, retain + 1)
    }
    assert probe.names == want, probe.names
    # The rotated files are full (within a line), so the newest retain×max_size bytes are kept.
    assert n * LINE > retain * (size - LINE)
