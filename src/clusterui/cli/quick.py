"""The quick verbs: `ls`, `logs` (without -f), `scale` and `describe`, answered at once.

Each is one or two requests to the supervisor and a few lines of text, so the cost
of a call is the interpreter's start-up plus what it imports. The full command line
(cli/main.py) imports argparse, asyncio, the ecosystem loader (YAML), the export
and start-up code; none of that is needed here. So the `clusterui` entry point
(cli/entry.py) tries this module first: it recognises only the plain forms of
these four verbs, talks to the supervisor over a blocking socket, and prints
exactly what cli/main.py prints for them. Anything else (an option it does not
know, `--help`, `--debug`, `-f`, a bad number) returns None, and the full command
line parses it and answers, errors included, as before.

tests/test_quick_cli.py checks which modules this path loads; keep its imports to
the standard library's light modules and clusterui's text helpers.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from typing import Any

from clusterui.vocab.exits import ClientError, Exit

QUICK_VERBS = {"ls": "ls", "list": "ls", "logs": "logs", "log": "logs"}
QUICK_VERBS |= {"scale": "scale", "describe": "describe", "show": "describe"}


def parse(argv: list[str]) -> tuple[str, dict[str, Any]] | None:
    """(verb, options) for a plain quick-verb command line, else None."""
    if not argv or argv[0] not in QUICK_VERBS:
        return None
    verb = QUICK_VERBS[argv[0]]
    flags = {a for a in argv[1:] if a.startswith("-")}
    words = [a for a in argv[1:] if not a.startswith("-")]
    if verb == "ls":
        if words or not flags <= {"--json"}:
            return None
        return verb, {"json": "--json" in flags}
    if verb == "scale":
        # A count like -1 starts with "-"; argparse has its own rules for that: leave it.
        if flags or len(words) != 2:
            return None
        return verb, {"app": words[0], "count": words[1]}
    if verb == "describe":
        if len(words) != 1 or not flags <= {"--json"}:
            return None
        return verb, {"target": words[0], "json": "--json" in flags}
    return _parse_logs(argv[1:])


def _parse_logs(args: list[str]) -> tuple[str, dict[str, Any]] | None:
    opts: dict[str, Any] = {"target": None, "lines": 15, "json": False, "time": False}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("--json", "--time"):
            opts[arg[2:]] = True
        elif arg == "--lines" or arg.startswith("--lines="):
            if arg == "--lines":
                i += 1
                if i == len(args):
                    return None
                value = args[i]
            else:
                value = arg.partition("=")[2]
            if not value.isdigit() or not value.isascii():
                return None  # negative, not a number: the full parser says why
            opts["lines"] = int(value)
        elif arg.startswith("-") or opts["target"] is not None:
            return None  # -f, --help, a second target, ...
        else:
            opts["target"] = arg
        i += 1
    return "logs", opts


class Connection:
    """One blocking request/response connection to the supervisor (core/control.py)."""

    def __init__(self, path: str, root: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # Blocking: a full listen backlog makes connect wait rather than fail.
            self.sock.settimeout(30.0)
            self.sock.connect(path)
            self.sock.settimeout(None)
        except (FileNotFoundError, ConnectionRefusedError):
            self.sock.close()
            raise ClientError(
                f"no supervisor is running (home {root})", Exit.NO_SUPERVISOR
            ) from None
        except OSError as exc:
            self.sock.close()
            raise ClientError(
                f"cannot reach the supervisor: {exc.strerror or exc}", Exit.NO_SUPERVISOR
            ) from None
        self.file = self.sock.makefile("rb")
        self.next_id = 0

    def call(self, op: str, **args: Any) -> Any:
        self.next_id += 1
        request = {"id": self.next_id, "op": op, "args": args}
        try:
            self.sock.sendall(json.dumps(request, separators=(",", ":")).encode() + b"\n")
            while True:
                line = self.file.readline()
                if not line:
                    raise OSError("closed")
                msg = json.loads(line)
                if msg.get("id") == self.next_id and "event" not in msg:
                    break
        except (OSError, ValueError):
            raise ClientError("lost the connection to the supervisor", Exit.NO_SUPERVISOR) from None
        if not msg.get("ok"):
            raise ClientError(
                msg.get("error") or "the operation failed", int(msg.get("code", Exit.FAILED))
            )
        return msg.get("result")

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def run(verb: str, opts: dict[str, Any]) -> int:
    """Answer one quick verb; ClientError as the full command line raises it."""
    from clusterui.cli import render
    from clusterui.core.homeroot import SOCKET_NAME, home_root

    root = home_root()
    conn = Connection(os.path.join(root, SOCKET_NAME), root)
    try:
        if verb == "ls":
            workers = conn.call("state", history=False)["workers"]
            if opts["json"]:
                from clusterui.vocab.snapshot import ls_json

                print(json.dumps(ls_json(workers), indent=2))
            else:
                print(render.worker_table(workers, render.use_colour()))
        elif verb == "scale":
            print(conn.call("scale", app=opts["app"], count=opts["count"])["message"])
        elif verb == "describe":
            info = conn.call("describe", target=opts["target"])
            print(json.dumps(info, indent=2) if opts["json"] else render.describe(info))
        else:
            lines = conn.call("logs", target=opts["target"], lines=opts["lines"])
            if opts["target"]:
                conn.call("resolve", targets=[opts["target"]])  # as cli/main.py: checks it
            colour = render.use_colour()
            out = [
                json.dumps(line) if opts["json"] else render.log_line(line, colour, opts["time"])
                for line in lines
            ]
            if out:
                print("\n".join(out))
        sys.stdout.flush()
    finally:
        conn.close()
    return 0


def main(argv: list[str]) -> int | None:
    """The exit code of a quick verb, or None when the full command line is to answer."""
    parsed = parse(argv)
    if parsed is None:
        return None
    try:
        return run(*parsed)
    except ClientError as exc:
        print(f"clusterui: {exc.message}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return Exit.INTERRUPTED
    except BrokenPipeError:
        # `clusterui ls --json | head`: the reader left; that is not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        print(f"clusterui: internal error: {exc!r} (run with --debug for details)", file=sys.stderr)
        return Exit.FAILED
