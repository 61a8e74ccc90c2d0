"""Log capture throughput (core/logs.py): how fast a flooding worker's stdout is captured.

One writer process prints N lines (default 1,000,000 × 60 bytes) as fast as it can, as
pre-built 8 KiB chunks with os.write (what a buffered stdout does), timing every write()
call. The same writer runs, one after the other in one run:

  plain file              stdout is a file: no pipe, no reader (the writer's own ceiling)
  pipe → cat > /dev/null  a C reader that throws the bytes away
  pipe → cat > file       a C reader that stores them: the fair baseline for a log capture
  clusterui capture       LogHub in an asyncio loop: files (rotating 10 MiB × 10), ring
  clusterui +ts +sub      the same with log_date_format "YYYY-MM-DD HH:mm:ss.SSS" and a
                          subscriber (what an attached dashboard costs)

In the clusterui rows a second, calm worker prints its clock every 10 ms: "calm lag" is
how late the capture read those lines during the flood (does one worker starve the
others?), and "loop lag" the worst lateness of a 10 ms timer in the capturing loop (does
the flood block the supervisor?). Lines in the files are counted: every row must have
all N. Each row runs --repeat times; the median run (by lines/s) is shown.

    .venv/bin/python bench/log_throughput.py [--lines 1000000] [--line-bytes 60]
                                             [--chunk 8192] [--repeat 3]

Columns: lines/s and MB/s from the writer's first write to the capture's last line on
disk; "worst write" is the longest single write() the writer saw (how long the reader
made it wait), "writes>10ms" how many took longer than 10 ms; "CPU" is the capturing
process's user+system time (for the cat rows: cat's).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from clusterui.core.logs import LogHub, LogLine  # noqa: E402
from clusterui.core.spec import AppSpec  # noqa: E402

CALM = """
import select, sys, time
while not select.select([0], [], [], 0.01)[0]:
    print(f"{time.time():.6f}", flush=True)
