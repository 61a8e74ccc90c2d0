"""The supervisor's side of `preload: true`: one zygote per app (clusterui.zygote.server),
started with the app's interpreter, which has imported the app's modules and forks
each worker from itself when asked.

New code means a new zygote: the app replaces it on every start, restart, reload, watch
trigger and cron restart (App.fresh_code, Preload.new_code); a worker that crashes, or
fails its health or memory check, comes back from the same one, which is what makes
recovery fast.

Anything wrong with the zygote itself (it died, hangs, or was never ready) makes
`spawn` raise Unavailable, and the app starts that worker the ordinary way.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import os
import select
import signal
import socket
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from clusterui import web
from clusterui.core import guardian, reaper
from clusterui.core.process import (
    ExitWatcher,
    SpawnError,
    SpawnSpec,
    missing_cwd,
    signal_group,
    spawn,
)
from clusterui.core.spec import AppSpec
from clusterui.vocab.safetext import escape
from clusterui.zygote import server
from clusterui.zygote.server import CONTROL_FD_ENV, MAX_MESSAGE, PRELOAD_ENV

SERVER = server.__file__
CONTROL_FD = 3
READY_TIMEOUT = 30.0  # s for the imports: an app's may be slow, never endless
REPLY_TIMEOUT = 5.0  # s for one fork: the worker's setup included
# A worker's own variables, which the zygote (one for all of them) must not have.
_PER_WORKER = frozenset(
    {"CLUSTERUI_CHANNEL_FD", "CLUSTERUI_INSTANCE", "CLUSTERUI_DISPATCH", "NODE_APP_INSTANCE"}
)


class Unavailable(Exception):
    """The zygote cannot fork this worker (gone, hung, not ready); exec it instead."""


def command_of(spec: AppSpec, argv: list[str]) -> list[str]:
    """What follows the interpreter and its arguments in a worker's argv: a script and
    its arguments, or `-m MODULE ...` (an asgi/wsgi app's host)."""
    return argv[1 + len(spec.interpreter_args) :]


def preloadable(spec: AppSpec) -> str | None:
    """Why `preload` cannot apply to this app (None: it can)."""
    if spec.web is None and spec.interpreter is None:
        return "needs a Python script (an interpreter to import it with) or asgi/wsgi"
    if spec.web is None and not os.path.basename(spec.interpreter or "").startswith("python"):
        return f"works for Python apps only, not {os.path.basename(spec.interpreter or '')!r}"
    if any(a in ("-c", "-m") for a in spec.interpreter_args):
        return "cannot preload a command given with interpreter_args -c or -m"
    return None


def _zygote_spec(
    spec: AppSpec, env: Mapping[str, str], command: list[str], channel: int, out: int, err: int
) -> SpawnSpec:
    """How a zygote of `spec` starts: its channel as fd 3, `out` and `err` its stdout
    and stderr (-1: /dev/null)."""
    # A hosted app: its MODULE, and what the host itself loads before serving.
    extra: dict[str, list[str]] = {}
    if spec.web is not None:
        extra = {"modules": [spec.web[1].partition(":")[0]], "optional": list(web.PRELOAD)}
    env = {k: v for k, v in env.items() if k not in _PER_WORKER and not k.startswith("LISTEN_")}
    env[CONTROL_FD_ENV] = str(CONTROL_FD)
    env[PRELOAD_ENV] = json.dumps(extra)
    interpreter = spec.argv()[: 1 + len(spec.interpreter_args)]  # and its arguments
    return SpawnSpec(
        argv=[*interpreter, SERVER, *command],
        cwd=spec.cwd,
        env=env,
        stdout=out if out >= 0 else None,
        stderr=err if err >= 0 else None,
        fds={CONTROL_FD: channel},
    )


class Zygote:
    """One running zygote of one app."""

    def __init__(
        self,
        spec: AppSpec,
        env: Mapping[str, str],
        command: list[str],
        on_output: Callable[[int, int], Any] | None,
        on_exit: Callable[[Zygote], None],
        root: Zygote | None = None,
    ) -> None:
        """Started at once: forked by `root` (a root zygote that is ready), else exec'd.
        on_output gets the read ends of its stdout and stderr (None: /dev/null)."""
        self.spec = spec
        self.pid = 0
        self.ready = False
        self.broken: str | None = None  # why it may not be asked again
        self.failed: list[list[str]] = []  # [module, why] of imports that failed
        self.preloaded = 0
        self._on_exit = on_exit
        self._watcher: ExitWatcher | None = None
        # Forks asked for and not answered yet (request), in the order the answers come,
        # each with its worker's orphan_grace.
        self._owed: deque[tuple[asyncio.Future[int], float]] = deque()
        self._late: asyncio.TimerHandle | None = None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock = ours
        out_r, out_w = os.pipe() if on_output is not None else (-1, -1)
        err_r, err_w = os.pipe() if on_output is not None else (-1, -1)
        self._sspec = _zygote_spec(spec, env, command, theirs.fileno(), out_w, err_w)
        self._theirs = [theirs.detach(), out_w, err_w]  # closed once it has started
        self._starting: asyncio.Future[int] | None = None
        self._waiting: asyncio.Future[None] | None = None  # ready_soon's
        self.root_pid = 0  # the root zygote that forked it (0: exec'd)
        self._closing = False  # closed, but answers are still due (close)
        try:
            if root is not None:
                with contextlib.suppress(Unavailable):  # else exec'd, below
                    self._starting = root.request(self._sspec, command)
                    self.root_pid = root.pid
                    self._starting.add_done_callback(self._forked)
            if self._starting is None:
                self._began(spawn(self._sspec))
        except SpawnError:
            ours.close()
            self._close_theirs()
            for fd in (out_r, err_r):
                if fd >= 0:
                    os.close(fd)
            raise
        # Only a subreaper adopts the workers the zygote's intermediates leave behind.
        if not reaper.active():
            reaper.become_subreaper(kill_orphans=False)
        if on_output is not None:
            on_output(out_r, err_r)

    def _close_theirs(self) -> None:
        for fd in self._theirs:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._theirs = []

    def _began(self, pid: int) -> None:
        self.pid = pid
        self._close_theirs()
        self._watcher = ExitWatcher(asyncio.get_running_loop(), pid, self._exited)

    def _forked(self, starting: asyncio.Future[int]) -> None:
        """The root zygote answered: the pid, or Unavailable (then it is exec'd)."""
        self._starting = None
        exc = starting.exception()
        if exc is not None and self.broken is not None:  # closed meanwhile: not wanted
            self._close_theirs()
            self._sock.close()
            return
        try:
            pid = starting.result() if exc is None else spawn(self._sspec)
        except SpawnError as err:
            self._close_theirs()
            self.broken = f"could not start ({err})"
            self._sock.close()
            self._on_exit(self)
            return
        self._began(pid)
        if self.broken is not None:  # closed while it was being forked
            signal_group(pid, signal.SIGKILL)

    def _exited(self, code: int | None, sig: str | None) -> None:
        self._watcher = None
        if self.broken is None:
            self.broken = f"exited ({sig or f'exit code {code}'})"
        self._fail_owed()
        self._sock.close()
        self._on_exit(self)

    def _wait(self, timeout: float) -> dict[str, Any]:
        if self.broken is not None and not self._closing:
            raise Unavailable(self.broken)
        if not _readable(self._sock, timeout):
            self._break(f"did not answer within {timeout:g} s")
        try:
            data = self._sock.recv(MAX_MESSAGE)
        except OSError as exc:
            self._break(f"its channel failed: {exc.strerror or exc}")
        if not data:
            self._break("exited")
        try:
            msg = json.loads(data)
        except ValueError:
            self._break("sent something that is not JSON")
        if not isinstance(msg, dict):
            self._break("sent something that is not a message")
        return msg

    def _break(self, why: str) -> None:
        self.broken = why
        self.close(now=True)
        raise Unavailable(why)

    def _fail_owed(self) -> None:
        """No more answers: of the forks still owed, those already answered get their
        pid (each names a worker that exists, which the app must know of); the rest
        fail (the worker is then exec'd)."""
        if self._owed:
            self._stop_listening()
        while self._owed:
            owed, grace = self._owed.popleft()
            msg = self._queued()
            if msg is not None and self._why_not(msg) is None and not owed.done():
                guardian.track(msg["pid"], grace)
                owed.set_result(msg["pid"])
            elif not owed.done():
                owed.set_exception(Unavailable(self.broken or "closed"))

    def _queued(self) -> Any:
        """A message already in the socket, without waiting (None: none, or not JSON)."""
        try:
            if not _readable(self._sock, 0):
                return None
            data = self._sock.recv(MAX_MESSAGE)
            return json.loads(data) if data else None
        except (OSError, ValueError):
            return None

    def _take_ready(self) -> None:
        """Read the ready message, which is there to read (raises Unavailable)."""
        msg = self._wait(0)
        if msg.get("t") != "ready":
            self._break(f"said {msg.get('t')!r} before it was ready")
        self.ready = True
        self.preloaded = int(msg.get("preloaded") or 0)
        failed = msg.get("failed")
        # Written by a process that ran the app's imports: text, cut short, made safe.
        self.failed = [
            [escape(str(part))[:300] for part in f[:2]]
            for f in (failed if isinstance(failed, list) else [])
            if isinstance(f, list) and len(f) == 2
        ]

    def poll_ready(self) -> bool:
        """Whether it is ready, without waiting (a message already there is read)."""
        if not self.ready and self.broken is None and self.pid and _readable(self._sock, 0):
            self._take_ready()
        return self.ready

    async def ready_soon(self, timeout: float = READY_TIMEOUT) -> None:
        """Wait for the ready message without blocking the event loop; a zygote that
        failed or took too long is left broken (Preload then goes without it). Any
        number may wait at once (a root zygote's apps)."""
        if self._waiting is None:
            self._waiting = asyncio.ensure_future(self._ready_soon(timeout))
        await asyncio.shield(self._waiting)

    async def _ready_soon(self, timeout: float) -> None:
        if self._starting is not None:  # being forked by a root zygote
            with contextlib.suppress(Exception):  # _forked says how it went
                await asyncio.shield(self._starting)  # _forked has run by then
        if self.ready or self.broken is not None:
            return
        loop = asyncio.get_running_loop()
        readable = loop.create_future()
        loop.add_reader(self._sock, lambda: readable.done() or readable.set_result(None))
        try:
            await asyncio.wait_for(readable, timeout)
        except TimeoutError:
            with contextlib.suppress(Unavailable):
                self._break(f"had not imported the app within {timeout:g} s")
            return
        finally:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(self._sock)
        with contextlib.suppress(Unavailable):
            self._take_ready()

    def spawn(self, sspec: SpawnSpec, command: list[str]) -> int:
        """Fork a worker as `sspec` says; returns its pid (our child by then).

        Raises SpawnError for what would fail an exec'd worker too (a missing cwd), and
        Unavailable for the zygote's own trouble, or while it is still importing.
        """
        self._send(sspec, command)
        if self._owed:  # the answers to earlier requests come first
            self._stop_listening()
            while self._owed:
                owed, grace = self._owed[0]
                msg = self._wait(REPLY_TIMEOUT)  # breaking fails every owed fork
                self._owed.popleft()
                self._answer(owed, grace, msg)
        return self._pid_in(self._wait(REPLY_TIMEOUT), sspec.orphan_grace)

    def request(self, sspec: SpawnSpec, command: list[str]) -> asyncio.Future[int]:
        """spawn, without waiting: the future gets the pid when the zygote answers, or
        Unavailable. Requests queue in the zygote, which forks them one after another
        while the supervisor goes on. Raises as spawn does for what fails at once."""
        self._send(sspec, command)
        loop = asyncio.get_running_loop()
        owed: asyncio.Future[int] = loop.create_future()
        if not self._owed:
            loop.add_reader(self._sock, self._on_answer)
            self._late = loop.call_later(REPLY_TIMEOUT, self._too_late)
        self._owed.append((owed, sspec.orphan_grace))
        return owed

    def _on_answer(self) -> None:
        try:
            msg = self._wait(0)
        except Unavailable:
            return  # _break failed every owed fork
        owed, grace = self._owed.popleft()
        if self._owed:  # the next answer has its own REPLY_TIMEOUT; the reader stays
            if self._late is not None:
                self._late.cancel()
            self._late = asyncio.get_running_loop().call_later(REPLY_TIMEOUT, self._too_late)
        else:
            self._stop_listening()
        self._answer(owed, grace, msg)
        if self._closing and not self._owed:
            self.close()

    def _stop_listening(self) -> None:
        if self._late is not None:
            self._late.cancel()
            self._late = None
        with contextlib.suppress(ValueError, OSError, RuntimeError):
            asyncio.get_running_loop().remove_reader(self._sock)

    def _answer(self, owed: asyncio.Future[int], grace: float, msg: dict[str, Any]) -> None:
        try:
            pid = self._pid_in(msg, grace)
        except Unavailable as exc:
            if not owed.done():
                owed.set_exception(exc)
            return
        if not owed.done():
            owed.set_result(pid)

    def _too_late(self) -> None:
        self._late = None
        with contextlib.suppress(Unavailable):
            self._break(f"did not answer within {REPLY_TIMEOUT:g} s")

    def _send(self, sspec: SpawnSpec, command: list[str]) -> None:
        if self.broken is not None:
            raise Unavailable(self.broken)
        if not self.poll_ready():
            raise Unavailable("still importing")
        if not os.path.isdir(sspec.cwd):  # what the worker's chdir would fail on
            raise SpawnError(missing_cwd(sspec.cwd))
        null = os.open(os.devnull, os.O_RDWR) if None in (sspec.stdout, sspec.stderr) else -1
        try:
            out = sspec.stdout if sspec.stdout is not None else null
            err = sspec.stderr if sspec.stderr is not None else null
            targets = list(sspec.fds)
            request = {
                "t": "spawn",
                "command": command,
                "cwd": sspec.cwd,
                "env": dict(sspec.env),
                "fds": targets,
                "listen_pid": sspec.listen_pid,
                "orphan_grace": sspec.orphan_grace,
                "cgroup": sspec.cgroup,
                "parent": os.getpid(),
            }
            fds = array.array("i", [out, err, *(sspec.fds[t] for t in targets)])
            try:
                self._sock.sendmsg(
                    [json.dumps(request).encode()],
                    [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)],
                )
            except OSError as exc:
                self._break(f"cannot send to it: {exc.strerror or exc}")
        finally:
            if null >= 0:
                os.close(null)

    def _pid_in(self, msg: dict[str, Any], orphan_grace: float) -> int:
        """The pid a `spawned` answer names, once it is known to be our child (and the
        guardian knows it)."""
        why = self._why_not(msg)
        if why is not None:
            self._break(why)
        guardian.track(msg["pid"], orphan_grace)
        return msg["pid"]

    @staticmethod
    def _why_not(msg: Any) -> str | None:
        """Why an answer names no worker of ours (None: it names one)."""
        if not isinstance(msg, dict):
            return "sent something that is not a message"
        pid = msg.get("pid")
        if msg.get("t") != "spawned" or not isinstance(pid, int) or pid <= 0:
            return escape(str(msg.get("error") or "could not fork"))[:300]
        # The zygote runs the app's code: the pid it names must be a child of ours, or
        # the supervisor would watch and later signal a process it never started.
        if _parent_of(pid) != os.getpid():
            return f"named process {pid}, which is not a child of the supervisor"
        return None

    def close(self, *, now: bool = False) -> None:
        """Stop the zygote (its workers are the supervisor's children, and stay). With
        forks asked for and not answered yet, not before their answers are in (unless
        `now`): each names a worker the app must know of, if only to stop it."""
        if self.broken is None:
            self.broken = "replaced"
        self._closing = bool(self._owed) and not now
        if self._closing:
            return
        self._fail_owed()
        if self.pid:
            signal_group(self.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)


