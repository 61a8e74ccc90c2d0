"""`clusterui logs` after a supervisor restart: what the files held before is read back.

The rings hold only what this supervisor read; LogHub.history tops them up from the
workers' log files (the part written before this supervisor opened them), oldest first,
with no line twice.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path

import pytest
from support import wait_for
from test_logs import Writer, attach, closed, spec

from clusterui.core.logs import LogHub, compile_date_format, compile_date_parser

pytestmark = pytest.mark.timeout(60)

KEYS = {"worker", "app", "instance", "stream", "time", "text"}

TALK = """\
import os, sys, time
run = os.environ["RUN"]
for i in range(5):
    print(f"run {run} out {i}", flush=True)
    print(f"run {run} err {i}", file=sys.stderr, flush=True)
try:
    time.sleep(3600)
except KeyboardInterrupt:  # the kill_signal (SIGINT): leave quietly
    pass
"""


def texts(lines) -> list[str]:
    return [line.text for line in lines]


# ---- stamps back to times ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "precision"),
    [
        ("YYYY-MM-DD HH:mm:ss", 1),
        ("YYYY-MM-DD HH:mm:ss.SSS Z", 0.001),
        ("YY/M/D hh:mm A ZZ", 60),
        ("ddd MMM DD YYYY h:m:s a", 1),
        ("[at] YYYY-MM-DD HH:mm:ss.SSS 100% {x}", 0.001),
        ("DD MMMM YYYY HH:mm", 60),
    ],
)
def test_a_stamp_reads_back_as_the_time_it_was_made(fmt, precision):
    ts = 1795710001.123  # 2026-11-26, any zone
    line = compile_date_format(fmt)(ts).decode() + "hello: world"
    when, text = compile_date_parser(fmt)(line)
    assert text == "hello: world"
    assert when is not None and ts - precision < when <= ts + 1e-6, (fmt, when, ts)


def test_lines_without_the_prefix_or_a_full_date_have_no_time():
    parse = compile_date_parser("YYYY-MM-DD HH:mm:ss")
    assert parse("plain line") == (None, "plain line")
    assert parse("2026-13-40 10:00:00: bad date") == (None, "bad date")
    assert compile_date_parser("HH:mm:ss")("10:11:12: x") == (None, "x")


# ---- LogHub.history with real files and a real writer ----------------------------------------


def write_lines(path: Path, lines: list[str], mtime: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))
    os.utime(path, (mtime, mtime))


async def test_history_is_what_the_files_held_before_and_none_of_ours(tmp_path):
    logs = tmp_path / "logs"
    t0 = time.time() - 3600
    write_lines(logs / "app-0-out.log.1", ["older 1", "older 2"], t0)
    write_lines(logs / "app-0-out.log", [f"old {i}" for i in range(5)], t0 + 10)
    write_lines(logs / "app-0-err.log", ["old err"], t0 + 5)
    hub = LogHub(logs)
    writers: list[Writer] = []
    try:
        # Small files: our lines rotate the out file once, so what was there moves to .1, .2.
        sp = spec(log_max_size=100, log_retain=5)
        writers.append(Writer("for i in range(12): print(f'new line {i}')"))
        await closed(attach(hub, writers[-1], sp=sp))
        assert texts(hub.recent([0], 100)) == [f"new line {i}" for i in range(12)]
        assert os.path.exists(logs / "app-0-out.log.2")  # it did rotate
        got = hub.history(0, "app", 0, sp, 100)
        assert [(ln.stream, ln.text, ln.time) for ln in got] == [
            ("out", "older 1", t0),
            ("out", "older 2", t0),
            ("err", "old err", t0 + 5),
            *[("out", f"old {i}", t0 + 10) for i in range(5)],
        ]
        assert {(ln.worker, ln.app, ln.instance) for ln in got} == {(0, "app", 0)}
        assert texts(hub.history(0, "app", 0, sp, 3)) == ["old 2", "old 3", "old 4"]
        assert texts(hub.history(0, "app", 0, sp, 1)) == ["old 4"]
        assert hub.history(0, "app", 0, sp, 0) == []
        # A file this hub created holds only lines its ring has had: no history.
        fresh = spec(name="fresh")
        writers.append(Writer("print('mine')"))
        await closed(attach(hub, writers[-1], worker=1, sp=fresh))
        assert (logs / "fresh-1-out.log").read_text() == "mine\n"
        assert hub.history(1, "fresh", 1, fresh, 10) == []
        # Files several instances share cannot be told apart: not read. One instance's
        # merged file is its own: read.
        write_lines(logs / "app-out.log", ["merged 1", "merged 2"], t0)
        merged = spec(merge_logs=True, instances=2)
        assert hub.history(0, "app", 0, merged, 10) == []
        alone = spec(merge_logs=True, instances=1)
        assert texts(hub.history(0, "app", 0, alone, 10)) == ["merged 1", "merged 2"]
        # out_file and error_file the same file: read once, as "out".
        write_lines(tmp_path / "both.log", ["both 1", "both 2"], t0)
        both = spec(out_file=str(tmp_path / "both.log"), error_file=str(tmp_path / "both.log"))
        got = hub.history(0, "app", 0, both, 10)
        assert [(ln.stream, ln.text) for ln in got] == [("out", "both 1"), ("out", "both 2")]
    finally:
        for w in writers:
            w.kill()
        await hub.aclose(timeout=0.1)


async def test_history_times_come_from_the_stamps(tmp_path):
    logs = tmp_path / "logs"
    when = dt.datetime(2026, 1, 2, 3, 4, 5, 678000).timestamp()
    write_lines(
        logs / "app-0-out.log",
        ["unstamped first", "2026-01-02 03:04:05.678: stamped", "unstamped after"],
        when + 100,
    )
    write_lines(logs / "app-1-out.log", ["no stamp", "nor here"], when + 100)
    hub = LogHub(logs)
    sp = spec(log_date_format="YYYY-MM-DD HH:mm:ss.SSS")
    got = hub.history(0, "app", 0, sp, 10)
    # A line without a stamp takes its neighbour's: the order in the file holds.
    assert [(ln.text, ln.time) for ln in got] == [
        ("unstamped first", pytest.approx(when, abs=1e-3)),
        ("stamped", pytest.approx(when, abs=1e-3)),
        ("unstamped after", pytest.approx(when, abs=1e-3)),
    ]
    # No stamp at all (say log_date_format was set after these were written): the mtime.
    got = hub.history(1, "app", 1, sp, 10)
    assert [(ln.text, ln.time) for ln in got] == [
        ("no stamp", when + 100),
        ("nor here", when + 100),
    ]
    await hub.aclose(timeout=0.1)


# ---- the real CLI across `kill` and `up` ---------------------------------------------------


def ecosystem(cu, run: int, date_format: str | None = None) -> None:
    cu.write("talk.py", TALK)
    extra = f'    log_date_format: "{date_format}"\n' if date_format else ""
    cu.write(
        "ecosystem.yaml",
        "apps:\n  - name: talk\n    script: talk.py\n    instances: 2\n"
        f"    env: {{RUN: '{run}'}}\n" + extra,
    )


def logs_json(cu, *args: str) -> list[dict]:
    out = cu.run("logs", *args, "--json", check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def printed(cu, run: int, n: int = 100) -> list[dict] | None:
    lines = [ln for ln in logs_json(cu, "talk", "--lines", str(n)) if f"run {run} " in ln["text"]]
    return lines if len(lines) == 20 else None


def restart_supervisor(cu, date_format: str | None = None) -> list[dict]:
    """Run 1, `kill`, run 2: returns run 1's lines as the first supervisor served them."""
    ecosystem(cu, 1, date_format)
    assert cu.run("up", "-d").returncode == 0
    first = wait_for(lambda: printed(cu, 1), 15, "run 1's 20 lines")
    assert cu.run("kill").returncode == 0
    ecosystem(cu, 2, date_format)
    assert cu.run("up", "-d").returncode == 0
    wait_for(lambda: printed(cu, 2, 20), 15, "run 2's 20 lines in the new supervisor")
    return first


