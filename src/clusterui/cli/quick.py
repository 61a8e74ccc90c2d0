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
the standard library's light modules and clusterui's text helpers. Even `socket`,
`json` and `typing` are too heavy here (with what they import, `re` and `enum`, they
cost about as much as the interpreter's own start-up): this module speaks to the
supervisor through `_socket` and `cli/quickjson.py`, and only `--json` output loads
`json`.
"""

from __future__ import annotations

import _socket
import os
import select
import sys

from clusterui.cli import quickjson
from clusterui.core.silence import CALL_TIMEOUT, read_pid, silent_reason
from clusterui.vocab.exits import ClientError, Exit
from clusterui.vocab.lsfields import LS_JSON_KEYS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

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
    """One blocking request/response connection to the supervisor (core/control.py).

    Like the full client, a request unanswered for CALL_TIMEOUT seconds is given up (exit
    3) unless the supervisor still answers a ping: then it is busy, not stuck.
    """

    def __init__(self, path: str, root: str, timeout: float | None = CALL_TIMEOUT) -> None:
        self.root = root
        self.timeout = timeout  # None waits for ever
        self.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
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
        self.buffer = b""
        self.next_id = 0

    def _line(self, timeout: float | None) -> bytes | None:
        """The next line from the supervisor; None when none came within `timeout`."""
        while b"\n" not in self.buffer:
            ready, _, _ = select.select([self.sock], [], [], timeout)
            if not ready:
                return None
            chunk = self.sock.recv(65536)
            if not chunk:
                raise OSError("closed")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    def _answer(self, rid: int, timeout: float | None) -> dict[str, Any] | None:
        while True:
            line = self._line(timeout)
            if line is None:
                return None
            msg = quickjson.loads(line)
            if msg.get("id") == rid and "event" not in msg:
                return msg

    def call(self, op: str, **args: Any) -> Any:
        self.next_id += 1
        rid = self.next_id
        request = {"id": rid, "op": op, "args": args}
        try:
            self.sock.sendall(quickjson.dumps(request).encode() + b"\n")
            msg = self._answer(rid, self.timeout)
            while msg is None:
                if op == "ping" or not self._answers_ping():
                    pid = read_pid(os.path.join(self.root, "supervisor.pid"))
                    reason = silent_reason(pid, op, self.timeout or 0)
                    raise ClientError(reason, Exit.NO_SUPERVISOR)
                msg = self._answer(rid, self.timeout)
        except (OSError, ValueError):
            raise ClientError("lost the connection to the supervisor", Exit.NO_SUPERVISOR) from None
        if not msg.get("ok"):
            raise ClientError(
                msg.get("error") or "the operation failed", int(msg.get("code", Exit.FAILED))
            )
        return msg.get("result")

    def _answers_ping(self) -> bool:
        """Ping on this connection; the answer to the request in flight may come first, so
        it is put back for the caller to read."""
        self.next_id += 1
        rid = self.next_id
        self.sock.sendall(quickjson.dumps({"id": rid, "op": "ping", "args": {}}).encode() + b"\n")
        kept: list[bytes] = []
        answered = False
        while not answered:
            line = self._line(self.timeout)
            if line is None:
                break
            msg = quickjson.loads(line)
            answered = msg.get("id") == rid and "event" not in msg
            if not answered:
                kept.append(line)
        self.buffer = b"".join(part + b"\n" for part in kept) + self.buffer
        return answered

    def close(self) -> None:
        self.sock.close()


def run(verb: str, opts: dict[str, Any], timeout: float | None = CALL_TIMEOUT) -> int:
    """Answer one quick verb; ClientError as the full command line raises it."""
    from clusterui.cli import render
    from clusterui.core.homeroot import SOCKET_NAME, home_root

    root = home_root()
    conn = Connection(os.path.join(root, SOCKET_NAME), root, timeout)
    try:
        if verb == "ls":
            try:
                table = conn.call("state", columns=list(LS_JSON_KEYS))
                columns = table["columns"]
                workers = [dict(zip(columns, row, strict=True)) for row in table["rows"]]
                if len(columns) < len(LS_JSON_KEYS):  # an older supervisor knows fewer
                    workers = [dict.fromkeys(LS_JSON_KEYS) | w for w in workers]
            except ClientError as exc:
                if exc.code != Exit.USAGE:
                    raise
                workers = conn.call("state", history=False)["workers"]  # an older supervisor
            if opts["json"]:
                import json

                from clusterui.vocab.snapshot import ls_json

                print(json.dumps(ls_json(workers), indent=2))
            else:
                print(render.ls_text(workers, render.use_colour()))
        elif verb == "scale":
            print(conn.call("scale", app=opts["app"], count=opts["count"])["message"])
        elif verb == "describe":
            info = conn.call("describe", target=opts["target"])
            if opts["json"]:
                import json

                print(json.dumps(info, indent=2))
            else:
                trees = None
                # An older supervisor refuses settle (usage), or has no tree operation.
                for args in ({"settle": render.DESCRIBE_SETTLE}, {}):
                    try:
                        trees = conn.call("tree", target=opts["target"], **args)
                        break
                    except ClientError as exc:
                        if exc.code == Exit.NO_SUPERVISOR:
                            raise
                        if exc.code != Exit.USAGE:
                            break
                print(render.describe(info, trees))
        else:
            lines = conn.call("logs", target=opts["target"], lines=opts["lines"])
            if opts["target"]:
                conn.call("resolve", targets=[opts["target"]])  # as cli/main.py: checks it
            colour = render.use_colour()
            if opts["json"]:
                import json

                out = [json.dumps(line) for line in lines]
            else:
                out = [render.log_line(line, colour, opts["time"]) for line in lines]
            if out:
                print("\n".join(out))
        sys.stdout.flush()
    finally:
        conn.close()
    return 0


def _take_timeout(argv: list[str]) -> tuple[list[str], float | None] | None:
    """argv without `--timeout S` (anywhere, as cli/main.py takes it) and the timeout:
    None for 0 (for ever); None as a whole when S is not a plain number of seconds."""
    rest: list[str] = []
    timeout: float | None = CALL_TIMEOUT
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--timeout" or arg.startswith("--timeout="):
            if arg == "--timeout":
                i += 1
                if i == len(argv):
                    return None
                value = argv[i]
            else:
                value = arg.partition("=")[2]
            try:
                seconds = float(value)
            except ValueError:
                return None
            if not seconds >= 0 or seconds == float("inf"):
                return None
            timeout = seconds or None
        else:
            rest.append(arg)
        i += 1
    return rest, timeout


def main(argv: list[str]) -> int | None:
    """The exit code of a quick verb, or None when the full command line is to answer."""
    picked = _take_timeout(argv)
    if picked is None:
        return None  # a --timeout the full parser must explain
    argv, timeout = picked
    parsed = parse(argv)
    if parsed is None:
        return None
    try:
        return run(*parsed, timeout=timeout)
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
