"""The supervisor process: apps, the control socket, the sampling tick.

Run as `python -m clusterui.core.supervisor --home DIR` (the client's `ensure`
does that and daemonizes it). It never imports Textual or Rich.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import heapq
import os
import signal
import sys
import time
import traceback
from collections import deque
from collections.abc import AsyncIterator, Callable
from operator import attrgetter, itemgetter
from typing import Any

from clusterui import __version__
from clusterui.core import config, deps, environ, fileops, guardian, inherit, reaper, upkeep, zygote
from clusterui.core.apps import App, Context, Slot
from clusterui.core.cgroups import CgroupTree, CpuUse
from clusterui.core.control import Connection, ControlServer, encode
from clusterui.core.eventlog import EventLog
from clusterui.core.home import Home
from clusterui.core.logs import LogHub, LogLine, live_cut
from clusterui.core.metrics import MetricsServer, is_loopback, parse_address, render
from clusterui.core.process import signal_process
from clusterui.core.proctree import TreeSampler
from clusterui.core.safefs import UnsafePath
from clusterui.core.snapshot import app_row, display_status, snapshot, worker_row, worker_table
from clusterui.core.spec import AppSpec
from clusterui.core.stats import Sample, Sampler
from clusterui.core.targets import resolve
from clusterui.vocab import events, signals, states
from clusterui.vocab.exits import Exit, OpError
from clusterui.vocab.snapshot import Snapshot, SupervisorInfo, WorkerTree

TICK = 1.0
ADOPTED_REAP_EVERY = 10  # ticks between reaps of adopted children that exited
NO_SAMPLE = Sample(0.0, 0, False)


class Supervisor:
    def __init__(self, home: Home):
        self.home = home
        self.apps: dict[str, App] = {}
        self.started_at = time.time()
        self.logs = LogHub(home.logs, notice=self.notice, sys_log=home.supervisor_log)
        self.eventlog = EventLog(home.events, self.notice)
        # What earlier supervisors recorded, by app: an app added under that name
        # starts its timeline with it (add_app).
        self._past_events = self.eventlog.past()
        self.sampler = Sampler()
        self._cpu_use = CpuUse()  # which worker cgroups are idle (see _still_pids)
        self.trees = TreeSampler()  # for op_tree only: sampled when asked, not per tick
        self.server = ControlServer(str(home.socket), self.handle)
        self.stopping = asyncio.Event()
        self._ids: dict[tuple[str, int], int] = {}
        self._serial = 0
        self._host: dict[str, Any] = self.sampler.host()
        self._conn_rate = 0.0
        self._ticks = 0
        self.ctx = Context(
            logs=self.logs,
            notice=self.notice,
            next_id=self._worker_id,
            next_serial=self._next_serial,
            home=str(home.root),
            save_event=self.eventlog.append,
        )
        # Subscribed to the hub only while some client follows logs: with nobody listening
        # a flood costs no batching or decoding at all.
        self._unsubscribe_logs: Callable[[], None] | None = None
        self.clock: Any = None  # cron_restart's clock (core.cron.Clock); None: the wall
        self.metrics = MetricsServer(lambda: render(self.apps.values(), display_status))
        self._waiters: set[asyncio.Task[None]] = set()

    # ---- helpers ---------------------------------------------------------------------

    def _worker_id(self, app: str, instance: int) -> int:
        key = (app, instance)
        if key not in self._ids:
            self._ids[key] = len(self._ids)
        return self._ids[key]

    def _next_serial(self) -> int:
        self._serial += 1
        return self._serial

    def notice(self, level: str, message: str) -> None:
        if level in ("error", "warning"):
            # Also in supervisor.log (our stderr), for whoever was not attached just then.
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            print(f"{stamp} {level}: {message}", file=sys.stderr, flush=True)
        self.server.broadcast({"event": "notice", "level": level, "message": message})

    def _follow_logs(self) -> None:
        if self._unsubscribe_logs is None:
            self._unsubscribe_logs = self.logs.subscribe(self._forward_logs)

    def _forward_logs(self, lines: list) -> None:
        if not any(c.subscribed_logs and not c.closed for c in self.server.connections):
            if self._unsubscribe_logs is not None:
                self._unsubscribe_logs()
                self._unsubscribe_logs = None
            return
        events: dict[int | None, bytes] = {}  # one encoding per distinct cap
        for conn in list(self.server.connections):
            if not conn.subscribed_logs or conn.closed:
                continue
            cap = conn.live_lines if conn.live_lines and conn.live_lines < len(lines) else None
            data = events.get(cap)
            if data is None:
                shown = live_cut(lines, cap) if cap else lines
                data = events[cap] = encode(
                    {"event": "logs", "lines": [line.to_dict() for line in shown]}
                )
            conn.send_encoded(data)

    def info(self) -> SupervisorInfo:
        return {
            "pid": os.getpid(),
            "started_at": self.started_at,
            "uptime": round(time.time() - self.started_at, 3),
            "home": str(self.home.root),
            "version": __version__,
            "files": self.loaded_files(),
            "host": self._host,
            "conn_rate": round(self._conn_rate, 2),
            "metrics_listen": self.metrics.address,
        }

    def loaded_files(self) -> list[str]:
        """The ecosystem files at least one loaded app comes from, in loading order."""
        files = [a.spec.source for a in self.apps.values() if os.path.isabs(a.spec.source)]
        return list(dict.fromkeys(files))

    def state(self, history: bool = True) -> Snapshot:
        return snapshot(self.apps, self.info(), history=history)

    def _app(self, name: str) -> App:
        app = self.apps.get(name)
        if app is None:
            known = ", ".join(self.apps) or "none loaded"
            raise OpError(f"no app named {name!r} (apps: {known})")
        return app

    # ---- the sampling tick -------------------------------------------------------------

    async def tick_loop(self) -> None:
        tick = _profiled(self.tick, os.environ.get("CLUSTERUI_PROFILE_TICK"))
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), TICK)
            try:
                tick()
            except Exception:  # one bad tick must not end sampling, sweeping and state
                traceback.print_exc(file=sys.stderr)

    def known_children(self) -> set[int]:
        """Every process we started and still account for (reaper.sweep spares them)."""
        pids = {
            p.pid for app in self.apps.values() for s in app.slots.values()
            for p in (s.proc, *s.retiring) if p is not None
        }  # fmt: skip
        pids |= {p.pid for app in self.apps.values() for p in app._by_serial.values()}
        pids |= {pid for app in self.apps.values() if app.listener for pid in app.listener.pids}
        pids |= {app.preload.pid for app in self.apps.values() if app.preload and app.preload.pid}
        if guardian.pid() is not None:
            pids.add(guardian.pid())
        return pids

    def sweep_orphans(self) -> None:
        if not reaper.active():
            return
        for pid in reaper.sweep(self.known_children()):
            self.notice("warning", f"killed process {pid}, left behind by an exited worker")

    def tick(self) -> None:
        # Adopting only (cgroups and a zygote), the sweep just reaps exited children:
        # no hurry, and at 2,000 workers listing and comparing them costs every time.
        if reaper.kills_orphans() or self._ticks % ADOPTED_REAP_EVERY == 0:
            self.sweep_orphans()
        now = time.time()
        slots = [(app, s) for app in self.apps.values() for s in app.slots.values()]
        pids = [s.proc.pid for _, s in slots if s.proc]
        figures = self.sampler.sample_all(pids, self._still_pids())
        self._ticks += 1
        if self._ticks % 2:  # host figures move slowly; /proc/meminfo is not free
            self._host = self.sampler.host()
        total_rate = 0.0
        stamp = round(now, 3)
        # Per worker per tick: at 2,000 idle workers this loop is a third of the
        # supervisor's idle CPU, so it does only what a worker's figures need.
        for app, slot in slots:
            proc = slot.proc
            if proc is not None:
                cpu, rss, stopped = figures.get(proc.pid, NO_SAMPLE)
                if stopped != proc.suspended:
                    self._set_suspended(app, slot, stopped)
            else:
                cpu, rss = NO_SAMPLE.cpu, NO_SAMPLE.memory
            slot.cpu, slot.memory = cpu, rss
            slot.metrics_gate.settle(slot.metrics)  # values held over the rate
            conns = slot.connections
            rate = (conns - slot.last_connections) / TICK if conns > slot.last_connections else 0.0
            slot.conn_rate, slot.last_connections = rate, conns
            total_rate += rate
            h = slot.history
            h.time.append(stamp)
            # round() only what is not 0: at 2,000 idle workers these calls added up.
            h.cpu.append(round(cpu, 1) if cpu else 0.0)
            h.memory.append(rss)
            h.conn_rate.append(round(rate, 2) if rate else 0.0)
            req_rate = slot.req_rate
            h.req_rate.append(round(req_rate, 1) if req_rate else 0.0)
            limit = app.spec.max_memory_restart
            # max_memory_restart compares PSS, not RSS: a tree of forks shares most of
            # its pages, and RSS would count them once per process.
            if limit and proc and rss > limit and proc.status == states.ONLINE:
                if proc.over_memory:
                    continue  # its restart is queued already
                pss = Sampler.pss_tree(proc.pid)
                if pss <= limit:
                    continue
                proc.over_memory = True
                self.logs.emit(
                    slot.id,
                    app.name,
                    slot.instance,
                    f"memory (PSS) {pss} bytes is over max_memory_restart ({limit}); restarting",
                )
                asyncio.ensure_future(app.restart_for_memory(slot, proc))
        self._conn_rate = total_rate
        self.server.broadcast_state(self.state)

    def _still_pids(self) -> set[int]:
        """The workers whose cgroups nothing has run in since the last tick: the whole
        tree's first (one read for a fleet that is all idle), else each app's folder."""
        tree = self.ctx.cgroups
        if tree is None:
            return set()
        folders = {name: tree.app_folder(name, make=False) for name in self.apps}
        self._cpu_use.keep({tree.root, *(f for f in folders.values() if f)})
        # Each read comes before this tick's reads of the workers' own figures, so "no
        # change since the last read" covers everything since their last look. An app's
        # folder not read while the whole tree was still had no change meanwhile either.
        whole = self._cpu_use.still(tree.root)
        return {
            s.proc.pid
            for name, app in self.apps.items()
            if (folder := folders[name]) is not None and (whole or self._cpu_use.still(folder))
            for s in app.slots.values()
            if s.proc and s.proc.cgroup  # one whose cgroup could not be made is outside
        }

    def _set_suspended(self, app: App, slot: Slot, stopped: bool) -> None:
        """A display overlay only: dispatch and the restart policy do not change."""
        proc = slot.proc
        assert proc is not None
        proc.suspended = stopped
        what = (
            f"process {proc.pid} is stopped (SIGSTOP or a debugger); shown as suspended"
            if stopped
            else f"process {proc.pid} runs again"
        )
        self.logs.emit(slot.id, app.name, slot.instance, what)

    # ---- operations -----------------------------------------------------------------------

    async def handle(self, conn: Connection, op: str, args: dict[str, Any]) -> Any:
        method = getattr(self, f"op_{op.replace('-', '_')}", None)
        if method is None:
            raise OpError(f"unknown operation {op!r}", Exit.USAGE)
        if op == "subscribe":
            return await method(conn, **args)
        return await method(**args)

    async def op_ping(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "version": __version__}

    async def op_state(self, history: bool = True, columns: Any = None) -> dict[str, Any]:
        """The snapshot; with `columns` (worker field names), only the workers, as a
        table: {"columns": the names this supervisor knows, "rows": [[value, ...]]}.
        `clusterui ls` asks for its own columns: at 2,000 workers the whole snapshot is
        about 1 MB of JSON to build, send and read."""
        if columns is None:
            return self.state(history=history)
        if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
            raise OpError("columns must be a list of worker field names", Exit.USAGE)
        return worker_table(self.apps, columns)

    async def op_subscribe(
        self,
        conn: Connection,
        state: bool = True,
        logs: bool = True,
        live_lines: Any = None,
        history: bool = True,
        delta: bool = False,
    ) -> None:
        """live_lines: at most this many log lines per event (the newest; a "sys" line per
        worker counts the rest), for a viewer that cannot use more than that.
        history: false for state events without each worker's series (the dashboard
        takes them once from `state` and keeps them itself: at 2,000 workers they are
        3 MB a second).
        delta: with history false, one whole state event and then `state_delta` events,
        only what changed (vocab/delta.py; at 2,000 idle workers a whole one is 1 MB)."""
        if live_lines is not None and (
            not isinstance(live_lines, int) or isinstance(live_lines, bool) or live_lines < 1
        ):
            raise OpError("live_lines must be a whole number of at least 1", Exit.USAGE)
        if delta and history:
            raise OpError("delta needs history: false (series are not sent as deltas)", Exit.USAGE)
        conn.live_lines = live_lines
        conn.subscribed_state = bool(state)
        conn.state_history = bool(history)
        conn.state_delta = conn.delta_whole = bool(delta)
        conn.subscribed_logs = bool(logs)
        if logs:
            self._follow_logs()

    async def op_load(
        self,
        file: str,
        env: str | None = None,
        only: list[str] | None = None,
        caller_env: Any = None,
        apply: bool = False,
        prune: bool = False,
        update_env: bool = False,
        restart: bool = False,
    ) -> dict[str, Any]:
        """Optional fields, all added to protocol v1 (README "Protocol additions"):

        caller_env: the environment of the command that loads the file; the apps it starts
        keep it (core/environ.py). Without it apps get only the basics.
        apply: loaded apps are compared with the file and changed to match (core/fileops);
        without it they are left as they run ("kept"). prune: with apply, apps loaded from
        this file that it no longer has are deleted. update_env: with apply, loaded apps
        take caller_env too. restart: every app of the file is stopped and started again
        with its spec from the file.
        """
        caller = _caller_env(caller_env)
        _check_load_args(file, env, only)
        try:
            # In a thread: a JS file is evaluated by node, which takes a moment.
            result = await asyncio.to_thread(
                config.load_ecosystem, file, env_name=env, only=only, caller_env=caller
            )
        except config.ConfigError as exc:
            raise OpError(str(exc), Exit.USAGE) from None
        metrics_warnings = await self._serve_file_metrics(result)
        if apply or restart:
            report = await fileops.apply(
                self,
                result.apps,
                str(result.path),
                caller,
                update_env=bool(update_env),
                prune=bool(prune),
                restart=bool(restart),
                only=only,
            )
            report["warnings"] = (
                [str(w) for w in result.warnings] + metrics_warnings + report["warnings"]
            )
            return report
        return await self._load_new(result, caller, metrics_warnings)

    async def _load_new(
        self, result: config.LoadResult, caller: dict[str, str] | None, extra: list[str]
    ) -> dict:
        """Start the file's apps that are not loaded yet; the loaded ones are kept as they run."""
        started, kept, errors = [], [], []
        warnings = [str(w) for w in result.warnings] + extra
        for spec in result.apps:
            if spec.name in self.apps:
                kept.append(spec.name)
                continue
            if caller is not None:
                spec.caller_env = caller
            warnings += environ.spec_warnings(spec)
            try:
                await self.add_app(spec)
                started.append(spec.name)
            except OpError as exc:
                errors.append(f"{spec.name}: {exc.message}")
        return {
            "apps": [s.name for s in result.apps],
            "started": started,
            "kept": kept,
            "errors": errors,
            "warnings": warnings
            + [f"clusterui: the socket handed in as {s} matches no app" for s in inherit.unused()],
            "workers": [s.id for name in started for s in self.apps[name].slots.values()],
        }

    async def _serve_file_metrics(self, result: config.LoadResult) -> list[str]:
        """The file's metrics_listen, unless metrics are served already; its warnings."""
        if result.metrics_listen is None or self.metrics.address is not None:
            return []
        where = f"{result.path}: warning: "
        try:
            served = await self.op_metrics(str(result.metrics_listen), result.metrics_public)
        except OpError as exc:
            return [f"{where}metrics_listen: {exc.message}"]
        return [where + served["warning"]] if served.get("warning") else []

    async def add_app(self, spec: AppSpec) -> App:
        app = App(spec, self.ctx)
        app.open_listener()  # raises OpError (port taken) before anything starts
        self.apps[spec.name] = app  # only now: a refused spec leaves nothing behind
        app.events.extend(self._past_events.pop(spec.name, ()))
        if spec.watch:  # before the workers start, so what they write is seen too
            await app.set_watch(True)
        upkeep.attach(app, self.clock)
        waits = spec.depends_on and deps.first_unmet(app, self.apps.get) is not None
        if waits or app.preload is not None:
            for slot in app.ensure_slots(spec.instances):
                slot.idle.to(states.PENDING)
            waiting = deps.start_when_ready(app, self.apps.get, app.launch_all)
            waiter = asyncio.ensure_future(waiting)
            self._waiters.add(waiter)
            waiter.add_done_callback(self._waiters.discard)
        else:
            app.start_all()
        return app

    async def op_start_script(
        self, spec: dict[str, Any], base_dir: str = "/", caller_env: Any = None
    ) -> dict[str, Any]:
        """`clusterui start SCRIPT ...`: `spec` holds ecosystem keys, read by the same loader
        as a file (relative paths from `base_dir`, the CLI's directory). caller_env
        (optional): as for load."""
        caller = _caller_env(caller_env)
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise OpError("start_script takes an app's keys, with its name", Exit.USAGE)
        if not isinstance(base_dir, str) or not os.path.isabs(base_dir):
            raise OpError("base_dir must be an absolute path", Exit.USAGE)
        try:
            app_spec = config.spec_from_mapping(spec, base_dir, source=config.COMMAND_LINE)
        except config.ConfigError as exc:
            raise OpError("; ".join(str(p) for p in exc.problems), Exit.USAGE) from None
        if caller is not None:
            app_spec.caller_env = caller
        warnings = environ.spec_warnings(app_spec)
        if app_spec.name in self.apps:
            raise OpError(
                f"an app named {app_spec.name!r} is already loaded; pick --name", Exit.USAGE
            )
        app = await self.add_app(app_spec)
        failed = [s for s in app.slots.values() if s.status == states.ERRORED and s.last_error]
        if failed:
            slot = failed[0]
            raise OpError(f"{app.name}:{slot.instance} failed to start: {slot.last_error}")
        return {
            "message": f"started {app.name} ({len(app.slots)} instance(s))",
            "workers": [s.id for s in app.slots.values()],
            "warnings": warnings,
        }

    @contextlib.asynccontextmanager
    async def _serialized(self, targets: list[str]) -> AsyncIterator[list[tuple[App, list[Slot]]]]:
        """Hold the op lock of every app the targets name (in name order, so two
        operations on the same apps cannot deadlock), then resolve the targets again:
        an operation that ran meanwhile may have scaled slots away or deleted an app."""
        first = resolve(self.apps, targets)
        apps = sorted({app.name: app for app, _ in first}.values(), key=attrgetter("name"))
        async with contextlib.AsyncExitStack() as stack:
            for app in apps:
                await stack.enter_async_context(app.op_lock)
            locked = {app.name for app in apps}
            yield [(a, slots) for a, slots in resolve(self.apps, targets) if a.name in locked]

    async def op_start(self, targets: list[str]) -> dict[str, Any]:
        async with self._serialized(targets) as groups:
            await asyncio.gather(*(app.fresh_code() for app, _ in groups))
            return await self._start(groups)

    async def _start(self, groups: list[tuple[App, list[Slot]]]) -> dict[str, Any]:
        ids = []
        launches = []
        for app, slots in groups:
            app.removed = False
            if not app.slots:
                slots = app.ensure_slots(app.spec.instances)
            try:
                app.open_listener()
            except OpError as exc:
                raise OpError(f"{app.name}: {exc.message}") from None
            for slot in slots:
                launches.append(app.launch_soon(slot, manual=True))
                ids.append(slot.id)
        await asyncio.gather(*launches)  # a preload app's workers are forked side by side
        return {"message": f"started {len(ids)} worker(s)", "workers": ids}

    async def op_stop(self, targets: list[str]) -> dict[str, Any]:
        async with self._serialized(targets) as groups:
            ids = [s.id for _, slots in groups for s in slots]
            await asyncio.gather(*(app.stop_slot(s) for app, slots in groups for s in slots))
        return {"message": f"stopped {len(ids)} worker(s)", "workers": ids}

    def _update_env(self, groups: list[tuple[App, list[Slot]]], caller_env: Any) -> list[str]:
        """`--update-env`: the targeted apps take this caller environment from now on."""
        caller = _caller_env(caller_env)
        warnings: list[str] = []
        if caller is not None:
            for app, _slots in groups:
                app.spec.caller_env = caller
                warnings += environ.spec_warnings(app.spec)
        return warnings

    async def op_restart(self, targets: list[str], caller_env: Any = None) -> dict[str, Any]:
        """caller_env (optional, `--update-env`): replaces the apps' saved caller env first."""
        async with self._serialized(targets) as groups:
            warnings = self._update_env(groups, caller_env)
            ids = [s.id for _, slots in groups for s in slots]
            await asyncio.gather(*(app.fresh_code() for app, _ in groups))
            await asyncio.gather(
                *(app.restart_slot(s, reason="manual") for app, slots in groups for s in slots)
            )
        return {"message": f"restarted {len(ids)} worker(s)", "workers": ids, "warnings": warnings}

    async def op_reload(self, targets: list[str], caller_env: Any = None) -> dict[str, Any]:
        """caller_env (optional, `--update-env`): as for restart."""
        messages = []
        ids = []
        async with self._serialized(targets) as groups:
            warnings = self._update_env(groups, caller_env)
            for app, slots in groups:
                messages.append(await app.rolling_reload())
                ids.extend(s.id for s in slots)
        return {"message": "; ".join(messages), "workers": ids, "warnings": warnings}

    async def op_delete(self, targets: list[str]) -> dict[str, Any]:
        return await self.delete_apps(targets)

    async def delete_apps(self, targets: list[str], forget_logs: bool = True) -> dict[str, Any]:
        """forget_logs=False: the app comes back at once (restart FILE), same ids and logs."""
        async with self._serialized(targets) as groups:
            return await self._delete(groups, forget_logs)

    async def _delete(
        self, groups: list[tuple[App, list[Slot]]], forget_logs: bool
    ) -> dict[str, Any]:
        names = []
        for app, _slots in groups:
            app.removed = True
            names.append(app.name)
        # Dependents first, then what they need (depends_on), as `down` does.
        for layer in deps.stop_layers({app.name: app for app, _ in groups}):
            await asyncio.gather(*(app.stop_all() for app in layer))
        for app, _ in groups:
            await upkeep.detach(app)
            await app.set_watch(False)
            app.close_listener()
            self.apps.pop(app.name, None)
            for slot in app.slots.values():
                if forget_logs:
                    self.logs.forget(slot.id)
        return {"message": f"deleted {', '.join(names)}", "workers": []}

    async def op_scale(self, app: str, count: str) -> dict[str, Any]:
        self._app(app)
        async with self._serialized([app]) as groups:
            return await self._scale(groups[0][0], app, count)

    async def _scale(self, target: App, app: str, count: str) -> dict[str, Any]:
        text = str(count).strip()
        try:
            n = int(text)
        except ValueError:
            raise OpError(f"scale takes N, +N or -N, not {text!r}", Exit.USAGE) from None
        new = len(target.slots) + n if text[0] in "+-" else n
        if new < 0:
            raise OpError(f"cannot scale {app} to {new} instances", Exit.USAGE)
        if new > 1024:
            raise OpError(f"cannot scale {app} to {new} instances (at most 1024)", Exit.USAGE)
        target.removed = False
        if new and target.spec.listen:
            target.open_listener()
        added, removed = await target.scale(new)
        for slot in removed:
            self.logs.forget(slot.id)
        return {
            "message": f"{app}: {new} instance(s) (+{len(added)} -{len(removed)})",
            "workers": [s.id for s in added],
            "instances": new,
        }

    async def op_logs(self, target: str | None = None, lines: int = 15) -> list[dict[str, Any]]:
        if isinstance(lines, bool) or not isinstance(lines, int) or lines < 0:
            raise OpError("lines must be a whole number, 0 or more", Exit.USAGE)
        if target is not None and not isinstance(target, str):
            raise OpError("target must be a string", Exit.USAGE)
        groups = resolve(self.apps, [target]) if target else self._all_slots()
        ids = [s.id for _, slots in groups for s in slots] if target else None
        recent = self.logs.recent(ids, lines)
        if len(recent) >= lines:
            return [line.to_dict() for line in recent]
        # Short of n (a new supervisor after `kill`/`up` or a crash): what the files held
        # before this supervisor wrote to them comes first; the rings hold the rest.
        need = lines - len(recent)
        older = await asyncio.to_thread(self._file_history, groups, need)
        return [line.to_dict() for line in (*older, *recent)]

    def _all_slots(self) -> list[tuple[App, list[Slot]]]:
        return [(app, [app.slots[i] for i in sorted(app.slots)]) for app in self.apps.values()]

    def _file_history(self, groups: list[tuple[App, list[Slot]]], n: int) -> list[LogLine]:
        """Up to n lines from the files older than this supervisor, oldest first: what the
        workers wrote, and what the supervisor log says about them (exits, restarts)."""
        seen: set[tuple[str, str]] = set()
        per_file = []
        for app, slots in groups:
            for slot in slots:
                paths = self.logs.paths(app.name, slot.instance, app.spec)
                if paths in seen:  # two apps configured to write one file: read it once
                    continue
                seen.add(paths)
                per_file.append(self.logs.history(slot.id, app.name, slot.instance, app.spec, n))
        workers = {(app.name, s.instance): s.id for app, slots in groups for s in slots}
        per_file.append(self.logs.sys_history(workers, n))
        return list(heapq.merge(*per_file, key=attrgetter("time")))[-n:]

    async def op_signal(self, sig: str, targets: list[str]) -> dict[str, Any]:
        """Send `sig` (vocab.signals) to each targeted worker's process, not its group:
        the program decides what its own children hear, as with PM2's sendSignal. No
        op lock: a signal does not wait behind a reload (during one it reaches each
        slot's current process, not an old one draining). A worker that a signal ends is
        an unexpected exit, restarted per its policy (`stop` is the way to stop it)."""
        name = signals.parse(sig)
        if name is None:
            raise OpError(signals.problem(sig), Exit.USAGE)
        if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
            raise OpError("targets must be a list of TARGET strings", Exit.USAGE)
        number = getattr(signal, f"SIG{name}")
        sent: list[dict[str, Any]] = []
        skipped: list[str] = []
        for app, slots in resolve(self.apps, targets):
            for slot in slots:
                proc, label = slot.proc, f"{app.name}:{slot.instance}"
                if proc is None or proc.exited.done() or not signal_process(proc.pid, number):
                    skipped.append(label)
                    continue
                sent.append(
                    {"id": slot.id, "app": app.name, "instance": slot.instance, "pid": proc.pid}
                )
                app.record_event(events.SIGNAL, slot.instance, f"SIG{name} sent to pid {proc.pid}")
                self.logs.emit(slot.id, app.name, slot.instance, f"SIG{name} sent (by a user)")
        if not sent:
            what = ", ".join(skipped) or ", ".join(targets)
            raise OpError(f"no running worker to signal ({what} not running)")
        message = f"sent SIG{name} to {len(sent)} worker(s)"
        if skipped:
            message += f"; not running: {', '.join(skipped)}"
        return {"message": message, "signal": f"SIG{name}", "sent": sent, "skipped": skipped}

    async def op_events(
        self, app: str | None = None, instance: int | None = None, limit: int = events.KEPT
    ) -> list[events.Event]:
        """The timeline (vocab.events), oldest first: the newest `limit` events of `app`
        (every app when None); with `instance`, that worker's and the app-wide ones."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise OpError("limit must be a whole number, 0 or more", Exit.USAGE)
        if instance is not None and (isinstance(instance, bool) or not isinstance(instance, int)):
            raise OpError("instance must be a whole number", Exit.USAGE)
        if app is not None and not isinstance(app, str):
            raise OpError("app must be a name", Exit.USAGE)
        apps = [self._app(app)] if app is not None else list(self.apps.values())
        picked = heapq.merge(*(a.events for a in apps), key=itemgetter("time"))
        if instance is not None:
            picked = (e for e in picked if e["instance"] in (instance, None))
        return list(deque(picked, maxlen=limit)) if limit else []

    async def op_resolve(self, targets: list[str]) -> list[int]:
        return [s.id for _, slots in resolve(self.apps, targets) for s in slots]

    async def op_watch(self, app: str, on: bool | None = None) -> dict[str, Any]:
        target = self._app(app)
        want = (not target.watch_on) if on is None else bool(on)
        await target.set_watch(want)
        paths = ", ".join(target.spec.watch)
        message = f"{app}: watch {'on (' + paths + ')' if want else 'off'}"
        return {"message": message, "watch": target.watch_on}

    async def op_describe(self, target: str) -> dict[str, Any]:
        groups = resolve(self.apps, [target])
        app, slots = groups[0]
        spec = app.spec.to_dict()
        spec["env"] = sorted(spec["env"])  # names only: values may be secrets
        spec["caller_env"] = sorted(spec["caller_env"])
        return {
            "app": app_row(app),
            "spec": spec,
            "workers": [worker_row(app, s) for s in slots],
        }

    async def op_tree(self, target: str, settle: float = 0.0) -> list[WorkerTree]:
        """The process tree of each running worker of TARGET: its children and
        grandchildren with CPU % and memory, and what left its session, group or tree
        (core/proctree.py). CPU % is None for a process seen for the first time, unless
        `settle` (seconds, at most 1; `describe` passes 0.25): then, if some process is
        new, the trees are read again that much later, when every CPU % is known."""
        if not isinstance(target, str):
            raise OpError("target must be a string", Exit.USAGE)
        if isinstance(settle, bool) or not isinstance(settle, int | float) or not 0 <= settle <= 1:
            raise OpError("settle must be a number of seconds from 0 to 1", Exit.USAGE)
        out = self._trees(target)
        if settle and any(p["cpu"] is None for t in out for p in t["processes"]):
            await asyncio.sleep(settle)
            out = self._trees(target)
        return out

    def _trees(self, target: str) -> list[WorkerTree]:
        out: list[WorkerTree] = []
        for app, slots in resolve(self.apps, [target]):
            for slot in slots:
                proc = slot.proc
                if proc is None:
                    continue
                found = self.trees.tree(proc.pid, proc.cgroup)
                out.append(
                    {
                        "id": slot.id,
                        "app": app.name,
                        "instance": slot.instance,
                        "pid": proc.pid,
                        "processes": found["processes"],
                        "more": found["more"],
                    }
                )
        return out

    async def op_save(self) -> dict[str, Any]:
        """Write every app's spec, instance count, watch state and caller env to
        CLUSTERUI_HOME/dump.yaml (atomically)."""
        try:
            return await asyncio.to_thread(fileops.save, self)
        except OSError as exc:
            raise OpError(f"cannot write the dump: {exc.strerror or exc}") from None

    async def op_resurrect(self, caller_env: Any = None) -> dict[str, Any]:
        """Start the apps of dump.yaml that are not running, each with its saved caller
        environment (caller_env only for apps saved without one)."""
        return await fileops.resurrect(self, _caller_env(caller_env))

    async def op_env(self, target: str, values: bool = False) -> list[dict[str, Any]]:
        """What each worker of TARGET was started with: names and where each came from
        (supervisor, caller, file, clusterui); values only when asked for."""
        if not isinstance(target, str):
            raise OpError("target must be a string", Exit.USAGE)
        rows = []
        for app, slots in resolve(self.apps, [target]):
            for slot in slots:
                proc = slot.proc
                got = proc.env if proc is not None else {}
                rows.append(
                    {
                        "id": slot.id,
                        "app": app.name,
                        "instance": slot.instance,
                        "pid": proc.pid if proc else None,
                        "names": {k: environ.layer(k, app.spec) for k in sorted(got)},
                        "values": dict(got) if values else None,
                    }
                )
        return rows

    async def op_wait_started(self, workers: list[int], timeout: float = 10.0) -> dict[str, str]:
        """For `up -d`: each worker 'ok' once online and stable, else why it failed."""
        deadline = time.monotonic() + timeout
        verdicts: dict[str, str] = {}
        pending = set(workers)
        first_pid: dict[int, int | None] = {}
        while pending:
            for app in self.apps.values():
                for slot in app.slots.values():
                    if slot.id not in pending:
                        continue
                    proc = slot.proc
                    first_pid.setdefault(slot.id, proc.pid if proc else None)
                    stable = min(app.spec.min_uptime, 1000) / 1000
                    if proc is None and slot.idle.value == states.PENDING:
                        first_pid.pop(slot.id, None)  # not started yet: nothing to judge
                        why = deps.blocked(app, self.apps.get)
                        if why:
                            verdicts[str(slot.id)] = why
                        continue
                    if slot.diagnosing:
                        continue  # its last lines are being read: the verdict says why
                    exited = proc is None or proc.pid != first_pid[slot.id] or slot.restarts
                    if slot.diagnosis and exited:
                        verdicts[str(slot.id)] = slot.diagnosis  # it died before it was ready
                    elif slot.status == states.ERRORED:
                        verdicts[str(slot.id)] = slot.last_error or "errored"
                    elif proc is None and slot.last_exit == (0, None) and not app.spec.autorestart:
                        verdicts[str(slot.id)] = "ok"  # a one-shot job that completed
                    elif proc is None or proc.pid != first_pid[slot.id] or slot.restarts:
                        code, sig = slot.last_exit
                        verdicts[str(slot.id)] = (
                            f"exited ({sig or f'code {code}'})" if code or sig else "exited"
                        )
                    elif (
                        proc.status == states.ONLINE
                        and not proc.suspended  # stopped: not serving, so not started yet
                        and (proc.uptime >= stable or app.signals_ready)
                    ):
                        verdicts[str(slot.id)] = "ok"
            pending -= {int(k) for k in verdicts}
            pending &= {s.id for a in self.apps.values() for s in a.slots.values()}
            if not pending:
                break
            if time.monotonic() > deadline:
                self._late_verdicts(pending, verdicts)
                break
            await asyncio.sleep(0.05)
        return verdicts

    def _late_verdicts(self, pending: set[int], verdicts: dict[str, str]) -> None:
        """Why each worker still pending at op_wait_started's deadline is not started."""
        stopped = {
            s.id for a in self.apps.values() for s in a.slots.values()
            if s.proc is not None and s.proc.suspended
        }  # fmt: skip
        diagnosed = {s.id: s.diagnosis for a in self.apps.values() for s in a.slots.values()}
        waiting = {
            s.id: a.waiting_for for a in self.apps.values() for s in a.slots.values()
            if s.proc is None and a.waiting_for
        }  # fmt: skip
        for wid in pending:
            verdicts[str(wid)] = diagnosed.get(wid) or "not ready in time"
            if wid in stopped:
                verdicts[str(wid)] = "suspended (stopped by a signal)"
            if wid in waiting:
                verdicts[str(wid)] = str(waiting[wid])

    async def op_shutdown(self) -> None:
        asyncio.get_running_loop().call_soon(self.stopping.set)

    async def op_metrics(self, listen: str | None = None, public: bool = False) -> dict[str, Any]:
        """Serve Prometheus metrics on listen (None or "" stops serving)."""
        if not listen:
            await self.metrics.stop()
            return {"message": "metrics endpoint stopped", "address": None}
        if not isinstance(listen, str):
            raise OpError("listen must be an address such as 127.0.0.1:9209", Exit.USAGE)
        try:
            host, port = parse_address(listen)
        except ValueError as exc:
            raise OpError(str(exc), Exit.USAGE) from None
        warning = None
        if not is_loopback(host):
            if public is not True:
                raise OpError(
                    f"metrics on {host} would be reachable from other machines; "
                    "pass --public (or metrics_public: true) if that is what you want",
                    Exit.USAGE,
                )
            warning = (
                f"metrics are served on {host}:{port} without authentication; "
                "anyone who reaches it sees app names, pids and figures"
            )
            self.notice("warning", warning)
        await self.metrics.start(host, port)
        return {
            "message": f"serving metrics on http://{self.metrics.address}/metrics",
            "address": self.metrics.address,
            "warning": warning,
        }

    async def shutdown(self) -> None:
        for app in self.apps.values():
            app.removed = True
        for waiter in list(self._waiters):
            waiter.cancel()
        await self.metrics.stop()
        for app in self.apps.values():
            await upkeep.detach(app)
        for layer in deps.stop_layers(self.apps):  # dependents first, then what they need
            await asyncio.gather(*(app.stop_all() for app in layer))
        for app in self.apps.values():
            await app.set_watch(False)
            app.close_listener()
        zygote.ROOTS.close()
        self.sweep_orphans()  # what the workers left behind is ours now: end it too
        await self.logs.aclose()
        self.eventlog.close()
        await self.server.close()


