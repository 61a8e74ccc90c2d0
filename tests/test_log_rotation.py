"""Log rotation (LogSink) on real files: the size limit, the retained files, nothing lost
that the limits promise to keep, lines never split unless one alone is too long."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from clusterui.core.logs import LogSink


def lines(first: int, count: int, width: int = 10) -> bytes:
    """`count` numbered lines of exactly `width` bytes each, from `first`."""
    return b"".join(f"{i:0{width - 1}d}\n".encode() for i in range(first, first + count))


def files(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


def write(sink: LogSink, data: bytes) -> None:
    sink.write(data)
    sink.flush()


@pytest.mark.parametrize("retain", [0, 1, 2, 3])
def test_retain_keeps_exactly_that_many_old_files_each_full(tmp_path, retain):
    path = tmp_path / "app.log"
    sink = LogSink(str(path), max_size=100, retain=retain)  # 10 lines of 10 bytes a file
    for i in range(10):  # 100 lines in batches of 10: 10 files' worth
        write(sink, lines(i * 10, 10))
    sink.close()
    assert files(path) == ["app.log", *(f"app.log.{i}" for i in range(1, retain + 1))]
    # Newest last: app.log.N (oldest kept) ... app.log.1, app.log; each a full file.
    chain = [path.with_name(f"app.log.{i}") for i in range(retain, 0, -1)] + [path]
    data = b"".join(p.read_bytes() for p in chain)
    assert all(len(p.read_bytes()) == 100 for p in chain[:-1])
    assert data == lines(100 - len(data) // 10, len(data) // 10)  # the newest, in order
    assert len(data) >= 100 * retain  # retain × max_size of history at least


def test_retain_1_keeps_the_previous_file(tmp_path):
    path = tmp_path / "one.log"
    sink = LogSink(str(path), max_size=100, retain=1)
    write(sink, lines(0, 10))  # exactly full
    write(sink, lines(10, 3))  # rotates
    sink.close()
    assert path.with_name("one.log.1").read_bytes() == lines(0, 10)
    assert path.read_bytes() == lines(10, 3)


def test_retain_0_truncates_in_place(tmp_path):
    path = tmp_path / "zero.log"
    sink = LogSink(str(path), max_size=100, retain=0)
    write(sink, lines(0, 10))
    write(sink, lines(10, 3))
    sink.close()
    assert files(path) == ["zero.log"]
    assert path.read_bytes() == lines(10, 3)


def test_a_file_exactly_at_max_size_is_not_rotated_until_more_comes(tmp_path):
    path = tmp_path / "edge.log"
    sink = LogSink(str(path), max_size=100, retain=2)
    write(sink, lines(0, 10))
    assert files(path) == ["edge.log"] and path.stat().st_size == 100
    write(sink, lines(10, 1))
    assert files(path) == ["edge.log", "edge.log.1"]
    assert path.read_bytes() == lines(10, 1)
    sink.close()


def test_rotation_happens_at_line_boundaries_and_never_exceeds_max_size(tmp_path):
    path = tmp_path / "b.log"
    sink = LogSink(str(path), max_size=95, retain=5)  # 9 whole lines fit, not 10
    write(sink, lines(0, 25))  # one batch bigger than a file
    sink.close()
    chain = [path.with_name(f"b.log.{i}") for i in (2, 1)] + [path]
    assert [p.read_bytes() for p in chain] == [lines(0, 9), lines(9, 9), lines(18, 7)]
    assert not path.with_name("b.log.3").exists()


def test_a_line_longer_than_max_size_is_cut_not_lost(tmp_path):
    path = tmp_path / "long.log"
    sink = LogSink(str(path), max_size=50, retain=3)
    long = b"x" * 120 + b"\n"
    write(sink, long)
    sink.close()
    chain = [path.with_name(f"long.log.{i}") for i in (2, 1)] + [path]
    assert [len(p.read_bytes()) for p in chain] == [50, 50, 21]
    assert b"".join(p.read_bytes() for p in chain) == long


def test_without_max_size_nothing_rotates(tmp_path):
    path = tmp_path / "free.log"
    sink = LogSink(str(path), max_size=None, retain=2)
    write(sink, lines(0, 1000))
    sink.close()
    assert files(path) == ["free.log"]
    assert path.read_bytes() == lines(0, 1000)


def test_an_existing_file_counts_towards_the_limit(tmp_path):
    path = tmp_path / "old.log"
    path.write_bytes(lines(0, 8))
    sink = LogSink(str(path), max_size=100, retain=1)
    write(sink, lines(8, 3))  # 2 fit, the third starts a new file
    sink.close()
    assert path.with_name("old.log.1").read_bytes() == lines(0, 10)
    assert path.read_bytes() == lines(10, 1)


def test_an_empty_line_into_a_full_file_starts_the_next_file(tmp_path):
    path = tmp_path / "e.log"
    sink = LogSink(str(path), max_size=100, retain=1)
    write(sink, lines(0, 10))
    write(sink, b"\n")
    sink.close()
    assert path.with_name("e.log.1").read_bytes() == lines(0, 10)
    assert path.read_bytes() == b"\n"


def test_a_line_that_fits_a_new_file_moves_there_whole(tmp_path):
    path = tmp_path / "w.log"
    sink = LogSink(str(path), max_size=10, retain=1)
    write(sink, b"\n")  # one byte used: the next line does not fit beside it
    write(sink, b"123456789\n")
    sink.close()
    assert path.with_name("w.log.1").read_bytes() == b"\n"
    assert path.read_bytes() == b"123456789\n"


def test_many_small_flushes_add_up_to_the_limit(tmp_path):
    path = tmp_path / "s.log"
    sink = LogSink(str(path), max_size=100, retain=2)
    for i in range(25):  # 25 flushes of one 10-byte line: 2.5 files
        write(sink, lines(i, 1))
        assert path.stat().st_size <= 100
    sink.close()
    chain = [path.with_name(f"s.log.{i}") for i in (2, 1)] + [path]
    assert [p.read_bytes() for p in chain] == [lines(0, 10), lines(10, 10), lines(20, 5)]


def test_everything_buffered_before_a_flush_is_written(tmp_path):
    path = tmp_path / "p.log"
    sink = LogSink(str(path), max_size=100, retain=1)
    sink.write(lines(0, 2))
    sink.write(lines(2, 3))
    assert sink.pending == 50
    sink.flush()
    assert sink.pending == 0
    sink.close()
    assert path.read_bytes() == lines(0, 5)


def test_log_files_are_created_0644(tmp_path):
    old = os.umask(0o022)
    try:
        sink = LogSink(str(tmp_path / "m.log"), max_size=100, retain=1)
        write(sink, lines(0, 10))
        write(sink, lines(10, 1))  # the rotated-to file too
        sink.close()
    finally:
        os.umask(old)
    for name in ("m.log", "m.log.1"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


def test_a_rotation_that_cannot_open_the_new_file_loses_nothing_later(tmp_path, capfd):
    """The folder vanishes mid-rotation: that flush fails; once it is back, the next
    flush opens the file again and writes there (never to a stale descriptor), after a
    line that counts what was dropped."""
    logs = tmp_path / "logs"
    logs.mkdir()
    path = logs / "r.log"
    stdout = os.fstat(1).st_ino
    sink = LogSink(str(path), max_size=100, retain=1)
    write(sink, lines(0, 10))
    shutil.rmtree(logs)
    with pytest.raises(OSError):
        write(sink, lines(10, 1))  # needs a rotation; the new file cannot be opened
    logs.mkdir()
    write(sink, lines(11, 2))
    assert os.fstat(1).st_ino == stdout  # no descriptor of ours was closed or reused
    sink.close()
    # The line that could not be written is counted where it would have been (issue 11's
    # "mark dropped lines with a count"), then the later lines follow, whole.
    marker = b"clusterui: 1 line(s) dropped here (No such file or directory)\n"
    assert path.read_bytes() == marker + lines(11, 2)
    assert capfd.readouterr().out == ""
