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
import collections
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
from pathlib import Path

from common import BenchError, bench_lock, free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
RESTART_ALWAYS = str(ROOT / "tests" / "restart_always.py")
WEB = str(ROOT / "examples" / "web.py")


def get(port: int, timeout: float = 30.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return data


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
    outcomes: collections.Counter[str] = collections.Counter()
    answers: list[tuple[float, float, int]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                data = get(port)
            except ConnectionRefusedError:
                with lock:
                    outcomes["refused"] += 1
                time.sleep(0.01)  # as a client retrying would
                continue
            except OSError as exc:
                with lock:
                    outcomes[type(exc).__name__] += 1
                continue
            m = re.search(rb"pid (\d+)\n$", data)
            with lock:
                if data.startswith(b"HTTP/1.1 200") and m:
                    outcomes["ok"] += 1
                    answers.append((sent, time.monotonic(), int(m.group(1))))
                else:
                    outcomes["bad answer"] += 1

    pidfile = root / "home" / "supervisor.pid"
    try:

        def answers_once() -> bool:
            try:
                return get(port, 5).startswith(b"HTTP/1.1 200")
            except OSError:
                return False

        wait_for(answers_once, 60, "a first answer")
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        wait_for(lambda: outcomes["ok"] > 200, 30, "load under way")
        with lock:
            old = {pid for *_, pid in answers}
        first = int(pidfile.read_text())
        os.kill(first, signal.SIGKILL)
        killed = time.monotonic()

        def new_answers() -> int:
            with lock:
                return sum(1 for *_, pid in answers if pid not in old)

        wait_for(lambda: new_answers() > 200, 60, "answers from the next supervisor")
        stop.set()
        for t in threads:
            t.join(60)
        first_new = min(a for _s, a, pid in answers if pid not in old)
        queued = sum(1 for s, _a, pid in answers if pid not in old and killed < s < first_new)
        lost = sum(n for k, n in outcomes.items() if k not in ("ok", "refused"))
        return {
            "ok": outcomes["ok"],
            "refused": outcomes["refused"],
            "lost": lost,
            "queued": queued,
            "gap": first_new - killed,
        }
    finally:
        stop.set()
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
