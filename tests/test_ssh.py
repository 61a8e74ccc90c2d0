"""The dashboard over a real SSH session: a dropped connection leaves the apps running.

A private SSH server on loopback (tests/ssh_server.py, on asyncssh from PyPI), the OpenSSH
client in a tmux pane (a real terminal), the dashboard on the far side of the session, on
the pty the server made for it. The ssh client is SIGKILLed, so the server hangs up the
session and the dashboard gets SIGHUP; `clusterui attach` over a new session then finds
the same workers. Needs the OpenSSH client (ssh) and tmux, which fresh machines have.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncssh
import psutil
import pytest
from support import Env, free_port, get, kill_ours, wait_for

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin (not resolved: the symlink is the venv)
PACKAGES = {"ssh": "openssh-client", "tmux": "tmux"}
SEARCH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
COLS, ROWS = 120, 40

pytestmark = pytest.mark.timeout(120)


def tool(name: str) -> str:
    path = shutil.which(name, path=SEARCH)
    if path is None:  # CI installs these: a missing one is a broken machine, not a skip
        pytest.fail(
            f"{name} is not installed: this test needs Debian's {PACKAGES[name]} package, "
            "which a fresh machine has",
            pytrace=False,
        )
    return path


# Several conditions run the CLI: poll gently, leave the two cores to the rest.
until = functools.partial(wait_for, step=0.2)


class Sshd:
    """An SSH server on a free loopback port (tests/ssh_server.py: asyncssh, from PyPI), with
    keys made for this test; it runs each command on a pty, as sshd does."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "ssh"
        self.dir.mkdir()
        self.key = self.dir / "client_key"
        self.log = self.dir / "sshd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> None:
        tool("ssh")
        host = asyncssh.generate_private_key("ssh-ed25519")
        host.write_private_key(str(self.dir / "host_key"))
        client = asyncssh.generate_private_key("ssh-ed25519")
        client.write_private_key(str(self.key))
        self.key.chmod(0o600)  # ssh refuses a key others can read
        client.write_public_key(str(self.dir / "authorized_keys"))
        out = self.dir / "port"
        with open(self.log, "wb") as log, open(out, "wb") as port:
            self.proc = subprocess.Popen(
                [sys.executable, str(REPO / "tests" / "ssh_server.py"), str(self.dir)],
                stdin=subprocess.DEVNULL,
                stdout=port,
                stderr=log,
                start_new_session=True,
            )
        until(
            lambda: self.proc.poll() is not None or out.read_text().strip(),
            15,
            lambda: f"the SSH server did not start:\n{self.log.read_text()}",
        )
        if self.proc.poll() is not None:
            raise AssertionError(
                f"the SSH server exited {self.proc.returncode}:\n{self.log.read_text()}"
            )
        self.port = int(out.read_text())

    def client(self, remote: str) -> list[str]:
        """The ssh command line: a pty (-tt), this test's key, no user or system ssh config."""
        return [
            tool("ssh"), "-tt", "-F", "/dev/null", "-i", str(self.key),
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR",
            "-o", "ConnectTimeout=15", "-p", str(self.port), "root@127.0.0.1", remote,
        ]  # fmt: skip

    def stop(self) -> None:
        if self.proc is None:
            return
        # Each session's command is in its own session: collect them before the server goes.
        try:
            procs = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(True)]
        except psutil.Error:
            procs = []
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.kill()
        self.proc.wait(timeout=10)
        psutil.wait_procs(procs, timeout=10)


