"""An in-memory client for the dashboard: deterministic data, scripted events, recorded calls.

It implements the client API of clusterui.client.Client (see docs/architecture.md and the client
contract). Everything is fixed: times count from T0, pids are made up, histories are
computed from the sample index, so screenshots and snapshot tests are reproducible.
"""

from __future__ import annotations

import asyncio
import copy
import math
from collections.abc import AsyncIterator
from typing import Any

from clusterui.vocab import delta, events, signals, states
from clusterui.vocab.delta import Mirror
from clusterui.vocab.snapshot import (
    HISTORY,
    AppRow,
    Series,
    Snapshot,
    TreeProcess,
    WorkerRow,
    WorkerTree,
)

T0 = 1_764_190_000.0  # the fake supervisor's start time (epoch seconds)
UPTIME = 3 * 3600 + 12 * 60 + 5.0  # the fake supervisor has been up 3h12m05s
NOW = T0 + UPTIME


class FakeClientError(Exception):
    """Like clusterui.client.ClientError: one sentence for the user and an exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def _wave(i: int, base: float, amp: float, period: float, phase: float) -> float:
    return max(0.0, base + amp * math.sin(i / period + phase))


def make_history(
    n: int, cpu: float, memory: int, conn_rate: float, *, busy: bool = False, phase: float = 0.0
) -> Series:
    """`n` one-second samples ending at NOW, shaped so sparklines show something."""
    amp = 0.9 if busy else 0.35
    return {
        "cpu": [round(_wave(i, cpu, cpu * amp, 6.0, phase), 1) for i in range(n)],
        "memory": [int(memory * (0.9 + 0.1 * i / max(1, n - 1))) for i in range(n)],
        "conn_rate": [
            round(_wave(i, conn_rate, conn_rate * amp, 4.0, phase + 1), 1) for i in range(n)
        ],
        "req_rate": [0.0] * n,  # these fake workers report no requests, as the helper-less do
        "time": [NOW - (n - 1 - i) for i in range(n)],
    }


def make_worker(
    wid: int,
    app: str,
    instance: int,
    *,
    status: str = "online",
    cpu: float = 2.0,
    memory: int = 24 * 1024 * 1024,
    conn_rate: float = 0.0,
    active: int = 0,
    restarts: int = 0,
    uptime: float = 3600.0,
    busy: bool = False,
    history: int = HISTORY,
    metrics: dict[str, float] | None = None,
    restart_history: list[dict[str, Any]] | None = None,
    exit_code: int | None = None,
    exit_signal: str | None = None,
    error: str | None = None,
) -> WorkerRow:
    live = status in states.LIVE
    hist = make_history(history, cpu, memory, conn_rate, busy=busy, phase=wid * 0.7)
    return {
        "id": wid,
        "app": app,
        "instance": instance,
        "pid": 41000 + wid * 7 if live else None,
        "status": status,
        "restarts": restarts,
        "uptime": uptime if live else 0,
        "cpu": hist["cpu"][-1] if live and history else (cpu if live else 0.0),
        "memory": memory if live else 0,
        "connections": int(conn_rate * 600) + 17 * wid,
        "active": active if live else 0,
        "conn_rate": hist["conn_rate"][-1] if history else conn_rate,
        "req_rate": None,
        "metrics_dropped": 0,
        "draining_pids": [],
        "log_dropped": 0,
        "exit_code": exit_code,
        "exit_signal": exit_signal,
        "error": error,
        "metrics": dict(metrics or {}),
        "history": hist
        if live
        else {"cpu": [], "memory": [], "conn_rate": [], "req_rate": [], "time": []},
        "restart_history": list(restart_history or []),
        "out_file": f"/home/dev/.clusterui/logs/{app}-{instance}-out.log",
        "err_file": f"/home/dev/.clusterui/logs/{app}-{instance}-err.log",
        "health": None,
    }


def make_app(name: str, **over: Any) -> AppRow:
    app: AppRow = {
        "name": name,
        "exec_mode": "cluster",
        "dispatch": "round-robin",
        "listen": "0.0.0.0:8000",
        "instances": 2,
        "watch": False,
        "watch_paths": [],
        "last_watch_event": None,
        "source": "/srv/shop/ecosystem.yaml",
        "script": f"/srv/shop/{name}.py",
        "args": [],
        "cwd": "/srv/shop",
        "interpreter": None,
        "env_names": ["PORT"],
        "reloading": False,
        "listener_pid": 40990,
        "dispatchers": [{"pid": 40990, "accepted": 0}],
        "depends_on": {},
        "waiting_for": None,
        "cron_restart": None,
        "cron_next": None,
        "health_check": None,
        "reloads": {"ok": 0, "failed": 0},
        "preload": None,
    }
    app.update(over)
    return app


def app_spec(app: dict[str, Any]) -> dict[str, Any]:
    """The `spec` part of a describe answer: the supervisor's AppSpec.to_dict() for this
    app, env and caller_env values left out (the supervisor sends the names only)."""
    from clusterui.core.spec import AppSpec, parse_listen

    spec = AppSpec(
        name=app["name"],
        script=app["script"],
        args=list(app["args"]),
        cwd=app["cwd"],
        interpreter=app["interpreter"],
        instances=app["instances"],
        exec_mode=app["exec_mode"],
        listen=parse_listen(app["listen"]) if app["listen"] else None,
        dispatch=app["dispatch"] or "round-robin",
        watch=list(app["watch_paths"]),
        source=app["source"],
    ).to_dict()
    spec["env"] = sorted(app["env_names"])
    spec["caller_env"] = sorted(spec["caller_env"])  # names only, as the supervisor sends
    return spec


def make_snapshot(
    apps: list[AppRow], workers: list[WorkerRow], *, conn_rate: float | None = None
) -> Snapshot:
    rate = conn_rate if conn_rate is not None else sum(w["conn_rate"] for w in workers)
    return {
        "supervisor": {
            "pid": 40990,
            "started_at": T0,
            "uptime": UPTIME,
            "home": "/home/dev/.clusterui",
            "version": "0.1.0",
            "files": ["/srv/shop/ecosystem.yaml"],
            "host": {
                "cpu": 23.5,
                "memory_used": 5_400_000_000,
                "memory_total": 16_700_000_000,
                "cpus": 8,
            },
            "conn_rate": round(rate, 1),
            "metrics_listen": None,
        },
        "apps": apps,
        "workers": workers,
    }


def demo_snapshot(*, api_workers: int = 2, busy: bool = False) -> Snapshot:
    """Three apps: a web app with file watch, an API (scaled and busy when asked), a job runner."""
    apps = [
        make_app(
            "web",
            watch=True,
            watch_paths=["/srv/shop/web"],
            last_watch_event="reloaded: web/views.py changed",
            env_names=["GREETING", "PORT"],
        ),
        make_app(
            "api",
            listen="127.0.0.1:9000",
            instances=api_workers,
            args=["--workers-db", "pg://db/shop"],
            env_names=["DATABASE_URL", "PORT"],
        ),
        make_app(
            "jobs",
            exec_mode="fork",
            dispatch=None,
            listen=None,
            instances=1,
            env_names=["QUEUE"],
            listener_pid=None,
            dispatchers=[],
        ),
    ]
    workers = [
        make_worker(0, "web", 0, cpu=3.2, memory=38 << 20, conn_rate=42.0, active=3),
        make_worker(
            1,
            "web",
            1,
            cpu=2.9,
            memory=37 << 20,
            conn_rate=41.0,
            active=2,
            restarts=1,
            uptime=412.0,
            restart_history=[
                {"time": NOW - 412, "reason": "watch", "exit_code": 0, "signal": None},
            ],
        ),
    ]
    api_load = 70.0 if busy else 12.0
    for i in range(api_workers):
        workers.append(
            make_worker(
                2 + i,
                "api",
                i,
                cpu=api_load + 3 * i,
                memory=(92 + 6 * i) << 20,
                conn_rate=(900.0 if busy else 120.0) - 10 * i,
                active=(40 if busy else 6) + i,
                busy=busy,
                uptime=7000.0 - 100 * i if i < 2 else 30.0 + i,
            )
        )
    next_id = 2 + api_workers
    workers.append(
        make_worker(
            next_id,
            "jobs",
            0,
            status="waiting-restart",
            restarts=4,
            memory=0,
            exit_code=1,
            restart_history=[
                {"time": NOW - 60 * k - 3, "reason": "crashed", "exit_code": 1, "signal": None}
                for k in range(4)
            ],
            metrics={"queue": 17, "done": 1204},
        )
    )
    return make_snapshot(apps, workers)


def demo_logs(n: int = 60) -> list[dict[str, Any]]:
    """Log lines from every worker, oldest first, at fixed times."""
    texts = [
        ("web", 0, "out", 'GET /products 200 12ms "Mozilla/5.0"'),
        ("api", 0, "out", "POST /v1/orders 201 31ms"),
        ("web", 1, "out", "GET /cart 200 8ms"),
        ("api", 1, "err", "WARNING slow query: SELECT * FROM orders (412ms)"),
        ("jobs", 0, "sys", "exited with code 1, restarting in 1.6 s"),
        ("jobs", 0, "err", "Traceback: KeyError: 'customer_id' in send_invoice"),
        ("api", 0, "out", "GET /v1/health 200 1ms"),
        ("web", 0, "out", "GET /static/app.css 304 0ms"),
    ]
    ids = {("web", 0): 0, ("web", 1): 1, ("api", 0): 2, ("api", 1): 3, ("jobs", 0): 4}
    lines = []
    for i in range(n):
        app, inst, stream, text = texts[i % len(texts)]
        lines.append(
            {
                "worker": ids[(app, inst)],
                "app": app,
                "instance": inst,
                "stream": stream,
                "time": NOW - n + i,
                "text": f"{text} #{i}",
            }
        )
    return lines


def demo_events(snapshot: Snapshot) -> list[events.Event]:
    """A timeline that agrees with the snapshot, oldest first: each worker's restarts
    (restart_history) as the supervisor records them, and a watch trigger before a
    watch restart."""
    out: list[events.Event] = []
    for w in snapshot["workers"]:
        for item in w["restart_history"]:
            reason = events.RESTART_REASONS.get(item["reason"], item["reason"])
            if item["reason"] == "crashed":
                reason += f" ({events.exit_text(item['exit_code'], item['signal'])})"
            if item["reason"] == "watch":
                out.append(
                    event(
                        item["time"] - 1,
                        events.WATCH,
                        w["app"],
                        None,
                        "views.py changed: reloading",
                    )
                )
            out.append(event(item["time"], events.RESTART, w["app"], w["instance"], reason))
    out.append(event(T0 + 5, events.SCALE, "api", None, "1 -> 2 instance(s)"))
    out.sort(key=lambda e: e["time"])
    return out


def event(time: float, kind: str, app: str, instance: int | None, reason: str) -> events.Event:
    return {"time": time, "kind": kind, "app": app, "instance": instance, "reason": reason}


def demo_tree(worker: WorkerRow) -> list[TreeProcess]:
    """A live worker's processes, as the `tree` operation lists them: api workers start a
    renderer with a converter under it; web:1 left a helper that called setsid(); one
    process was seen for the first time (no CPU figure yet)."""
    pid = int(worker["pid"] or 0)
    script = f"/srv/shop/{worker['app']}.py"

    def proc(p: int, ppid: int, depth: int, cmd: str, cpu: float | None, mem: int, **kw: Any):
        row: TreeProcess = {
            "pid": p,
            "ppid": ppid,
            "depth": depth,
            "name": cmd.split()[0].rsplit("/", 1)[-1],
            "cmdline": cmd,
            "cpu": cpu,
            "memory": mem,
            "status": "sleeping",
            "left": None,
        }
        row.update(kw)  # type: ignore[typeddict-item]
        return row

    rows = [proc(pid, 40990, 0, f"python3 {script}", worker["cpu"], worker["memory"])]
    if worker["app"] == "api":
        rows.append(proc(pid + 1, pid, 1, "python3 -m shop.render --pool 2", 4.5, 31 << 20))
        rows.append(
            proc(pid + 2, pid + 1, 2, "convert -resize 640x480 in.png out.png", None, 9 << 20)
        )
    if worker["app"] == "web" and worker["instance"] == 1:
        rows.append(proc(pid + 3, pid, 1, "sleep 600", 0.0, 1 << 20, left="session"))
    return rows


_CLOSE = object()


class FakeClient:
    """Implements the client API in memory.

    - `calls` records every call as (op, args) in order.
    - `fail(op, message)` makes the next `op` call raise FakeClientError(message).
    - `hold(op)` makes `op` calls wait until `release(op)` (a slow reload, say).
    - `push_state()`, `push_logs()`, `push_notice()`, `drop()` script the event stream.
    """

    def __init__(
        self,
        snapshot: dict[str, Any] | None = None,
        logs: list[dict[str, Any]] | None = None,
    ) -> None:
        self.snapshot = snapshot if snapshot is not None else demo_snapshot()
        self.backlog = logs if logs is not None else demo_logs()
        # The `events` op's answers (tests may append): oldest first, as the supervisor's.
        self.timeline: list[events.Event] = demo_events(self.snapshot)
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.closed = False
        self.subscribed = False
        self._failures: dict[str, FakeClientError] = {}
        self._gates: dict[str, asyncio.Event] = {}
        self._events: asyncio.Queue[Any] = asyncio.Queue()
        self.trees: dict[int, list[TreeProcess]] = {}  # worker id -> what tree() lists
        self._mirror: Mirror | None = None  # what a delta subscriber holds
        self._fresh = True  # its next state event is a whole one

    # -- scripting --------------------------------------------------------------

    def fail(self, op: str, message: str, code: int = 1) -> None:
        self._failures[op] = FakeClientError(message, code)

    def hold(self, op: str) -> None:
        self._gates[op] = asyncio.Event()

    def release(self, op: str) -> None:
        self._gates.pop(op).set()

    def push_state(self, snapshot: dict[str, Any] | None = None) -> None:
        """A state event; to a delta subscriber, as the supervisor sends it (the first
        whole, then what changed, made by the supervisor's own vocab.delta.Mirror)."""
        if snapshot is not None:
            self.snapshot = snapshot
        data = copy.deepcopy(self.snapshot)
        if self._mirror is None:
            self._events.put_nowait({"event": delta.WHOLE, "data": data})
            return
        change = self._mirror.delta(copy.deepcopy(data))
        if self._fresh:
            self._fresh = False
            self._events.put_nowait({"event": delta.WHOLE, "data": data})
        else:
            self._events.put_nowait({"event": delta.DELTA, "data": copy.deepcopy(change)})

    def push_logs(self, lines: list[dict[str, Any]]) -> None:
        self._events.put_nowait({"event": "logs", "lines": list(lines)})

    def push_notice(self, level: str, message: str) -> None:
        self._events.put_nowait({"event": "notice", "level": level, "message": message})

    def drop(self, error: Exception | None = None) -> None:
        """End the event stream, as a lost connection would (raising `error` if given)."""
        self._events.put_nowait(error if error is not None else _CLOSE)

    def calls_of(self, op: str) -> list[tuple[Any, ...]]:
        return [args for name, args in self.calls if name == op]

    # -- the client API -----------------------------------------------------------

    async def _op(self, op: str, *args: Any) -> None:
        self.calls.append((op, args))
        gate = self._gates.get(op)
        if gate is not None:
            await gate.wait()
        if op in self._failures:
            raise self._failures.pop(op)

    async def call(self, op: str, **args: Any) -> Any:
        await self._op(op, args)
        return {"message": f"{op}: ok", "workers": []}

    async def state(self) -> Snapshot:
        await self._op("state")
        return copy.deepcopy(self.snapshot)

    async def load(
        self, file: str, env: str | None = None, only: list[str] | None = None
    ) -> dict[str, Any]:
        await self._op("load", file, env, only)
        return {"apps": [a["name"] for a in self.snapshot["apps"]], "warnings": []}

    def _ids(self, targets: list[str]) -> list[int]:
        out = []
        for w in self.snapshot["workers"]:
            for t in targets:
                if t in ("all", w["app"], f"{w['app']}:{w['instance']}", str(w["id"])):
                    out.append(w["id"])
        return out

    async def start(self, targets: list[str]) -> dict[str, Any]:
        await self._op("start", targets)
        return {"message": f"Started {', '.join(targets)}.", "workers": self._ids(targets)}

    async def stop(self, targets: list[str]) -> dict[str, Any]:
        await self._op("stop", targets)
        return {"message": f"Stopped {', '.join(targets)}.", "workers": self._ids(targets)}

    async def restart(self, targets: list[str]) -> dict[str, Any]:
        await self._op("restart", targets)
        return {"message": f"Restarted {', '.join(targets)}.", "workers": self._ids(targets)}

    async def reload(self, targets: list[str]) -> dict[str, Any]:
        await self._op("reload", targets)
        return {"message": f"Reloaded {', '.join(targets)}.", "workers": self._ids(targets)}

    async def apply(
        self, file: str, caller_env: dict[str, str] | None = None, prune: bool = False
    ) -> dict[str, Any]:
        await self._op("apply", file)
        return {"message": f"Applied {file}: unchanged web.", "workers": []}

    async def delete(self, targets: list[str]) -> dict[str, Any]:
        await self._op("delete", targets)
        return {"message": f"Deleted {', '.join(targets)}.", "workers": self._ids(targets)}

    async def scale(self, app: str, count: str) -> dict[str, Any]:
        await self._op("scale", app, count)
        return {"message": f"{app}: scaled {count}.", "workers": self._ids([app])}

    async def watch(self, app: str, on: bool | None) -> dict[str, Any]:
        await self._op("watch", app, on)
        current = next((a for a in self.snapshot["apps"] if a["name"] == app), {})
        new = (not current.get("watch")) if on is None else on
        return {"message": f"{app}: watch {'on' if new else 'off'}.", "watch": new}

    async def signal(self, sig: str, targets: list[str]) -> dict[str, Any]:
        await self._op("signal", sig, targets)
        name = signals.parse(sig)
        if name is None:
            raise FakeClientError(signals.problem(sig), 2)
        ids = self._ids(targets)
        rows = [w for w in self.snapshot["workers"] if w["id"] in ids]
        sent = [
            {"id": w["id"], "app": w["app"], "instance": w["instance"], "pid": w["pid"]}
            for w in rows
            if w["pid"] is not None
        ]
        skipped = [f"{w['app']}:{w['instance']}" for w in rows if w["pid"] is None]
        if not sent:
            raise FakeClientError(f"no running worker to signal ({', '.join(skipped)} not running)")
        message = f"sent SIG{name} to {len(sent)} worker(s)"
        if skipped:
            message += f"; not running: {', '.join(skipped)}"
        return {"message": message, "signal": f"SIG{name}", "sent": sent, "skipped": skipped}

    async def app_events(
        self, app: str | None = None, instance: int | None = None, limit: int = 100
    ) -> list[events.Event]:
        await self._op("app_events", app, instance, limit)
        rows = [
            e
            for e in self.timeline
            if (app is None or e["app"] == app)
            and (instance is None or e["instance"] in (instance, None))
        ]
        return copy.deepcopy(rows[-limit:] if limit else [])

    async def logs(self, target: str | None, lines: int) -> list[dict[str, Any]]:
        await self._op("logs", target, lines)
        return copy.deepcopy(self.backlog[-lines:]) if lines else []

    async def describe(self, target: str) -> dict[str, Any]:
        await self._op("describe", target)
        name = target.split(":")[0]
        app = next(a for a in self.snapshot["apps"] if a["name"] == name)
        workers = [
            w
            for w in self.snapshot["workers"]
            if w["app"] == name and target in (name, f"{name}:{w['instance']}", str(w["id"]))
        ]
        return copy.deepcopy({"app": app, "spec": app_spec(app), "workers": workers})

    async def tree(self, target: str, settle: float = 0.0) -> list[WorkerTree]:
        """Each live worker of `target` with its processes: `trees[id]` if set, else
        demo_tree's."""
        await self._op("tree", target)
        out: list[WorkerTree] = []
        for w in self.snapshot["workers"]:
            if w["id"] not in self._ids([target]) or w["pid"] is None:
                continue
            rows = self.trees.get(w["id"]) or demo_tree(w)
            out.append(
                {
                    "id": w["id"],
                    "app": w["app"],
                    "instance": w["instance"],
                    "pid": w["pid"],
                    "processes": copy.deepcopy(rows),
                    "more": 0,
                }
            )
        return out

    async def shutdown(self) -> None:
        await self._op("shutdown")
        self.drop()  # the supervisor is gone: its event stream ends

    async def subscribe(
        self,
        state: bool = True,
        logs: bool = True,
        live_lines: int | None = None,
        history: bool = True,
        delta: bool = False,
    ) -> None:
        await self._op("subscribe", state, logs, live_lines, history, delta)
        self._mirror, self._fresh = (Mirror() if delta else None), True
        self.subscribed = True

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            item = await self._events.get()
            if item is _CLOSE:
                return
            if isinstance(item, Exception):
                raise item
            yield item

    async def close(self) -> None:
        self.calls.append(("close", ()))
        self.closed = True


def screen_text(app: Any) -> str:
    """The running app's screen as plain text (what a terminal would show, minus colour)."""
    import io

    from rich.console import Console

    width, height = app.size
    console = Console(
        width=width,
        height=height,
        file=io.StringIO(),
        force_terminal=True,
        record=True,
        legacy_windows=False,
        safe_box=False,
    )
    console.print(
        app.screen._compositor.render_update(full=True, screen_stack=app._background_screens)
    )
    return console.export_text()
