"""Health probes: readiness (an unhealthy worker gets no new connections) and liveness
(after `failures` consecutive failures the worker is replaced, the new one ready first).

A probe reaches each worker the way a client's connection does:

- handoff dispatch (round-robin, least-connections): the supervisor makes a loopback TCP
  connection and the dispatcher hands its far end to that one worker through the
  worker's channel, so a worker whose event loop hangs never takes it and fails;
- proxy dispatch: a connection to the worker's own $PORT;
- no dispatcher (fork mode): the app's `listen` address or the check's `port`;
- `exec`: a command, with CLUSTERUI_PID / CLUSTERUI_INSTANCE / PORT set; exit 0 passes.

A `tcp` probe passes once the worker has taken the connection (handoff) or the connect
succeeded; an `http` probe sends `GET path` and compares the status line.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from clusterui.core import reaper
from clusterui.core.spec import HealthCheck
from clusterui.vocab import events, states

if TYPE_CHECKING:
    from clusterui.core.apps import App, Proc, Slot

MAX_STATUS_LINE = 4096
RESULTS_KEPT = 10  # recent probe results per slot, for describe and the dashboard


@dataclass
class ProbeState:
    """Per process: how its probes went."""

    ok: bool | None = None  # None: not probed yet
    consecutive: int = 0  # failures in a row
    replacing: bool = False


@dataclass
class SlotHealth:
    """Per slot (outlives its processes): counters and the recent results."""

    probes: int = 0
    failed: int = 0
    results: deque = field(default_factory=lambda: deque(maxlen=RESULTS_KEPT))

    def to_dict(self, proc: Proc | None) -> dict[str, Any]:
        state: ProbeState | None = proc.probe if proc is not None else None
        last = self.results[-1] if self.results else None
        return {
            "ok": state.ok if state else None,
            "consecutive_failures": state.consecutive if state else 0,
            "probes": self.probes,
            "failed": self.failed,
            "last": dict(last) if last else None,
            "recent": [dict(r) for r in self.results],
        }


class ProbeFailed(Exception):
    pass


class _Loopback:
    """A loopback listener that makes connected TCP pairs for handoff probes: we keep one
    end, the dispatcher hands the other to a worker. Anyone else's connection is dropped."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.setblocking(False)
        self.address = self.sock.getsockname()
        self.waiting: dict[Any, Callable[[socket.socket], None]] = {}
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(self.sock.fileno(), self._accept)

    def connect(self, on_pair: Callable[[socket.socket], None]) -> socket.socket:
        """Our end, connecting; on_pair(their end) runs once it is accepted."""
        ours = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ours.setblocking(False)
        err = ours.connect_ex(self.address)
        if err not in (0, errno.EINPROGRESS):
            ours.close()
            raise OSError(err, os.strerror(err))
        self.waiting[ours.getsockname()] = on_pair
        return ours

    def forget(self, ours: socket.socket) -> None:
        with contextlib.suppress(OSError):
            self.waiting.pop(ours.getsockname(), None)

    def _accept(self) -> None:
        for _ in range(64):
            try:
                theirs, addr = self.sock.accept()
            except BlockingIOError:
                return
            except OSError:
                return
            on_pair = self.waiting.pop(addr, None)
            if on_pair is None:
                theirs.close()
            else:
                on_pair(theirs)

    def close(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        self.waiting.clear()


class _SocketProbe:
    """One http or tcp probe on a raw non-blocking socket, driven by event-loop callbacks
    and one timer: no task and no stream objects, so probing many workers every second
    costs the supervisor little."""

    def __init__(self, monitor: HealthMonitor, slot: Slot, proc: Proc) -> None:
        self.m = monitor
        self.slot = slot
        self.proc = proc
        self.loop = asyncio.get_running_loop()
        self.sock: socket.socket | None = None
        self.token: int | None = None
        self.buf = b""
        self.done = False
        self.watching = False
        self.started = time.monotonic()
        timeout = monitor.check.timeout
        self.timer = self.loop.call_later(
            timeout / 1000, self.finish, False, f"no answer within {timeout} ms"
        )

    def start(self) -> None:
        try:
            if self.m.app.handoff:
                self.sock = self.m.loopback().connect(self._handed)
            else:
                self._connect()
        except ProbeFailed as exc:
            self.finish(False, str(exc))
        except OSError as exc:
            self.finish(False, exc.strerror or str(exc))

    # -- getting a connection

    def _handed(self, theirs: socket.socket) -> None:
        """Our loopback pair is up: have the dispatcher hand its far end to the worker."""
        app = self.m.app
        try:
            if self.done or app.listener is None:
                return
            self.token = self.m.register(self)
            msg = {"t": "probe", "id": self.proc.serial, "token": self.token}
            if self.m.check.kind == "tcp":
                msg["ack"] = True  # tcp passes when the worker takes it; http reads the answer
            if not app.listener.send(msg, [theirs.fileno()]):
                self.finish(False, "the dispatcher is not running")
                return
        finally:
            theirs.close()
        if self.m.check.kind == "http":
            self._request()
        # tcp: passes when the dispatcher says the worker took it (on_taken)

    def on_taken(self, ok: bool, why: str) -> None:
        if not ok:
            self.finish(False, why)
        elif self.m.check.kind == "tcp":
            self.finish(True, "taken by the worker")

    def _connect(self) -> None:
        family, address = self.m.address(self.proc)
        sock = self.sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        err = sock.connect_ex(address)
        if err == 0:
            self._connected()
        elif err in (errno.EINPROGRESS, errno.EAGAIN):
            self.watching = True
            self.loop.add_writer(sock.fileno(), self._on_connect)
        else:
            raise OSError(err, os.strerror(err))

    def _on_connect(self) -> None:
        assert self.sock is not None
        self.loop.remove_writer(self.sock.fileno())
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.finish(False, os.strerror(err))
        else:
            self._connected()

    def _connected(self) -> None:
        if self.m.check.kind == "tcp":
            self.finish(True, "connected")
        else:
            self._request()

    # -- http

    def _request(self) -> None:
        assert self.sock is not None
        request = self.m.request
        try:
            sent = self.sock.send(request)
        except OSError as exc:
            self.finish(False, exc.strerror or str(exc))
            return
        if sent != len(request):
            self.finish(False, "could not send the request")
            return
        self.watching = True
        self.loop.add_reader(self.sock.fileno(), self._on_read)

    def _on_read(self) -> None:
        assert self.sock is not None
        try:
            data = self.sock.recv(MAX_STATUS_LINE)
        except BlockingIOError:
            return
        except OSError as exc:
            self.finish(False, exc.strerror or str(exc))
            return
        if not data:
            self.finish(False, "closed without an answer")
            return
        self.buf += data
        end = self.buf.find(b"\n")
        if end < 0:
            if len(self.buf) >= MAX_STATUS_LINE:
                self.finish(False, "not an HTTP answer")
            return
        parts = self.buf[:end].split()
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            self.finish(False, "not an HTTP answer")
            return
        status, want = int(parts[1]), self.m.check.status
        if status == want:
            self.finish(True, f"HTTP {status}")
        else:
            self.finish(False, f"HTTP {status}, expected {want}")

    # -- the end

    def finish(self, ok: bool, detail: str) -> None:
        if self.done:
            return
        self.done = True
        self.timer.cancel()
        sock = self.sock
        if sock is not None:
            if self.watching:
                with contextlib.suppress(ValueError, OSError):
                    self.loop.remove_reader(sock.fileno())
                    self.loop.remove_writer(sock.fileno())
            if self.m._loopback is not None:
                self.m._loopback.forget(sock)
            sock.close()
        if self.token is not None:
            self.m.unregister(self.token)
        self.m.finished(self.slot, self.proc, ok, detail, time.monotonic() - self.started)


class HealthMonitor:
    """Probes every online worker of one app every `interval`; one probe at a time each."""

    def __init__(self, app: App, check: HealthCheck) -> None:
        self.app = app
        self.check = check
        self.task: asyncio.Task[None] | None = None
        self._inflight: set[int] = set()  # proc serials
        self._tasks: set[asyncio.Task[Any]] = set()
        self._probes: dict[int, _SocketProbe] = {}  # by token, handed and not yet answered
        self._next_token = 0
        self._loopback: _Loopback | None = None
        self.stopped = False
        self.request = (
            f"GET {check.path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: clusterui-health\r\n"
            "Connection: close\r\n\r\n"
        ).encode()

    # ---- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        self.stopped = True
        tasks = [t for t in (self.task, *self._tasks) if t is not None]
        self.task = None
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for probe in list(self._probes.values()):
            probe.finish(False, "stopped")
        if self._loopback is not None:
            self._loopback.close()
            self._loopback = None

    async def _run(self) -> None:
        interval = max(self.check.interval, 50) / 1000
        while True:
            self.round()
            await asyncio.sleep(interval)

    def round(self) -> None:
        """Start a probe of each worker that is due one (not already being probed)."""
        delay = self.check.initial_delay / 1000
        for slot in list(self.app.slots.values()):
            proc = slot.proc
            if (
                proc is None
                or proc.status != states.ONLINE
                or proc.stop_requested
                or proc.suspended  # stopped on purpose (a debugger): not a hang
                or proc.uptime < delay
                or proc.serial in self._inflight
            ):
                continue
            self._inflight.add(proc.serial)
            if self.check.kind == "exec":
                task = asyncio.ensure_future(self._exec_probe(slot, proc))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            else:
                _SocketProbe(self, slot, proc).start()

    # ---- what probes need ------------------------------------------------------------

    def loopback(self) -> _Loopback:
        if self._loopback is None:
            self._loopback = _Loopback()
        return self._loopback

    def register(self, probe: _SocketProbe) -> int:
        self._next_token += 1
        self._probes[self._next_token] = probe
        return self._next_token

    def unregister(self, token: int) -> None:
        self._probes.pop(token, None)

    def on_probe_event(self, msg: dict[str, Any]) -> None:
        """The dispatcher's word on a handed probe: taken by the worker, or not sent."""
        probe = self._probes.get(msg.get("token"))  # type: ignore[arg-type]
        if probe is not None:
            probe.on_taken(msg.get("ok") is True, str(msg.get("error") or "not handed"))

    def address(self, proc: Proc) -> tuple[int, Any]:
        """(family, address) a direct probe connects to (no dispatcher hands it over)."""
        spec = self.app.spec
        if spec.dispatch == "proxy" and proc.port:
            return socket.AF_INET, ("127.0.0.1", proc.port)
        listen = spec.listen
        port = self.check.port
        if port is None and listen is not None and listen.kind == "unix":
            return socket.AF_UNIX, listen.path
        host = "127.0.0.1"
        if listen is not None and listen.kind == "tcp":
            port = port or listen.port
            if listen.host == "::":
                host = "::1"
            elif listen.host not in ("", "0.0.0.0"):
                host = listen.host
        if not port:
            raise ProbeFailed("no port to probe (set health_check.port)")
        return (socket.AF_INET6 if ":" in host else socket.AF_INET), (host, port)

    def finished(self, slot: Slot, proc: Proc, ok: bool, detail: str, latency: float) -> None:
        self._inflight.discard(proc.serial)
        if self.stopped or proc.exited.done() or proc.stop_requested:
            return  # it went away meanwhile: the result says nothing
        self._record(slot, proc, ok, detail, latency)

    async def _exec_probe(self, slot: Slot, proc: Proc) -> None:
        started = time.monotonic()
        try:
            detail = await asyncio.wait_for(self._exec(slot, proc), self.check.timeout / 1000)
            ok = True
        except TimeoutError:
            ok, detail = False, f"no answer within {self.check.timeout} ms"
        except ProbeFailed as exc:
            ok, detail = False, str(exc)
        except OSError as exc:
            ok, detail = False, exc.strerror or str(exc)
        self.finished(slot, proc, ok, detail, time.monotonic() - started)

    def _record(self, slot: Slot, proc: Proc, ok: bool, detail: str, latency: float) -> None:
        app = self.app
        health: SlotHealth = getattr(slot, "health", None) or SlotHealth()
        slot.health = health
        health.probes += 1
        health.failed += 0 if ok else 1
        ms = round(latency * 1000, 2)
        health.results.append({"time": time.time(), "ok": ok, "latency_ms": ms, "detail": detail})
        state: ProbeState = proc.probe or ProbeState()
        proc.probe = state
        was = state.ok
        state.ok = ok
        state.consecutive = 0 if ok else state.consecutive + 1
        if was is not ok:
            self._tell_dispatcher(proc, ok)
            if ok and was is False:
                app.ctx.logs.emit(slot.id, app.name, slot.instance, "health probe passes again")
                app.record_event(events.HEALTH, slot.instance, f"healthy again ({detail})")
            elif not ok:
                app.ctx.logs.emit(
                    slot.id,
                    app.name,
                    slot.instance,
                    f"health probe failed ({detail}); unhealthy, no new connections",
                )
                app.record_event(
                    events.HEALTH, slot.instance, f"unhealthy: probe failed ({detail})"
                )
        if not ok and state.consecutive >= self.check.failures and not state.replacing:
            state.replacing = True
            reason = f"unhealthy: {state.consecutive} failed probes ({detail})"
            task = asyncio.ensure_future(self._replace(slot, proc, reason))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _tell_dispatcher(self, proc: Proc, ok: bool) -> None:
        listener = self.app.listener
        if listener is not None and self.app.spec.dispatch != "shared":
            listener.send({"t": "health", "id": proc.serial, "ok": ok})

    async def _exec(self, slot: Slot, proc: Proc) -> str:
        spec = self.app.spec
        env = dict(os.environ)
        env.update(spec.env)
        env.update(
            CLUSTERUI_APP=spec.name,
            CLUSTERUI_INSTANCE=str(slot.instance),
            CLUSTERUI_PID=str(proc.pid),
        )
        if proc.port:
            env["PORT"] = str(proc.port)
        child = await asyncio.create_subprocess_exec(
            *self.check.command,
            cwd=spec.cwd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,  # its own group: a timeout kills all of it
        )
        reaper.spare(child.pid)  # a child of ours, but not an orphan to sweep
        try:
            code = await child.wait()
        except BaseException:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)
            with contextlib.suppress(BaseException):
                await asyncio.shield(child.wait())
            raise
        finally:
            reaper.unspare(child.pid)
        if code != 0:
            raise ProbeFailed(f"exit code {code}" if code > 0 else f"killed by signal {-code}")
        return "exit code 0"

    # ---- liveness --------------------------------------------------------------------

    async def _replace(self, slot: Slot, proc: Proc, reason: str) -> None:
        """A rolling replacement of one worker: the new one ready first, then the old one
        drains (a hung one is killed at kill_timeout)."""
        app = self.app
        log = app.ctx.logs.emit
        log(slot.id, app.name, slot.instance, f"{reason}; replacing it")
        if not (app.listener is not None and app.spec.dispatch != "shared"):
            await app.restart_slot(slot, reason=reason)
            return
        async with app.reload_lock:
            if slot.proc is not proc or proc.exited.done() or app.removed:
                return
            slot.proc = None
            new = app.start_slot(slot)
            if new is None:
                slot.proc = proc
                proc.probe.replacing = False
                log(slot.id, app.name, slot.instance, "replacement failed to start")
                return
            timeout = app.spec.listen_timeout / 1000
            if not await app.wait_ready(new, timeout):
                if slot.proc is new:
                    slot.proc = proc if not proc.exited.done() else None
                await app.stop_proc(new)
                proc.probe.replacing = False
                log(slot.id, app.name, slot.instance, "replacement was not ready; kept the old")
                return
            slot.retiring.append(proc)
            app.record_restart(slot, reason)
            asyncio.ensure_future(app.stop_proc(proc, drain=True))


def display_health(slot: Slot) -> dict[str, Any] | None:
    """The slot's probe figures for the snapshot (None when the app has no probe)."""
    health: SlotHealth | None = getattr(slot, "health", None)
    if health is None:
        return None
    return health.to_dict(slot.proc)


def is_unhealthy(proc: Proc | None) -> bool:
    return proc is not None and proc.probe is not None and proc.probe.ok is False


def is_healthy(proc: Proc | None) -> bool:
    return proc is not None and proc.probe is not None and proc.probe.ok is True
