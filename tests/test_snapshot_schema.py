"""The snapshot schema (clusterui.vocab.snapshot) is what the supervisor really sends, and
what the fake client fakes: the same keys at every level."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fake_client import demo_snapshot
from support import web_app

from clusterui.client import Client
from clusterui.vocab.exits import ClientError, Exit
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


def test_the_state_as_a_table_of_asked_columns(cu) -> None:
    """`clusterui ls` asks for its columns only (core/snapshot.py worker_table)."""
    web_app(cu, instances=2)

    async def ask() -> tuple[dict[str, Any], ...]:
        client = await Client.connect(cu.home)
        try:
            full = await client.call("state", history=False)
            ls = await client.call("state", columns=list(LS_JSON_KEYS))
            mixed = await client.call("state", columns=["out_file", "pid", "no-such", "pid"])
            with pytest.raises(ClientError, match="columns must be a list") as bad:
                await client.call("state", columns="pid")
            assert bad.value.code == Exit.USAGE
            return full, ls, mixed
        finally:
            await client.close()

    full, ls, mixed = asyncio.run(ask())
    assert set(ls) == {"columns", "rows"} and ls["columns"] == list(LS_JSON_KEYS)
    steady = ("uptime", "cpu", "memory")  # these move between the two calls
    assert [
        [v for c, v in zip(ls["columns"], row, strict=True) if c not in steady]
        for row in ls["rows"]
    ] == [[w[c] for c in LS_JSON_KEYS if c not in steady] for w in full["workers"]]
    # Beyond the ls fields, in the asked order, each once; unknown names left out.
    assert mixed["columns"] == ["out_file", "pid"]
    assert mixed["rows"] == [[w["out_file"], w["pid"]] for w in full["workers"]]


def test_state_events_carry_the_series_only_for_subscribers_that_want_them(cu) -> None:
    """The dashboard subscribes with history=False: it takes the series once, from
    state(), and keeps them itself (at 2,000 workers they are 3 MB a second)."""
    web_app(cu, instances=1)

    async def first_state(client: Client) -> dict[str, Any]:
        async for event in client.events():
            if event.get("event") == "state":
                return event["data"]
        raise AssertionError("no state event")

    async def both() -> tuple[dict[str, Any], dict[str, Any]]:
        full, lean = await Client.connect(cu.home), await Client.connect(cu.home)
        try:
            await full.subscribe(state=True, logs=False)
            await lean.subscribe(state=True, logs=False, history=False)
            return await asyncio.wait_for(asyncio.gather(first_state(full), first_state(lean)), 10)
        finally:
            await full.close()
            await lean.close()

    with_series, without = asyncio.run(both())
    _check(with_series)
    (worker,) = without["workers"]
    assert set(worker) == _keys(WorkerRow) - {"history"}