def _profiled(tick: Callable[[], None], path: str | None) -> Callable[[], None]:
    """tick itself; with CLUSTERUI_PROFILE_TICK=FILE (for bench/fleet.py --profile), tick
    under cProfile, the statistics of every tick so far written to FILE every 10 ticks."""
    if not path:
        return tick
    import cProfile

    profile = cProfile.Profile()
    count = 0

    def profiled() -> None:
        nonlocal count
        profile.runcall(tick)
        count += 1
        if count % 10 == 0:
            profile.dump_stats(path)

    return profiled


def _check_load_args(file: Any, env: Any, only: Any) -> None:
    if not isinstance(file, str) or not file:
        raise OpError("load takes the path of an ecosystem file", Exit.USAGE)
    if env is not None and not isinstance(env, str):
        raise OpError("env must be a name", Exit.USAGE)
    if only is not None and not (isinstance(only, list) and all(isinstance(n, str) for n in only)):
        raise OpError("only must be a list of app names", Exit.USAGE)


def _caller_env(raw: Any) -> dict[str, str] | None:
    if raw is None:
        return None
    env = environ.checked(raw)
    if env is None:
        raise OpError("caller_env must map variable names to strings", Exit.USAGE)
    return env


async def run(home: Home, ready_fd: int | None, tree: CgroupTree | None = None) -> int:
    sup = Supervisor(home)
    sup.ctx.cgroups = tree
    try:
        await sup.server.start()
    except OpError as exc:
        _report_ready(ready_fd, exc.message)
        return Exit.USAGE
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, sup.stopping.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)  # no terminal to lose
    _report_ready(ready_fd, "ok")
    tick = asyncio.ensure_future(sup.tick_loop())
    await sup.stopping.wait()
    tick.cancel()
    await sup.shutdown()
    with contextlib.suppress(OSError):
        os.unlink(home.socket)
    return Exit.OK


