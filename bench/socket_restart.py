"""A supervisor SIGKILLed under load: connections refused, lost and queued, and how long
until the next supervisor answers, with the socket bound by clusterui and with the
socket handed in by `systemd-socket-activate` (LISTEN_FDS).

Both runs use tests/restart_always.py, which starts `clusterui up` again whenever it
exits (systemd's Restart=always). Bound by clusterui, `up` exits when its supervisor
dies and is started again; handed in, `up` starts a new supervisor on the socket.

    .venv/bin/python bench/socket_restart.py [--rounds 3] [--clients 16]
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import BenchError, Load, bench_lock, free_port, get, wait_for

ROOT = Path(__file__).resolve().parent.parent
RESTART_ALWAYS = str(ROOT / "tests" / "restart_always.py")
WEB = str(ROOT / "examples" / "web.py")


def round_(handed_in: bool, clients: int) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix="cu-bench-", dir="/tmp"))
    port = free_port()
    eco = root / "ecosystem.yaml"
    eco.write_text(
        f"apps:\n  - name: web\n    script: {WEB}\n    exec_mode: cluster\n"
        f"    instances: 2\n    listen: 127.0.0.1:{port}\n"
    )
    env = dict(os.environ, CLUSTERUI_HOME=str(root / "home"), NO_COLOR="1")
    cmd = [sys.executable, RESTART_ALWAYS, sys.executable, "-m", "clusterui", "up", str(eco)]
    if handed_in:
        listen = ["systemd-socket-activate", "-l", f"127.0.0.1:{port}", "--fdname=web"]
        cmd = [*listen, "-E", "CLUSTERUI_HOME", *cmd]
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    load = Load(
        port, clients, timeout=30, warmup=0, refused_pause=0.01
    )  # retries as a client would
    pidfile = root / "home" / "supervisor.pid"
    try:

        def answers_once() -> bool:
            try:
                return get(port, timeout=5).status == 200
            except (OSError, http.client.HTTPException):
                return False

        wait_for(answers_once, 60, "a first answer")
        load.__enter__()
        wait_for(lambda: load.ok > 200, 30, "load under way")
        with load.lock:
            old = {a.pid for a in load.answers}
        first = int(pidfile.read_text())
        os.kill(first, signal.SIGKILL)
        killed = time.monotonic()

        def new_answers() -> int:
            with load.lock:
                return sum(1 for a in load.answers if a.pid not in old)

        wait_for(lambda: new_answers() > 200, 60, "answers from the next supervisor")
        load.stop()
        answers, outcomes = load.answers, load.outcomes
        first_new = min(a.end for a in answers if a.pid not in old)
        queued = sum(1 for a in answers if a.pid not in old and killed < a.start < first_new)
        lost = sum(n for k, n in outcomes.items() if k not in ("ok", "refused"))
        return {
            "ok": outcomes["ok"],
            "refused": outcomes["refused"],
            "lost": lost,
            "queued": queued,
            "gap": first_new - killed,
        }
    finally:
        load.stop()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=16)
    opts = parser.parse_args()
    rows = []
    try:
        with bench_lock():
            for handed_in in (False, True):
                for _ in range(opts.rounds):
                    rows.append((handed_in, round_(handed_in, opts.clients)))
    except BenchError as exc:
        print(f"socket_restart: {exc}", file=sys.stderr)
        return 1
    print(f"{'socket':<26} {'ok':>6} {'refused':>8} {'lost':>5} {'in gap':>7} {'gap s':>6}")
    for handed_in, r in rows:
        who = "handed in (LISTEN_FDS)" if handed_in else "bound by clusterui"
        print(
            f"{who:<26} {r['ok']:>6} {r['refused']:>8} {r['lost']:>5} "
            f"{r['queued']:>7} {r['gap']:>6.2f}"
        )
    for handed_in in (False, True):
        gaps = [r["gap"] for h, r in rows if h == handed_in]
        who = "handed in" if handed_in else "bound by clusterui"
        print(f"median gap, {who}: {statistics.median(gaps):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
