"""`clusterui`: the command line (the verbs are listed in the README)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from clusterui import __version__
from clusterui.cli import export_cmd, filecmds, foreground, render
from clusterui.cli.filecmds import caller_env
from clusterui.client import (
    CALL_TIMEOUT,
    Client,
    ClientError,
    ensure_supervisor,
    supervisor_pid,
)
from clusterui.core import config, formats, inherit
from clusterui.core.config import COMMAND_LINE
from clusterui.core.home import Home
from clusterui.vocab import events, signals
from clusterui.vocab.exits import Exit
from clusterui.vocab.safetext import escape
from clusterui.vocab.snapshot import ls_json

ALIASES = {
    "list": "ls",
    "log": "logs",
    "monit": "attach",
    "show": "describe",
    "kill": "down",
    "dump": "save",
    "sendSignal": "signal",  # PM2's spelling
}
VERBS = {
    "attach",
    "up",
    "ls",
    "start",
    "stop",
    "restart",
    "reload",
    "delete",
    "scale",
    "logs",
    "describe",
    "check",
    "down",
    "watch",
    "metrics",
    "env",
    "save",
    "resurrect",
    "startup",
    "unstartup",
    "export",
    "signal",
    "events",
}


class UsageError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="clusterui",
        description="Process manager with round-robin dispatch and a terminal dashboard.",
    )
    p.add_argument("--version", action="version", version=f"clusterui {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    # Taken out of argv before parsing (see parse), so it goes anywhere: before or after
    # the verb; listed here for --help.
    p.add_argument(
        "--timeout",
        type=_seconds,
        default=CALL_TIMEOUT,
        metavar="SECONDS",
        help=f"give up (exit 3) when the supervisor answers neither a request nor a ping "
        f"within SECONDS (default {CALL_TIMEOUT:g}; 0 waits for ever; a long operation it "
        f"is still working on is waited for); works with every verb",
    )
    sub = p.add_subparsers(dest="verb", metavar="VERB")
    _running_verbs(sub)
    _lifecycle_verbs(sub)
    _inspection_verbs(sub)
    _saved_state_verbs(sub)
    export_cmd.add_parser(sub)
    return p


def _file_opts(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "file",
        nargs="?",
        help="ecosystem file (default ./ecosystem.yaml, ecosystem.config.js, ...)",
    )
    sp.add_argument("--only", help="comma-separated app names to load")
    sp.add_argument("--env", help="use env_NAME from each app")


def _running_verbs(sub: Any) -> None:
    """dashboard, attach, up, ls."""
    sp = sub.add_parser("dashboard", help="the dashboard on FILE's apps (the default verb)")
    _file_opts(sp)
    sub.add_parser("attach", aliases=["monit"], help="dashboard for the running supervisor")
    sp = sub.add_parser("up", help="start FILE's apps headless (a changed file is applied)")
    _file_opts(sp)
    sp.add_argument("-d", "--detach", action="store_true", help="return once started")
    sp.add_argument("--prune", action="store_true", help="delete loaded apps the file dropped")
    sp.add_argument("--update-env", action="store_true", help="loaded apps take this shell's env")
    sp.add_argument("--raw", action="store_true", help="the workers' output without prefixes")
    sp = sub.add_parser("ls", aliases=["list"], help="list workers")
    sp.add_argument("--json", action="store_true")


def _lifecycle_verbs(sub: Any) -> None:
    """start, stop, restart, reload, delete, scale."""
    sp = sub.add_parser("start", help="start a script (PM2 style), a file's apps, or targets")
    sp.add_argument("what", nargs="*", metavar="SCRIPT|TARGET")
    sp.add_argument("--asgi", metavar="MODULE:ATTR", help="host an ASGI app (no SCRIPT)")
    sp.add_argument("--wsgi", metavar="MODULE:ATTR", help="host a WSGI app (no SCRIPT)")
    sp.add_argument("-i", "--instances", help="number of instances (0 or max = CPU count)")
    sp.add_argument("--name")
    sp.add_argument("--listen", help="cluster mode: port, host:port or unix:/path")
    sp.add_argument("--dispatch", help="round-robin, least-connections, shared or proxy")
    sp.add_argument("--watch", action="store_true")
    sp.add_argument("--interpreter")
    sp.add_argument(
        "--preload", action="store_true", help="fork Python workers from one import of the app"
    )
    sp.add_argument("--only", help="with FILE: comma-separated app names")
    sp.add_argument("--env", help="with FILE: use env_NAME from each app")
    for verb in ("stop", "restart", "reload", "delete"):
        sp = sub.add_parser(verb, help=f"{verb} apps or workers, or an ecosystem FILE's apps")
        sp.add_argument("targets", nargs="+", metavar="TARGET", help="also an ecosystem FILE")
        sp.add_argument("--only", metavar="A,B", help="with FILE: comma-separated app names")
        sp.add_argument("--env", metavar="NAME", help="with FILE: use env_NAME from each app")
        if verb == "reload":
            sp.add_argument(
                "--prune", action="store_true", help="with FILE: delete apps the file dropped"
            )
        if verb in ("restart", "reload"):
            sp.add_argument(
                "--update-env",
                action="store_true",
                help="the apps take this shell's environment (as PM2's --update-env)",
            )
    sp = sub.add_parser("scale", help="set the number of instances: N, +N or -N")
    sp.add_argument("app")
    sp.add_argument("count")
    sp = sub.add_parser(
        "signal",
        aliases=["sendSignal"],
        help=f"send a signal ({', '.join(signals.NAMES)}) to workers",
        description="The supervisor sends SIGNAL to each targeted worker's process (not "
        "its process group: the program decides what its children hear). A worker that "
        "INT, TERM or KILL ends is an unexpected exit: it restarts per its policy, as "
        "with PM2's sendSignal. `clusterui stop` is the way to stop one.",
    )
    sp.add_argument("sig", metavar="SIGNAL", type=_signal_name, help="e.g. USR1 or SIGUSR1")
    sp.add_argument("targets", nargs="+", metavar="TARGET", help="APP, APP:INSTANCE or id")
    sp.add_argument("--json", action="store_true")


def _inspection_verbs(sub: Any) -> None:
    """logs, describe, check, down, watch."""
    sp = sub.add_parser(
        "logs",
        aliases=["log"],
        help="recent log lines; -f to follow",
        usage="clusterui logs [-h] [TARGET] [--lines N] [-f] [--json] [--time] [--raw]",
    )
    sp.add_argument("target", nargs="?")
    sp.add_argument("--lines", type=int, default=15)
    sp.add_argument("-f", "--follow", action="store_true")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--time", action="store_true", help="prefix each line with its time")
    sp.add_argument(
        "--raw",
        action="store_true",
        help="print the worker's text as written, control characters and escapes included",
    )
    sp = sub.add_parser("describe", aliases=["show"], help="everything about one target")
    sp.add_argument("target")
    sp.add_argument("--json", action="store_true")
    sp = sub.add_parser(
        "events",
        help="an app's timeline: restarts and why, reloads, scales, watch, health, signals",
    )
    sp.add_argument("target", nargs="?", metavar="TARGET", help="APP, APP:INSTANCE or id")
    sp.add_argument("--lines", type=int, default=events.KEPT, help="the newest N events")
    sp.add_argument("--json", action="store_true")
    sp = sub.add_parser("check", help="validate an ecosystem file")
    _file_opts(sp)
    sub.add_parser("down", aliases=["kill"], help="stop every app and the supervisor")
    sp = sub.add_parser("watch", help="turn file-watch reload on or off for an app")
    sp.add_argument("app")
    sp.add_argument("state", nargs="?", choices=["on", "off", "toggle"], default="toggle")
    sp = sub.add_parser("metrics", help="serve Prometheus metrics (GET /metrics)")
    sp.add_argument("--listen", help="PORT or HOST:PORT (loopback unless --public)")
    sp.add_argument("--public", action="store_true", help="allow a non-loopback address")
    sp.add_argument("--off", action="store_true", help="stop serving")


def _saved_state_verbs(sub: Any) -> None:
    """save, resurrect, startup, unstartup, env."""
    sub.add_parser("save", aliases=["dump"], help="save the running apps to HOME/dump.yaml")
    sub.add_parser("resurrect", help="start the apps saved by `save` (not those running)")
    for verb, text in (
        ("startup", "a systemd unit that resurrects the saved apps at boot"),
        ("unstartup", "remove the unit `startup` wrote"),
    ):
        sp = sub.add_parser(verb, help=text)
        sp.add_argument("--user", action="store_true", help="a user unit (the default unless root)")
        sp.add_argument("--root", help=argparse.SUPPRESS)  # install under DIR (packaging, tests)
    sp = sub.add_parser("env", help="the environment a worker got: names (values with --values)")
    sp.add_argument("target")
    sp.add_argument("--values", action="store_true", help="print values too (may be secrets)")
    sp.add_argument("--json", action="store_true")


def _signal_name(text: str) -> str:
    name = signals.parse(text)
    if name is None:
        raise argparse.ArgumentTypeError(signals.problem(text))
    return name


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError("--timeout takes 0 or more seconds")
    return value


def _take_timeout(argv: list[str]) -> tuple[list[str], float]:
    """`--timeout S` / `--timeout=S` anywhere (every verb takes it): (the rest, S)."""
    rest: list[str] = []
    timeout = CALL_TIMEOUT
    it = iter(argv)
    for arg in it:
        if arg == "--timeout" or arg.startswith("--timeout="):
            value = arg.partition("=")[2] if "=" in arg else next(it, None)
            if value is None:
                raise UsageError("--timeout takes a number of seconds")
            try:
                timeout = _seconds(value)
            except argparse.ArgumentTypeError as exc:
                raise UsageError(str(exc)) from None
            continue
        rest.append(arg)
    return rest, timeout


def parse(argv: list[str]) -> argparse.Namespace:
    argv = list(argv)
    # `clusterui [FILE]`: anything that is not a verb (or an option) means the dashboard.
    head = next(
        (
            i
            for i, a in enumerate(argv)
            if not a.startswith("-") and (i == 0 or argv[i - 1] != "--timeout")
        ),
        None,
    )
    if head is None:
        if not any(a in ("-h", "--help", "--version") for a in argv):
            argv.insert(0, "dashboard")
    elif argv[head] not in VERBS and argv[head] not in ALIASES:
        argv.insert(head, "dashboard")
    if "--" in argv:  # `start SCRIPT -- ARGS`: everything after -- is the script's
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    else:
        extra = []
    argv, timeout = _take_timeout(argv)
    opts = build_parser().parse_args(argv)
    opts.timeout = timeout
    opts.verb = ALIASES.get(opts.verb, opts.verb)
    opts.extra = extra
    if extra and opts.verb != "start":
        raise UsageError("'--' arguments only go with `clusterui start SCRIPT`")
    return opts


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        opts = parse(argv)
        if opts.verb in ("dashboard", "attach"):
            return cmd_dashboard(opts, Home.from_env())
        return asyncio.run(run_command(opts))
    except UsageError as exc:
        print(f"clusterui: {exc}", file=sys.stderr)
        return Exit.USAGE
    except ClientError as exc:
        print(f"clusterui: {escape(exc.message, keep_tab=False)}", file=sys.stderr)
        return exc.code
    except config.ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return Exit.USAGE
    except KeyboardInterrupt:
        return Exit.INTERRUPTED
    except BrokenPipeError:
        # `clusterui ls --json | head`: the reader left; that is not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        if debug:
            raise
        print(f"clusterui: internal error: {exc!r} (run with --debug for details)", file=sys.stderr)
        return Exit.FAILED


async def run_command(opts: argparse.Namespace) -> int:
    """Run one verb (other than the dashboard) and return its exit code."""
    home = Home.from_env()
    verb = opts.verb
    if verb == "check":
        return cmd_check(opts)
    if verb == "export":
        return export_cmd.cmd_export(opts)
    if verb == "up":
        return await cmd_up(opts, home)
    if verb in ("startup", "unstartup"):
        return filecmds.startup_verb(opts, home)
    if verb in ("start", "resurrect") or (verb == "metrics" and opts.listen):
        ensure_supervisor(home)  # a script or a file starts one; targets need one anyway
    client = await Client.connect(home, timeout=opts.timeout)
    try:
        return await run_verb(client, opts, home)
    finally:
        await client.close()


def resolve_file(file: str | None) -> Path:
    if file:
        return Path(file)
    found = config.find_default_file(Path.cwd())
    return Path(found.name)  # as the user would write it, for messages


def cmd_check(opts: argparse.Namespace) -> int:
    path = resolve_file(opts.file)
    only = opts.only.split(",") if opts.only else None
    try:
        result = config.load_ecosystem(path, env_name=opts.env, only=only)
    except config.ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    for warning in result.warnings:
        print(str(warning), file=sys.stderr)
    names = ", ".join(a.name for a in result.apps)
    print(f"{path}: OK, {len(result.apps)} app(s): {names}")
    return 0


def load_args(opts: argparse.Namespace) -> tuple[str, list[str] | None]:
    path = resolve_file(opts.file)
    # Validate here too, so a broken file says FILE:LINE without starting a supervisor.
    only = [n.strip() for n in opts.only.split(",") if n.strip()] if opts.only else None
    config.load_ecosystem(path, env_name=opts.env, only=only, caller_env=dict(os.environ))
    # Its warnings come back from the supervisor's load; printed once, there.
    return str(path), only


def cmd_dashboard(opts: argparse.Namespace, home: Home) -> int:
    """Load FILE (for `clusterui [FILE]`), then run the dashboard in its own event loop."""
    try:
        from clusterui.dashboard import run_dashboard
    except ImportError:
        raise ClientError("the dashboard is not installed; use `clusterui up -d`") from None
    file = None
    started = False
    if opts.verb == "dashboard":
        file, only = load_args(opts)
        started = ensure_supervisor(home)

        async def load() -> None:
            client = await Client.connect(home, timeout=opts.timeout)
            try:
                report_load(
                    await client.load(file, env=opts.env, only=only, caller_env=caller_env()),
                    file,
                )
            finally:
                await client.close()

        asyncio.run(load())
    elif not home.socket.exists():
        raise ClientError(f"no supervisor is running (home {home.root})", Exit.NO_SUPERVISOR)
    shown = str(Path(file).absolute()) if file else None
    timeout = opts.timeout
    from clusterui.cli.prefs import PrefsFile

    return run_dashboard(
        lambda: Client.connect(home, timeout),
        file=shown,
        started_supervisor=started,
        prefs=PrefsFile(),
    )


report_load = filecmds.report


async def cmd_up(opts: argparse.Namespace, home: Home) -> int:
    file, only = load_args(opts)
    try:
        handed = inherit.from_systemd()  # systemd's LISTEN_FDS: the supervisor takes them
    except inherit.InheritError as exc:
        raise ClientError(str(exc), Exit.USAGE) from None
    try:
        if opts.detach:
            return await up_detached(opts, home, file, only, handed)

        async def start() -> foreground.Started:
            started = ensure_supervisor(home, handed)
            client = await Client.connect(home)
            try:
                await client.subscribe(state=False, logs=True)
                result = await up_load(client, opts, file, only)
            except BaseException:
                await client.close()
                raise
            return client, result, started

        # The handed-in sockets stay open here too: a new supervisor may need them.
        return await foreground.run(start, home, raw=opts.raw, restart=bool(handed))
    finally:
        for fd, _name in handed:
            os.close(fd)


async def up_load(
    client: Client, opts: argparse.Namespace, file: str, only: list[str] | None
) -> dict[str, Any]:
    result = await client.load(
        file,
        env=opts.env,
        only=only,
        caller_env=caller_env(),
        apply=True,
        prune=opts.prune,
        update_env=opts.update_env,
    )
    report_load(result, file)
    return result


async def up_detached(
    opts: argparse.Namespace,
    home: Home,
    file: str,
    only: list[str] | None,
    handed: list[tuple[int, str]],
) -> int:
    ensure_supervisor(home, handed)
    client = await Client.connect(home, timeout=opts.timeout)
    try:
        result = await up_load(client, opts, file, only)
        if result.get("message"):
            print(result["message"])
        wait = 30
        verdicts = await client.call(
            "wait_started",
            workers=result["workers"],
            timeout=wait,
            _timeout=max(opts.timeout, wait + 5) if opts.timeout else None,
        )
        state = await client.state(history=False)
        print(render.worker_table(state["workers"], render.use_colour()))
        failed = {k: v for k, v in verdicts.items() if v != "ok"}
        for wid, why in failed.items():
            row = next((w for w in state["workers"] if str(w["id"]) == wid), None)
            label = f"{row['app']}:{row['instance']}" if row else wid
            why = escape(why)
            if why.startswith(f"{label} "):  # a diagnosis names the worker itself
                print(f"clusterui: {why}", file=sys.stderr)
            else:
                print(f"clusterui: {label} failed to start: {why}", file=sys.stderr)
        return 1 if failed or result["errors"] or result.get("needs_restart") else 0
    finally:
        await client.close()


async def run_verb(client: Client, opts: argparse.Namespace, home: Home) -> int:
    verb = opts.verb
    if verb == "ls":
        return await cmd_ls(client, opts)
    if verb == "start":
        return await cmd_start(client, opts)
    if verb in ("stop", "restart", "reload", "delete") and (file := filecmds.file_target(opts)):
        return await filecmds.file_verb(client, verb, file, opts)
    if verb == "save":
        return await filecmds.save(client)
    if verb == "resurrect":
        return await filecmds.resurrect(client)
    if verb in ("restart", "reload"):
        update = caller_env() if opts.update_env else None
        result = await getattr(client, verb)(opts.targets, caller_env=update)
        report_load(result)
        print(result["message"])
        return 0
    if verb in ("stop", "delete"):
        result = await getattr(client, verb)(opts.targets)
        print(result["message"])
        return 0
    if verb == "env":
        return await cmd_env(client, opts)
    if verb == "scale":
        print((await client.scale(opts.app, opts.count))["message"])
        return 0
    if verb == "logs":
        return await cmd_logs(client, opts)
    if verb == "describe":
        return await cmd_describe(client, opts)
    if verb == "down":
        return await cmd_down(client, home)
    if verb == "watch":
        on = {"on": True, "off": False}.get(opts.state)
        print((await client.watch(opts.app, on))["message"])
        return 0
    if verb == "metrics":
        return await cmd_metrics(client, opts)
    if verb == "signal":
        result = await client.signal(opts.sig, opts.targets)
        print(json.dumps(result, indent=2) if opts.json else result["message"])
        return 0
    if verb == "events":
        return await cmd_events(client, opts)
    raise UsageError(f"unknown verb {verb}")


async def cmd_ls(client: Client, opts: argparse.Namespace) -> int:
    state = await client.state(history=False)
    if opts.json:
        print(json.dumps(ls_json(state["workers"]), indent=2))
    else:
        print(render.ls_text(state["workers"], render.use_colour()))
    return 0


async def cmd_describe(client: Client, opts: argparse.Namespace) -> int:
    info = await client.describe(opts.target)
    if opts.json:
        print(json.dumps(info, indent=2))
        return 0
    trees = None
    # An older supervisor refuses settle (usage), or has no tree operation.
    for settle in (render.DESCRIBE_SETTLE, 0.0):
        try:
            trees = await client.tree(opts.target, settle=settle)
            break
        except ClientError as exc:
            if exc.code == Exit.NO_SUPERVISOR:
                raise
            if exc.code != Exit.USAGE:
                break
    print(render.describe(info, trees))
    return 0


async def cmd_metrics(client: Client, opts: argparse.Namespace) -> int:
    if opts.off:
        result = await client.call("metrics", listen=None)
    elif opts.listen:
        result = await client.call("metrics", listen=opts.listen, public=opts.public)
    else:
        state = await client.state(history=False)
        address = state["supervisor"].get("metrics_listen")
        print(f"serving metrics on http://{address}/metrics" if address else "metrics are off")
        return 0
    if result.get("warning"):
        print(f"clusterui: warning: {result['warning']}", file=sys.stderr)
    print(result["message"])
    return 0


async def cmd_start(client: Client, opts: argparse.Namespace) -> int:
    what = opts.what
    hosted = [(k, v) for k, v in (("asgi", opts.asgi), ("wsgi", opts.wsgi)) if v is not None]
    if hosted:
        if len(hosted) > 1 or what:
            raise UsageError("start takes one of SCRIPT, --asgi MODULE:ATTR or --wsgi MODULE:ATTR")
        what = [""]
    elif not what:
        raise UsageError("start needs a SCRIPT, a file, TARGETs, or --asgi/--wsgi MODULE:ATTR")
    scripted = (
        any(v is not None for v in (opts.instances, opts.name, opts.listen, opts.dispatch))
        or opts.watch
        or opts.extra
        or opts.interpreter
        or opts.preload
        or hosted
    )
    first = Path(what[0])
    if len(what) == 1 and formats.is_ecosystem_file(what[0]) and not scripted:
        return await filecmds.start_file(client, what[0], opts)
    if (opts.only or opts.env) and not scripted:
        raise UsageError("--only and --env go with an ecosystem FILE")
    if hosted or (len(what) == 1 and (scripted or first.is_file())):
        mapping: dict[str, Any] = dict(hosted) if hosted else {"script": what[0]}
        mapping["args"] = opts.extra
        if opts.name:
            mapping["name"] = opts.name
        if opts.instances is not None:
            inst = opts.instances
            mapping["instances"] = int(inst) if inst.lstrip("-").isdigit() else inst
        if opts.listen:
            mapping["listen"] = opts.listen
            mapping["exec_mode"] = "cluster"
        if opts.dispatch:
            mapping["dispatch"] = opts.dispatch
        if opts.watch:
            mapping["watch"] = True
        if opts.interpreter:
            mapping["interpreter"] = opts.interpreter
        if opts.preload:
            mapping["preload"] = True
        base_dir = str(Path.cwd())
        # Checked here too (like a file), so a mistake is reported before anything starts;
        # the supervisor builds the app from the same keys with the same loader.
        spec = config.spec_from_mapping(mapping, base_dir=base_dir, source=COMMAND_LINE)
        mapping["name"] = spec.name
        result = await client.call(
            "start_script", spec=mapping, base_dir=base_dir, caller_env=caller_env()
        )
        report_load(result)
        print(result["message"])
        return 0
    if scripted:
        raise UsageError("options like -i/--name/--listen go with a single SCRIPT")
    result = await client.start(what)
    print(result["message"])
    return 0


async def cmd_events(client: Client, opts: argparse.Namespace) -> int:
    """`events [TARGET]`: oldest first, like logs; a worker's own events and its app's."""
    if opts.lines < 0:
        raise UsageError("--lines takes a number, 0 or more")
    app, instance = None, None
    if opts.target:
        info = await client.describe(opts.target)  # resolves APP, APP:N and ids alike
        app = info["app"]["name"]
        if opts.target != app and len(info["workers"]) == 1:
            instance = info["workers"][0]["instance"]
    rows = await client.app_events(app, instance, opts.lines)
    if opts.json:
        print(json.dumps(rows, indent=2))
    elif rows:
        width = max(len(render.event_who(e)) for e in rows)
        print("\n".join(render.event_line(e, width) for e in rows))
    else:
        print(f"no events yet for {escape(opts.target or 'any app')}")
    return 0


async def cmd_env(client: Client, opts: argparse.Namespace) -> int:
    rows = await client.call("env", target=opts.target, values=opts.values)
    if opts.json:
        print(json.dumps(rows, indent=2))
        return 0
    out = []
    for row in rows:
        pid = row["pid"] or "-"
        out.append(f"worker {row['id']}  {row['app']}:{row['instance']}  pid {pid}")
        if row["pid"] is None:
            out.append("  (not running)")
        width = max((len(n) for n in row["names"]), default=0)
        for name, layer in row["names"].items():
            shown = escape(name)
            if row["values"] is not None:
                out.append(f"  {shown}={escape(row['values'][name])}")
            else:
                out.append(f"  {shown.ljust(width)}  {layer}")
    print("\n".join(out))
    return 0


async def cmd_logs(client: Client, opts: argparse.Namespace) -> int:
    if opts.lines < 0:
        raise UsageError("--lines takes a number, 0 or more")
    colour = render.use_colour()
    if opts.follow:
        await client.subscribe(state=False, logs=True)
    lines = await client.logs(opts.target, opts.lines)
    ids = None
    if opts.target:
        ids = set(await client.call("resolve", targets=[opts.target]))

    def emit(line: dict[str, Any]) -> None:
        if opts.json:
            print(json.dumps(line))
        else:
            print(render.log_line(line, colour, with_time=opts.time, raw=opts.raw))

    for line in lines:
        emit(line)
    sys.stdout.flush()
    if not opts.follow:
        return 0
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)

    async def pump() -> None:
        async for event in client.events():
            if event["event"] != "logs":
                continue
            for line in event["lines"]:
                if ids is None or line["worker"] in ids:
                    emit(line)
            sys.stdout.flush()
        stop.set()

    task = asyncio.ensure_future(pump())
    await stop.wait()
    task.cancel()
    return 0


async def cmd_down(client: Client, home: Home) -> int:
    pid = supervisor_pid(home)
    await client.shutdown()
    # Wait until it is really gone, so its ports are free when we return.
    deadline = time.monotonic() + 30
    while pid and time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        await asyncio.sleep(0.05)
    print("stopped every app and the supervisor")
    return 0
