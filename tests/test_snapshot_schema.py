"""The snapshot schema (clusterui.vocab.snapshot) is what the supervisor really sends, and
what the fake client fakes: the same keys at every level."""

from __future__ import annotations

import asyncio
from typing import Any

from fake_client import demo_snapshot
from support import web_app

from clusterui.client import Client
from clusterui.vocab.snapshot import (
    LS_JSON_KEYS,
    AppRow,
    HostInfo,
    Series,
    Snapshot,
    SupervisorInfo,
    WorkerRow,
)


def _keys(td: Any) -> set[str]:
    return set(td.__required_keys__ | td.__optional_keys__)


def _check(snap: dict[str, Any]) -> None:
    assert set(snap) == _keys(Snapshot)
    assert set(snap["supervisor"]) == _keys(SupervisorInfo)
    assert set(snap["supervisor"]["host"]) == _keys(HostInfo)
    assert snap["apps"] and snap["workers"]
    for app in snap["apps"]:
        assert set(app) == _keys(AppRow)
    for w in snap["workers"]:
        assert set(w) == _keys(WorkerRow)
        assert set(w["history"]) == _keys(Series)


def test_the_fake_client_fakes_the_schema() -> None:
    _check(demo_snapshot())  # type: ignore[arg-type]


def test_the_supervisor_sends_the_schema(cu) -> None:
    web_app(cu, instances=1)

    async def state() -> dict[str, Any]:
        client = await Client.connect(cu.home)
        try:
            return await client.state()
        finally:
            await client.close()

    _check(asyncio.run(state()))
    (row,) = cu.ls()
    assert tuple(row) == LS_JSON_KEYS
