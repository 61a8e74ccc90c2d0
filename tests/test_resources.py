"""Resources come back: file descriptors after restarts and connections, memory under a
slow subscriber, log files under rotation.

The long versions (1,000 restarts, 100,000 connections, 10 minutes of random
operations with RSS and fd series) are in bench/soak.py.
"""

from __future__ import annotations

import contextlib
import os
import socket

import psutil
import pytest
from support import Control, close_requests, free_port, wait_for, web_app

pytestmark = pytest.mark.timeout(120)

# Fd counts may differ by a couple at any instant (an `ls` connection closing, a
# pidfd of a worker being reaped); a leak grows with the number of operations.
SLACK = 3

# A handoff worker at the cost of a shell: write(2) on a SEQPACKET socket sends one
# datagram, which is all `ready` needs. It never takes connections (none are sent).
READY_SH = """\
printf '{"t":"ready"}' >&"$CLUSTERUI_CHANNEL_FD"
exec sleep 1000
"""
CRASH_SH = """\
printf '{"t":"ready"}' >&"$CLUSTERUI_CHANNEL_FD"
echo "crashing on purpose"
exit 3
"""


def fd_links(pid: int) -> list[str]:
    links = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):  # closed while we listed
            links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return links


def fd_count(pid: int) -> int:
    """Open fds, less the /proc files the supervisor's sampler keeps open for the processes
    it samples: those follow the live workers (checked by kept_proc_files), not a leak."""
    return sum(1 for link in fd_links(pid) if not link.startswith("/proc/"))


def kept_proc_files(pid: int) -> set[int]:
    """The pids whose /proc files pid holds open."""
    return {int(link.split("/")[2]) for link in fd_links(pid) if link.startswith("/proc/")}


def stop_for_good(ctl: Control, app: str) -> None:
    """Stop app, again if needed: see test_chaos's stop-during-a-crash-loop test (a bug)."""

    def attempt() -> bool:
        assert ctl.call("stop", targets=[app])["ok"]
        return all(w["status"] == "stopped" and w["pid"] is None for w in ctl.workers(app))

    wait_for(attempt, 10, f"{app} stopped")


def dispatcher_pid(ctl: Control, app: str) -> int:
    apps = ctl.call("state", history=False)["result"]["apps"]
    pid = next(a["listener_pid"] for a in apps if a["name"] == app)
    assert pid and "clusterui.dispatch" in " ".join(psutil.Process(pid).cmdline())
    return pid


def settles_to(pid: int, baseline: int, what: str) -> int:
    """Wait until pid's fd count is back within SLACK of baseline; return the count."""
    wait_for(lambda: fd_count(pid) <= baseline + SLACK, 15, f"{what} fds back to {baseline}")
    return fd_count(pid)


def all_online(ctl: Control, app: str, n: int) -> list[dict]:
    rows = ctl.workers(app)
    return rows if len(rows) == n and all(w["status"] == "online" for w in rows) else []


