"""Health probes, depends_on, cron_restart and the metrics endpoint, with real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from support import WEB, Control, Env, Load, free_port, wait_for

from clusterui.core import config
from clusterui.core.home import Home
from clusterui.core.supervisor import Supervisor

PY = sys.executable

# A worker on clusterui's helper whose event loop can be hung on demand: SIGUSR1 runs a
# time.sleep on the loop's own thread (not SIGSTOP: the process keeps running).
HANG_APP = """
import asyncio, os, signal, time
from clusterui import worker

async def handle(reader, writer):
    try:
        await reader.readuntil(b"\\r\\n\\r\\n")
        body = f"pid {os.getpid()}\\n".encode()
        writer.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\nConnection: close\\r\\n\\r\\n"
                     % len(body) + body)
        await writer.drain()
    except Exception:
        pass
    finally:
        writer.close()

async def main():
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, lambda: time.sleep(600))
    server = await worker.start_server(handle)
    await server.serve_forever()

asyncio.run(main())
"""


# A worker that reports its own request figures (clusterui.worker.metrics).
COUNTING_APP = """
import asyncio, os, time
from clusterui import worker

served = 0

async def handle(reader, writer):
    global served
    try:
        await reader.readuntil(b"\\r\\n\\r\\n")
        served += 1
        worker.metrics(requests=served, req_rate=served / max(time.monotonic() - START, 1))
        body = f"pid {os.getpid()}\\n".encode()
        writer.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\nConnection: close\\r\\n\\r\\n"
                     % len(body) + body)
        await writer.drain()
    except Exception:
        pass
    finally:
        writer.close()

async def main():
    server = await worker.start_server(handle)
    await server.serve_forever()

START = time.monotonic()
asyncio.run(main())
"""


def describe(cu: Env, app: str) -> dict:
    """`describe APP --json`'s answer, straight from the control socket (a CLI process per
    poll is slow on a busy machine)."""
    ctl = Control(cu.home)
    try:
        return ctl.result("describe", target=app)
    finally:
        ctl.file.close()
        ctl.sock.close()


def test_hung_worker_is_unhealthy_gets_nothing_and_is_replaced(cu: Env) -> None:
    port = free_port()
    cu.write("hang.py", HANG_APP)
    cu.write(
        "ecosystem.yaml",
        f"""
        apps:
          - name: api
            script: hang.py
            interpreter: {PY}
            instances: 3
            listen: 127.0.0.1:{port}
            kill_timeout: 500
            health_check:
              type: http
              path: /healthz
              interval: 300ms
              timeout: 250ms
              failures: 16
        """,
    )
    cu.run("up", "-d", check=True)
    before = {w["instance"]: w for w in describe(cu, "api")["workers"]}
    victim = before[1]
    wait_for(
        lambda: (describe(cu, "api")["workers"][1]["health"] or {}).get("ok") is True,
        what="probes pass",
    )
    with Load(port, 4, timeout=30, interval=0.005, warmup=0) as load:
        wait_for(lambda: load.ok > 30, what="load flowing")
        # The hang starts between requests (a request inside the worker when its loop
        # hangs is lost with it: no manager can answer that one).
        load.pause()
        os.kill(victim["pid"], signal.SIGUSR1)  # its event loop sleeps from now on
        time.sleep(0.2)
        load.resume()
        hung_at = time.time()

        def unhealthy() -> dict | None:
            w = describe(cu, "api")["workers"][1]
            return w if w["status"] == "unhealthy" and w["pid"] == victim["pid"] else None

        seen = wait_for(unhealthy, timeout=10, what="the hung worker shown unhealthy")
        assert seen["health"]["ok"] is False
        # When the supervisor saw the first failure (its own clock: describe may be slow).
        recent = seen["health"]["recent"]
        last_ok = max((r["time"] for r in recent if r["ok"]), default=0.0)
        first_fail = min(r["time"] for r in recent if not r["ok"] and r["time"] > last_ok)
        assert "no answer within 250 ms" in seen["health"]["last"]["detail"]
        # Readiness: it gets no new connections while it waits for replacement (the
        # dispatcher reports its counts once a second: compare two reports).
        time.sleep(1.1)
        handed = describe(cu, "api")["workers"][1]
        time.sleep(1.1)
        later = describe(cu, "api")["workers"][1]
        if later["pid"] == victim["pid"] == handed["pid"]:
            assert later["connections"] <= handed["connections"], (handed, later)

        # Liveness: replaced (the new one ready first), recorded as a restart with a reason.
        def replaced() -> dict | None:
            w = describe(cu, "api")["workers"][1]
            ok = w["pid"] not in (None, victim["pid"]) and w["status"] == "online"
            return w if ok else None

        new = wait_for(replaced, timeout=20, what="the hung worker replaced")
        assert new["restarts"] == 1
        assert new["restart_history"][-1]["reason"].startswith("unhealthy: 16 failed probes"), (
            new["restart_history"],
            (cu.home / "supervisor.log").read_text()[-3000:],
        )
        # Between "unhealthy" and the replacement the others kept serving everyone: what
        # was queued for the hung worker was taken back, and nothing new went to it
        # (without that, each client would soon be stuck behind the hung worker).
        window = (first_fail + 0.3, new["restart_history"][-1]["time"])
        assert window[1] - window[0] > 1.0, window  # 16 failures at 300 ms: over 4 s
        assert len(load.served_between(*window)) >= 10
        wait_for(lambda: any(a.pid == new["pid"] for a in load.answers), what="the new one serving")
        assert victim["pid"] not in load.served_between(hung_at, time.time())
    assert load.failed == [], load.failed[:5]
    assert load.ok > 100
    wait_for(lambda: not _alive(victim["pid"]), timeout=10, what="the hung process gone")
    others = [w for w in describe(cu, "api")["workers"] if w["instance"] != 1]
    # Why, if they were replaced too (their own probes, or the app's listener restarted).
    why = [(w["pid"], w["restart_history"][-1:], w["health"]) for w in others]
    assert [w["pid"] for w in others] == [before[0]["pid"], before[2]["pid"]], (
        why,
        (cu.home / "supervisor.log").read_text()[-3000:],
    )
    assert all(w["restarts"] == 0 for w in others)
    # The timeline says it: the health change, then the replacement and why.
    ctl = Control(cu.home)
    try:
        timeline = [(e["kind"], e["reason"]) for e in ctl.result("events", app="api", instance=1)]
    finally:
        ctl.close()
    assert timeline[0] == ("health", "unhealthy: probe failed (no answer within 250 ms)")
    assert timeline[-1][0] == "restart"
    assert timeline[-1][1].startswith("unhealthy: 16 failed probes"), timeline


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


# ---- depends_on -----------------------------------------------------------------------

STAMP_APP = """
import os, signal, sys, time
name, mode = sys.argv[1], sys.argv[2]
def stamp(what):
    with open(f"{name}.{what}.tmp", "w") as f:
        f.write(repr(time.time()))
    os.replace(f"{name}.{what}.tmp", f"{name}.{what}")  # whole, or not there at all
