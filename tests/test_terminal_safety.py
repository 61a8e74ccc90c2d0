"""Worker-controlled text never reaches the terminal raw, and is never parsed as markup.

A hostile worker writes OSC 2 (title), OSC 52 (clipboard), CSI 2J and an 8-bit CSI to its
log, publishes metric names made of the same and of Rich markup (`[/bogus]`), floods
100,000 distinct metric names, and creates a file named `a[/b]` in its watched folder.
`clusterui logs` escapes it all (`--raw` does not); `clusterui attach`, in a real pty,
draws it visibly, never emits the sequences, and stays responsive.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time

import pytest
from support import WEB, Env, free_port, wait_for

from clusterui.core.metric_cap import MAX_NAMES
from clusterui.vocab.safetext import escape, visible

pytestmark = pytest.mark.timeout(120)

HOSTILE = "\x1b]2;PWNED-TITLE\x07 \x1b]52;c;UFdORUQ=\x07 \x1b[2J \x9b31m tail"

WORKER = """
import os, runpy, sys
from clusterui import worker
print({hostile!r}, flush=True)
print("err " + {hostile!r}, file=sys.stderr, flush=True)
worker.metrics({{"\\x1b]2;PWNED-METRIC\\x07": 1, "[/bogus]": 2, "[bold red]x": 3}})
for i in range(0, 100_000, 500):
    worker.metrics({{f"flood{{j}}": j for j in range(i, i + 500)}})
print("flood sent", flush=True)
sys.argv = [{web!r}]
runpy.run_path({web!r}, run_name="__main__")
"""


def hostile_app(cu: Env) -> int:
    port = free_port()
    watched = cu.root / "watched"
    watched.mkdir()
    cu.write("hostile.py", WORKER.format(hostile=HOSTILE, web=WEB))
    cu.write(
        "ecosystem.yaml",
        f"""
        apps:
          - name: evil
            script: hostile.py
            exec_mode: cluster
            instances: 1
            listen: 127.0.0.1:{port}
            watch: ["{watched}"]
            env:
              "\\e]2;PWNED-ENV\\a": "1"
        """,
    )
    r = cu.run("up", "-d")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: "flood sent" in cu.run("logs", "evil", "--lines", "50").stdout, 30, "flood")
    return port


def touch_bracketed_file(cu: Env) -> None:
    """A file named `a[/b]` (folder "a[", file "b]") in the watched folder: the app reloads
    and keeps "reloaded: watched/a[/b] changed" as its last watch event."""

    def event() -> str:
        app = json.loads(cu.run("describe", "evil", "--json").stdout)["app"]
        return app.get("last_watch_event") or ""

    (cu.root / "watched" / "a[").mkdir()
    wait_for(lambda: "a[ changed" in event(), 30, "the watch event for a[")
    (cu.root / "watched" / "a[" / "b]").write_text("x")
    wait_for(lambda: "a[/b]" in event(), 30, "the watch event for a[/b]")
    wait_for(lambda: "flood sent" in cu.run("logs", "evil").stdout, 30, "the reloaded worker")


def test_the_sanitizer_escapes_controls_and_keeps_lengths() -> None:
    assert escape("a\x1b[2Jb\x9bc\td") == "a\\x1b[2Jb\\x9bc\td"
    assert escape("x\ty", keep_tab=False) == "x\\x09y"
    assert escape("rtl\u202eevil") == "rtl\\u202eevil"
    shown = visible(HOSTILE)
    assert len(shown) == len(HOSTILE)
    assert "\x1b" not in shown and "\x07" not in shown and "\x9b" not in shown
    assert shown.startswith("␛]2;PWNED-TITLE␇")
    assert escape("plain text, ünïcode") == "plain text, ünïcode"


def test_logs_escape_worker_bytes_and_raw_gives_them(cu: Env) -> None:
    hostile_app(cu)
    out = cu.run("logs", "evil", "--lines", "100", check=True).stdout
    assert "\\x1b]2;PWNED-TITLE\\x07" in out
    assert "\\x1b]52;c;" in out and "\\x1b[2J" in out and "\\x9b31m" in out
    for raw in ("\x1b", "\x07", "\x9b"):
        assert raw not in out
    raw = cu.run("logs", "evil", "--lines", "100", "--raw", check=True).stdout
    assert HOSTILE in raw
    as_json = cu.run("logs", "evil", "--lines", "100", "--json", check=True).stdout
    assert "\x1b" not in as_json and any(
        json.loads(line)["text"] == HOSTILE for line in as_json.splitlines()
    )
    # logs -f escapes the live lines too.
    follow = subprocess.Popen(
        [sys.executable, "-m", "clusterui", "logs", "evil", "-f", "--lines", "0"],
        env=cu.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        time.sleep(1.0)
        assert cu.run("restart", "evil").returncode == 0
        wait_for(lambda: "flood sent" in cu.run("logs", "evil").stdout, 30, "the restart")
        time.sleep(0.5)
    finally:
        follow.send_signal(signal.SIGINT)
        out, _ = follow.communicate(timeout=10)
    assert b"PWNED-TITLE" in out and b"\x1b" not in out and b"\xc2\x9b" not in out
    # describe: metric names and env names escaped; the metrics are capped.
    text = cu.run("describe", "evil", check=True).stdout
    assert "\x1b" not in text and "\\x1b]2;PWNED-ENV\\x07" in text
    info = json.loads(cu.run("describe", "evil", "--json", check=True).stdout)
    worker = info["workers"][0]
    assert len(worker["metrics"]) <= MAX_NAMES
    assert worker["metrics_dropped"] > 0
    notes = [
        line for line in cu.run("logs", "evil", "--lines", "1000").stdout.splitlines()
        if "metrics over the cap dropped" in line
    ]  # fmt: skip
    assert len(notes) == 1, notes


class Pty:
    """`clusterui attach` in a real pseudo-terminal; everything it writes is kept."""

    def __init__(self, cu: Env, cols: int = 160, rows: int = 48):
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        env = dict(cu.env, TERM="xterm-256color", COLUMNS=str(cols), LINES=str(rows))
        env.pop("NO_COLOR", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "clusterui", "attach"],
            env=env,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
        )
        os.close(slave)
        self.out = bytearray()

    def read(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    self.out += os.read(self.master, 65536)
                except OSError:
                    return

    def until(self, needle: bytes, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while needle not in self.out and time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.read(0.2)
                break
            self.read(0.2)
        return needle in self.out

    def press(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def close(self) -> int | None:
        try:
            if self.proc.poll() is None:
                self.press(b"d")  # detach: the apps keep running
                deadline = time.monotonic() + 15
                while self.proc.poll() is None and time.monotonic() < deadline:
                    self.read(0.2)
            return self.proc.poll()
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            os.close(self.master)


def test_attach_draws_hostile_data_visibly_and_stays_up(cu: Env) -> None:
    hostile_app(cu)
    touch_bracketed_file(cu)
    for attempt in range(2):  # the watch event is kept: the second attach meets it again
        term = Pty(cu)
        try:
            # The log pane draws the hostile line with its controls as pictures.
            assert term.until("␛]2;PWNED-TITLE␇".encode(), 30), term.out[-3000:]
            term.press(b"j")  # the worker row: its metrics in the detail pane
            term.read(2.0)
            assert term.proc.poll() is None, term.out[-3000:].decode(errors="replace")
        finally:
            code = term.close()
        out = bytes(term.out)
        assert b"MarkupError" not in out
        for seq in (b"\x1b]2;PWNED", b"\x1b]52;", b"\xc2\x9b"):  # U+009B in UTF-8
            assert seq not in out, (attempt, seq)
        assert code == 0, (attempt, code, out[-2000:].decode(errors="replace"))


HOSTILE_CHILD = """
import subprocess, sys, time
# A helper whose command line (argv[0]) carries a window-title sequence and markup.
subprocess.Popen(["\\x1b]2;PWNED-CHILD\\x07[/bogus]", "-c", "import time; time.sleep(600)"],
                 executable=sys.executable)
