"""One cluster-mode listener: the bound socket and the dispatcher process behind it.

The supervisor binds the socket (so a taken port is reported before any worker
starts), then hands it to a dispatcher process (`python -m clusterui.dispatch`)
that owns the accept loop. We talk to the dispatcher over a SEQPACKET control
socket; see clusterui.dispatch for the message set.

If the dispatcher dies (killed, OOM), the Listener starts a new one at once and
hands it the same workers: it keeps a copy of both ends of every worker's channel,
so a worker never sees its channel close and keeps running, and the socket stays
bound, so new connections wait in the kernel's backlog meanwhile. Only the
connections the dead dispatcher held are lost. A dispatcher that dies young, or
too often, is reported to the app instead (its own backoff restarts everything).

With `dispatchers: N` (round-robin only) N dispatcher processes wait on the one socket
(EPOLLEXCLUSIVE: each connection wakes one) and every one of them hands connections
in turn to every worker, over the same channels. The primary is the only one that
reads the channels (a worker's ready, closed and metrics messages, health probes);
the helpers are told what they need: a worker is ready, and they answer a drain with
"drained" before the primary passes the drain on to the worker, so nothing reaches a
worker after its drain. Their stats are summed here, so the app sees one dispatcher.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import errno
import json
import os
import signal
import socket
import stat
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from clusterui.core import inherit, nodeapp
from clusterui.core.process import ExitWatcher, SpawnError, SpawnSpec, signal_group, spawn
from clusterui.core.spec import AppSpec, Listen
from clusterui.dispatch import node as nodeproto
from clusterui.dispatch import protocol as proto
from clusterui.dispatch.protocol import MODES
from clusterui.vocab.exits import OpError
from clusterui.vocab.snapshot import DispatcherRow

MAX_DATAGRAM = 65536


class BindError(OpError):
    """bind() failed; `code` names the errno as Node does (for a Node worker's 'error')."""

    def __init__(self, message: str, errno_code: int | None):
        super().__init__(message)
        self.errno_name = errno.errorcode.get(errno_code or 0, "EINVAL")


# A dispatcher that ran at least this long, or said anything, and then died is replaced
# in place (the workers keep running); one that dies sooner, silent, cannot start, and
# the app's own backoff (core/apps.py) deals with it.
RESPAWN_MIN_LIFETIME = 1.0
# In-place replacements per app within RESPAWN_WINDOW; past that the app's recovery
# (restart everything, give up after 6 deaths a minute) takes over.
RESPAWN_LIMIT = 3
RESPAWN_WINDOW = 60.0
# Times of in-place replacements per app name; outlives Listener objects, since the
# app's recovery makes a new Listener.
_respawns: dict[str, list[float]] = {}
# A helper that never answers a drain does not hold the worker's drain up longer.
DRAIN_ACK_TIMEOUT = 1.0


@dataclass
class _Handover:
    """What a new dispatcher needs to take over one worker."""

    add: dict[str, Any]  # the "add" message as first sent
    fds: list[int] = field(default_factory=list)  # our copies of both channel ends
    ready: bool = False
    draining: bool = False
    handed: int = 0  # "handed" as last reported to the app, carried across dispatchers
    handed_base: int = 0  # added to what the current dispatcher reports
    unhealthy: bool = False  # a health probe failed: a new dispatcher is told so too


@dataclass
class _Helper:
    """One helper dispatcher (`dispatchers: N`): its process, control socket and the
    figures it last reported (handed counts carried across its replacements)."""

    pid: int
    ctl: socket.socket
    started_at: float
    watcher: ExitWatcher | None = None
    heard: bool = False
    handed: dict[str, int] = field(default_factory=dict)  # by worker key, with base
    base: dict[str, int] = field(default_factory=dict)  # handed by earlier incarnations
    open: dict[str, int] = field(default_factory=dict)
    accepted: int = 0
    pending: int = 0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (proxy mode's per-worker $PORT;
    the tests and benchmarks use it too)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bind(listen: Listen, backlog: int = 1024) -> socket.socket:
    """Bind and listen, or raise OpError with the reason in one sentence."""
    try:
        if listen.kind == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                if os.path.exists(listen.path):
                    _unlink_stale_unix(listen.path)
                sock.bind(listen.path)
            except BaseException:
                sock.close()
                raise
        else:
            family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                # Accepted connections inherit it: workers handed fd 3 (shared mode)
                # often take it for AF_UNIX and never set it (uvicorn --fd 3).
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.bind((listen.host, listen.port))
            except BaseException:
                sock.close()
                raise
        sock.listen(backlog)
        return sock
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            why = "the address is already in use"
        elif exc.errno == errno.EACCES:
            why = "permission denied"
        else:
            why = str(exc.strerror or exc)
        raise BindError(f"cannot listen on {listen}: {why}", exc.errno) from None


def _unlink_stale_unix(path: str) -> None:
    # Only ever a socket: never a file or a link that happens to be at that path.
    if not stat.S_ISSOCK(os.lstat(path).st_mode):
        raise OSError(errno.EADDRINUSE, "in use")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)  # nobody is listening: a leftover from a dead process
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, "in use")


