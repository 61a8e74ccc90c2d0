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
import os
import signal
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from clusterui.core.spec import HealthCheck

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
    """A loopback listener that makes connected TCP pairs for handoff probes."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.setblocking(False)
        self.address = self.sock.getsockname()
        self.lock = asyncio.Lock()

    async def pair(self) -> tuple[socket.socket, socket.socket]:
        """(our end, the end to hand over). Anyone else's connection here is dropped."""
        loop = asyncio.get_running_loop()
        async with self.lock:
            ours = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            ours.setblocking(False)
            try:
                await loop.sock_connect(ours, self.address)
                me = ours.getsockname()
                while True:
                    theirs, addr = await loop.sock_accept(self.sock)
                    if addr == me:
                        return ours, theirs
                    theirs.close()  # not ours: another local user connected
            except BaseException:
                ours.close()
                raise

    def close(self) -> None:
        self.sock.close()


_loopback: _Loopback | None = None


def _get_loopback() -> _Loopback:
    global _loopback
    if _loopback is None:
        _loopback = _Loopback()
    return _loopback


class HealthMonitor:
    """Probes every online worker of one app every `interval`; one probe at a time each."""

    def __init__(self, app: App, check: HealthCheck) -> None:
        self.app = app
        self.check = check
        self.task: asyncio.Task[None] | None = None
        self._inflight: set[int] = set()  # proc serials
        self._tasks: set[asyncio.Task[Any]] = set()
        self._tokens: dict[int, asyncio.Future[tuple[bool, str]]] = {}
        self._next_token = 0

    # ---- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        tasks = [t for t in (self.task, *self._tasks) if t is not None]
        self.task = None
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

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
                or proc.status != "online"
                or proc.stop_requested
                or proc.suspended  # stopped on purpose (a debugger): not a hang
                or proc.uptime < delay
                or proc.serial in self._inflight
            ):
                continue
            self._inflight.add(proc.serial)
            task = asyncio.ensure_future(self._probe(slot, proc))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # ---- one probe -----------------------------------------------------------------

    async def _probe(self, slot: Slot, proc: Proc) -> None:
        check = self.check
        started = time.monotonic()
        try:
            try:
                detail = await asyncio.wait_for(self._attempt(slot, proc), check.timeout / 1000)
                ok = True
            except TimeoutError:
                ok, detail = False, f"no answer within {check.timeout} ms"
            except ProbeFailed as exc:
                ok, detail = False, str(exc)
            except OSError as exc:
                ok, detail = False, exc.strerror or str(exc)
            if proc.exited.done() or proc.stop_requested:
                return  # it went away meanwhile: the result says nothing
            self._record(slot, proc, ok, detail, time.monotonic() - started)
        finally:
            self._inflight.discard(proc.serial)

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
            elif not ok:
                app.ctx.logs.emit(
                    slot.id,
                    app.name,
                    slot.instance,
                    f"health probe failed ({detail}); unhealthy, no new connections",
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

    async def _attempt(self, slot: Slot, proc: Proc) -> str:
        check = self.check
        if check.kind == "exec":
            return await self._exec(slot, proc)
        app = self.app
        if app.handoff:
            return await self._through_channel(proc)
        reader, writer = await self._connect(proc)
        try:
            if check.kind == "tcp":
                return "connected"
            return await self._http(reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _through_channel(self, proc: Proc) -> str:
        app = self.app
        assert app.listener is not None
        ours, theirs = await _get_loopback().pair()
        token = self._next_token = self._next_token + 1
        taken = asyncio.get_running_loop().create_future()
        self._tokens[token] = taken
        try:
            sent = app.listener.send(
                {"t": "probe", "id": proc.serial, "token": token}, [theirs.fileno()]
            )
            theirs.close()
            if not sent:
                raise ProbeFailed("the dispatcher is not running")
            if self.check.kind == "tcp":
                ok, why = await taken
                if not ok:
                    raise ProbeFailed(why)
                return "taken by the worker"
            reader, writer = await asyncio.open_connection(sock=ours)
            ours = None  # the transport owns it now
            try:
                exchange = asyncio.ensure_future(self._http(reader, writer))
                done, _ = await asyncio.wait({exchange, taken}, return_when="FIRST_COMPLETED")
                if taken in done and not taken.result()[0]:
                    exchange.cancel()
                    raise ProbeFailed(taken.result()[1])
                return await exchange
            finally:
                writer.close()
        finally:
            self._tokens.pop(token, None)
            theirs.close()
            if ours is not None:
                ours.close()

    def on_probe_event(self, msg: dict[str, Any]) -> None:
        """The dispatcher's word on a handed probe: taken by the worker, or not sent."""
        fut = self._tokens.get(msg.get("token"))  # type: ignore[arg-type]
        if fut is not None and not fut.done():
            fut.set_result((msg.get("ok") is True, str(msg.get("error") or "not handed")))

    async def _connect(self, proc: Proc) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        spec = self.app.spec
        if spec.dispatch == "proxy" and proc.port:
            return await asyncio.open_connection("127.0.0.1", proc.port)
        listen = spec.listen
        port = self.check.port
        if port is None and listen is not None and listen.kind == "unix":
            return await asyncio.open_unix_connection(listen.path)
        host = "127.0.0.1"
        if listen is not None and listen.kind == "tcp":
            port = port or listen.port
            if listen.host not in ("", "0.0.0.0", "::"):
                host = listen.host
            elif listen.host == "::":
                host = "::1"
        if not port:
            raise ProbeFailed("no port to probe (set health_check.port)")
        return await asyncio.open_connection(host, port)

    async def _http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
        check = self.check
        writer.write(
            f"GET {check.path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: clusterui-health\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        await writer.drain()
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError:
            raise ProbeFailed("closed without an answer") from None
        except asyncio.LimitOverrunError:
            raise ProbeFailed("not an HTTP answer") from None
        parts = line[:MAX_STATUS_LINE].split()
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            raise ProbeFailed("not an HTTP answer")
        status = int(parts[1])
        if status != check.status:
            raise ProbeFailed(f"HTTP {status}, expected {check.status}")
        return f"HTTP {status}"

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
        try:
            code = await child.wait()
        except BaseException:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)
            with contextlib.suppress(BaseException):
                await asyncio.shield(child.wait())
            raise
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