def test_no_fd_leak_after_200_restarts_and_200_crashes(cu):
    cu.write("ready.sh", READY_SH)
    cu.write("crash.sh", CRASH_SH)
    cu.write(
        "ecosystem.yaml",
        f"""
        apps:
          - name: churn
            script: ready.sh
            exec_mode: cluster
            instances: 4
            listen: 127.0.0.1:{free_port()}
          - name: crash
            script: crash.sh
            exec_mode: cluster
            instances: 2
            listen: 127.0.0.1:{free_port()}
            restart_delay: 0
            min_uptime: 0
        """,
    )
    cu.run("up", "-d")  # exits 1: crash never stays up; churn does
    ctl = Control(cu.home)
    sup = cu.supervisor_pid()
    wait_for(lambda: all_online(ctl, "churn", 4), 10, "churn online")
    wait_for(lambda: sum(w["restarts"] for w in ctl.workers("crash")) >= 10, 10, "crash loop")
    stop_for_good(ctl, "crash")
    churn_d, crash_d = dispatcher_pid(ctl, "churn"), dispatcher_pid(ctl, "crash")
    base = {p: fd_count(p) for p in (sup, churn_d, crash_d)}
    churn_pids = [w["pid"] for w in ctl.workers("churn")]

    for _ in range(50):  # 50 × 4 instances = 200 restarts through the control socket
        answer = ctl.call("restart", targets=["churn"])
        assert answer["ok"], answer
    rows = wait_for(lambda: all_online(ctl, "churn", 4), 10, "churn online again")
    assert sum(w["restarts"] for w in rows) == 200
    assert not {w["pid"] for w in rows} & set(churn_pids)

    start = sum(w["restarts"] for w in ctl.workers("crash"))
    assert ctl.call("start", targets=["crash"])["ok"]
    wait_for(
        lambda: sum(w["restarts"] for w in ctl.workers("crash")) >= start + 200,
        60,
        "200 more crashes",
    )
    stop_for_good(ctl, "crash")
    crashes = sum(w["restarts"] for w in ctl.workers("crash")) - start

    after = {
        sup: settles_to(sup, base[sup], "supervisor"),
        churn_d: settles_to(churn_d, base[churn_d], "churn dispatcher"),
        crash_d: settles_to(crash_d, base[crash_d], "crash dispatcher"),
    }
    print(
        f"\n200 restarts + {crashes} crashes: supervisor fds {base[sup]} → {after[sup]}, "
        f"dispatchers {base[churn_d]} → {after[churn_d]} and {base[crash_d]} → {after[crash_d]}"
    )
    # The sampler's kept /proc files are those of live workers only, after 400 spawns.
    live = {w["pid"] for w in ctl.workers("churn")}
    wait_for(lambda: kept_proc_files(sup) <= live, 15, "/proc files of the live workers only")
    # The supervisor's children are exactly the two dispatchers, the 4 churn workers and
    # the guardian (a fork: same command line): nothing stray or zombie after 400 spawns.
    kids = psutil.Process(sup).children()
    expected = {churn_d, crash_d, *(w["pid"] for w in ctl.workers("churn"))}
    others = [k for k in kids if k.pid not in expected]
    assert expected <= {k.pid for k in kids}
    assert [k.cmdline() for k in others] == [psutil.Process(sup).cmdline()], others
    assert all(k.status() != psutil.STATUS_ZOMBIE for k in kids)
    ctl.close()


def test_no_fd_leak_after_20000_handed_off_connections(cu):
    port = web_app(cu)
    ctl = Control(cu.home)
    sup = cu.supervisor_pid()
    disp = dispatcher_pid(ctl, "web")
    workers = [w["pid"] for w in ctl.workers("web")]
    for _ in range(200):  # warm up: lazily created sockets and buffers exist from here on
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n")
            while s.recv(65536):
                pass

    def handed() -> int:
        return sum(w["connections"] for w in ctl.workers("web"))

    wait_for(lambda: handed() == 200, 10, "200 counted")
    base = {p: fd_count(p) for p in (sup, disp, *workers)}
    runs = []
    while handed() < 20_200:
        runs.append(close_requests(port, 20_200 - handed()))
        wait_for(lambda: ctl.call("state", history=False), 5, "state")
    total = handed() - 200
    after = {p: settles_to(p, n, f"pid {p}") for p, n in base.items()}
    print(f"\n{total} connections ({'; '.join(runs)}): fds before {base}, after {after}")
    assert total >= 20_000
    assert [w["pid"] for w in ctl.workers("web")] == workers  # nobody crashed or restarted
    assert {w["status"] for w in ctl.workers("web")} == {"online"}
    ctl.close()


