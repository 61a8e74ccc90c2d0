"""Log flood (issue 6): 200,000 lines/s from one worker for 10 s under a real supervisor.

One supervisor, two apps: `web` (examples/web.py, cluster mode, round-robin, --workers
instances) and `flood` (this file run with --writer: paced numbered lines of
--line-bytes, one os.write per 10 ms step, every write timed). It measures, in one run:

  (a) web's throughput with wrk (-t1 -c32, new connection per request unless
      --keepalive) in --window second windows: before the flood, during it (every
      window that fits inside the flood), after it, and "ref": during the same writer
      run outside clusterui with its output to /dev/null (what the writer's own CPU
      takes on this machine, log capture aside); ratios, and how busy the host's CPUs
      were during each window (other people's processes make these figures move);
  (b) the flooding worker's worst write stall (a blocking pipe write returns once the
      supervisor has made room for all of it), writes over 10 ms, the rate it achieved;
  (c) every line in the files: the rotated files and the live one hold each line number
      0..N-1 exactly once, in order; disk use sampled every 10 ms during the flood
      against log_max_size × (log_retain + 1);
  (d) the supervisor's CPU (% of one core over the flood) and its RSS: before, peak
      during, and after.

--follow N attaches N `clusterui logs -f` readers (output to /dev/null) for the whole
flood, as a dashboard's log pane would subscribe. The run holds the flock on
/tmp/clusterui-bench.lock while measuring.

    .venv/bin/python bench/flood.py [--rate 200000] [--seconds 10] [--line-bytes 60]
        [--max-size 40M] [--retain 4] [--workers 2] [--window 3] [--follow 0]
        [--keepalive]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import (
    BenchError,
    bench_lock,
    clusterui_bin,
    cpu_seconds,
    free_port,
    kill_all,
    run,
    tail,
    wait_for,
)

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without `pip install -e`

from clusterui.core.units import parse_size  # noqa: E402

WEB = ROOT / "examples" / "web.py"
STEP = 0.01  # the writer's pace: one write per 10 ms when on time


# ---- the writer (run as the flood app: bench/flood.py --writer ...) ------------------------


def line_bytes_for(first: int, count: int, size: int) -> bytes:
    pad = "x" * (size - 12)
    return "".join([f"{i:010d} {pad}\n" for i in range(first, first + count)]).encode()


def writer(rate: int, seconds: float, size: int, result: str) -> None:
    total = int(rate * seconds)
    most = max(1, int(rate * STEP))  # lines per write: one step's worth, also when behind
    written = worst = slow = writes = 0
    late = 0.0
    perf = time.perf_counter
    t0, start = time.time(), perf()
    while written < total:
        now = perf()
        due = min(total, int((now - start) * rate))
        if due - written < most and due < total:
            time.sleep(STEP - (now - start) % STEP)
            continue
        late = max(late, (due - written) / rate - STEP)
        n = min(due - written, most)
        data = line_bytes_for(written, n, size)
        t = perf()
        os.write(1, data)  # blocking: returns once the pipe took all of it
        d = perf() - t
        worst = max(worst, d)
        slow += d > 0.01
        writes += 1
        written += n
    elapsed = perf() - start
    figures = {
        "lines": written,
        "rate": written / elapsed,
        "start": t0,
        "end": t0 + elapsed,
        "worst_write": worst,
        "writes_over_10ms": slow,
        "writes": writes,
        "most_late": late,
    }
    Path(result + ".tmp").write_text(json.dumps(figures))
    os.replace(result + ".tmp", result)
    time.sleep(3600)  # idle until stopped: an exit would be restarted (and log again)


# ---- helpers ---------------------------------------------------------------------------


def answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        return s.recv(64).startswith(b"HTTP/1.1 200")
    return False


@dataclass
class Wrk:
    requests: int
    seconds: float
    rps: float
    errors: int
    host: float = 0.0  # % of all CPUs busy during the run (ours and everyone else's)


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return sum(values) - values[3] - values[4], sum(values)


def wrk(port: int, seconds: float, opts: argparse.Namespace) -> Wrk:
    argv = ["wrk", "-t1", f"-c{opts.connections}", f"-d{seconds:g}s"]
    if not opts.keepalive:
        argv += ["-H", "Connection: close"]
    busy0, total0 = cpu_ticks()
    try:
        out = subprocess.run(
            [*argv, f"http://127.0.0.1:{port}/"],
            capture_output=True,
            text=True,
            timeout=seconds + 30,
        ).stdout
    except subprocess.TimeoutExpired:
        raise BenchError("wrk did not finish") from None
    busy1, total1 = cpu_ticks()
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m),", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m or not rps:
        raise BenchError(f"cannot read wrk's output: {out.strip()[-200:]!r}")
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[m.group(3)]
    errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    if e := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(e.group(1))
    host = 100 * (busy1 - busy0) / max(1, total1 - total0)
    return Wrk(int(m.group(1)), float(m.group(2)) * scale, float(rps.group(1)), errors, host)


def flood_files(logs: Path) -> list[Path]:
    """The flood's stdout files, oldest first: out.log.K … out.log.1, out.log."""
    rotated = sorted(logs.glob("flood-0-out.log.*"), key=lambda p: -int(p.suffix[1:]))
    return [*rotated, logs / "flood-0-out.log"]