def _report_ready(fd: int | None, message: str) -> None:
    if fd is None:
        return
    try:
        os.write(fd, message.encode() + b"\n")
        os.close(fd)
    except OSError:
        pass


def lock_pidfile(home: Home) -> int:
    """Hold an exclusive lock on supervisor.pid for our lifetime: one supervisor per home."""
    fd = home.open_file(home.pidfile, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OpError(f"another supervisor is running for {home.root}") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _why(exc: OSError) -> str:
    return str(exc) if isinstance(exc, UnsafePath) else exc.strerror or str(exc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clusterui-supervisor")
    parser.add_argument("--home")
    parser.add_argument("--ready-fd", type=int)
    parser.add_argument("--daemonize", action="store_true")
    opts = parser.parse_args(argv)
    try:
        # Handed in by `clusterui up`, or by systemd when it starts us directly.
        handed = inherit.from_env() or inherit.from_systemd()
    except inherit.InheritError as exc:
        _report_ready(opts.ready_fd, str(exc))
        return Exit.USAGE
    if opts.daemonize and os.fork() > 0:
        os._exit(Exit.OK)  # the launcher reaps us at once; the supervisor is nobody's child
    home = Home.from_env(opts.home)
    ready_fd = opts.ready_fd
    try:
        home.ensure()
        lock_fd = lock_pidfile(home)
    except OpError as exc:
        _report_ready(ready_fd, exc.message)
        return Exit.USAGE
    except OSError as exc:
        _report_ready(ready_fd, f"cannot use {home.root}: {_why(exc)}")
        return Exit.USAGE
    if home.socket.exists() or home.socket.is_symlink():
        home.socket.unlink()  # stale: we hold the lock, so nobody else serves it
    for problem in inherit.install(handed):
        print(f"clusterui: {problem}", file=sys.stderr)
    if os.environ.get("CLUSTERUI_NO_CGROUPS"):  # to exercise the fallback (tests)
        tree, why = None, "CLUSTERUI_NO_CGROUPS is set"
    else:
        tree, why = CgroupTree.open(os.getpid())
    if tree is None:
        # The fallback: orphans of workers come to us (subreaper) and are killed; see
        # RELIABILITY.md for what it cannot catch.
        reaper.become_subreaper()
        print(f"clusterui: no cgroup per worker ({why}); using a subreaper", file=sys.stderr)
    guardian.start(tree.root if tree else None)
    try:
        code = asyncio.run(run(home, ready_fd, tree))
        guardian.release()
        if tree is not None:
            tree.close()
        return code
    finally:
        os.close(lock_fd)


if __name__ == "__main__":
    sys.exit(main())
