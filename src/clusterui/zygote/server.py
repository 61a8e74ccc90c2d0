"""The zygote: one process per `preload: true` app that imports the app's modules once
and forks every worker from itself, so a worker starts without an interpreter's start
or its imports (gunicorn's --preload, for any Python script or hosted app).

It runs by path under the app's own interpreter and arguments, which may not be able
to import clusterui: the standard library only. The supervisor's side, and what each
message holds, is clusterui.core.zygote; docs/protocol.md describes the exchange.

Started with ROOT as its only argument, it is a root zygote instead: it imports nothing
of any app, and forks app zygotes, so apps that share an interpreter and its start-up
settings pay for one interpreter start and these imports between them, not one each.

Each worker (and app zygote) is forked twice (zygote → intermediate → worker) and the
intermediate exits at once, so the worker is re-parented to the supervisor, a child
subreaper: to the supervisor it is a child like any other (waitpid, pidfd, its own
session).
"""

from __future__ import annotations

import array
import ast
import contextlib
import ctypes
import fcntl
import gc
import json
import os
import pkgutil  # noqa: F401 - runpy imports it lazily: once here, not in every worker
import runpy
import signal
import socket
import sys
import time
import traceback

CONTROL_FD_ENV = "CLUSTERUI_ZYGOTE_FD"
ROOT = "--root"  # the only argument of a root zygote
# JSON {"modules": [...], "optional": [...]}: more to import; an optional one that fails
# is skipped without a word.
PRELOAD_ENV = "CLUSTERUI_ZYGOTE_PRELOAD"
MAX_MESSAGE = 4 * 1024 * 1024
MAX_FDS = 253  # SCM_MAX_FD
REPARENT_TIMEOUT = 2.0
_PR_SET_PDEATHSIG = 1
FAILED_START = 127  # clusterui.vocab.exits.Exit.EXEC_FAILED, the exec path's code
_LIBC = ctypes.CDLL(None)


def main_file(command: list[str]) -> str | None:
    """The file that runs as __main__ for `command` (a script, or `-m MODULE`)."""
    if command[0] != "-m":
        return command[0]
    import importlib.util

    try:
        found = importlib.util.find_spec(command[1])
        if found is not None and found.submodule_search_locations is not None:
            found = importlib.util.find_spec(command[1] + ".__main__")
    except (ImportError, ValueError):
        return None
    return found.origin if found is not None and found.has_location else None