stamp("start")
if mode == "job":
    time.sleep(0.5)
    stamp("done")
    sys.exit(int(os.environ.get("JOB_EXIT", "0")))
signal.signal(signal.SIGINT, lambda *a: (stamp("stop"), sys.exit(0)))
if mode == "db":
    time.sleep(0.5)
    stamp("ready")
while True:
    time.sleep(1)
"""


def chain_file(cu: Env, job_exit: int) -> None:
    cu.write("stamp.py", STAMP_APP)
    cu.write(
        "ecosystem.yaml",
        f"""
        apps:
          - name: api
            script: stamp.py
            interpreter: {PY}
            args: [api, api]
            depends_on:
              db: healthy
          - name: db
            script: stamp.py
            interpreter: {PY}
            args: [db, db]
            depends_on:
              job: completed
            health_check:
              type: exec
              command: test -f db.ready
              interval: 200ms
              failures: 25  # db needs ~0.7 s to be ready: not replaced meanwhile
          - name: job
            script: stamp.py
            interpreter: {PY}
            args: [job, job]
            autorestart: false
            env:
              JOB_EXIT: "{job_exit}"
        """,
    )


def stamp(cu: Env, name: str) -> float:
    return float((cu.root / name).read_text())


def test_depends_on_orders_job_db_api_and_down_reverses(cu: Env) -> None:
    chain_file(cu, 0)
    r = cu.run("up", "-d", timeout=60)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: (cu.root / "api.start").exists(), timeout=20, what="api started")
    # job ran to completion before db started; db was healthy (ready) before api started.
    assert stamp(cu, "job.done") <= stamp(cu, "db.start")
    assert stamp(cu, "db.ready") <= stamp(cu, "api.start")
    status = {w["app"]: w["status"] for w in cu.ls()}
    assert status == {"api": "online", "db": "online", "job": "stopped"}
    cu.run("down", check=True)
    assert stamp(cu, "api.stop") <= stamp(cu, "db.stop")  # dependents stop first


def test_depends_on_blocks_on_a_failing_job(cu: Env) -> None:
    chain_file(cu, 3)
    cu.write("ecosystem.yaml", (cu.root / "ecosystem.yaml").read_text())
    r = cu.run("up", "-d", timeout=60)
    assert r.returncode != 0  # db and api never start: up -d says why
    assert "waiting for job: completed (job:0 exited with code 3)" in r.stderr
    time.sleep(1.0)
    assert not (cu.root / "db.start").exists()
    assert not (cu.root / "api.start").exists()
    status = {w["app"]: w["status"] for w in cu.ls()}
    assert status == {"api": "pending", "db": "pending", "job": "stopped"}
    info = describe(cu, "db")
    assert info["app"]["waiting_for"] == "waiting for job: completed (job:0 exited with code 3)"
    text = cu.run("describe", "api", check=True).stdout
    assert "waiting    waiting for db: healthy (db:0 is pending)" in text
    # Starting db by hand ends its wait; api then follows once db is healthy.
    cu.run("start", "db", check=True)
    wait_for(lambda: (cu.root / "api.start").exists(), timeout=20, what="api started")
    assert stamp(cu, "db.ready") <= stamp(cu, "api.start")


def test_cycle_and_unknown_names_are_file_line_errors(cu: Env) -> None:
    path = cu.write(
        "eco.yaml",
        """
        apps:
          - name: a
            script: /bin/true
            depends_on:
              b: online
          - name: b
            script: /bin/true
            depends_on:
              a: started
          - name: c
            script: /bin/true
            depends_on:
              nope: online
        """,
    )
    r = cu.run("check", str(path))
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert f"{path}:6: depends_on: dependency cycle: a -> b -> a" in lines
    assert any(line.startswith(f"{path}:14: depends_on: 'nope' is not an app") for line in lines)
    r = cu.run("up", "-d", str(path))
    assert r.returncode == 2 and not cu.supervisor_alive()


# ---- cron_restart under an injected clock ------------------------------------------------


class FakeClock:
    def __init__(self, start: datetime) -> None:
        self.t = start
        self.moved = asyncio.Event()

    def now(self) -> datetime:
        return self.t

    async def sleep(self, seconds: float) -> None:
        until = self.t + timedelta(seconds=seconds)
        while self.t < until:
            self.moved.clear()
            await self.moved.wait()

    def advance(self, seconds: float) -> None:
        self.t += timedelta(seconds=seconds)
        self.moved.set()


async def wait_async(cond, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
    return value


@pytest.mark.timeout(60)
async def test_cron_restart_fires_under_an_injected_clock(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    home.ensure()
    sup = Supervisor(home)
    start = datetime(2026, 3, 1, 2, 59, 0).astimezone()
    sup.clock = clock = FakeClock(start)
    port = free_port()
    spec = config.spec_from_mapping(
        {
            "name": "web",
            "script": WEB,
            "interpreter": PY,
            "instances": 2,
            "listen": f"127.0.0.1:{port}",
            "cron_restart": "0 3 * * *",
        },
        base_dir=str(tmp_path),
    )
    try:
        app = await sup.add_app(spec)

        def online() -> bool:
            return all(s.proc is not None and s.status == "online" for s in app.slots.values())

        await wait_async(online, what="web online")
        pids = [s.proc.pid for s in app.slots.values()]
        assert app.cron.next == start.replace(hour=3, minute=0)
        described = await sup.op_describe("web")
        assert described["app"]["cron_next"] == app.cron.next.timestamp()
        clock.advance(30)  # 02:59:30: not yet
        await asyncio.sleep(0.3)
        assert [s.proc.pid for s in app.slots.values()] == pids
        clock.advance(31)  # 03:00:01: due
        await wait_async(lambda: app.reloads["ok"] == 1, what="the cron reload")
        await wait_async(online, what="web online again")
        assert all(s.proc.pid not in pids for s in app.slots.values())
        assert [s.restart_history[-1]["reason"] for s in app.slots.values()] == ["cron", "cron"]
        timeline = [(e["kind"], e["instance"], e["reason"]) for e in await sup.op_events("web")]
        assert timeline == [
            ("restart", 0, "cron_restart"),
            ("restart", 1, "cron_restart"),
            ("reload", None, "cron_restart: reloaded 2 worker(s)"),
        ]
        assert app.cron.next == start.replace(hour=3, minute=0) + timedelta(days=1)
    finally:
        await sup.shutdown()


# ---- the metrics endpoint ------------------------------------------------------------------


def scrape(port: int) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    out: dict = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            out[key] = sample.value
    return out


def value(samples: dict, metric: str, **labels: str) -> float:
    want = {k: str(v) for k, v in labels.items()}
    hits = [v for (n, ls), v in samples.items() if n == metric and want.items() <= dict(ls).items()]
    assert hits, f"no sample {metric} {labels}"
    return sum(hits)


def test_metrics_endpoint_parses_and_moves_under_load(cu: Env) -> None:
    port, mport = free_port(), free_port()
    cu.write("counting.py", COUNTING_APP)
    cu.write(
        "ecosystem.yaml",
        f"""
        metrics_listen: 127.0.0.1:{mport}
        apps:
          - name: web
            script: counting.py
            interpreter: {PY}
            instances: 2
            listen: 127.0.0.1:{port}
            health_check:
              type: tcp
              interval: 1s
        """,
    )
    cu.run("up", "-d", check=True)
    first = scrape(mport)
    assert value(first, "clusterui_worker_status", app="web", status="online") == 2
    assert value(first, "clusterui_supervisor_rss_bytes") > 0
    handed0 = value(first, "clusterui_worker_connections_handed_total", app="web")
    with Load(port, 1, timeout=30, interval=0.005, warmup=0) as load:
        wait_for(lambda: load.ok > 200, timeout=30, what="200 requests")
    wait_for(
        lambda: (
            value(scrape(mport), "clusterui_worker_connections_handed_total", app="web")
            >= handed0 + 200
        ),
        timeout=20,
        what="handed connections counted",
    )
    assert load.failed == []
    # What the workers report themselves: their request counts (sent once a second).
    after = wait_for(
        lambda: (
            (s := scrape(mport))
            and value(s, "clusterui_worker_custom", app="web", name="requests") >= 200
            and s
        ),
        timeout=10,
        what="the workers' request counts",
    )
    assert value(after, "clusterui_worker_request_rate", app="web") > 0
    assert value(after, "clusterui_worker_health_probes_total", app="web") > 0
    assert value(after, "clusterui_worker_health_up", app="web", instance="0") == 1
    assert value(after, "clusterui_supervisor_cpu_seconds_total") > value(
        first, "clusterui_supervisor_cpu_seconds_total"
    )
    restarts = value(after, "clusterui_worker_restarts_total", app="web")
    assert cu.run("reload", "web", check=True)
    reloaded = scrape(mport)
    assert value(reloaded, "clusterui_app_reloads_total", app="web", outcome="ok") == 1
    assert value(reloaded, "clusterui_app_reloads_total", app="web", outcome="failed") == 0
    assert value(reloaded, "clusterui_worker_restarts_total", app="web") >= restarts + 2


def test_metrics_cli_refuses_public_without_the_flag(cu: Env) -> None:
    port = free_port()
    r = cu.run("metrics", "--listen", f"0.0.0.0:{port}")
    assert r.returncode == 2
    assert "pass --public" in r.stderr
    r = cu.run("metrics", "--listen", f"127.0.0.1:{port}", check=True)
    assert f"127.0.0.1:{port}" in r.stdout
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert b"clusterui_supervisor_rss_bytes" in resp.read()


def test_save_keeps_health_checks_start_order_and_cron(tmp_path: Path) -> None:
    """`clusterui save` writes these keys back, so `resurrect` gives the same specs."""
    from clusterui.core import dump

    path = tmp_path / "eco.yaml"
    path.write_text(
        f"""
