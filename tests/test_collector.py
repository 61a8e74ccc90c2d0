"""dashboard/collector.py: after settle(), Python starts no full collection by itself,
and collect_all() still frees cycles that reached the old generation."""

from __future__ import annotations

import gc
import weakref

import pytest

from clusterui.dashboard import collector


@pytest.fixture
def restored_gc():
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it


def full_collections() -> int:
    return gc.get_stats()[2]["collections"]


def test_settle_stops_automatic_full_collections_and_collect_all_frees_old_cycles(
    restored_gc,
) -> None:
    collector.settle()
    assert gc.get_freeze_count() > 0  # what existed is out of the collector's sight
    # A cycle that survives young collections and reaches the old generation...
    old = Node()
    probe = weakref.ref(old)
    gc.collect(1)
    del old
    before = full_collections()
    # ...then far more allocations than Python's default pace needs to start a full
    # collection (one per ten middle ones, each per ten young ones of 700).
    keep = []
    for _ in range(700 * 10 * 10 * 5):
        keep.append(Node())
        if len(keep) > 1000:
            keep.clear()
    assert full_collections() == before, "a full collection started by itself"
    assert probe() is not None  # not freed yet: it waits for the timed collection
    collector.collect_all()
    assert probe() is None
    assert full_collections() == before + 1