print({hostile!r}, flush=True)
while True:
    time.sleep(1)
"""


def test_process_tree_and_full_screen_log_draw_hostile_data_visibly(cu: Env) -> None:
    """A worker's helper named with escape sequences, in the detail pane's Processes
    section; its hostile log line in the full-screen log (`L`). Neither reaches the
    terminal raw, and the markup in them is text."""
    cu.write("evil.py", HOSTILE_CHILD.format(hostile=HOSTILE))
    cu.write(
        "ecosystem.yaml",
        f"""
        apps:
          - name: evil
            script: evil.py
            interpreter: {sys.executable}
        """,
    )
    assert cu.run("up", "-d").returncode == 0
    wait_for(lambda: "PWNED-TITLE" in cu.run("logs", "evil").stdout, 30, "the hostile line")
    term = Pty(cu)
    try:
        assert term.until(b"evil", 30), term.out[-3000:]
        term.press(b"j")  # the worker row: its tree in the detail pane
        assert term.until("␛]2;PWNED-CHILD␇[/bogus]".encode(), 30), term.out[-3000:]
        term.press(b"L")  # its log, full screen
        assert term.until("log · evil:0".encode(), 30), term.out[-3000:]
        mark = len(term.out)
        assert term.until("␛]52;c;UFdORUQ=␇".encode(), 30)
        term.press(b"w")  # wrapped, the same line is drawn again
        assert term.until(b"1 line \xc2\xb7 wrap", 30), term.out[mark:].decode(errors="replace")
        term.press(b"/")
        assert term.until(b"search (plain text", 30)
        term.press(b"PWNED\r")
        assert term.until("“PWNED”".encode(), 30), re.sub(
            r"\x1b\[[0-9;]*[A-Za-z]", "", term.out[-4000:].decode(errors="replace")
        )
        term.press(b"\x1b")  # back to the dashboard
        term.read(1.0)
        assert term.proc.poll() is None, term.out[-3000:].decode(errors="replace")
    finally:
        code = term.close()
    out = bytes(term.out)
    assert b"MarkupError" not in out
    for seq in (b"\x1b]2;PWNED", b"\x1b]52;", b"\xc2\x9b"):
        assert seq not in out, seq
    assert code == 0, out[-2000:].decode(errors="replace")
