"""Spawn, signal and reap one OS process (a worker or a dispatcher).

We fork/exec ourselves rather than use subprocess because the child must do a few
things between fork and exec that subprocess cannot express together: its own
session (so a stop signal reaches the whole group), PR_SET_PDEATHSIG (so a killed
supervisor takes it along), arbitrary fd placement (fd 3 for shared listeners), and
LISTEN_PID set to its *own* pid (systemd's socket-activation convention).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from clusterui.core import cgroups, guardian
from clusterui.vocab.exits import Exit

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


class SpawnError(Exception):
    """The program could not be started (not found, not executable, bad cwd)."""


def set_pdeathsig(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send `sig` to this process when its parent dies."""
    _libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)


@dataclass
class SpawnSpec:
    argv: list[str]
    cwd: str
    env: Mapping[str, str]
    stdout: int | None = None  # fd to dup onto 1 (None: /dev/null)
    stderr: int | None = None  # fd to dup onto 2
    # Extra fds for the child: {fd number in the child: fd in the parent}.
    fds: dict[int, int] = field(default_factory=dict)
    # systemd socket activation: set LISTEN_PID to the child's own pid.
    listen_pid: bool = False
    # Seconds the process may outlive a supervisor that died (0: killed with it). A
    # worker on a socket handed in from outside finishes its connections meanwhile.
    orphan_grace: float = 0.0
    # A cgroup v2 folder to enter before exec (see cgroups.py); None: none.
    cgroup: str | None = None


def spawn(spec: SpawnSpec) -> int:
    """Fork and exec; returns the pid, or raises SpawnError once exec has failed."""
    if not spec.argv:
        raise SpawnError("empty command")
    parent_pid = os.getpid()
    env = dict(spec.env)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # child: only fd juggling and exec from here on
        try:
            os.close(err_r)
            _child_setup(spec, parent_pid, env)
            os.execvpe(spec.argv[0], spec.argv, env)
        except BaseException as exc:  # report to the parent, never return into its code
            msg = _describe_exec_error(exc, spec)
            try:
                os.write(err_w, msg.encode()[:4000])
            finally:
                os._exit(Exit.EXEC_FAILED)
    os.close(err_w)
    try:
        chunks = []
        while chunk := os.read(err_r, 4096):
            chunks.append(chunk)
    finally:
        os.close(err_r)
    if chunks:
        os.waitpid(pid, 0)
        raise SpawnError(b"".join(chunks).decode(errors="replace"))
    guardian.track(pid, spec.orphan_grace)
    return pid


def _child_setup(spec: SpawnSpec, parent_pid: int, env: dict[str, str]) -> None:
    os.setsid()
    if spec.cgroup is not None:
        with contextlib.suppress(OSError):  # not fatal: the subreaper path still applies
            cgroups.enter(spec.cgroup)
    if not spec.orphan_grace:
        set_pdeathsig(signal.SIGKILL)  # else the guardian kills it once the grace is over
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(Exit.FAILED)
    # Python ignores SIGPIPE and the asyncio loop may block signals; give the program
    # the defaults it would get from a shell.
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    devnull = os.open(os.devnull, os.O_RDWR)
    # Move sources out of the way first so a target number cannot clobber a source.
    moved = {target: os.dup(src) for target, src in spec.fds.items()}
    out = os.dup(spec.stdout) if spec.stdout is not None else devnull
    err = os.dup(spec.stderr) if spec.stderr is not None else devnull
    os.dup2(devnull, 0)
    os.dup2(out, 1)
    os.dup2(err, 2)
    for target, src in moved.items():
        os.dup2(src, target)  # dup2 clears FD_CLOEXEC on the target: it survives exec
    os.chdir(spec.cwd)
    if spec.listen_pid:
        env["LISTEN_PID"] = str(os.getpid())


def missing_cwd(cwd: str) -> str:
    return f"working directory {cwd} does not exist"


def _describe_exec_error(exc: BaseException, spec: SpawnSpec) -> str:
    if isinstance(exc, FileNotFoundError) and exc.filename == spec.cwd:
        return missing_cwd(spec.cwd)
    if isinstance(exc, FileNotFoundError):
        return f"{spec.argv[0]}: command not found"
    if isinstance(exc, PermissionError):
        return f"{spec.argv[0]}: permission denied (not executable?)"
    if isinstance(exc, OSError) and exc.errno == errno.ENOEXEC:
        return f"{spec.argv[0]}: not an executable format (set 'interpreter')"
    return f"{spec.argv[0]}: {exc}"


def signal_group(pid: int, sig: int) -> bool:
    """Signal the process group led by pid; False if it is already gone."""
    try:
        os.killpg(pid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return False


def signal_process(pid: int, sig: int) -> bool:
    """Signal the process itself (not its group); False if it is already gone.

    Safe from pid reuse: pid is our child, and only our ExitWatcher reaps it, on this
    same event loop, so until then the pid cannot name another process.
    """
    try:
        os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _remove_when_empty(loop, path: str, tries: int) -> None:
    """rmdir a killed worker's cgroup once the kernel has reaped what was in it."""
    if not cgroups.CgroupTree.remove(path) and tries > 0:
        loop.call_later(0.1, _remove_when_empty, loop, path, tries - 1)


def decode_status(status: int) -> tuple[int | None, str | None]:
    """waitpid status → (exit code, signal name)."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            return None, signal.Signals(sig).name
        except ValueError:
            return None, f"signal {sig}"
    return os.waitstatus_to_exitcode(status), None


class ExitWatcher:
    """Calls back once a child exits, via a pidfd on the event loop (no SIGCHLD games).

    On exit it also SIGKILLs the rest of the child's process group.
    """

    def __init__(
        self,
        loop,
        pid: int,
        callback: Callable[[int | None, str | None], None],
        cgroup: str | None = None,
    ):
        self._loop = loop
        self._pid = pid
        self._callback = callback
        self._cgroup = cgroup
        self._fd = os.pidfd_open(pid)
        loop.add_reader(self._fd, self._on_ready)

    def _on_ready(self) -> None:
        try:
            wpid, status = os.waitpid(self._pid, os.WNOHANG)
        except ChildProcessError:
            wpid, status = self._pid, 0
        if wpid == 0:
            return
        self._loop.remove_reader(self._fd)
        os.close(self._fd)
        self._fd = -1
        # Whatever the process left in its group (grandchildren) goes with it: no orphans.
        signal_group(self._pid, signal.SIGKILL)
        if self._cgroup is not None:
            # And what left the group (setsid) but cannot leave the cgroup.
            cgroups.CgroupTree.kill(self._cgroup)
            _remove_when_empty(self._loop, self._cgroup, 50)
        guardian.untrack(self._pid)
        self._callback(*decode_status(status))

    def close(self) -> None:
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