class Listener:
    """The socket plus (for handoff and proxy modes) its dispatcher process."""

    def __init__(
        self,
        spec: AppSpec,
        on_event: Callable[[dict[str, Any]], None],
        on_dispatcher_exit: Callable[[int | None, str | None], None],
    ):
        assert spec.listen is not None or nodeapp.learns_port(spec)
        self.spec = spec
        # A socket handed in from outside (systemd) outlives us: use it, never bind.
        # A Node app without `listen` binds when its first worker calls listen().
        inherited = inherit.take(spec.name, spec.listen) if spec.listen else None
        self.inherited = inherited is not None
        self.sock: socket.socket | None = inherited
        if inherited is None and spec.listen is not None:
            self.sock = bind(spec.listen)
        self._on_event = on_event
        self._on_exit = on_dispatcher_exit
        self.pid: int | None = None
        self._ctl: socket.socket | None = None
        self._watcher: ExitWatcher | None = None
        self._loop = asyncio.get_running_loop()
        self._workers: dict[str, _Handover] = {}  # by str(id): stats use string keys
        self._started_at = 0.0
        self._heard = False  # the current dispatcher has sent us something
        self._closed = False
        self._helpers: list[_Helper] = []
        self._primary_stats: dict[str, Any] = {}
        # Open connections of dispatchers that were replaced, by worker key: a new one
        # counts from zero, but what the old one handed is open until the worker closes
        # it (and the closes reach the primary). What a killed dispatcher did after its
        # last report is not known: the sum is off by that much (a shared dispatcher
        # reports every SHARED_STATS_INTERVAL while busy, to keep it small).
        self._open_carry: dict[str, int] = {}
        # Drains waiting for the helpers' "drained": worker key → helper pids not done.
        self._drain_acks: dict[str, set[int]] = {}
        if MODES[spec.dispatch].dispatcher:
            self._start_dispatcher()
            for _ in range(self.helpers_wanted):
                self._start_helper()

    @property
    def helpers_wanted(self) -> int:
        return spec_helpers(self.spec)

    @property
    def pids(self) -> list[int]:
        """Every dispatcher process: the primary first."""
        return [p for p in [self.pid, *(h.pid for h in self._helpers)] if p]

    def dispatchers(self) -> list[DispatcherRow]:
        """Each dispatcher process, the primary first, with the connections it accepted
        (as it last reported them; a replaced one counts from zero)."""
        rows: list[DispatcherRow] = []
        if self.pid:
            rows.append({"pid": self.pid, "accepted": _count(self._primary_stats.get("accepted"))})
        rows.extend({"pid": h.pid, "accepted": h.accepted} for h in self._helpers)
        return rows

    @property
    def orphan_grace(self) -> float:
        """How long this app's workers and dispatcher outlive a killed supervisor.

        On a socket handed in from outside, kill_timeout: the workers finish what they
        were handed, and the dispatcher hands them what it had accepted, while the next
        supervisor takes the socket over (new connections wait in its queue). Otherwise
        nothing: the socket dies with us. In proxy mode every byte goes through the
        dispatcher's own sockets, so nothing outlives it either.
        """
        if self.inherited and not MODES[self.spec.dispatch].own_port:
            return self.spec.kill_timeout / 1000
        return 0.0

    @property
    def address(self) -> str:
        return str(self.spec.listen) if self.spec.listen else "(from the app's listen())"

    def _start_dispatcher(self) -> None:
        self.pid, ours = self._spawn(proto.PRIMARY if self.helpers_wanted else "")
        self._ctl = ours
        self._started_at = time.monotonic()
        self._heard = False
        self._loop.add_reader(ours.fileno(), self._read)
        self._watcher = ExitWatcher(self._loop, self.pid, self._dispatcher_exited)

    def _spawn(self, shared: str) -> tuple[int, socket.socket]:
        """Start one dispatcher process; (its pid, our end of its control socket)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = dict(os.environ)
        env.pop("CLUSTERUI_LISTEN_FD", None)
        env.update(
            CLUSTERUI_CONTROL_FD="4",
            CLUSTERUI_DISPATCH_MODE=self.spec.dispatch,
            CLUSTERUI_APP=self.spec.name,
            CLUSTERUI_DISPATCH_SHARED=shared,
        )
        grace = self.orphan_grace
        if grace:
            env["CLUSTERUI_ORPHAN_GRACE"] = f"{grace:g}"
        else:
            env.pop("CLUSTERUI_ORPHAN_GRACE", None)
        fds = {4: theirs.fileno()}
        if self.sock is not None:
            env["CLUSTERUI_LISTEN_FD"] = "3"
            fds[3] = self.sock.fileno()
        try:
            pid = spawn(
                SpawnSpec(
                    argv=[sys.executable, "-m", "clusterui.dispatch", self.spec.dispatch],
                    cwd="/",
                    env=env,
                    stderr=2,
                    fds=fds,
                    orphan_grace=grace,
                )
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        return pid, ours

    # ---- helper dispatchers (`dispatchers: N`) ---------------------------------------

    def _start_helper(self, base: dict[str, int] | None = None) -> _Helper:
        pid, ctl = self._spawn(proto.HELPER)
        # Its predecessors' counts are in the sum from the start: a new helper reports
        # only once it has handed something, and until then the app's count was short by
        # them (a read in between, then one after, saw connections that were never made).
        h = _Helper(pid, ctl, time.monotonic(), handed=dict(base or {}), base=dict(base or {}))
        self._helpers.append(h)
        self._loop.add_reader(ctl.fileno(), self._read_helper, h)
        h.watcher = ExitWatcher(self._loop, pid, lambda c, s: self._helper_exited(h, c, s))
        return h

    def _hand_over(self, h: _Helper) -> None:
        """Tell a new helper every worker there is, as it stands."""
        for key, w in self._workers.items():
            if not w.fds:
                continue  # we could not keep its channel: it drains and exits
            self._send_to(h.ctl, w.add, w.fds)
            if w.unhealthy:
                self._send_to(h.ctl, {"t": "health", "id": w.add["id"], "ok": False})
            if w.draining or key in self._drain_acks:
                self._send_to(h.ctl, {"t": "drain", "id": w.add["id"]})
            elif w.ready:
                self._send_to(h.ctl, {"t": "ready", "id": w.add["id"]})

    def _helper_exited(self, h: _Helper, code: int | None, sig: str | None) -> None:
        h.watcher = None
        self._drop_helper(h)
        self._carry(h.open)
        if self._closed:
            return
        if self._may_respawn_after(h.started_at, h.heard):
            try:
                new = self._start_helper(base=h.handed)
            except (SpawnError, OSError):
                new = None
            if new is not None:
                _respawns.setdefault(self.spec.name, []).append(time.monotonic())
                self._hand_over(new)
                self._on_event(
                    {
                        "t": "error",
                        "message": f"helper dispatcher exited ({sig or code}); a new one "
                        f"(pid {new.pid}) took its place",
                    }
                )
                return
        self._on_exit(code, sig)

    def _carry(self, open_: dict[str, int]) -> None:
        for key, n in open_.items():
            if key in self._workers:
                self._open_carry[key] = self._open_carry.get(key, 0) + n

    def _drop_helper(self, h: _Helper) -> None:
        if h in self._helpers:
            self._helpers.remove(h)
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(h.ctl.fileno())
        h.ctl.close()
        for key in list(self._drain_acks):
            self._drained(key, h.pid)

    def _read_helper(self, h: _Helper) -> None:
        for msg in self._messages(h.ctl):
            h.heard = True
            kind = msg.get("t")
            if kind == "drained":
                self._drained(str(msg.get("id")), h.pid)
            elif kind == "stats" and isinstance(msg.get("workers"), dict):
                h.handed, h.open = dict(h.base), {}
                for key, figures in msg["workers"].items():
                    if isinstance(figures, dict):
                        h.handed[key] = _count(figures.get("handed")) + h.base.get(key, 0)
                        h.open[key] = _count(figures.get("open"))
                h.accepted, h.pending = _count(msg.get("accepted")), _count(msg.get("pending"))
                self._on_event(self._summed())
            elif kind == "error":
                self._on_event(msg)

    def _summed(self) -> dict[str, Any]:
        """The stats of every dispatcher of this listener as one (the primary's last,
        plus each helper's): what the app and its workers' rows show."""
        own = self._primary_stats
        workers: dict[str, dict[str, int]] = {}
        for key, figures in (own.get("workers") or {}).items():
            if isinstance(figures, dict):
                workers[key] = {
                    "handed": _count(figures.get("handed")),
                    "open": _signed(figures.get("open")),
                }
        accepted, pending = _count(own.get("accepted")), _count(own.get("pending"))
        for h in self._helpers:
            for key, handed in h.handed.items():
                row = workers.setdefault(key, {"handed": 0, "open": 0})
                row["handed"] += handed
                row["open"] += h.open.get(key, 0)
            accepted += h.accepted
            pending += h.pending
        for key, row in workers.items():
            row["open"] = max(0, row["open"] + self._open_carry.get(key, 0))
        return {"t": "stats", "workers": workers, "accepted": accepted, "pending": pending}

    def _drain(self, msg: dict[str, Any]) -> bool:
        """Drain a worker: first every helper, then (once each said "drained") the
        primary, which tells the worker. True: sent or on its way."""
        key = str(msg.get("id"))
        waiting = {h.pid for h in self._helpers if self._send_to(h.ctl, msg)}
        if not waiting:
            return self._send_now(msg)
        self._drain_acks[key] = waiting
        self._loop.call_later(DRAIN_ACK_TIMEOUT, self._drain_timeout, key, waiting)
        return True

    def _drained(self, key: str, pid: int) -> None:
        waiting = self._drain_acks.get(key)
        if waiting is None:
            return
        waiting.discard(pid)
        if not waiting:
            del self._drain_acks[key]
            w = self._workers.get(key)
            self._send_now({"t": "drain", "id": w.add["id"] if w else _id(key)})

    def _drain_timeout(self, key: str, waiting: set[int]) -> None:
        if self._drain_acks.get(key) is waiting:
            for pid in list(waiting):
                self._drained(key, pid)

    def _dispatcher_exited(self, code: int | None, sig: str | None) -> None:
        if self._helpers:
            figures = self._primary_stats.get("workers") or {}
            self._carry(
                {k: _signed(f.get("open")) for k, f in figures.items() if isinstance(f, dict)}
            )
        self._primary_stats = {}
        self._watcher = None
        self.pid = None
        self._close_ctl()
        if self._closed:
            return  # we killed it ourselves
        if self._may_respawn() and self._respawn(code, sig):
            return
        self._on_exit(code, sig)

    def _may_respawn(self) -> bool:
        return self._may_respawn_after(self._started_at, self._heard)

    def _may_respawn_after(self, started_at: float, heard: bool) -> bool:
        now = time.monotonic()
        if not heard and now - started_at < RESPAWN_MIN_LIFETIME:
            return False
        recent = [t for t in _respawns.get(self.spec.name, []) if now - t < RESPAWN_WINDOW]
        _respawns[self.spec.name] = recent
        return len(recent) < RESPAWN_LIMIT

    def _respawn(self, code: int | None, sig: str | None) -> bool:
        """Start a new dispatcher and hand it every worker; False if it could not start."""
        try:
            self._start_dispatcher()
        except (SpawnError, OSError):
            return False
        _respawns.setdefault(self.spec.name, []).append(time.monotonic())
        for w in self._workers.values():
            w.handed_base = w.handed  # the new dispatcher counts from zero
            if MODES[self.spec.dispatch].handoff and not w.fds:
                continue  # we could not keep its channel (fds exhausted): it drains and exits
            self._send_now(w.add, w.fds)
            if w.unhealthy:
                self._send_now({"t": "health", "id": w.add["id"], "ok": False})
            if w.draining:
                self._send_now({"t": "drain", "id": w.add["id"]})
            elif w.ready and w.fds:
                # The worker told the old dispatcher it was ready; say it again on its
                # behalf, through its own end of the channel.
                self._inject_ready(w, tries=20)
        self._on_event(
            {
                "t": "error",
                "message": f"exited ({sig or code}); a new dispatcher (pid {self.pid}) "
                f"took over {len(self._workers)} worker(s), which keep running",
            }
        )
        return True

    def _inject_ready(self, w: _Handover, tries: int) -> None:
        if self._closed or not w.fds or self._workers.get(str(w.add["id"])) is not w:
            return
        # Wrap without touching flags: this open file is shared with the worker's fd.
        end = socket.socket(fileno=w.fds[1])
        node = w.add.get("framing") == "node"
        try:
            end.send(nodeproto.READY if node else proto.READY, socket.MSG_DONTWAIT)
        except BlockingIOError:
            if tries > 0:  # the worker filled the channel meanwhile: try again shortly
                self._loop.call_later(0.05, self._inject_ready, w, tries - 1)
        except OSError:
            pass
        finally:
            end.detach()

    def _close_ctl(self) -> None:
        if self._ctl is not None:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(self._ctl.fileno())
            self._ctl.close()
            self._ctl = None

    def _read(self) -> None:
        assert self._ctl is not None
        for msg in self._messages(self._ctl):
            self._heard = True
            if msg.get("t") == "listen":
                self._listen_request(msg)
                continue
            self._note_event(msg)
            if msg.get("t") == "stats":
                self._primary_stats = msg
                if self._helpers:
                    msg = self._summed()
            self._on_event(msg)

    def _messages(self, ctl: socket.socket) -> Iterator[dict[str, Any]]:
        """The messages waiting on a dispatcher's control socket; at most 64, so the
        rest of the loop gets its turn. At end of file it is no longer polled."""
        for _ in range(64):
            try:
                data = ctl.recv(MAX_DATAGRAM)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                with contextlib.suppress(ValueError, OSError):
                    self._loop.remove_reader(ctl.fileno())
                return
            try:
                msg = json.loads(data)
            except (ValueError, RecursionError):
                continue
            if isinstance(msg, dict):
                yield msg

    def _listen_request(self, msg: dict[str, Any]) -> None:
        """A Node worker's listen() with no socket yet: bind what it asked for."""
        if self.sock is not None:
            self._send_now({"t": "socket"}, [self.sock.fileno()])
            return
        listen = nodeapp.listen_from_request(msg, self.spec.cwd)
        if listen is None:
            self._send_now({"t": "listen-failed", "code": "EINVAL", "message": "bad address"})
            return
        try:
            try:
                sock = bind(listen)
            except BindError:
                if msg.get("address") or listen.kind != "tcp":
                    raise
                # Node's default is IPv6 any-address, else IPv4 (no IPv6 on this host).
                listen = Listen("tcp", "0.0.0.0", listen.port)
                sock = bind(listen)
        except BindError as exc:
            self._send_now({"t": "listen-failed", "code": exc.errno_name, "message": exc.message})
            self._on_event({"t": "listen-failed", "id": msg.get("id"), "message": exc.message})
            return
        if listen.kind == "tcp" and listen.port == 0:
            listen = Listen("tcp", listen.host, sock.getsockname()[1])
        self.sock = sock
        self.spec.listen = listen  # from now on as if the file said so (kept on restarts)
        self._send_now({"t": "socket"}, [sock.fileno()])
        self._on_event({"t": "bound", "listen": str(listen)})

    def _note_event(self, msg: dict[str, Any]) -> None:
        """Keep what a replacement dispatcher will need; carry counters across one."""
        kind = msg.get("t")
        if kind == "ready":
            w = self._workers.get(str(msg.get("id")))
            if w is not None:
                w.ready = True
                for h in self._helpers:
                    self._send_to(h.ctl, {"t": "ready", "id": w.add["id"]})
        elif kind == "stats" and isinstance(msg.get("workers"), dict):
            for key, figures in msg["workers"].items():
                w = self._workers.get(str(key))
                if w is None or not isinstance(figures, dict):
                    continue
                handed = figures.get("handed")
                if isinstance(handed, int) and not isinstance(handed, bool):
                    figures["handed"] = w.handed = handed + w.handed_base

    def send(self, msg: dict[str, Any], fds: list[int] | None = None) -> bool:
        self._remember(msg, fds)
        if not self._helpers:
            return self._send_now(msg, fds)
        kind = msg.get("t")
        if kind == "drain":
            return self._drain(msg)
        if kind in ("add", "remove", "health", "stats"):
            for h in self._helpers:
                self._send_to(h.ctl, msg, fds)
        if kind == "remove":
            key = str(msg.get("id"))
            self._drain_acks.pop(key, None)
            self._open_carry.pop(key, None)
            for h in self._helpers:
                h.handed.pop(key, None)
                h.open.pop(key, None)
                h.base.pop(key, None)
        return self._send_now(msg, fds)

    def _remember(self, msg: dict[str, Any], fds: list[int] | None) -> None:
        kind, key = msg.get("t"), str(msg.get("id"))
        if kind == "add":
            self._forget(key)
            w = _Handover(dict(msg))
            try:
                for fd in fds or ():
                    w.fds.append(os.dup(fd))  # non-inheritable: no child gets these
            except OSError:
                _close_all(w.fds)
                w.fds = []
            self._workers[key] = w
        elif kind == "drain" and key in self._workers:
            self._workers[key].draining = True
        elif kind == "health" and key in self._workers:
            self._workers[key].unhealthy = msg.get("ok") is False
        elif kind == "remove":
            self._forget(key)

    def _forget(self, key: str) -> None:
        w = self._workers.pop(key, None)
        if w is not None:
            _close_all(w.fds)

    def _send_now(self, msg: dict[str, Any], fds: list[int] | None = None) -> bool:
        return self._ctl is not None and self._send_to(self._ctl, msg, fds)

    @staticmethod
    def _send_to(ctl: socket.socket, msg: dict[str, Any], fds: list[int] | None = None) -> bool:
        if ctl.fileno() < 0:
            return False
        payload = json.dumps(msg).encode()
        anc = []
        if fds:
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        try:
            ctl.sendmsg([payload], anc)
            return True
        except BlockingIOError:
            # The dispatcher is not reading its control socket: wait briefly, it is local.
            ctl.setblocking(True)
            ctl.settimeout(2.0)
            try:
                ctl.sendmsg([payload], anc)
                return True
            except OSError:
                return False
            finally:
                ctl.setblocking(False)
        except OSError:
            return False

    def close(self) -> None:
        self._closed = True
        self._close_ctl()
        for key in list(self._workers):
            self._forget(key)
        if self.pid is not None:
            signal_group(self.pid, signal.SIGKILL)
        for h in list(self._helpers):
            self._drop_helper(h)
            signal_group(h.pid, signal.SIGKILL)
        if self._watcher is not None:
            # Keep reaping it: the exit callback still fires, and no zombie stays.
            pass
        if self.spec.listen and self.spec.listen.kind == "unix" and not self.inherited:
            with contextlib.suppress(OSError):
                os.unlink(self.spec.listen.path)
        if self.sock is not None:
            self.sock.close()


def spec_helpers(spec: AppSpec) -> int:
    """How many helper dispatchers an app's listener runs besides its primary."""
    return spec.dispatchers - 1 if MODES[spec.dispatch].shareable else 0


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _signed(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _id(key: str) -> Any:
    """A worker id back from its string key (the supervisor's ids are ints)."""
    try:
        return int(key)
    except ValueError:
        return key


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
