"""The quick verbs (cli/quick.py): which modules they load, that they say what the full
command line says, and that everything else still reaches the full command line.

About modules, not time: speed is measured by bench/cli.py.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from clusterui.cli import quick

# Heavy for a call that lists a table: none of these may load for a quick verb.
HEAVY = (
    "textual",
    "rich",
    "yaml",
    "psutil",
    "asyncio",
    "argparse",
    "dataclasses",
    "clusterui.cli.main",
    "clusterui.client",
    "clusterui.core.config",
    "clusterui.core.supervisor",
    "clusterui.dashboard",
    "clusterui.export",
    "clusterui.web",
)

# The standard library's own heavy corner: `re` (which `typing`, `json` and pip's
# entry-point wrapper import), `enum` (which `socket` imports). The plain text forms
# need none of them; the --json forms load `json`, and with it `re`.
HEAVY_STDLIB = ("re", "typing", "enum", "socket", "json")
# The installed command, next to this interpreter (the script in bin/, not a wrapper).
COMMAND = str(Path(sys.executable).with_name("clusterui"))

SLEEPER = "import time\nprint('hello', flush=True)\nwhile True:\n    time.sleep(1)\n"


def loaded(cu, *args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run the installed `clusterui ARGS` under `-X importtime`; its result and every
    module it loaded."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", COMMAND, *args],
        env=cu.env,
        cwd=cu.root,
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    modules = {
        line.rsplit("|", 1)[1].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "clusterui.cli.quick" in modules, proc.stderr[-2000:]
    return proc, modules


def heavy_in(modules: set[str], heavy: tuple[str, ...] = HEAVY) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in heavy))


def steady(text: str) -> list[str]:
    """describe's lines without the one that changes by the second (uptime, cpu, memory)."""
    return [line for line in text.splitlines() if "  uptime " not in line]


@pytest.fixture
def running(cu):
    cu.write(
        "eco.yaml",
        f"""
        apps:
          - name: sleeper
            script: sleeper.py
            interpreter: {sys.executable}
            instances: 2
        """,
    )
    cu.write("sleeper.py", SLEEPER)
    cu.run("up", "-d", "eco.yaml", check=True)
    return cu


def test_quick_verbs_load_no_heavy_module(running):
    for args in (
        ("ls",),
        ("list", "--json"),
        ("logs", "--lines", "5"),
        ("logs", "sleeper", "--lines=3", "--time", "--json"),
        ("describe", "sleeper"),
        ("show", "0", "--json"),
        ("scale", "sleeper", "2"),
    ):
        proc, modules = loaded(running, *args)
        assert proc.returncode == 0, (args, proc.stderr[-2000:])
        assert heavy_in(modules) == [], args
        if "--json" not in args:
            assert heavy_in(modules, HEAVY_STDLIB) == [], args
        else:  # the same check sees them where they are loaded
            assert {"json", "re"} <= set(heavy_in(modules, HEAVY_STDLIB)), args
    # The same check sees the heavy modules when the full command line runs:
    proc, modules = loaded(running, "ls", "--help")
    assert proc.returncode == 0
    assert {"argparse", "asyncio", "yaml", "clusterui.cli.main"} <= modules


def test_no_supervisor_is_said_the_same_way_without_heavy_modules(cu):
    proc, modules = loaded(cu, "ls")
    assert proc.returncode == 3
    assert proc.stderr.splitlines()[-1] == f"clusterui: no supervisor is running (home {cu.home})"
    assert heavy_in(modules) == []
    assert heavy_in(modules, HEAVY_STDLIB) == []


def test_quick_answers_match_the_full_command_line(running):
    full = [sys.executable, "-c", "import sys; from clusterui.cli.main import main; "]
    full[-1] += "sys.exit(main(sys.argv[1:]))"
    for args in (
        ("describe", "sleeper"),
        ("logs", "sleeper", "--lines", "4"),
        ("scale", "sleeper", "2"),
        ("describe", "nope"),
        ("logs", "nope"),
        ("scale", "nope", "3"),
    ):
        quick_run = running.run(*args)
        full_run = subprocess.run(
            [*full, *args], env=running.env, capture_output=True, text=True, timeout=30
        )
        assert quick_run.returncode == full_run.returncode, args
        assert steady(quick_run.stdout) == steady(full_run.stdout), args
        assert quick_run.stderr == full_run.stderr, args
    rows = running.ls()  # through the quick path
    assert [(r["app"], r["instance"]) for r in rows] == [("sleeper", 0), ("sleeper", 1)]