"""


# ---- the writer (run as a child: bench/log_throughput.py --writer ...) -----------------


def writer(lines: int, line_bytes: int, chunk: int, result: str) -> None:
    pad = "x" * max(0, line_bytes - 16)
    payload = "".join(f"{i:014d} {pad}\n" for i in range(lines)).encode()
    view = memoryview(payload)
    worst = 0
    slow = 0
    perf = time.perf_counter_ns
    start = time.time()
    for pos in range(0, len(payload), chunk):
        piece = view[pos : pos + chunk]
        while piece:
            t = perf()
            n = os.write(1, piece)
            d = perf() - t
            worst = max(worst, d)
            slow += d > 10_000_000
            piece = piece[n:]
    end = time.time()
    Path(result).write_text(
        json.dumps(
            {"start": start, "end": end, "worst": worst / 1e9, "slow": slow, "bytes": len(payload)}
        )
    )


# ---- runs ------------------------------------------------------------------------------


@dataclass
class Run:
    seconds: float
    bytes: int
    lines_on_disk: int
    worst_write: float
    slow_writes: int
    cpu: float
    loop_lag: float | None = None
    calm: list[float] = field(default_factory=list)


def writer_cmd(args: argparse.Namespace, result: Path) -> list[str]:
    return [
        sys.executable,
        __file__,
        "--writer",
        str(args.lines),
        str(args.line_bytes),
        str(args.chunk),
        str(result),
    ]


def count_lines(paths: list[Path]) -> int:
    n = 0
    for p in paths:
        with open(p, "rb") as f:
            while block := f.read(1 << 20):
                n += block.count(b"\n")
    return n


def run_baseline(args: argparse.Namespace, tmp: Path, kind: str) -> Run:
    result = tmp / "writer.json"
    out = tmp / "out.log"
    out.unlink(missing_ok=True)
    if kind == "file":
        with open(out, "wb") as f:
            subprocess.run(writer_cmd(args, result), stdout=f, check=True)
        end = time.time()
        cpu = 0.0
    else:
        sink = out if kind == "cat-file" else Path(os.devnull)
        with open(sink, "wb") as f:
            cat = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=f)
            w = subprocess.Popen(writer_cmd(args, result), stdout=cat.stdin)
            cat.stdin.close()
            w.wait()
            _, status, usage = os.wait4(cat.pid, 0)
            end = time.time()
            cat.returncode = os.waitstatus_to_exitcode(status)
            cpu = usage.ru_utime + usage.ru_stime
    r = json.loads(result.read_text())
    lines = count_lines([out]) if kind != "cat-null" else args.lines
    return Run(end - r["start"], r["bytes"], lines, r["worst"], r["slow"], cpu)


async def run_capture(args: argparse.Namespace, tmp: Path, extras: bool) -> Run:
    logs = tmp / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    hub = LogHub(logs)
    seen = [0]
    if extras:

        def subscriber(batch: list[LogLine]) -> None:
            seen[0] += len(batch)

        hub.subscribe(subscriber)
    spec = AppSpec(
        name="flood",
        script="x",
        log_max_size=10 * 1024 * 1024,
        log_retain=10,
        log_date_format="YYYY-MM-DD HH:mm:ss.SSS" if extras else None,
    )
    calm_spec = AppSpec(name="calm", script="x")

    def spawn(cmd: list[str], stdin: int | None = None) -> tuple[subprocess.Popen, int, int]:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        proc = subprocess.Popen(cmd, stdin=stdin, stdout=out_w, stderr=err_w)
        os.close(out_w)
        os.close(err_w)
        return proc, out_r, err_r

    calm_in_r, calm_in_w = os.pipe()
    calm, c_out, c_err = spawn([sys.executable, "-c", CALM], stdin=calm_in_r)
    os.close(calm_in_r)
    calm_cap = hub.attach(1, "calm", 0, calm_spec, c_out, c_err)
    while not hub.recent([1], 1):  # the calm worker is up before the flood starts
        await asyncio.sleep(0.005)

    lag = [0.0]
    running = True

    async def lag_probe() -> None:
        loop = asyncio.get_running_loop()
        while running:
            t = loop.time()
            await asyncio.sleep(0.01)
            lag[0] = max(lag[0], loop.time() - t - 0.01)

    probe = asyncio.ensure_future(lag_probe())
    result = tmp / "writer.json"
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    flood, f_out, f_err = spawn(writer_cmd(args, result))
    cap = hub.attach(0, "flood", 0, spec, f_out, f_err)
    await cap.wait_closed()
    end = time.time()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    running = False
    await probe
    flood.wait()
    os.close(calm_in_w)
    await calm_cap.wait_closed()
    calm.wait()
    r = json.loads(result.read_text())
    calm_lag = [
        line.time - float(line.text)
        for line in hub.recent([1], 1000)
        if r["start"] <= float(line.text) <= r["end"]
    ]
    await hub.aclose()
    files = sorted(logs.glob("flood-0-out.log*"))
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return Run(
        end - r["start"],
        r["bytes"],
        count_lines(files),
        r["worst"],
        r["slow"],
        cpu,
        lag[0],
        calm_lag,
    )


# ---- report ----------------------------------------------------------------------------

ROWS = [
    ("plain file (no pipe)", "file"),
    ("pipe → cat > /dev/null", "cat-null"),
    ("pipe → cat > file", "cat-file"),
    ("clusterui capture", "capture"),
    ("clusterui +ts +sub", "capture-extras"),
]


def ms(s: float | None) -> str:
    return "-" if s is None else f"{s * 1000:.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--line-bytes", type=int, default=60)
    ap.add_argument("--chunk", type=int, default=8192, help="bytes per write() (default 8 KiB)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--writer", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.writer:
        n, size, chunk, result = args.writer
        writer(int(n), int(size), int(chunk), result)
        return 0
    if args.line_bytes < 17:
        print("log_throughput: --line-bytes must be at least 17", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="cu-logbench-"))
    results: dict[str, Run] = {}
    try:
        for label, kind in ROWS:
            runs = []
            for _ in range(args.repeat):
                if kind.startswith("capture"):
                    run = asyncio.run(run_capture(args, tmp, kind == "capture-extras"))
                else:
                    run = run_baseline(args, tmp, kind)
                if run.lines_on_disk != args.lines:
                    print(
                        f"log_throughput: {label}: {run.lines_on_disk} of {args.lines} lines "
                        "reached the file",
                        file=sys.stderr,
                    )
                    return 1
                runs.append(run)
            runs.sort(key=lambda r: r.seconds)
            results[label] = runs[len(runs) // 2]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    mib = args.lines * args.line_bytes / 2**20
    print(
        f"log capture: {args.lines:,} lines × {args.line_bytes} B ({mib:.1f} MiB), "
        f"writer: os.write of {args.chunk} B chunks; median of {args.repeat} runs; "
        f"{os.cpu_count()} CPUs"
    )
    head = (
        f"{'':24} {'lines/s':>11} {'MB/s':>7} {'worst write ms':>15} {'writes>10ms':>12} "
        f"{'CPU s':>6} {'loop lag ms':>12} {'calm lag ms p50/max':>20}"
    )
    print(head)
    print("-" * len(head))
    for label, _ in ROWS:
        r = results[label]
        calm = (
            f"{ms(statistics.median(r.calm))}/{ms(max(r.calm))}" if r.calm else "-"
        )  # fmt: skip
        print(
            f"{label:24} {args.lines / r.seconds:>11,.0f} {r.bytes / r.seconds / 1e6:>7.1f} "
            f"{ms(r.worst_write):>15} {r.slow_writes:>12} {r.cpu:>6.2f} "
            f"{ms(r.loop_lag):>12} {calm:>20}"
        )
    base = results["pipe → cat > file"].seconds
    print()
    for label in ("clusterui capture", "clusterui +ts +sub"):
        r = results[label]
        print(
            f"{label} / cat > file: {base / r.seconds:.2f}× the lines/s; "
            f"{r.cpu / args.lines * 1e9 / 1000:.2f} µs CPU per line "
            f"({args.lines / r.cpu:,.0f} lines per CPU-second)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