def on_disk(logs: Path) -> tuple[int, int, set[str]]:
    """(total bytes, biggest file, names) of the flood's files right now."""
    total = biggest = 0
    names: set[str] = set()
    with contextlib.suppress(FileNotFoundError):
        for e in os.scandir(logs):
            if not e.name.startswith("flood-0-"):
                continue
            with contextlib.suppress(FileNotFoundError):  # rotated away since the listing
                size = e.stat().st_size
                names.add(e.name)
                total += size
                biggest = max(biggest, size)
    return total, biggest, names


def check_lines(files: list[Path], total: int, size: int) -> tuple[int, int, str | None]:
    """(first line kept, lines kept, what is wrong): the files must hold consecutive whole
    lines ending with line total-1, each number once and in order."""
    first: int | None = None
    n = 0
    for f in files:
        data = f.read_bytes()
        if not data:
            continue
        if len(data) % size:
            return first or 0, n, f"{f.name}: {len(data)} bytes is not whole lines"
        if first is None:
            first = int(data[:10])
        count = len(data) // size
        want = line_bytes_for(first + n, count, size)
        if data != want:
            bad = next(
                i for i in range(0, len(data), size) if data[i : i + size] != want[i : i + size]
            )
            at = first + n + bad // size
            return first, n, f"{f.name}: line {at} is {data[bad : bad + 40]!r}…"
        n += count
    if first is None:
        return 0, 0, "no lines in the files"
    if first + n != total:
        return first, n, f"the files end with line {first + n - 1:,}, not {total - 1:,}"
    return first, n, None


@dataclass
class Sampler:
    """Every 10 ms: the supervisor's RSS and the flood's files on disk."""

    pid: int
    logs: Path
    rss_peak: int = 0
    disk_peak: int = 0
    file_peak: int = 0
    names: set[str] = field(default_factory=set)
    samples: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        import psutil

        proc = psutil.Process(self.pid)
        while not self.stop.is_set():
            with contextlib.suppress(psutil.Error):
                self.rss_peak = max(self.rss_peak, proc.memory_info().rss)
            total, biggest, names = on_disk(self.logs)
            self.disk_peak = max(self.disk_peak, total)
            self.file_peak = max(self.file_peak, biggest)
            self.names |= names
            self.samples += 1
            self.stop.wait(0.01)


def rss(pid: int) -> int:
    import psutil

    return psutil.Process(pid).memory_info().rss


# ---- the run ---------------------------------------------------------------------------


