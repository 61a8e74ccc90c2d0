"""Log rotation (LogSink) on real files: the size limit, the retained files, nothing lost
that the limits promise to keep, lines never split unless one alone is too long."""

from __future__ import annotations

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
