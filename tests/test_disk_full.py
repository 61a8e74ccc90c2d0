"""A full disk: the lines lost are counted, said in the app's log, describe and
supervisor.log, and marked in the file; no line is glued to a torn one.

A 64 KiB tmpfs (root needed to mount it) holds the app's out_file; the test fills it
with a filler file, then frees it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest
from support import Env, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a tmpfs")

APP = """
import time
i = 0
while True:
    print("line %06d " % i + "x" * 50, flush=True)
    i += 1
    time.sleep(0.005)
"""
LINE = re.compile(rb"line \d{6} x{50}")


def test_a_full_disk_is_reported_counted_and_marked(cu: Env) -> None:
    small = cu.root / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(small)],
                   check=True)  # fmt: skip
    try:
        log = small / "out.log"
        cu.write("app.py", APP)
        cu.write(
            "ecosystem.yaml",
            f"apps:\n  - name: app\n    script: app.py\n    out_file: {log}\n    log_max_size: 0\n",
        )
        cu.run("up", "-d", check=True)
        wait_for(lambda: log.exists() and log.stat().st_size > 2000, 15, "some output")
        filler = small / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:  # take every block that is left
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)

        def said() -> str:
            return cu.run("logs", "app", "--lines", "2000").stdout

        wait_for(lambda: "No space left on device" in said(), 15, "the error in the app's log")
        info = json.loads(cu.run("describe", "app", "--json", check=True).stdout)
        wait_for(
            lambda: (
                json.loads(cu.run("describe", "app", "--json").stdout)["workers"][0]["log_dropped"]
                > 20
            ),
            15,
            "dropped lines counted",
        )
        assert "cannot write log file" in (cu.home / "supervisor.log").read_text()
        assert info["workers"][0]["status"] == "online"
        filler.unlink()
        wait_for(lambda: b"dropped here" in log.read_bytes(), 15, "the marker in the file")
        wait_for(lambda: log.read_bytes().count(b"\n") > log.read_bytes().index(b"dropped")
                 // 60 + 20, 15, "lines after the marker")  # fmt: skip
        lines = log.read_bytes().split(b"\n")[:-1]
        markers = [x for x in lines if b"dropped here" in x]
        assert len(markers) == 1
        count = int(
            re.search(rb"clusterui: (\d+) line\(s\) dropped here \(No space", markers[0])[1]
        )
        assert count > 20
        # Every other line is whole: none glued to a torn one (at most one torn line, the
        # one the disk filled in the middle of, and it ends right before the marker).
        bad = [x for x in lines if not LINE.fullmatch(x) and x not in markers]
        assert len(bad) <= 1, bad[:3]
        if bad:
            assert lines.index(bad[0]) + 1 == lines.index(markers[0])
    finally:
        cu.run("down")
        subprocess.run(["umount", "-l", str(small)], check=False)