def _readable(sock: socket.socket, timeout: float) -> bool:
    """poll(), not select(): a supervisor of thousands of workers has fds past 1024."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


def _parent_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return 0
    return int(data[data.rindex(b")") + 2 :].split()[1])


class Preload:
    """An app's zygote over time: started on demand, replaced with new code, given up
    (until the next new code) when it fails, which the supervisor's notices say."""

    def __init__(self, spec: AppSpec, notice: Callable[[str, str], None]) -> None:
        self.spec = spec
        self.notice = notice
        self.zygote: Zygote | None = None
        self.gave_up: str | None = None

    def info(self) -> dict[str, Any]:
        """The snapshot's view (vocab.snapshot.PreloadInfo)."""
        z = self.zygote if self.pid else None
        return {
            "pid": z.pid if z is not None else None,
            "root": z.root_pid if z is not None and z.root_pid else None,
            "modules": z.preloaded if z is not None else 0,
            "gave_up": self.gave_up,
        }

    @property
    def pid(self) -> int:
        return self.zygote.pid if self.zygote is not None and self.zygote.broken is None else 0

    def _current(
        self,
        env: Mapping[str, str],
        attach: Callable[[int, int], Any],
        root: Zygote | None = None,
    ) -> Zygote | None:
        z = self.zygote
        if z is not None and z.broken is None:
            return z
        if self.gave_up is not None:
            return None
        try:
            command = command_of(self.spec, self.spec.argv())
            root = root or ROOTS.get(self.spec, env)
            z = Zygote(self.spec, env, command, attach, self._exited, root)
        except SpawnError as exc:
            self._give_up(f"could not start ({exc})")
            return None
        self.zygote = z
        return z

    def _exited(self, z: Zygote) -> None:
        if z is self.zygote and z.broken != "replaced":
            self._give_up(str(z.broken))

    def _give_up(self, why: str) -> None:
        self.gave_up = why
        if self.zygote is not None:
            self.zygote.close()
            self.zygote = None
        self.notice(
            "warning",
            f"{self.spec.name}: the preload zygote {why}; workers start without it "
            "until the next start, restart or reload",
        )

    def _report(self, z: Zygote) -> None:
        for module, why in z.failed[:3]:
            self.notice("warning", f"{self.spec.name}: preload could not import {module}: {why}")
        z.failed = []

    def new_code(self) -> None:
        """The next worker runs new code: the zygote that imported the old one goes."""
        if self.zygote is not None:
            self.zygote.close()
            self.zygote = None
        self.gave_up = None

    async def warm(self, env: dict[str, str], attach: Callable[[int, int], Any]) -> None:
        """Start the zygote if there is none, and wait until it has imported the app."""
        root = await ROOTS.ready(self.spec, env) if self.pid == 0 else None
        z = self._current(env, attach, root)
        if z is not None:
            await z.ready_soon()
            if z.broken is not None and z is self.zygote:
                self._give_up(z.broken)
            else:
                self._report(z)

    def spawn(
        self,
        sspec: SpawnSpec,
        argv: list[str],
        attach: Callable[[int, int], Any],
    ) -> int | None:
        """A worker forked by the zygote (its pid), or None: exec it the ordinary way.
        Raises SpawnError for what would fail an exec'd worker too."""
        z = self._current(sspec.env, attach)
        if z is None:
            return None
        try:
            pid = z.spawn(sspec, command_of(self.spec, argv))
        except Unavailable as exc:
            self._unavailable(z, exc)
            return None
        self._report(z)
        return pid

    def ready(self) -> bool:
        """Whether a zygote has imported the app and can fork now (request may be used)."""
        z = self.zygote
        return z is not None and z.broken is None and z.poll_ready()

    def request(self, sspec: SpawnSpec, argv: list[str]) -> asyncio.Future[int | None]:
        """spawn, without waiting for the fork: the future gets the pid, or None when
        the worker must be exec'd. Raises SpawnError as spawn does."""
        z = self.zygote
        loop = asyncio.get_running_loop()
        done: asyncio.Future[int | None] = loop.create_future()
        try:
            if z is None:
                raise Unavailable("no zygote")
            asked = z.request(sspec, command_of(self.spec, argv))
        except Unavailable as exc:
            self._unavailable(z, exc)
            done.set_result(None)
            return done

        def answered(asked: asyncio.Future[int]) -> None:
            exc = asked.exception()
            if exc is not None:
                self._unavailable(z, exc)
            else:
                self._report(z)
            done.set_result(None if exc is not None else asked.result())

        asked.add_done_callback(answered)
        return done

    def _unavailable(self, z: Zygote | None, exc: BaseException) -> None:
        if z is not None and z.broken is not None and z is self.zygote:
            self._give_up(str(exc))

    def close(self) -> None:
        self.new_code()