def measure(opts: argparse.Namespace, home: Path, cli: str) -> int:
    env = {**os.environ, "CLUSTERUI_HOME": str(home)}
    env.pop("CLUSTERUI_CHANNEL_FD", None)
    work = home.parent
    result = work / "flood.json"
    port = free_port()
    q = json.dumps  # a JSON string is a YAML string
    args = [str(opts.rate), str(opts.seconds), str(opts.line_bytes), str(result)]
    apps = [
        f"  - name: web\n    script: {q(str(WEB))}\n    exec_mode: cluster\n"
        f"    instances: {opts.workers}\n    listen: 127.0.0.1:{port}\n",
        f"  - name: flood\n    script: {q(str(Path(__file__).resolve()))}\n"
        f"    args: {q(['--writer', *args])}\n"
        f"    log_max_size: {q(opts.max_size)}\n    log_retain: {opts.retain}\n"
        f"    autorestart: false\n",
    ]
    eco = work / "ecosystem.yaml"
    eco.write_text("apps:\n" + "".join(apps))

    def clu(*argv: str) -> None:
        out = run([cli, *argv], env)
        if out.returncode != 0:
            raise BenchError(f"`clusterui {' '.join(argv[:2])}` failed: {tail(out)}")

    clu("up", "-d", str(eco), "--only", "web")
    pid = int((home / "supervisor.pid").read_text().split()[0])
    followers: list[subprocess.Popen] = []
    try:
        wait_for(lambda: answers(port), 15, "an HTTP answer from web")
        wrk(port, 1, opts)  # warm up
        before = [wrk(port, opts.window, opts)]
        for _ in range(opts.follow):
            followers.append(
                subprocess.Popen(
                    [cli, "logs", "-f", "--lines", "0"],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        time.sleep(0.5 if followers else 0)  # let them subscribe (nothing to wait on)
        rss_before = rss(pid)
        sampler = Sampler(pid, home / "logs")
        thread = threading.Thread(target=sampler.run, daemon=True)
        thread.start()
        cpu0 = cpu_seconds(pid)
        t0 = time.time()
        clu("up", "-d", str(eco), "--only", "flood")
        during: list[Wrk] = []
        time.sleep(1.0)  # into the steady state
        while time.time() + opts.window + 0.3 < t0 + opts.seconds:
            during.append(wrk(port, opts.window, opts))
        wait_for(result.exists, opts.seconds + 60, "the end of the flood")
        flood = json.loads(result.read_text())
        total = int(opts.rate * opts.seconds)
        logs = home / "logs"
        wait_for(lambda: on_disk(logs)[0] >= total * opts.line_bytes, 30, "every line on disk")
        t1 = time.time()
        cpu1 = cpu_seconds(pid)
        time.sleep(0.2)  # a few more samples of the folder and the RSS after the last flush
        sampler.stop.set()
        thread.join(5)
        for p in followers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        after = [wrk(port, opts.window, opts)]
        # Reference: the same writer outside clusterui, its output to /dev/null: what its
        # own CPU takes from web on this machine, log capture aside.
        ref = subprocess.Popen(
            [sys.executable, __file__, "--writer", str(opts.rate), str(opts.window + 2),
             str(opts.line_bytes), str(work / "reference.json")],
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        followers.append(ref)  # killed with them
        time.sleep(0.5)
        reference = [wrk(port, opts.window, opts)]
        rss_after = rss(pid)
        first, n, problem = check_lines(flood_files(logs), total, opts.line_bytes)
    finally:
        kill_all_popen(followers)

    max_size = parse_size(opts.max_size)
    bound = max_size * (opts.retain + 1)
    want = {"flood-0-out.log", "flood-0-err.log"} | {
        f"flood-0-out.log.{i}" for i in range(1, opts.retain + 1)
    }
    mib = 2**20
    print(
        f"log flood: {opts.rate:,} lines/s × {opts.seconds:g} s of {opts.line_bytes} B lines "
        f"({total * opts.line_bytes / mib:,.0f} MiB), log_max_size {opts.max_size}, "
        f"log_retain {opts.retain}, {opts.follow} `logs -f` follower(s); {os.cpu_count()} CPUs"
    )
    print()
    print("(b) the flooding worker")
    print(
        f"    {flood['lines']:,} lines at {flood['rate']:,.0f} lines/s "
        f"({flood['rate'] / opts.rate:.1%} of asked), {flood['writes']} writes; worst write "
        f"{flood['worst_write'] * 1000:.1f} ms, {flood['writes_over_10ms']} over 10 ms, "
        f"at most {max(0.0, flood['most_late']) * 1000:.1f} ms behind its pace"
    )
    # Rotated files fill up to within a line of max_size: then all of it should be kept.
    fits = total * opts.line_bytes <= opts.retain * (max_size - opts.line_bytes)
    if problem is None and first and fits:
        problem = f"lines 0..{first - 1:,} are missing though everything fits"
    print("(c) the files")
    kept = f"{n:,} of {total:,} lines" if not first else f"lines {first:,}..{total - 1:,}"
    verdict = "each number once and in order" if problem is None else "WRONG: " + problem
    note = "" if not first or problem else " (the older ones rotated away: more than fits)"
    print(f"    {kept}{note}, {verdict}")
    print(
        f"    disk: peak {sampler.disk_peak:,} B over {sampler.samples} samples, biggest file "
        f"{sampler.file_peak:,} B; bound {bound:,} B ({opts.max_size} × {opts.retain + 1}): "
        f"{'held' if sampler.disk_peak <= bound and sampler.file_peak <= max_size else 'BROKEN'}"
    )
    if sampler.names - want:
        print(f"    unexpected files: {sorted(sampler.names - want)}")
    print("(d) the supervisor")
    print(
        f"    CPU {(cpu1 - cpu0) / (t1 - t0) * 100:.0f}% of a core over the flood "
        f"({t1 - t0:.1f} s); RSS {rss_before / mib:.1f} MiB before, peak "
        f"{sampler.rss_peak / mib:.1f} MiB, {rss_after / mib:.1f} MiB after"
    )
    kind = "keep-alive" if opts.keepalive else "new connection per request"
    print(f"(a) web ({opts.workers} workers), wrk -t1 -c{opts.connections}, {kind}")
    rows = (("before", before), ("during", during), ("after", after), ("ref", reference))
    for label, runs in rows:
        for w in runs:
            print(
                f"    {label:7} {w.rps:>9,.0f} req/s over {w.seconds:.1f} s "
                f"({w.requests:,} requests, {w.errors} errors), host CPUs {w.host:.0f}% busy"
            )
    print("    (ref: during the same writer outside clusterui, its output to /dev/null)")
    if during:
        flooded = statistics.mean(w.rps for w in during)
        print(
            f"    during / before: {flooded / before[0].rps:.2f}×; during / mean(before, after): "
            f"{flooded / statistics.mean([before[0].rps, after[0].rps]):.2f}×; "
            f"ref / before: {reference[0].rps / before[0].rps:.2f}×"
        )
    else:
        print(f"    no {opts.window:g} s window fits inside a {opts.seconds:g} s flood")
    broken = (
        problem is not None
        or sampler.disk_peak > bound
        or sampler.file_peak > max_size
        or any(w.errors for w in before + during + after + reference)
    )
    return 1 if broken else 0


def kill_all_popen(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=int, default=200_000, help="lines/s asked of the writer")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--line-bytes", type=int, default=60, help="bytes per line, newline included")
    ap.add_argument("--max-size", default="40M", help="log_max_size of the flood app")
    ap.add_argument("--retain", type=int, default=4, help="log_retain of the flood app")
    ap.add_argument("--workers", type=int, default=2, help="web's instances")
    ap.add_argument("--window", type=float, default=3.0, help="seconds per wrk run")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--keepalive", action="store_true", help="wrk with keep-alive")
    ap.add_argument("--follow", type=int, default=0, help="`clusterui logs -f` readers")
    ap.add_argument("--writer", nargs=4, help=argparse.SUPPRESS)
    opts = ap.parse_args()
    if opts.writer:
        rate, seconds, size, result = opts.writer
        writer(int(rate), float(seconds), int(size), result)
        return 0
    if opts.line_bytes < 12:
        print("flood: --line-bytes must be at least 12", file=sys.stderr)
        return 2
    if not shutil.which("wrk"):
        print("flood: wrk is not installed (Debian package wrk)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="cu-flood-", dir="/tmp"))
    home = work / "home"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    pid: int | None = None
    try:
        cli = clusterui_bin()
        with bench_lock():
            try:
                return measure(opts, home, cli)
            finally:
                with contextlib.suppress(OSError, ValueError):
                    pid = int((home / "supervisor.pid").read_text().split()[0])
                import psutil

                left = []
                with contextlib.suppress(psutil.Error, TypeError):
                    top = psutil.Process(pid)
                    left = [top, *top.children(recursive=True)]
                env = {**os.environ, "CLUSTERUI_HOME": str(home)}
                with contextlib.suppress(BenchError):
                    run([cli, "down"], env, timeout=30)
                kill_all(left)  # only what `down` did not stop
    except BenchError as exc:
        print(f"flood: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