def top_level_imports(path: str) -> list[tuple[str, list[str]]]:
    """(module, names) for each absolute import a file makes outside any def or class."""
    with open(path, "rb") as f:
        tree = ast.parse(f.read(), path)
    found: list[tuple[str, list[str]]] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                found.extend((alias.name, []) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level == 0 and node.module and node.module != "__future__":
                    found.append((node.module, [a.name for a in node.names if a.name != "*"]))
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                for part in ("body", "orelse", "finalbody"):
                    visit(getattr(node, part, []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(tree.body)
    return found


def preload(
    command: list[str], extra: list[str], optional: list[str] | None = None
) -> tuple[int, list[list[str]]]:
    """Import what `command` imports at its top level, `extra` and `optional`; returns
    (count imported, [[module, why]] for each that failed but an optional one: the
    worker will try it again)."""
    wanted: list[tuple[str, list[str]]] = []
    failed: list[list[str]] = []
    path = main_file(command)
    if path is not None:
        try:
            wanted = top_level_imports(path)
        except (OSError, SyntaxError, ValueError) as exc:
            failed.append([path, f"{type(exc).__name__}: {exc}"])
    imports = [(module, names, True) for module, names in wanted]
    imports += [(name, [], True) for name in extra]
    imports += [(name, [], False) for name in optional or []]
    done = 0
    for module, names, said in imports:
        try:
            __import__(module, fromlist=names)
            done += 1
        except BaseException as exc:  # noqa: BLE001 - an app's import may raise anything
            if isinstance(exc, KeyboardInterrupt):
                raise
            if said:
                failed.append([module, f"{type(exc).__name__}: {exc}"])
    return done, failed


def send(ctl: socket.socket, msg: dict) -> None:
    ctl.sendall(json.dumps(msg).encode())


def serve(ctl: socket.socket) -> dict | None:
    """Answer spawn requests until the supervisor hangs up (returns None); in a forked
    worker, return its request instead, with the setup done."""
    while True:
        try:
            data, fds = _recv(ctl)
        except InterruptedError:
            continue
        if not data:
            return None
        try:
            req = json.loads(data)
        except ValueError:
            _close_all(fds)
            continue
        job = _fork(ctl, req, fds)
        if job is not None:
            return job


def _recv(ctl: socket.socket) -> tuple[bytes, list[int]]:
    fds = array.array("i")
    data, anc, _flags, _addr = ctl.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
    for level, kind, cdata in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(cdata[: len(cdata) - (len(cdata) % fds.itemsize)])
    return data, list(fds)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _fork(ctl: socket.socket, req: dict, fds: list[int]) -> dict | None:
    """Fork a worker through an intermediate; answer with its pid once the intermediate
    is gone (so the supervisor has adopted it). The worker's own setup goes on meanwhile:
    if it fails, the worker says why on its stderr and exits with FAILED_START."""
    pid_r, pid_w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    middle = os.fork()
    if middle == 0:
        worker = -1
        try:
            os.close(pid_r)
            worker = os.fork()
            if worker == 0:
                os.close(pid_w)
                _become_worker(ctl, req, fds)
                return req
            os.write(pid_w, str(worker).encode())
        finally:
            if worker != 0:
                os._exit(0)
    os.close(pid_w)
    _close_all(fds)
    os.waitpid(middle, 0)
    with os.fdopen(pid_r, "rb") as f:
        text = f.read()
    if text:
        send(ctl, {"t": "spawned", "pid": int(text)})
    else:
        send(ctl, {"t": "failed", "error": "the zygote could not fork"})
    return None


def _become_worker(ctl: socket.socket, req: dict, fds: list[int]) -> None:
    """What process.spawn does between fork and exec, for a worker that will not exec."""
    report = [fds[1] if len(fds) > 1 else 2]  # where a failure is told: its stderr
    try:
        ctl.detach()  # its fd is closed below with the rest; the object must not close it later
        _setup(req, fds, report)
    except BaseException as exc:  # noqa: BLE001 - said on its stderr, then exit as exec would
        try:
            why = f"{type(exc).__name__}: {exc}"  # a missing cwd is the supervisor's to say
            os.write(report[0], f"clusterui: failed to start: {why}\n".encode())
        finally:
            os._exit(FAILED_START)


def _setup(req: dict, fds: list[int], report: list[int]) -> None:
    parent = req["parent"]
    deadline = time.monotonic() + REPARENT_TIMEOUT
    while os.getppid() != parent:  # until the intermediate is gone and we are the supervisor's
        if time.monotonic() > deadline:
            raise RuntimeError("the supervisor did not adopt the worker (is it a subreaper?)")
        time.sleep(0.0002)
    os.setsid()
    if req.get("cgroup"):
        try:
            with open(os.path.join(req["cgroup"], "cgroup.procs"), "w") as f:
                f.write("0")
        except OSError:
            pass  # as in process.spawn: the subreaper still applies
    if not req.get("orphan_grace"):
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            raise RuntimeError("the supervisor exited")
    # What a fresh interpreter starts with.
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_IGN)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    # fds arrive as [stdout, stderr, *the extra fds in req["fds"] order]. Every source
    # moves above the highest target first, so placing one never clobbers another.
    targets = [int(t) for t in req["fds"]]
    floor = max([*targets, 2]) + 1

    def lift(fd: int) -> int:
        return fcntl.fcntl(fd, fcntl.F_DUPFD, floor)

    devnull = os.open(os.devnull, os.O_RDWR)
    out, err, *extra = [lift(fd) for fd in fds]
    null = lift(devnull)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(err, 2)
    report[0] = 2
    for i, target in enumerate(targets):
        os.dup2(extra[i], target)
    keep = {0, 1, 2, *targets}
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            with contextlib.suppress(OSError):  # the listing's own fd
                os.close(fd)
    os.chdir(req["cwd"])
    env = req["env"]
    if req.get("listen_pid"):
        env["LISTEN_PID"] = str(os.getpid())
    os.environ.clear()
    os.environ.update(env)


def _app_excepthook(kind: type, value: BaseException, tb) -> None:  # noqa: ANN001
    """Python's own report of an uncaught exception, without the zygote's and runpy's
    frames above the app's: the traceback an exec'd worker would print."""
    ours = {os.path.realpath(__file__), os.path.realpath(runpy.__file__)}
    while tb is not None and (
        tb.tb_frame.f_code.co_filename.startswith("<frozen runpy")
        or os.path.realpath(tb.tb_frame.f_code.co_filename) in ours
    ):
        tb = tb.tb_next
    sys.__excepthook__(kind, value.with_traceback(tb), tb)  # it prints __traceback__


def run(command: list[str]) -> None:
    """Run the worker's command as `python COMMAND` would, in this process."""
    if command[0] == "-m":
        sys.argv = [command[1], *command[2:]]  # runpy sets argv[0] to the module's file
        sys.path[0] = os.getcwd()
        runpy.run_module(command[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(command)
        sys.path[0] = os.path.dirname(os.path.realpath(command[0]))
        runpy.run_path(command[0], run_name="__main__")


def _control() -> socket.socket:
    ctl = socket.socket(fileno=int(os.environ.pop(CONTROL_FD_ENV)))
    os.set_inheritable(ctl.fileno(), False)
    return ctl


def _root(ctl: socket.socket) -> bool:
    """Fork app zygotes until the supervisor hangs up (False); True in a forked one,
    set up as an exec'd app zygote would be (argv, fds, cwd, environment)."""
    gc.collect()
    gc.freeze()
    send(ctl, {"t": "ready", "preloaded": 0, "failed": []})
    job = serve(ctl)
    if job is None:
        return False
    sys.argv = [sys.argv[0], *job["command"]]
    return True


def main() -> None:
    ctl = _control()
    if sys.argv[1:] == [ROOT]:
        if not _root(ctl):
            return
        ctl = _control()  # the app zygote's own, which the supervisor sent with the job
    more = json.loads(os.environ.pop(PRELOAD_ENV, "{}"))
    command = sys.argv[1:]
    # Imports resolve as they will in the worker: its sys.path[0], not this file's folder.
    if command[0] == "-m":
        sys.path[0] = os.getcwd()
    else:
        sys.path[0] = os.path.dirname(os.path.realpath(command[0]))
    try:
        done, failed = preload(command, more.get("modules", []), more.get("optional", []))
    except BaseException:  # noqa: BLE001 - say what, then serve plain forks anyway
        done, failed = 0, [["preload", traceback.format_exc(limit=3)]]
    gc.collect()
    gc.freeze()  # what the preload made stays shared with every worker (copy-on-write)
    send(ctl, {"t": "ready", "preloaded": done, "failed": failed})
    job = serve(ctl)
    if job is None:
        return
    # What the zygote imported stays frozen: a collection never walks it, so the worker
    # does not copy the pages it shares with the zygote just to look at them.
    del ctl
    sys.excepthook = _app_excepthook
    run(job["command"])


if __name__ == "__main__":
    main()
