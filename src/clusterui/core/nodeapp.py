"""Unmodified Node apps in cluster mode: which apps they are, and how their workers start.

A Node worker of a round-robin (or least-connections) app gets a preload
(`clusterui/nodejs/preload.cjs`, `node --require`) and Node's own IPC channel
(`NODE_CHANNEL_FD`, a SOCK_STREAM socket pair, newline-delimited JSON). The preload
turns the app's `server.listen()` into a registration with the dispatcher, which hands
accepted connections over that channel as Node's `NODE_HANDLE` messages; see the
README ("The Node channel") for the wire format. This module only decides and
prepares; the dispatcher speaks the framing (`clusterui.dispatch.node`).
"""

from __future__ import annotations

import os
import signal
from importlib import resources

from clusterui.core.spec import AppSpec, Listen
from clusterui.dispatch.protocol import MODES

# What PM2 counts as a Node script (with its interpreter) for its cluster-mode inference.
NODE_EXTENSIONS = (".js", ".cjs", ".mjs", ".ts", ".cts", ".mts")
# Interpreters that are Node, or run the script inside Node (their node flags differ,
# so the preload goes through NODE_OPTIONS for them).
NODE_BINARIES = ("node", "nodejs")
NODE_WRAPPERS = ("ts-node", "tsx", "ts-node-esm")


def handoff(mode: str) -> bool:
    """Whether a dispatch mode hands connections over a channel (where the preload works)."""
    m = MODES.get(mode)
    return m is not None and m.handoff


def preload_path() -> str:
    """The preload shipped inside the package (a real file: editable or wheel install)."""
    return str(resources.files("clusterui").joinpath("nodejs", "preload.cjs"))


def _interpreter_name(interpreter: str | None) -> str:
    return os.path.basename(interpreter or "")


def is_node_script(script: str, interpreter: str | None) -> bool:
    """Whether PM2 would treat this as a Node app (for cluster-mode inference): run by
    node (or ts-node, tsx), or a .js/.cjs/.mjs file (TypeScript needs its interpreter)."""
    name = _interpreter_name(interpreter)
    if name in NODE_BINARIES or name in NODE_WRAPPERS:
        return script.lower().endswith(NODE_EXTENSIONS) or name in NODE_BINARIES
    return interpreter is None and script.lower().endswith(NODE_EXTENSIONS[:3])


def uses_node_channel(spec: AppSpec) -> bool:
    """Whether this app's workers get the preload and Node's IPC channel."""
    return (
        spec.exec_mode == "cluster"
        and handoff(spec.dispatch)
        and is_node_script(spec.script, spec.interpreter)
        and spec.interpreter is not None
    )


def learns_port(spec: AppSpec) -> bool:
    """A Node cluster app with no `listen`: the first listen() of a worker gives the port."""
    return spec.listen is None and uses_node_channel(spec)


def with_preload(spec: AppSpec, argv: list[str]) -> list[str]:
    """The worker's command line: the preload goes first, before the user's node_args
    (argv is spec.argv(), expanded; argv[0] is the interpreter)."""
    if _interpreter_name(spec.interpreter) in NODE_BINARIES:
        return [argv[0], "--require", preload_path(), *argv[1:]]
    return argv  # ts-node, tsx: through NODE_OPTIONS (env below)


def env(spec: AppSpec, channel_fd: int, base: dict[str, str]) -> dict[str, str]:
    """What a Node worker finds in its environment, on top of `base`."""
    out = {
        "NODE_CHANNEL_FD": str(channel_fd),
        "NODE_CHANNEL_SERIALIZATION_MODE": "json",
        "CLUSTERUI_NODE": "1",
        "CLUSTERUI_WAIT_READY": "1" if spec.wait_ready else "0",
        "CLUSTERUI_SHUTDOWN_WITH_MESSAGE": "1" if spec.shutdown_with_message else "0",
        "CLUSTERUI_KILL_SIGNAL": signal.Signals(spec.kill_signal).name,
        # Keep-alive connections idle this long during a drain are closed; well inside
        # kill_timeout, which ends the drain with SIGKILL.
        "CLUSTERUI_IDLE_GRACE_MS": str(max(50, min(1000, spec.kill_timeout // 3))),
    }
    if _interpreter_name(spec.interpreter) not in NODE_BINARIES:
        # ts-node, tsx: node options reach the Node process they start through here.
        opts = base.get("NODE_OPTIONS", "")
        out["NODE_OPTIONS"] = f"--require {preload_path()} {opts}".strip()
    return out


def listen_from_request(msg: dict[str, object], cwd: str) -> Listen | None:
    """What a worker's listen() asked for (as the dispatcher forwarded it), or None if bad."""
    path = msg.get("path")
    if isinstance(path, str) and path:
        if "\0" in path:
            return None
        return Listen("unix", path=os.path.join(cwd, path))
    port = msg.get("port")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        return None
    address = msg.get("address")
    host = address if isinstance(address, str) and address else "::"
    return Listen("tcp", host, port)