apps:
  - name: job
    script: /bin/true
    autorestart: false
  - name: api
    script: {WEB}
    listen: 127.0.0.1:0
    depends_on: {{job: completed}}
    cron_restart: "*/10 * * * * *"
    health_check: {{type: http, path: /up, status: 204, interval: 2s, failures: 4}}
  - name: db
    script: /bin/sleep
    args: "100"
    health_check: {{type: exec, command: "test -f ready", initial_delay: 1s}}
"""
    )
    specs = config.load_ecosystem(path).apps
    again = tmp_path / "again.yaml"
    again.write_text(dump.render([(s, False, s.instances) for s in specs]))
    back = config.load_ecosystem(again).apps
    for old, new in zip(specs, back, strict=True):
        assert (new.health_check, new.depends_on, new.cron_restart) == (
            old.health_check,
            old.depends_on,
            old.cron_restart,
        )
    assert back[1].health_check.timeout == 2000 and back[2].health_check.command[0] == "test"


def test_an_exec_probe_that_outlasts_a_tick_is_not_swept_as_an_orphan(cu: Env) -> None:
    """With the subreaper (no cgroups, or a `preload` app), every second the supervisor
    kills children it did not start as workers; a running exec probe is its own."""
    cu.env["CLUSTERUI_NO_CGROUPS"] = "1"
    cu.write("idle.py", "import time\ntime.sleep(600)\n")
    cu.write(
        "ecosystem.yaml",
        f"""
        apps:
          - name: idle
            script: idle.py
            interpreter: {PY}
            health_check:
              type: exec
              command: sleep 2.5
              interval: 3s
              timeout: 3s
              failures: 1
        """,
    )
    assert cu.run("up", "-d").returncode == 0
    ctl = Control(cu.home)
    try:
        wait_for(
            lambda: (w := ctl.workers("idle")) and w[0].get("health") and w[0]["health"].get("ok"),
            15,
            "a passing probe",
        )
        assert [w["restarts"] for w in ctl.workers("idle")] == [0]
    finally:
        ctl.close()
    log = (cu.home / "supervisor.log").read_text()
    assert "left behind" not in log