# What a Python interpreter reads from its environment as it starts (sys.path, hashing,
# stdio, locale, the user site), and so what apps must agree on to share a root zygote;
# and CLUSTERUI_HOME, which says whose processes they are (/proc/PID/environ).
_START_UP_VARS = ("PATH", "HOME", "LANG", "LANGUAGE", "TZ", "CLUSTERUI_HOME")
_START_UP_PREFIXES = ("PYTHON", "LC_")


class Roots:
    """The root zygotes (clusterui.zygote.server, ROOT): one per interpreter, its
    arguments, working directory and start-up environment, each forking the app
    zygotes of every `preload` app that agrees on those. They import no app's code, so
    new code still means a new app zygote; a root that fails is replaced on next use,
    and meanwhile app zygotes are exec'd as before."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[Any, ...], Zygote] = {}

    @staticmethod
    def _key(spec: AppSpec, env: Mapping[str, str]) -> tuple[Any, ...]:
        interpreter = tuple(spec.argv()[: 1 + len(spec.interpreter_args)])
        start_up = tuple(
            sorted(
                (k, v)
                for k, v in env.items()
                if k in _START_UP_VARS or k.startswith(_START_UP_PREFIXES)
            )
        )
        return interpreter, spec.cwd, start_up

    def get(self, spec: AppSpec, env: Mapping[str, str]) -> Zygote | None:
        """The ready root for this app, if there is one."""
        root = self._by_key.get(self._key(spec, env))
        return root if root is not None and root.broken is None and root.poll_ready() else None

    async def ready(self, spec: AppSpec, env: Mapping[str, str]) -> Zygote | None:
        """The root for this app, started if there is none, once it is ready (None if
        it cannot be)."""
        key = self._key(spec, env)
        root = self._by_key.get(key)
        if root is None or root.broken is not None:
            try:
                root = Zygote(spec, dict(key[2]), [server.ROOT], None, self._exited)
            except SpawnError:
                return None
            self._by_key[key] = root
        await root.ready_soon()
        return root if root.broken is None else None

    def _exited(self, root: Zygote) -> None:
        for key, known in list(self._by_key.items()):
            if known is root:
                del self._by_key[key]

    def close(self) -> None:
        """Stop every root (the app zygotes and workers they forked stay)."""
        for root in self._by_key.values():
            root.close()
        self._by_key.clear()


ROOTS = Roots()
