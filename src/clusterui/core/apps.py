"""Desired state per app: worker slots, restart policy, stop, scale and rolling reload.

An App has instance slots 0..N-1. A Slot keeps its id, counters and history across
replacements; the OS process in it (a Proc) comes and goes. During a rolling reload
a slot briefly has two processes: the new one (slot.proc) and the old one draining
(slot.retiring).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from clusterui.core import diagnose, environ, nodeapp, zygote
from clusterui.core.accepting import accepting, socket_inode
from clusterui.core.expand import ExpandError, expand_argv
from clusterui.core.listener import Listener, free_port
from clusterui.core.metric_cap import MetricsGate
from clusterui.core.policy import RestartTracker
from clusterui.core.process import ExitWatcher, SpawnError, SpawnSpec, signal_group, spawn
from clusterui.core.spec import AppSpec
from clusterui.dispatch.protocol import MODES, Mode, ProtocolError, decode
from clusterui.reqstats import REQ_RATE
from clusterui.vocab import events
from clusterui.vocab.exits import OpError
from clusterui.vocab.snapshot import HISTORY
from clusterui.vocab.states import (
    DRAINING,
    ERRORED,
    LAUNCHING,
    ONLINE,
    PENDING,
    STOPPED,
    STOPPING,
    WAITING_RESTART,
    Lifecycle,
)

PIPE_GRACE = 2.0  # seconds a dead worker's log pipes stay open for its last words
ACCEPT_PROBE = 0.05  # seconds between looks at a shared-mode worker still launching


@dataclass
class Context:
    """What every app needs from the supervisor around it."""

    logs: Any  # clusterui.core.logs.LogHub
    notice: Callable[[str, str], None]  # (level, message)
    next_id: Callable[[str, int], int]  # stable worker id for (app, instance)
    next_serial: Callable[[], int]
    home: str = ""  # CLUSTERUI_HOME: never watched
    cgroups: Any = None  # core.cgroups.CgroupTree, or None where cgroups are unavailable
    save_event: Callable[[events.Event], None] | None = None  # core.eventlog.EventLog.append


class Proc:
    """One OS process in a slot."""

    def __init__(self, serial: int, pid: int, port: int | None):
        self.serial = serial  # unique per process; the dispatcher's worker id
        self.pid = pid
        self.port = port  # proxy mode: the worker's own $PORT
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.life = Lifecycle(LAUNCHING)
        self.ready = asyncio.get_running_loop().create_future()
        self.exited: asyncio.Future[tuple[int | None, str | None]] = (
            asyncio.get_running_loop().create_future()
        )
        self.stop_requested = False
        self.watcher: ExitWatcher | None = None
        self.logs: Any = None
        self.kill_timer: asyncio.TimerHandle | None = None
        self.channel: socket.socket | None = None  # fork/shared wait_ready: our end
        self.handed = 0  # connections handed to this process (from the dispatcher)
        self.cgroup: str | None = None  # its cgroup folder (core/cgroups.py), if it has one
        self.after_watch = False  # started by a file change (crash guard)
        # Stopped by the kernel (SIGSTOP, a debugger) at the last sample. Display only: the
        # snapshot shows "suspended"; status and the restart policy never look at it.
        self.suspended = False
        self.over_memory = False  # a memory restart is queued for this process
        # core.health.ProbeState once a health probe ran against this process.
        self.probe: Any = None
        # The environment it was exec'd with (`clusterui env`); values may be secrets.
        self.env: dict[str, str] = {}

    @property
    def status(self) -> str:
        return self.life.value

    @property
    def uptime(self) -> float:
        return time.monotonic() - self.started

    def mark_ready(self) -> None:
        if not self.ready.done():
            self.ready.set_result(True)


@dataclass
class Series:
    cpu: deque = field(default_factory=lambda: deque(maxlen=HISTORY))
    memory: deque = field(default_factory=lambda: deque(maxlen=HISTORY))
    conn_rate: deque = field(default_factory=lambda: deque(maxlen=HISTORY))
    req_rate: deque = field(default_factory=lambda: deque(maxlen=HISTORY))
    time: deque = field(default_factory=lambda: deque(maxlen=HISTORY))

    def to_dict(self) -> dict[str, list]:
        return {
            "cpu": list(self.cpu),
            "memory": list(self.memory),
            "conn_rate": list(self.conn_rate),
            "req_rate": list(self.req_rate),
            "time": list(self.time),
        }


class Slot:
    def __init__(self, wid: int, app: str, instance: int):
        self.id = wid
        self.app = app
        self.instance = instance
        self.proc: Proc | None = None
        # A zygote is forking this slot's next process (App._fork): its future.
        self.forking: asyncio.Future[Proc | None] | None = None
        self.retiring: list[Proc] = []
        self.idle = Lifecycle(STOPPED)  # the status while there is no process
        self.restarts = 0
        self.tracker = RestartTracker()
        self.restart_timer: asyncio.TimerHandle | None = None
        self.last_exit: tuple[int | None, str | None] = (None, None)
        self.last_error: str | None = None
        # Why a handoff worker here never got ready (kept across restarts until one is).
        self.diagnosis: str | None = None
        self.diagnosing = False  # an exit is being looked into (its last lines read)
        self.history = Series()
        self.restart_history: deque[dict[str, Any]] = deque(maxlen=20)
        self.cpu = 0.0
        self.memory = 0
        self.connections = 0
        self.active = 0
        self.conn_rate = 0.0
        self.last_connections = 0  # at the previous tick, for conn_rate
        self.metrics: dict[str, float] = {}
        self.metrics_gate = MetricsGate()
        self.health: Any = None  # core.health.SlotHealth once probed

    @property
    def req_rate(self) -> float | None:
        """Requests/s as the worker reports it (clusterui.web, clusterui.worker); None if not."""
        value = self.metrics.get(REQ_RATE) if self.proc is not None else None
        return float(value) if value is not None else None

    @property
    def status(self) -> str:
        return self.proc.status if self.proc else self.idle.value

    def cancel_restart(self) -> None:
        if self.restart_timer is not None:
            self.restart_timer.cancel()
            self.restart_timer = None


class App:
    def __init__(self, spec: AppSpec, ctx: Context):
        self.spec = spec
        self.ctx = ctx
        self.slots: dict[int, Slot] = {}
        self.listener: Listener | None = None
        self.watcher: Any = None  # core.watch.AppWatcher while watch is on
        self.last_watch_event: str | None = None
        self.reload_lock = asyncio.Lock()
        # Operations that change the app's processes (start, stop, restart, reload, scale,
        # delete, watch reloads, memory restarts, dispatcher recovery) run one at a time,
        # in arrival order: overlapping ones left workers no slot listed ("ghosts").
        self.op_lock = asyncio.Lock()
        self.removed = False
        self._by_serial: dict[int, Proc] = {}
        self._dispatcher_deaths: list[float] = []
        self._next_port = 0
        self.prober: Any = None  # core.health.HealthMonitor when spec.health_check is set
        self.cron: Any = None  # core.cron.CronRestart when spec.cron_restart is set
        self.waiting_for: str | None = None  # set by core.deps while start waits
        self.reloads = {"ok": 0, "failed": 0}  # rolling reloads and how they ended
        # The timeline (vocab.events): served by the `events` op, not in the snapshot.
        self.events: deque[events.Event] = deque(maxlen=events.KEPT)
        # `preload: true`: the zygote workers are forked from (core.zygote).
        self.preload = zygote.Preload(spec, ctx.notice) if spec.preload else None

    # ---- lifecycle of the whole app -------------------------------------------------

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def signals_ready(self) -> bool:
        """Whether "online" means the worker said so (or a probe did), not just "spawned"."""
        # Shared mode too: once the worker accepts on the socket (core.accepting).
        return self.mode is not None or self.spec.wait_ready

    @property
    def handoff(self) -> bool:
        mode = self.mode
        return mode is not None and mode.handoff

    @property
    def node(self) -> bool:
        """Node workers: the preload and Node's IPC channel instead of protocol v1."""
        return nodeapp.uses_node_channel(self.spec)

    def open_listener(self) -> None:
        """Bind before any worker starts, so a taken port fails this app alone (a Node
        app without `listen` binds when its first worker calls listen())."""
        wanted = self.spec.listen or nodeapp.learns_port(self.spec)
        if self.spec.exec_mode == "cluster" and wanted and self.listener is None:
            self.listener = Listener(self.spec, self._on_dispatch_event, self._on_dispatcher_exit)

    def close_listener(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None

    def ensure_slots(self, count: int) -> list[Slot]:
        for i in range(count):
            if i not in self.slots:
                self.slots[i] = Slot(self.ctx.next_id(self.name, i), self.name, i)
        return [self.slots[i] for i in sorted(self.slots)]

    def start_all(self) -> list[Slot]:
        self.open_listener()
        slots = self.ensure_slots(self.spec.instances)
        for slot in slots:
            self.start_slot(slot, manual=True)
        return slots

    async def launch_all(self) -> list[Slot]:
        """start_all, with a `preload` app's workers forked side by side (launch)."""
        self.open_listener()
        slots = self.ensure_slots(self.spec.instances)
        await asyncio.gather(*[self.launch_soon(slot, manual=True) for slot in slots])
        return slots

    async def stop_all(self) -> None:
        await asyncio.gather(*(self.stop_slot(s) for s in list(self.slots.values())))

    # ---- one slot ------------------------------------------------------------------

    def start_slot(self, slot: Slot, *, manual: bool = False, reason: str = "") -> Proc | None:
        if not self._may_start(slot, manual):
            return slot.proc
        return self._took_over(slot, self._spawn(slot), reason)

    async def launch(self, slot: Slot, *, manual: bool = False, reason: str = "") -> Proc | None:
        return await self.launch_soon(slot, manual=manual, reason=reason)

    def launch_soon(
        self, slot: Slot, *, manual: bool = False, reason: str = ""
    ) -> asyncio.Future[Proc | None]:
        """start_slot, but a `preload` app's worker is forked by its zygote while the
        loop goes on, so workers launched together are forked side by side (without
        a ready zygote: start_slot, at once). The future gets the slot's process; a
        waiter cancelled (a shutdown) does not cancel the fork."""
        if slot.forking is not None:
            return asyncio.shield(slot.forking)
        done: asyncio.Future[Proc | None] = asyncio.get_running_loop().create_future()
        if self.preload is None or not self.preload.ready():
            done.set_result(self.start_slot(slot, manual=manual, reason=reason))
        elif not self._may_start(slot, manual):
            done.set_result(slot.proc)
        else:
            return asyncio.shield(self._fork(slot, reason))
        return done

    def _may_start(self, slot: Slot, manual: bool) -> bool:
        """Whether a new process may start in the slot (none runs, none is on its way,
        the slot is still the app's); the slot's restart timer is cancelled either way."""
        slot.cancel_restart()
        if slot.proc is not None or slot.forking is not None:
            return False
        if self.slots.get(slot.instance) is not slot:
            return False  # scaled away meanwhile: a process here would be listed nowhere
        if manual:
            slot.tracker.reset()
        return True

    def _took_over(self, slot: Slot, proc: Proc | None, reason: str) -> Proc | None:
        if proc is None:
            return None
        slot.proc = proc
        if reason:
            self.record_restart(slot, reason)
        return proc

    def record_restart(self, slot: Slot, reason: str) -> None:
        slot.restarts += 1
        slot.restart_history.append(
            {
                "time": time.time(),
                "reason": reason,
                "exit_code": slot.last_exit[0],
                "signal": slot.last_exit[1],
            }
        )
        said = events.RESTART_REASONS.get(reason, reason)
        if reason == "crashed":
            said += f" ({events.exit_text(*slot.last_exit)})"
        elif reason == "memory" and self.spec.max_memory_restart:
            said += f" ({self.spec.max_memory_restart} bytes)"
        self.record_event(events.RESTART, slot.instance, said)

    def record_event(self, kind: str, instance: int | None, reason: str) -> None:
        """Add one event to the app's timeline (vocab.events says where each kind comes from)."""
        event: events.Event = {
            "time": time.time(),
            "kind": kind,
            "app": self.name,
            "instance": instance,
            "reason": reason,
        }
        self.events.append(event)
        if self.ctx.save_event is not None:
            self.ctx.save_event(event)

    @property
    def mode(self) -> Mode | None:
        """The dispatch mode in force: None without a listener (fork mode, no 'listen')."""
        return MODES[self.spec.dispatch] if self.listener is not None else None

    def _orphan_grace(self) -> float:
        """How long a worker outlives a killed supervisor (see Listener.orphan_grace)."""
        return self.listener.orphan_grace if self.listener is not None else 0.0

    def _zygote_output(self, out_r: int, err_r: int) -> None:
        """What the zygote prints (while importing the app) goes to instance 0's log."""
        self.ctx.logs.attach(self.ctx.next_id(self.name, 0), self.name, 0, self.spec, out_r, err_r)

    async def fresh_code(self) -> None:
        """Workers about to start should run the code as it is now on disk: with
        `preload`, a new zygote imports it before they are forked."""
        if self.preload is not None:
            self.preload.new_code()
            own = {"CLUSTERUI_APP": self.name, "CLUSTERUI_HOME": self.ctx.home}
            env = environ.compose(os.environ, self.spec.caller_env, self.spec.env, own)
            await self.preload.warm(env, self._zygote_output)

    def _spawn(self, slot: Slot) -> Proc | None:
        launch = self._prepare(slot)
        try:
            sspec, argv = launch.command(self.spec)
            pid = None
            if self.preload is not None:
                pid = self.preload.spawn(sspec, argv, self._zygote_output)
            if pid is None:
                pid = spawn(sspec)
        except SpawnError as exc:
            self._not_started(slot, launch, exc)
            return None
        return self._started(slot, launch, pid)

    def _fork(self, slot: Slot, reason: str) -> asyncio.Future[Proc | None]:
        """_spawn for a slot of a `preload` app whose zygote is ready, without waiting
        for the fork: workers started together are forked side by side while the loop
        goes on. The future gets the slot's new process (None: it did not start, or
        was no longer wanted: stopped, scaled away or deleted meanwhile, which
        `slot.forking` going away says, and then the worker is stopped at once)."""
        assert self.preload is not None
        launch = self._prepare(slot)
        started: asyncio.Future[Proc | None] = asyncio.get_running_loop().create_future()
        try:
            sspec, argv = launch.command(self.spec)
            asked = self.preload.request(sspec, argv)
        except SpawnError as exc:
            self._not_started(slot, launch, exc)
            started.set_result(None)
            return started
        slot.forking = started
        slot.idle.to(PENDING)  # not started yet: no process until the zygote answers

        def forked(asked: asyncio.Future[int | None]) -> None:
            wanted = slot.forking is started
            if wanted:
                slot.forking = None
            try:
                pid = asked.result()
                started.set_result(self._forked(slot, launch, sspec, pid, wanted, reason))
            except Exception as exc:  # said to whoever waits on it (an op's error), not lost
                started.set_exception(exc)

        asked.add_done_callback(forked)
        return started

    def _forked(
        self,
        slot: Slot,
        launch: _Launch,
        sspec: SpawnSpec,
        pid: int | None,
        wanted: bool,
        reason: str,
    ) -> Proc | None:
        """The zygote answered for the slot (pid None: it could not fork)."""
        wanted = wanted and not self.removed and self.slots.get(slot.instance) is slot
        if pid is None and wanted:  # exec it instead
            try:
                pid = spawn(sspec)
            except SpawnError as exc:
                self._not_started(slot, launch, exc)
                return None
        if pid is None:
            launch.close()
            return None
        proc = self._started(slot, launch, pid)
        if wanted:
            return self._took_over(slot, proc, reason)
        slot.retiring.append(proc)  # stopped like a worker being replaced
        self.request_stop(proc)
        return None

    def _prepare(self, slot: Slot) -> _Launch:
        grace = self._orphan_grace()
        wiring = _Wiring.for_mode(
            self.mode,
            self.spec,
            slot,
            self.listener,
            self.ctx.home,
            eof_channel=grace > 0,
            node=self.node,
        )
        serial = self.ctx.next_serial()
        tree = self.ctx.cgroups
        cgroup = tree.create(serial, self.name) if tree is not None else None
        return _Launch(wiring, serial, cgroup, grace, *os.pipe(), *os.pipe(), tree)

    def _not_started(self, slot: Slot, launch: _Launch, exc: SpawnError) -> None:
        launch.close()
        slot.idle.to(ERRORED)
        slot.last_error = str(exc)
        self.ctx.logs.emit(slot.id, self.name, slot.instance, f"failed to start: {exc}")
        self.ctx.notice("error", f"{self.name}:{slot.instance} failed to start: {exc}")

    def _started(self, slot: Slot, launch: _Launch, pid: int) -> Proc:
        """The process is there: watch it, read its output, introduce it."""
        for fd in (launch.out_w, launch.err_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        wiring = launch.wiring
        proc = Proc(launch.serial, pid, wiring.port)
        proc.cgroup = launch.cgroup
        proc.env = dict(wiring.env, LISTEN_PID=str(pid)) if wiring.listen_pid else wiring.env
        slot.last_error = None
        logs = self.ctx.logs
        proc.logs = logs.attach(
            slot.id, self.name, slot.instance, self.spec, launch.out_r, launch.err_r
        )
        loop = asyncio.get_running_loop()
        proc.watcher = ExitWatcher(
            loop, pid, lambda c, s: self._on_exit(slot, proc, c, s), cgroup=launch.cgroup
        )
        self._by_serial[proc.serial] = proc
        self._connect(slot, proc, wiring)
        return proc

    def _connect(self, slot: Slot, proc: Proc, wiring: _Wiring) -> None:
        """After the spawn: introduce the worker to the dispatcher, or watch its channel;
        then decide what makes it online."""
        mode = self.mode
        loop = asyncio.get_running_loop()
        if wiring.dispatcher_pair is not None:
            ours, theirs = wiring.dispatcher_pair
            add: dict[str, Any] = {"t": "add", "id": proc.serial}
            if wiring.node:
                add["framing"] = "node"
            self.listener.send(add, [ours.fileno(), theirs.fileno()])
            ours.close()
            theirs.close()
        elif mode is not None and mode.own_port:
            self.listener.send({"t": "add", "id": proc.serial, "port": proc.port})
        if wiring.our_channel is not None:
            wiring.worker_end.close()
            proc.channel = wiring.our_channel
            proc.channel.setblocking(False)
            loop.add_reader(proc.channel.fileno(), self._read_channel, slot, proc)
        if mode is not None and mode.dispatcher:
            if mode.handoff:  # a worker still silent after listen_timeout gets a reason
                loop.call_later(self.spec.listen_timeout / 1000, self._check_ready, slot, proc)
            return  # the dispatcher says when the worker is ready
        if self.spec.wait_ready or (mode is not None and mode.listen_fd):
            # PM2: with wait_ready, a worker silent for listen_timeout is online anyway.
            loop.call_later(self.spec.listen_timeout / 1000, self._ready, slot, proc)
            if not self.spec.wait_ready:
                self._probe_accepting(slot, proc)
        else:
            self._ready(slot, proc)

    def _probe_accepting(self, slot: Slot, proc: Proc) -> None:
        """Shared mode: online once the worker waits for connections on the socket."""
        if proc.exited.done() or proc.ready.done() or self.listener is None:
            return
        if accepting(proc.pid, socket_inode(self.listener.sock.fileno())):
            self._ready(slot, proc)
            return
        asyncio.get_running_loop().call_later(ACCEPT_PROBE, self._probe_accepting, slot, proc)

    def _read_channel(self, slot: Slot, proc: Proc) -> None:
        assert proc.channel is not None
        try:
            data = proc.channel.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close_channel(proc)
            return
        if b'"ready"' in data:
            self._ready(slot, proc)
        elif b'"metrics"' in data:  # from a worker that listens itself (shared, fork)
            try:
                msg = decode(data)
            except ProtocolError:
                return
            if msg.get("t") == "metrics":
                self._on_dispatch_event({**msg, "id": proc.serial})

    def _close_channel(self, proc: Proc) -> None:
        if proc.channel is not None:
            loop = asyncio.get_running_loop()
            loop.remove_reader(proc.channel.fileno())
            proc.channel.close()
            proc.channel = None

    def _ready(self, slot: Slot, proc: Proc) -> None:
        if proc.exited.done() or proc.ready.done():
            return
        slot.diagnosis = None
        proc.mark_ready()
        if proc.status == LAUNCHING:
            proc.life.to(ONLINE)

    # ---- why a handoff worker is not ready (core.diagnose) ----------------------------

    def _label(self, slot: Slot) -> str:
        return f"{self.name}:{slot.instance}"

    def _set_diagnosis(self, slot: Slot, text: str) -> None:
        if slot.diagnosis != text:
            slot.diagnosis = text
            self.ctx.logs.emit(slot.id, self.name, slot.instance, text)
            self.ctx.notice("error", text)

    def _check_ready(self, slot: Slot, proc: Proc) -> None:
        """listen_timeout passed: a worker still running and not ready gets a reason."""
        if proc.exited.done() or proc.ready.done() or proc.stop_requested:
            return
        text = diagnose.not_ready_in_time(
            self._label(slot),
            self.spec.listen_timeout / 1000,
            node=self.node,
            wait_ready=self.spec.wait_ready,
        )
        self._set_diagnosis(slot, text)

    async def _diagnose_exit(self, slot: Slot, proc: Proc, what: str) -> None:
        """A handoff worker died before it was ready: read its last lines, say why."""
        try:
            if proc.logs is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.logs.wait_closed(), 0.5)
            lines = [ln.text for ln in self.ctx.logs.recent([slot.id], 40) if ln.stream != "sys"]
            listen = self.spec.listen
            text = diagnose.exited_before_ready(
                self._label(slot),
                what,
                lines,
                node=self.node,
                port=listen.port if listen is not None and listen.kind == "tcp" else None,
            )
            self._set_diagnosis(slot, text)
        finally:
            slot.diagnosing = False

    def _on_exit(self, slot: Slot, proc: Proc, code: int | None, sig: str | None) -> None:
        if proc.kill_timer is not None:
            proc.kill_timer.cancel()
        if self.handoff and not proc.ready.done() and not proc.stop_requested and not self.removed:
            slot.diagnosing = True
            what = f"exited with code {code}" if sig is None else f"was killed by {sig}"
            asyncio.ensure_future(self._diagnose_exit(slot, proc, what))
        self._close_channel(proc)
        self._by_serial.pop(proc.serial, None)
        if self.mode is not None and self.mode.dispatcher:
            self.listener.send({"t": "remove", "id": proc.serial})
        if not proc.ready.done():
            proc.ready.set_result(False)
        proc.exited.set_result((code, sig))
        if proc.logs is not None and not proc.logs.closed:
            # A descendant may still hold the pipes (a cgroup kill or the subreaper ends it
            # shortly): read what is there, then stop holding them for a dead worker.
            asyncio.get_running_loop().call_later(PIPE_GRACE, proc.logs.close)
        what = f"exited with code {code}" if sig is None else f"killed by {sig}"
        if proc in slot.retiring:
            slot.retiring.remove(proc)
            self.ctx.logs.emit(slot.id, self.name, slot.instance, f"old worker {proc.pid} {what}")
            return
        if slot.proc is not proc:
            return
        slot.proc = None
        slot.last_exit = (code, sig)
        if proc.stop_requested:
            slot.idle.to(STOPPED)
            self.ctx.logs.emit(slot.id, self.name, slot.instance, f"stopped ({what})")
            return
        self._unexpected_exit(slot, proc, what)

    def _unexpected_exit(self, slot: Slot, proc: Proc, what: str) -> None:
        label = f"{self.name}:{slot.instance}"
        if self.removed:
            slot.idle.to(STOPPED)
            return
        if proc.after_watch and proc.uptime * 1000 < self.spec.min_uptime and self.watch_on:
            # New code that dies at once: wait for the next save instead of crash-looping.
            slot.idle.to(ERRORED)
            self.last_watch_event = f"{label} crashed after the change; waiting for file changes"
            self.ctx.logs.emit(
                slot.id, self.name, slot.instance, f"{what}; {self.last_watch_event}"
            )
            self.ctx.notice("warning", self.last_watch_event)
            self.record_event(
                events.EXIT, slot.instance, f"{what} right after a file change; waits for the next"
            )
            return
        decision = slot.tracker.on_exit(self.spec, proc.uptime * 1000)
        if decision.action == "restart":
            slot.idle.to(WAITING_RESTART)
            delay = decision.delay_ms
            self.ctx.logs.emit(
                slot.id, self.name, slot.instance, f"{what}; restarting in {delay} ms"
            )
            loop = asyncio.get_running_loop()
            slot.restart_timer = loop.call_later(
                delay / 1000, lambda: self._restart_after_crash(slot)
            )
        elif decision.action == "errored":
            slot.idle.to(ERRORED)
            self.ctx.logs.emit(slot.id, self.name, slot.instance, f"{what}; {decision.reason}")
            self.ctx.notice("error", f"{label} errored: {decision.reason}")
            self.record_event(events.EXIT, slot.instance, f"{what}; errored: {decision.reason}")
        else:
            slot.idle.to(STOPPED)
            self.ctx.logs.emit(slot.id, self.name, slot.instance, f"{what}; {decision.reason}")
            self.record_event(events.EXIT, slot.instance, f"{what}; {decision.reason}")

    def _restart_after_crash(self, slot: Slot) -> None:
        slot.restart_timer = None
        if slot.proc is None and slot.idle.value == WAITING_RESTART and not self.removed:
            self.start_slot(slot, reason="crashed")

    async def stop_proc(self, proc: Proc, *, drain: bool = False) -> None:
        """kill_signal to the group (or drain over the channel), kill_timeout, SIGKILL."""
        self.request_stop(proc, drain=drain)
        if not proc.exited.done():
            await asyncio.shield(proc.exited)

    def request_stop(self, proc: Proc, *, drain: bool = False) -> None:
        """The synchronous half of a stop: from here on an exit is not a crash."""
        if proc.exited.done():
            return
        if not proc.stop_requested:
            proc.stop_requested = True
            mode = self.mode
            if drain and mode is not None and mode.dispatcher:
                proc.life.to(DRAINING)
                self.listener.send({"t": "drain", "id": proc.serial})
                if mode.own_port:  # no channel to drain over: the worker gets kill_signal
                    signal_group(proc.pid, self.spec.kill_signal)
            else:
                proc.life.to(STOPPING)
                signal_group(proc.pid, self.spec.kill_signal)
            loop = asyncio.get_running_loop()
            proc.kill_timer = loop.call_later(
                self.spec.kill_timeout / 1000, signal_group, proc.pid, signal.SIGKILL
            )

    async def stop_slot(self, slot: Slot) -> None:
        slot.cancel_restart()
        await self._unwanted_fork(slot)
        if slot.proc is None and slot.idle.value != STOPPED:
            slot.idle.to(STOPPED)
        procs = [p for p in (slot.proc, *slot.retiring) if p is not None]
        for p in procs:
            self.request_stop(p)  # now, not when gather gets round to it
        await asyncio.gather(*(self.stop_proc(p) for p in procs))
        if self.preload is not None and not any(s.proc for s in self.slots.values()):
            self.preload.close()  # nothing runs: the next start imports the code anew

    async def _unwanted_fork(self, slot: Slot) -> None:
        """A process being forked for the slot is not wanted: wait until it is there
        and being stopped, as a replaced one is (in slot.retiring)."""
        forking, slot.forking = slot.forking, None
        if forking is not None:
            with contextlib.suppress(Exception):  # the launch says what went wrong
                await asyncio.shield(forking)

    async def restart_slot(
        self, slot: Slot, reason: str = "manual", after_watch: bool = False
    ) -> None:
        slot.cancel_restart()
        await self._unwanted_fork(slot)
        if slot.proc is not None:
            await self.stop_proc(slot.proc)
        if not self.removed:
            proc = await self.launch(slot, manual=True, reason=reason)
            if proc is not None:
                proc.after_watch = after_watch

    # ---- file watch -----------------------------------------------------------------

    @property
    def watch_on(self) -> bool:
        return self.watcher is not None and self.watcher.running

    async def set_watch(self, on: bool) -> None:
        if not on:
            if self.watcher is not None:
                await self.watcher.stop()
                self.watcher = None
            return
        if not self.spec.watch:
            self.spec.watch = [self.spec.cwd]  # like PM2's `watch: true`
        if self.watcher is None:
            from clusterui.core.watch import AppWatcher  # watchfiles only when used

            logs = [p for i in self.slots for p in self.ctx.logs.paths(self.name, i, self.spec)]
            self.watcher = AppWatcher(
                self.spec, self._watch_reload, self._watch_event, [self.ctx.home, *logs]
            )
        await self.watcher.start()

    def _watch_event(self, message: str) -> None:
        self.last_watch_event = message
        self.ctx.notice("warning" if "paused" in message else "info", f"{self.name}: {message}")
        # How a watch reload ended is in its reload or restart events already.
        if not message.startswith(("reloaded: ", "reload failed: ")):
            self.record_event(events.WATCH, None, message)

    async def _watch_reload(self, reason: str) -> None:
        self.record_event(events.WATCH, None, f"{reason}: reloading")
        async with self.op_lock:
            await self._watch_reload_locked(reason)

    async def restart_for_memory(self, slot: Slot, proc: Proc) -> None:
        async with self.op_lock:
            if slot.proc is proc and proc.status == ONLINE and not self.removed:
                await self.restart_slot(slot, reason="memory")

    async def _watch_reload_locked(self, reason: str) -> None:
        if self.removed:
            return
        try:
            if self.listener is not None and self.spec.exec_mode == "cluster":
                await self.rolling_reload(reason="watch", after_watch=True)
            else:
                await self.fresh_code()
                await asyncio.gather(
                    *(
                        self.restart_slot(s, reason="watch", after_watch=True)
                        for s in list(self.slots.values())
                    )
                )
            self._watch_event(f"reloaded: {reason}")
        except OpError as exc:
            self._watch_event(f"reload failed: {exc.message}")

    # ---- scale and reload ---------------------------------------------------------

    async def scale(self, count: int) -> tuple[list[Slot], list[Slot]]:
        """Returns (added, removed) slots. Removal drains, so nothing is lost."""
        count = max(0, count)
        current = sorted(self.slots)
        if count != len(current):
            self.record_event(events.SCALE, None, f"{len(current)} -> {count} instance(s)")
        added: list[Slot] = []
        removed: list[Slot] = []
        self.spec.instances = count
        for i in range(count):
            if i not in self.slots:
                added.append(self.ensure_slots(i + 1)[-1])
        victims = [self.slots[i] for i in current if i >= count]
        for slot in victims:
            removed.append(slot)
        await asyncio.gather(
            *[self.launch_soon(s, manual=True) for s in added],
            *(self._retire_slot(s) for s in victims),
        )
        for slot in victims:
            self.slots.pop(slot.instance, None)
        return added, removed

    async def _retire_slot(self, slot: Slot) -> None:
        slot.cancel_restart()
        await self._unwanted_fork(slot)
        procs = [p for p in (slot.proc, *slot.retiring) if p is not None]
        await asyncio.gather(*(self.stop_proc(p, drain=self.handoff) for p in procs))

    async def wait_ready(self, proc: Proc, timeout: float) -> bool:
        try:
            return bool(await asyncio.wait_for(asyncio.shield(proc.ready), timeout))
        except TimeoutError:
            return False

    async def rolling_reload(self, reason: str = "reload", after_watch: bool = False) -> str:
        """One instance at a time: start the new one, wait for ready, then drain the old."""
        trigger = events.RELOAD_TRIGGERS.get(reason, reason)
        try:
            message = await self._rolling_reload(reason, after_watch)
        except OpError as exc:
            self.reloads["failed"] += 1
            self.record_event(events.RELOAD_FAILED, None, f"{trigger}: {exc.message}")
            raise
        self.reloads["ok"] += 1
        self.record_event(events.RELOAD, None, f"{trigger}: {message.partition(': ')[2]}")
        return message

    async def _rolling_reload(self, reason: str, after_watch: bool) -> str:
        async with self.reload_lock:
            if not self.slots:
                raise OpError(f"{self.name} has no workers to reload")
            await self.fresh_code()
            replaced = 0
            for instance in sorted(self.slots):
                slot = self.slots.get(instance)
                if slot is None:
                    continue
                old = slot.proc
                if old is None or old.exited.done():
                    # Nothing serving in this slot: a plain start is the reload.
                    slot.cancel_restart()
                    slot.proc = None
                    new = self.start_slot(slot, manual=True, reason=reason)
                    if new is not None:
                        new.after_watch = after_watch
                    continue
                if self.spec.exec_mode == "fork" or not self.listener:
                    await self.restart_slot(slot, reason=reason, after_watch=after_watch)
                    replaced += 1
                    continue
                # The old worker stays listed (draining_pids) from the moment its
                # replacement starts: `ls` never shows a slot without the process serving it.
                slot.proc = None
                slot.retiring.append(old)
                new = self.start_slot(slot, manual=True)  # counted once it takes over
                if new is None:
                    await self._keep_old(slot, old, None)
                    raise OpError(
                        f"reload of {self.name} stopped at instance {instance}: the new worker "
                        f"failed to start ({slot.last_error}); the old worker keeps serving"
                    )
                new.after_watch = after_watch
                timeout = self.spec.listen_timeout / 1000
                # Where listen_timeout also means "online anyway", let that timer win.
                fallback = not MODES[self.spec.dispatch].dispatcher
                ok = await self.wait_ready(new, timeout + (1.0 if fallback else 0.0))
                if not ok:
                    exited = new.exited.done()
                    await self._keep_old(slot, old, new)
                    why = (
                        f"exited ({events.exit_text(*new.exited.result())})"
                        if exited
                        else f"was not ready within {timeout:g} s"
                    )
                    raise OpError(
                        f"reload of {self.name} stopped at instance {instance}: the new worker "
                        f"{why}; the old worker keeps serving"
                    )
                self.record_restart(slot, reason)
                asyncio.ensure_future(self.stop_proc(old, drain=True))
                replaced += 1
            return f"{self.name}: reloaded {replaced} worker(s)"

    async def _keep_old(self, slot: Slot, old: Proc, new: Proc | None) -> None:
        """A reload gave up on this slot: the old worker serves it again, if it still can."""
        if old in slot.retiring:
            slot.retiring.remove(old)
        slot.proc = old  # before the new one stops, so its exit is not the slot's
        if new is not None:
            await self.stop_proc(new)
        if slot.proc is old and old.exited.done() and not self.removed:
            # It died while its replacement failed: the slot starts afresh, as after a crash.
            slot.proc = None
            self.start_slot(slot)

    # ---- dispatcher events --------------------------------------------------------

    def _on_dispatch_event(self, msg: dict[str, Any]) -> None:
        kind = msg.get("t")
        if kind == "ready":
            proc = self._by_serial.get(msg.get("id"))
            if proc is not None:
                slot = self._slot_of(proc)
                if slot is not None:
                    self._ready(slot, proc)
        elif kind == "stats":
            self._apply_stats(msg)
        elif kind == "metrics":
            proc = self._by_serial.get(msg.get("id"))
            slot = self._slot_of(proc) if proc else None
            # A draining old worker's last figures would mix with its replacement's.
            if (
                slot is not None
                and slot.proc is proc
                and slot.metrics_gate.apply(slot.metrics, msg.get("values"))
            ):
                report = slot.metrics_gate.report()
                self.ctx.logs.emit(slot.id, self.name, slot.instance, report)
                self.ctx.notice("warning", f"{self.name}:{slot.instance}: {report}")
        elif kind == "probe":
            if self.prober is not None:
                self.prober.on_probe_event(msg)
        elif kind == "error":
            self.ctx.notice("warning", f"{self.name} dispatcher: {msg.get('message')}")
        elif kind == "bound":
            listen = msg.get("listen")
            self.ctx.notice("info", f"{self.name}: listening on {listen} (its workers' listen())")
        elif kind == "listen-failed":
            self.ctx.notice("error", f"{self.name}: a worker's listen(): {msg.get('message')}")

    def _apply_stats(self, msg: dict[str, Any]) -> None:
        workers = msg.get("workers")
        if not isinstance(workers, dict):
            return
        for key, figures in workers.items():
            try:
                proc = self._by_serial.get(int(key))
            except ValueError:
                continue
            slot = self._slot_of(proc) if proc else None
            if slot is None or not isinstance(figures, dict):
                continue
            # Counters are per process; the slot's total carries over replacements.
            delta = int(figures.get("handed", 0)) - proc.handed
            proc.handed += delta
            slot.connections += delta
            if proc is slot.proc:
                slot.active = int(figures.get("open", 0))

    def _slot_of(self, proc: Proc) -> Slot | None:
        for slot in self.slots.values():
            if slot.proc is proc or proc in slot.retiring:
                return slot
        return None

    def _on_dispatcher_exit(self, code: int | None, sig: str | None) -> None:
        if self.removed or self.listener is None:
            return
        now = time.monotonic()
        # Dispatcher deaths within a minute of each other count as one streak.
        self._dispatcher_deaths = [t for t in self._dispatcher_deaths if now - t < 60] + [now]
        if len(self._dispatcher_deaths) > 5:
            self.ctx.notice(
                "error",
                f"{self.name}: the dispatcher exited ({sig or code}) 6 times within a minute; "
                "the app is stopped (see supervisor.log)",
            )
            asyncio.ensure_future(self._give_up_dispatch())
            return
        delay = 0.1 * 2 ** (len(self._dispatcher_deaths) - 1)
        self.ctx.notice(
            "error",
            f"{self.name}: the dispatcher exited ({sig or code}); "
            f"restarting the app's listener in {delay:g} s",
        )
        asyncio.ensure_future(self._recover_dispatcher(delay))

    async def _give_up_dispatch(self) -> None:
        async with self.op_lock:
            await self._give_up_dispatch_locked()

    async def _give_up_dispatch_locked(self) -> None:
        await self.stop_all()
        self.close_listener()
        for slot in self.slots.values():
            slot.idle.to(ERRORED)
            slot.last_error = "the dispatcher keeps exiting"

    async def _recover_dispatcher(self, delay: float) -> None:
        async with self.op_lock:
            await self._recover_dispatcher_locked(delay)

    async def _recover_dispatcher_locked(self, delay: float) -> None:
        # Workers lost their channels (EOF makes them exit); start over cleanly.
        await self.stop_all()
        self.close_listener()
        await asyncio.sleep(delay)
        if not self.removed:
            try:
                self.start_all()
            except OpError as exc:
                self.ctx.notice("error", exc.message)


class _Wiring:
    """What a new worker is given for its dispatch mode: environment, fds, sockets."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.fds: dict[int, int] = {}
        self.listen_pid = False
        self.port: int | None = None
        # handoff: (our end for the dispatcher, the worker's end); both go to the dispatcher
        self.dispatcher_pair: tuple[socket.socket, socket.socket] | None = None
        # wait_ready without a dispatcher: the channel is ours to read
        self.our_channel: socket.socket | None = None
        self.worker_end: socket.socket | None = None
        self.node = False  # Node's IPC channel and the preload (core.nodeapp)

    @classmethod
    def for_mode(
        cls,
        mode: Mode | None,
        spec: AppSpec,
        slot: Slot,
        listener: Listener | None,
        home: str = "",
        *,
        eof_channel: bool = False,
        node: bool = False,
    ) -> _Wiring:
        """`eof_channel`: a channel even without wait_ready, whose end of file tells the
        worker its supervisor died (a shared socket handed in: it stops accepting, drains)."""
        own = {
            "CLUSTERUI_APP": spec.name,
            "CLUSTERUI_INSTANCE": str(slot.instance),
            "NODE_APP_INSTANCE": str(slot.instance),
        }
        if home:
            own["CLUSTERUI_HOME"] = home
        proxy = mode is not None and mode.own_port
        env = environ.compose(os.environ, spec.caller_env, spec.env, own, proxy)
        w = cls(env)
        if mode is not None and mode.handoff and node:
            # Node's own IPC channel is a stream socket; the dispatcher speaks its framing
            # (dispatch.node), and the preload turns listen() into a registration.
            w.node = True
            w.dispatcher_pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            w.worker_end = w.dispatcher_pair[1]
            w.fds[3] = w.worker_end.fileno()
            env.update(nodeapp.env(spec, 3, env))
            env["CLUSTERUI_DISPATCH"] = mode.name
            return w
        if mode is not None and mode.handoff:
            w.dispatcher_pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            w.worker_end = w.dispatcher_pair[1]
        elif (spec.wait_ready or eof_channel) and not (mode is not None and mode.own_port):
            w.our_channel, w.worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        channel_fd = 3
        if mode is not None and mode.listen_fd:
            assert listener is not None
            # systemd passes listeners from fd 3 on; a wait_ready channel goes after them.
            w.fds[3] = listener.sock.fileno()
            env.update(LISTEN_FDS="1", LISTEN_FDNAMES=spec.name)
            w.listen_pid = True
            channel_fd = 4
        if w.worker_end is not None:
            w.fds[channel_fd] = w.worker_end.fileno()
            env["CLUSTERUI_CHANNEL_FD"] = str(channel_fd)
        # Tells the worker helper how to serve: take handed connections, or listen itself.
        env["CLUSTERUI_DISPATCH"] = mode.name if mode is not None else "none"
        # The worker's host drains WebSockets before this runs out (clusterui.web).
        env["CLUSTERUI_KILL_TIMEOUT"] = str(spec.kill_timeout)
        if mode is not None and mode.own_port:
            w.port = free_port()
            env["PORT"] = str(w.port)
        return w

    def close(self) -> None:
        """The spawn failed: close every socket made for it."""
        for s in (*(self.dispatcher_pair or ()), self.our_channel, self.worker_end):
            if s is not None:
                s.close()


@dataclass
class _Launch:
    """A worker process on its way: what is made for it before the spawn."""

    wiring: _Wiring
    serial: int
    cgroup: str | None
    orphan_grace: float
    out_r: int
    out_w: int
    err_r: int
    err_w: int
    cgroups: Any  # core.cgroups.CgroupTree the cgroup is in

    def command(self, spec: AppSpec) -> tuple[SpawnSpec, list[str]]:
        """What to spawn, and its argv (raises SpawnError if it cannot be expanded)."""
        w = self.wiring
        argv = _expanded_argv(spec, w.env, node=w.node)
        sspec = SpawnSpec(
            argv=argv,
            cwd=spec.cwd,
            env=w.env,
            stdout=self.out_w,
            stderr=self.err_w,
            fds=w.fds,
            listen_pid=w.listen_pid,
            orphan_grace=self.orphan_grace,
            cgroup=self.cgroup,
        )
        return sspec, argv

    def close(self) -> None:
        """Nothing was started: undo what was made for it."""
        for fd in (self.out_r, self.out_w, self.err_r, self.err_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.wiring.close()
        if self.cgroup is not None:
            self.cgroups.remove(self.cgroup)


def _expanded_argv(spec: AppSpec, env: dict[str, str], *, node: bool = False) -> list[str]:
    """spec.argv() with $NAME/${NAME} taken from the worker's env (not the interpreter);
    a Node worker's preload goes first (core.nodeapp)."""
    argv = spec.argv()
    skip = 1 + len(spec.interpreter_args) if (spec.interpreter or spec.web) else 0
    try:
        argv = expand_argv(argv, env, skip)
    except ExpandError as exc:
        raise SpawnError(f"cannot expand the command line: {exc}") from None
    return nodeapp.with_preload(spec, argv) if node else argv