def test_a_subscriber_that_never_reads_cannot_grow_the_supervisor(cu):
    cu.write(
        "flood.py",
        """
        import sys, time
        line = "x" * 4000 + "\\n"
        # 120 MB in long lines over ~3 s: every 50 ms tick has more than a live batch's
        # byte cap (1 MiB) to send, so the stuck subscriber's queue keeps growing.
        for i in range(300):
            sys.stdout.write(line * 100)
            sys.stdout.flush()
            time.sleep(0.01)
        print("flood done", flush=True)
        time.sleep(600)
        """,
    )
    cu.write("sleep.py", "import time\nprint('idle', flush=True)\ntime.sleep(600)\n")
    cu.write("ecosystem.yaml", "apps:\n  - name: idle\n    script: sleep.py\n")
    assert cu.run("up", "-d").returncode == 0
    sup = psutil.Process(cu.supervisor_pid())
    stuck = socket.socket(socket.AF_UNIX)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(str(cu.home / "supervisor.sock"))
    stuck.sendall(b'{"id":1,"op":"subscribe","args":{"state":false,"logs":true}}\n')
    rss_before = sup.memory_info().rss
    r = cu.run("start", str(cu.root / "flood.py"), "--name", "flooder")
    assert r.returncode == 0, r.stderr
    ctl = Control(cu.home)
    peak = 0

    def flood_done() -> bool:
        nonlocal peak
        peak = max(peak, sup.memory_info().rss)
        lines = ctl.call("logs", target="flooder", lines=1)["result"]
        return bool(lines) and lines[-1]["text"] == "flood done"

    wait_for(flood_done, 60, "the flood to be captured")
    growth = (peak - rss_before) / 2**20
    # The stuck client was cut off: reading now, we reach end of file after what the
    # supervisor had queued (at most 8 MiB), not an endless stream of events.
    stuck.settimeout(10)
    got = 0
    try:
        while chunk := stuck.recv(1 << 20):
            got += len(chunk)
            assert got < 64 << 20, "the stuck subscriber was never cut off"
    except TimeoutError:
        pytest.fail(f"the stuck subscriber was never cut off (read {got} bytes, then nothing)")
    print(
        f"\n120 MB of logs with a stuck subscriber: supervisor RSS +{growth:.1f} MiB at peak; "
        f"the subscriber was cut off after {got / 2**20:.1f} MiB"
    )
    # MAX_PENDING_EVENTS (8 MiB), plus the batch that crossed it (LogHub's live_bytes,
    # 1 MiB of log text, plus its JSON), plus what the kernel's socket buffers held.
    assert got <= (8 << 20) + (1 << 20) * 1.05 + (512 << 10), got
    # With the live batches capped in bytes the flood itself costs the supervisor little
    # (+12 MiB measured); without the cut-off the stuck client's queue alone would be
    # ~60 MB by the end of the flood.
    assert growth < 40, growth
    assert ctl.call("ping")["ok"]  # everyone else is still answered
    stuck.close()
    ctl.close()


def test_log_rotation_keeps_fds_and_files_bounded(cu):
    cu.write(
        "chatty.py",
        """
        import sys, time
        line = "y" * 100 + "\\n"
        for i in range(60_000):  # about 6 MB through 64 KiB files
            sys.stdout.write(line)
        sys.stdout.flush()
        print("chatty done", flush=True)
        time.sleep(600)
        """,
    )
    cu.write(
        "ecosystem.yaml",
        """
        apps:
          - name: chatty
            script: idle.py
            log_max_size: 64K
            log_retain: 2
        """,
    )
    cu.write("idle.py", "import time\nprint('idle', flush=True)\ntime.sleep(600)\n")
    assert cu.run("up", "-d").returncode == 0
    ctl = Control(cu.home)
    sup = cu.supervisor_pid()
    base = fd_count(sup)
    # Same app file, now the chatty script: restart picks up the new script in place.
    (cu.root / "idle.py").write_text((cu.root / "chatty.py").read_text())
    assert ctl.call("restart", targets=["chatty"])["ok"]

    def done() -> bool:
        lines = ctl.call("logs", target="chatty", lines=1)["result"]
        return bool(lines) and lines[-1]["text"] == "chatty done"

    wait_for(done, 60, "the chatty worker to finish")
    files = sorted(p.name for p in (cu.home / "logs").iterdir() if p.name.startswith("chatty"))
    sizes = [(cu.home / "logs" / f).stat().st_size for f in files]
    print(f"\nafter ~6 MB through 64 KiB files: {files} {sizes}; fds {base} → {fd_count(sup)}")
    out = [f for f in files if "out" in f]
    assert len(out) <= 1 + 2, files  # the live file and log_retain rotated ones
    assert max(sizes) <= 64 * 1024 + 4096, sizes
    settles_to(sup, base, "supervisor")
    ctl.close()