@pytest.mark.parametrize(
    "argv",
    [
        ["ls", "--help"],
        ["ls", "extra"],
        ["ls", "--js"],  # argparse's abbreviation: the full parser decides
        ["logs", "-f"],
        ["logs", "--follow", "app"],
        ["logs", "--lines", "-1"],
        ["logs", "--lines", "x"],
        ["logs", "--lines"],
        ["logs", "a", "b"],
        ["scale", "app"],
        ["scale", "app", "-1"],
        ["describe"],
        ["describe", "a", "--debug"],
        ["--debug", "ls"],
        ["up", "-d"],
        [],
    ],
)
def test_anything_else_goes_to_the_full_command_line(argv):
    assert quick.parse(argv) is None


def test_plain_forms_are_recognised():
    assert quick.parse(["list", "--json"]) == ("ls", {"json": True})
    assert quick.parse(["show", "web"]) == ("describe", {"target": "web", "json": False})
    assert quick.parse(["scale", "web", "+2"]) == ("scale", {"app": "web", "count": "+2"})
    assert quick.parse(["log", "--lines=0", "web", "--time"]) == (
        "logs",
        {"target": "web", "lines": 0, "json": False, "time": True},
    )


@contextlib.contextmanager
def old_supervisor(
    home: Path, answer: Callable[[str, dict], Any]
) -> Iterator[list[tuple[str, dict]]]:
    """A supervisor from before some argument, on home's socket, for one connection:
    answer(op, args) gives each result, or raises OldSupervisorRefuses for the error an
    old one gives to an argument it does not know (bad arguments, exit 2). Yields the
    (op, args) asked, in order."""
    asked: list[tuple[str, dict]] = []
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(home / "supervisor.sock"))
    server.listen()

    def serve() -> None:
        conn, _ = server.accept()
        with conn, conn.makefile("rwb") as f:
            for line in f:
                req = json.loads(line)
                asked.append((req["op"], req["args"]))
                try:
                    reply = {"id": req["id"], "ok": True, "result": answer(req["op"], req["args"])}
                except OldSupervisorRefuses:
                    reply = {"id": req["id"], "ok": False, "error": "bad arguments", "code": 2}
                f.write(json.dumps(reply).encode() + b"\n")
                f.flush()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield asked
    finally:
        server.close()
        thread.join(5)


class OldSupervisorRefuses(Exception):
    pass


def test_ls_against_a_supervisor_that_knows_no_columns(tmp_path, monkeypatch, capsys):
    """A supervisor from before `state`'s columns refuses them as bad arguments (exit 2):
    `ls` asks again for the whole snapshot, and a column it lacks prints as empty."""
    row = {k: None for k in ("id", "app", "instance", "pid", "status", "restarts")}
    row |= {"id": 0, "app": "old", "instance": 0, "status": "stopped", "restarts": 2}
    row |= {"uptime": 0, "cpu": 0.0, "memory": 0, "connections": 0, "active": 0}

    def answer(op: str, args: dict) -> Any:
        if "columns" in args:
            raise OldSupervisorRefuses
        return {"workers": [row]}

    monkeypatch.setenv("CLUSTERUI_HOME", str(tmp_path))
    monkeypatch.setenv("NO_COLOR", "1")
    with old_supervisor(tmp_path, answer) as asked:
        assert quick.main(["ls"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split() == ["0", "old", "0", "-", "stopped", "2", "-", "-", "-", "-"]
    assert [sorted(a) for _, a in asked] == [["columns"], ["history"]]


def test_describe_against_a_supervisor_that_knows_no_settle(running, monkeypatch, capsys):
    """A supervisor from before the tree op's `settle` refuses it (exit 2): `describe`
    asks for the tree again without it, and still lists the processes below."""
    info = json.loads(running.run("describe", "sleeper:0", "--json", check=True).stdout)
    wid = info["workers"][0]["id"]
    child = {"pid": 4242, "ppid": info["workers"][0]["pid"], "depth": 1, "name": "helper",
             "cmdline": "helper --serve", "cpu": 1.5, "memory": 1 << 20, "status": "sleeping",
             "left": None}  # fmt: skip

    def answer(op: str, args: dict) -> Any:
        if op == "describe":
            return info
        if "settle" in args:
            raise OldSupervisorRefuses
        return [{"id": wid, "app": "sleeper", "instance": 0, "pid": child["ppid"],
                 "processes": [child], "more": 0}]  # fmt: skip

    home = running.root / "old-home"
    home.mkdir(mode=0o700)
    monkeypatch.setenv("CLUSTERUI_HOME", str(home))
    monkeypatch.setenv("NO_COLOR", "1")
    with old_supervisor(home, answer) as asked:
        assert quick.main(["describe", "sleeper:0"]) == 0
    assert "    pid 4242  cpu 1.5%  memory 1.0M  helper --serve" in capsys.readouterr().out
    assert [op for op, _ in asked] == ["describe", "tree", "tree"]
    assert [a.get("settle") for op, a in asked if op == "tree"] == [0.25, None]