def test_logs_after_kill_and_up_shows_the_old_lines_from_the_files(cu):
    restart_supervisor(cu)
    ids = {w["instance"]: w["id"] for w in cu.ls()}
    got = logs_json(cu, "talk", "--lines", "25")
    assert len(got) == 25
    assert all(set(ln) == KEYS for ln in got)
    keys = [f"{ln['instance']} {ln['stream']} {ln['text']}" for ln in got]
    assert len(set(keys)) == 25  # no line twice (the files hold run 2 too)
    old, new = got[:5], got[5:]
    assert sorted(f"{ln['instance']} {ln['text']}" for ln in new) == sorted(
        f"{i} run 2 {s} {k}" for i in (0, 1) for s in ("out", "err") for k in range(5)
    )
    # The first supervisor's last words about each worker, from its own log file.
    assert [(ln["stream"], ln["text"]) for ln in old[3:]] == [
        ("sys", "stopped (exited with code 0)")
    ] * 2
    assert {ln["instance"] for ln in old[3:]} == {0, 1}
    for ln in old[:3]:
        assert ln["text"].startswith("run 1 ")
        assert ln["stream"] == ln["text"].split()[2]  # "run 1 err 3" came from the err file
    for ln in old:
        assert ln["worker"] == ids[ln["instance"]] and ln["app"] == "talk"
        assert 0 < ln["time"] <= time.time()
    # One instance as text: its old lines (each file in order), then the new ones.
    one = cu.run("logs", "talk:1", "--lines", "20", check=True).stdout.splitlines()
    assert all("run 1 " in line for line in one[:9])
    assert one[9] == "talk:1 * stopped (exited with code 0)"
    assert all("run 2 " in line for line in one[10:])
    assert "talk:1 | run 1 out 4" in one[:9] and "talk:1 ! run 1 err 4" in one[:9]
    for stream in ("out", "err"):
        mine = [line[-1] for line in one[:9] if f"run 1 {stream}" in line]
        assert mine == sorted(mine)
    # Every app when no target is given; never more than there is, each line once.
    assert len(logs_json(cu, "--lines", "40")) == 40
    everything = logs_json(cu, "--lines", "1000")
    assert len(everything) == 42 == len({json.dumps(ln, sort_keys=True) for ln in everything})


def test_stamped_files_give_back_the_times_the_lines_were_read(cu):
    first = restart_supervisor(cu, "YYYY-MM-DD HH:mm:ss.SSS")
    got = logs_json(cu, "talk", "--lines", "100")
    assert len(got) == 42
    old = [ln for ln in got if ln["text"].startswith("run 1 ")]
    assert max(got.index(ln) for ln in old) < min(
        i for i, ln in enumerate(got) if ln["text"].startswith("run 2 ")
    )
    assert len(old) == 20
    key = lambda ln: (ln["instance"], ln["stream"], ln["text"])  # noqa: E731
    assert sorted(map(key, old)) == sorted(map(key, first))
    then = {key(ln): ln["time"] for ln in first}
    for ln in old:  # the stamp has milliseconds; the ring had the exact read time
        assert then[key(ln)] - 0.001 < ln["time"] <= then[key(ln)] + 1e-6
    assert [ln["time"] for ln in got] == sorted(ln["time"] for ln in got)
