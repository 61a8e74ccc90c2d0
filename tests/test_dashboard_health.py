"""The dashboard shows unhealthy and pending workers, probe results, the schedule and an
app's dispatchers."""

from __future__ import annotations

import copy
import time

import pytest
from test_dashboard import dashboard, screen_text, select, until


@pytest.mark.parametrize(("size", "word"), [((200, 60), "unhealthy"), ((80, 24), "failing")])
async def test_an_unhealthy_worker_has_its_own_status(size: tuple[int, int], word: str) -> None:
    async with dashboard(size=size) as (app, pilot, client):
        snap = copy.deepcopy(client.snapshot)
        w = snap["workers"][1]
        w["status"] = "unhealthy"
        now = time.time()
        w["health"] = {
            "ok": False,
            "consecutive_failures": 2,
            "probes": 40,
            "failed": 2,
            "last": None,
            "recent": [
                {"time": now - 2, "ok": True, "latency_ms": 1.5, "detail": "HTTP 200"},
                {"time": now - 1, "ok": False, "latency_ms": 250.0, "detail": "[b]no answer"},
            ],
        }
        client.push_state(snap)
        table = app.table
        await until(pilot, lambda: word in table.get_cell("w:1", "status").plain)
        assert "⊘" in table.get_cell("w:1", "status").plain
        await select(app, pilot, "w:1")
        if app.details_visible:
            text = screen_text(app)
            assert "⊘ unhealthy" in text
            assert "failing · 40 probes, 2 failed, 2 in a row" in text
            assert "FAIL 250.0 ms · [b]no answer" in text  # shown as text, never markup
            assert "ok 1.5 ms · HTTP 200" in text


async def test_a_pending_app_says_what_it_waits_for() -> None:
    async with dashboard(size=(200, 60)) as (app, pilot, client):
        snap = copy.deepcopy(client.snapshot)
        web = snap["apps"][0]
        web["depends_on"] = {"db": "healthy"}
        web["waiting_for"] = "waiting for db: healthy (db:0 is unhealthy)"
        web["cron_restart"] = "0 3 * * *"
        web["cron_next"] = time.time() + 3600
        for w in snap["workers"]:
            if w["app"] == web["name"]:
                w.update(status="pending", pid=None)
        client.push_state(snap)
        await until(pilot, lambda: "pending" in app.table.get_cell("w:0", "status").plain)
        assert "◌" in app.table.get_cell("w:0", "status").plain
        await select(app, pilot, f"app:{web['name']}")
        text = screen_text(app)
        assert "depends on  db: healthy" in text or "db: healthy" in text
        assert "waiting for db: healthy (db:0 is unhealthy)" in text
        assert "0 3 * * * · next" in text


async def test_an_app_with_several_dispatchers_shows_what_each_accepted() -> None:
    async with dashboard(size=(200, 60)) as (app, pilot, client):
        snap = copy.deepcopy(client.snapshot)
        web = snap["apps"][0]
        web["dispatchers"] = [{"pid": 501, "accepted": 12_345}, {"pid": 502, "accepted": 678}]
        client.push_state(snap)
        await select(app, pilot, f"app:{web['name']}")
        await until(pilot, lambda: "dispatchers" in screen_text(app))
        assert "2 · accepted 12,345 / 678" in screen_text(app)