class Tmux:
    """A private tmux server; each session runs one command in a COLS x ROWS pane."""

    def __init__(self, root: Path) -> None:
        self.sock = root / "tmux.sock"
        self.conf = root / "tmux.conf"
        # No status line (the pane is the whole window); a dead pane stays for its last words.
        self.conf.write_text("set -g status off\nset -g remain-on-exit on\n")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("TMUX", "CLUSTERUI"))}
        self.env["LANG"] = "C.UTF-8"
        self.server: psutil.Process | None = None

    def __call__(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run(
            [tool("tmux"), "-u", "-f", str(self.conf), "-S", str(self.sock), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=15,
            stdin=subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"tmux {args[0]} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc.stdout

    def open(self, name: str, argv: list[str]) -> psutil.Process:
        """Start a session running argv (exec'd directly, no shell); returns the pane's process."""
        self("new-session", "-d", "-s", name, "-x", str(COLS), "-y", str(ROWS), "--", *argv)
        if self.server is None:
            self.server = psutil.Process(int(self("display-message", "-p", "#{pid}")))
        return psutil.Process(int(self("list-panes", "-t", name, "-F", "#{pane_pid}").split()[0]))

    def screen(self, name: str) -> str:
        return self("capture-pane", "-p", "-t", name)

    def history(self, name: str) -> str:
        """The screen and everything scrolled off it (a dead pane's error lands there)."""
        return self("capture-pane", "-p", "-S", "-", "-t", name, check=False)

    def dead(self, name: str) -> bool:
        return self("list-panes", "-t", name, "-F", "#{pane_dead}").strip() == "1"

    def keys(self, name: str, *keys: str) -> None:
        self("send-keys", "-t", name, *keys)

    def kill(self) -> None:
        if self.server is None:
            return
        self("kill-server", check=False)
        gone, alive = psutil.wait_procs([self.server], timeout=10)
        for p in alive:
            p.kill()


def remote(cu: Env, *args: str) -> str:
    """The remote command: the server gives it a bare environment, so pass what clusterui needs."""
    exe = BIN / "clusterui"
    argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "clusterui"]
    env = {
        "CLUSTERUI_HOME": str(cu.home),
        "TERM": "xterm-256color",
        "LANG": "C.UTF-8",
        "PATH": f"{BIN}:/usr/local/bin:/usr/bin:/bin",
        "PYTHONPATH": str(REPO / "src"),  # this checkout's code, whichever venv runs it
    }
    words = ["exec", "env", *(f"{k}={v}" for k, v in env.items()), *argv, *args]
    return f"cd {shlex.quote(str(cu.root))} && " + " ".join(shlex.quote(w) for w in words)


def our_processes(cu: Env) -> list[psutil.Process]:
    """Live processes whose environment names this test's CLUSTERUI_HOME."""
    found = []
    for p in psutil.process_iter():
        try:
            mine = p.pid != os.getpid() and p.environ().get("CLUSTERUI_HOME") == str(cu.home)
            if mine and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            continue
    return found


def dashboards(cu: Env) -> list[psutil.Process]:
    """Ours, but outside the supervisor's tree: dashboards (the test runs no other CLI now)."""
    tree: set[int] = set()
    pid = cu.supervisor_pid()
    if pid:
        try:
            sup = psutil.Process(pid)
            tree = {pid, *(c.pid for c in sup.children(recursive=True))}
        except psutil.Error:
            pass
    return [p for p in our_processes(cu) if p.pid not in tree]


def workers(cu: Env) -> list[dict]:
    proc = cu.run("ls", "--json")
    return json.loads(proc.stdout) if proc.returncode == 0 else []


def online(cu: Env, app: str, n: int) -> dict[int, int] | None:
    """{worker id: pid} of app's workers once exactly n are online, else None."""
    ws = [w for w in workers(cu) if w["app"] == app]
    if len(ws) == n and all(w["status"] == "online" for w in ws):
        return {w["id"]: w["pid"] for w in ws}
    return None


def samples(cu: Env) -> dict[int, int]:
    """How many history samples each web worker has (the sparklines' series)."""
    info = json.loads(cu.run("describe", "web", "--json", check=True).stdout)
    return {w["id"]: len(w["history"]["cpu"]) for w in info["workers"]}


def chart_seconds(screen: str) -> int | None:
    """The seconds of history the detail pane's Memory sparkline says it draws."""
    m = re.search(r"Memory .*?· (\d+)s", screen)
    return int(m.group(1)) if m else None


@pytest.fixture
def rig(cu: Env) -> Iterator[tuple[Sshd, Tmux]]:
    if os.geteuid() != 0:
        pytest.skip("logs in over SSH as root: run as root (CI does)")
    sshd, tmux = Sshd(cu.root), Tmux(cu.root)
    try:
        sshd.start()
        yield sshd, tmux
    finally:
        tmux.kill()  # hangs up any ssh client still connected
        cu.run("down", timeout=30)
        sshd.stop()
        left = our_processes(cu)
        kill_ours(cu.home)
        # cu's own cleanup then removes the temp dir
        assert not left, f"processes survived the test: {[p.pid for p in left]}"


def test_dropped_ssh_session_leaves_the_apps_and_attach_finds_them(
    cu: Env, rig: tuple[Sshd, Tmux]
) -> None:
    sshd, tmux = rig
    port = free_port()
    eco = cu.write(
        "eco.yaml",
        f"""
        apps:
          - name: web
            script: {REPO / "examples" / "web.py"}
            exec_mode: cluster
            instances: 2
            listen: 127.0.0.1:{port}
          - name: logger
            script: {REPO / "examples" / "worker.py"}
        """,
    )

    def show(name: str) -> Callable[[], str]:
        return lambda: f"\n{tmux.history(name)}\n--- sshd:\n{sshd.log.read_text()[-2000:]}"

    # 1. The dashboard over SSH, on a fresh supervisor.
    client = tmux.open("first", sshd.client(remote(cu, str(eco))))
    assert client.name() == "ssh"
    web = until(lambda: online(cu, "web", 2), 30, show("first"))
    logger = until(lambda: online(cu, "logger", 1), 30, show("first"))
    pids = [*web.values(), *logger.values()]
    until(lambda: all(str(p) in tmux.screen("first") for p in pids), 20, show("first"))
    [dash] = dashboards(cu)
    assert (dash.terminal() or "").startswith("/dev/pts/"), dash.terminal()  # a real pty
    assert "sshd" in dash.parent().name()

    # 2. A key over SSH: `+` on the web app (the first row) adds a third worker.
    # (The detail pane is drawn a frame or two after the table: wait for it too.)
    until(
        lambda: re.search(r"details.*\n.*│ web\s+cluster", tmux.screen("first")), 10, show("first")
    )
    tmux.keys("first", "+")
    web = until(lambda: online(cu, "web", 3), 20, lambda: f"{workers(cu)}{show('first')()}")
    until(lambda: all(str(p) in tmux.screen("first") for p in web.values()), 20, show("first"))
    # Some history to keep: every web worker has a few samples, and the chart draws them.
    until(lambda: min(samples(cu).values()) >= 5, 20, lambda: str(samples(cu)))
    drawn = until(lambda: chart_seconds(tmux.screen("first")), 10, show("first"))
    before = samples(cu)
    supervisor = cu.supervisor_pid()

    # 3. The connection drops: SIGKILL the ssh client, the server hangs up the pty, and the
    # dashboard gets SIGHUP.
    client.kill()
    until(lambda: tmux.dead("first"), 10, show("first"))
    psutil.wait_procs([dash], timeout=20)
    assert not dash.is_running() or dash.status() == psutil.STATUS_ZOMBIE, "dashboard survived"
    assert dashboards(cu) == [], "an orphaned dashboard is left"

    assert cu.supervisor_pid() == supervisor and cu.supervisor_alive()
    assert online(cu, "web", 3) == web, workers(cu)
    assert online(cu, "logger", 1) == logger, workers(cu)
    answers = [get(port, expect=200) for _ in range(12)]
    served = {int(a.split()[-1]) for a in answers}
    assert all(a.startswith("hello from web instance") for a in answers), answers
    assert served == set(web.values()), (served, web)  # round-robin: every worker answers

    # 4. A new SSH session: `clusterui attach` shows the same workers, with their history.
    attached = time.monotonic()
    tmux.open("second", sshd.client(remote(cu, "attach")))
    pids = [*web.values(), *logger.values()]
    until(lambda: all(str(p) in tmux.screen("second") for p in pids), 30, show("second"))
    screen = tmux.screen("second")
    assert screen.count("online") >= 4, screen
    # The chart comes back with the history the supervisor kept, not from zero: at least
    # what the first dashboard drew, and more seconds than this dashboard has been running.
    seconds = until(lambda: chart_seconds(tmux.screen("second")), 10, show("second"))
    own = time.monotonic() - attached
    assert seconds >= drawn and seconds > own + 1, (seconds, drawn, own, screen)

    # The supervisor's series went on from where they were, not from zero: each grows past
    # its count before the drop (a tick is a second; the reattach can take less).
    def grown() -> dict[int, int] | None:
        now = samples(cu)
        return now if all(now.get(i, 0) > n for i, n in before.items()) else None

    after = until(grown, 10, lambda: str((before, samples(cu))))
    assert after.keys() == before.keys()
    [dash2] = dashboards(cu)
    assert dash2.pid != dash.pid

    # `d` detaches over SSH too: the session ends, the apps stay.
    tmux.keys("second", "d")
    until(lambda: tmux.dead("second"), 20, show("second"))
    assert dashboards(cu) == []
    assert online(cu, "web", 3) == web

    # Everything stops on `down`: supervisor and workers.
    every = [psutil.Process(p) for p in [supervisor, *web.values(), *logger.values()]]
    cu.run("down", check=True)
    gone, alive = psutil.wait_procs(every, timeout=20)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], alive
