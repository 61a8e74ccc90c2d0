"""Pilot tests for what a trial of the dashboard as a daily tool tripped on (issue 17)."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

from fake_client import FakeClient, demo_snapshot, screen_text
from support import burst, dashboard
from support import pilot_until as until
from textual.pilot import Pilot

from clusterui.dashboard import DashboardApp
from clusterui.dashboard.detail import DetailPane

UTC = dt.UTC


async def select(app: DashboardApp, pilot: Pilot, key: str) -> None:
    assert app.table.select_key(key), key
    await pilot.pause()


def header_labels(app: DashboardApp) -> list[str]:
    """The column labels the table draws now (its header row, as on screen)."""
    return app.table.render_line(0).text.split()


# -- esc clears the log filter ---------------------------------------------------------


async def test_esc_clears_a_kept_filter_from_the_logs_and_from_the_table() -> None:
    async with dashboard(size=(80, 24)) as (app, pilot, client):
        log = app.log_view
        await pilot.press("l", "slash", *"slow", "enter")  # keep it: the focus goes to the logs
        assert log.has_focus and log.filter_text == "slow"
        assert len(log.shown) < len(log.records)
        await pilot.press("escape")
        assert log.filter_text == "" and len(log.shown) == len(log.records)
        assert log.has_focus  # esc cleared, it did not move the focus
        assert "filter" not in str(app.main_screen.query_one("#logs").border_title)

        await pilot.press("slash", *"slow", "enter", "tab")  # back to the table (from the logs)
        assert app.table.has_focus and log.filter_text == "slow"
        await pilot.press("escape")
        assert log.filter_text == "" and app.table.has_focus
        assert app.is_running and client.calls_of("stop") == []


async def test_esc_restores_a_maximised_log_pane_first_then_clears_the_filter() -> None:
    async with dashboard() as (app, pilot, _):
        screen = app.main_screen
        await pilot.press("l", "slash", *"slow", "enter", "l")
        assert screen.maximized is not None and app.log_view.filter_text == "slow"
        await pilot.press("escape")
        assert screen.maximized is None and app.log_view.filter_text == "slow"
        await pilot.press("escape")
        assert app.log_view.filter_text == ""


async def test_esc_with_no_filter_does_nothing() -> None:
    async with dashboard() as (app, pilot, client):
        before = len(app._notifications)
        await pilot.press("escape")
        assert app.is_running and app.table.has_focus
        assert len(app._notifications) == before
        # Reads only (the detail pane asks for the events and, once a second, the tree).
        reads = ("subscribe", "state", "logs", "app_events", "tree")
        assert [op for op, _ in client.calls if op not in reads] == []


# -- live resize -------------------------------------------------------------------------


async def fresh_labels(size: tuple[int, int]) -> list[str]:
    async with dashboard(size=size) as (app, pilot, _):
        return header_labels(app)


def set_cpu(client: FakeClient, wid: int, cpu: float) -> None:
    snap = copy.deepcopy(client.snapshot)
    for w in snap["workers"]:
        if w["id"] == wid:
            w["cpu"] = cpu
    client.push_state(snap)


async def test_live_resize_160_80_160_with_details_open_relayouts_and_keeps_updating() -> None:
    at_80 = await fresh_labels((80, 24))
    at_160 = await fresh_labels((160, 48))
    assert {"cpu", "mem", "conn/s"} <= set(at_80)  # what a fresh start at 80×24 shows

    async with dashboard(size=(160, 48)) as (app, pilot, client):
        pane = app.main_screen.query_one(DetailPane)
        assert app.table.select_key("w:2")
        await pilot.pause()
        assert pane.display and app.details_visible
        set_cpu(client, 2, 41.5)
        await until(pilot, lambda: "CPU 41.5%" in screen_text(app), what="CPU 41.5%")

        await pilot.resize_terminal(80, 24)
        await until(pilot, lambda: header_labels(app) == at_80, what=f"labels {at_80}")
        assert app.table.scrollable_content_region.width > 70  # not squeezed beside the pane
        assert not pane.display  # at 80 the details are on demand
        await pilot.press("enter")  # open them here too: they must be live
        await until(pilot, lambda: pane.display and "CPU 41.5%" in screen_text(app))
        set_cpu(client, 2, 57.25)
        await until(pilot, lambda: "CPU 57.2%" in screen_text(app), what="CPU 57.2% at 80")
        await pilot.press("enter")

        await pilot.resize_terminal(160, 48)
        await until(pilot, lambda: header_labels(app) == at_160, what=f"labels {at_160}")
        assert pane.display
        set_cpu(client, 2, 63.0)
        await until(pilot, lambda: "CPU 63.0%" in screen_text(app), what="CPU 63.0% at 160")
        assert app.selection is not None and app.selection.key == "w:2"


# -- the supervisor's lines through a flood, and their filter ----------------------------


def line(text: str, t: float, stream: str = "out", instance: int = 0) -> dict[str, Any]:
    return {"worker": instance, "app": "web", "instance": instance, "stream": stream,
            "time": t, "text": text}  # fmt: skip


async def test_a_flood_does_not_push_the_supervisors_lines_out_and_v_filters_them() -> None:
    client = FakeClient(logs=[line("booted", 1.0)])
    async with dashboard(client, max_log_lines=200) as (app, pilot, _):
        log = app.log_view
        client.push_logs([line("exited with code 1", 2.0, "sys")])
        client.push_logs([line("old worker 41000 exited with code 0", 2.5, "sys", 1)])
        for batch in range(6):  # 3,000 lines: fifteen times what the view keeps
            t = 3.0 + batch
            client.push_logs([line(f"GET /{batch}/{i} 200", t) for i in range(500)])
        await until(pilot, lambda: log.records[-1].text == "GET /5/499 200", what="the flood")
        texts = [r.text for r in log.records]
        assert "exited with code 1" in texts and "old worker 41000 exited with code 0" in texts
        assert "booted" not in texts  # the output itself is bounded as before
        assert len(log.records) <= 200 + 2
        # in time order, before the flood that came after them
        assert texts.index("exited with code 1") < texts.index("GET /5/499 200")

        await pilot.press("v")  # the supervisor's lines only
        assert [r.text for r in log.shown] == [
            "exited with code 1",
            "old worker 41000 exited with code 0",
        ]
        assert "supervisor only" in str(app.main_screen.query_one("#logs").border_title)
        await pilot.press("v")  # the apps' output only
        assert log.shown and all(r.stream != "sys" for r in log.shown)
        assert "no supervisor" in str(app.main_screen.query_one("#logs").border_title)
        await pilot.press("v")  # everything again
        assert len(log.shown) == len(log.records)
        # `exited` as a filter finds the line after the flood (what the trial missed)
        await pilot.press("slash", *"exited", "enter")
        assert [r.text for r in log.shown][:1] == ["exited with code 1"]


# -- sorting ---------------------------------------------------------------------------


def expected_order(snapshot: dict[str, Any], value: Any, total: Any = sum) -> list[str]:
    """Row keys with apps by total and workers by value within each, largest first."""
    workers: dict[str, list[dict[str, Any]]] = {}
    for w in snapshot["workers"]:
        workers.setdefault(w["app"], []).append(w)
    apps = sorted(
        snapshot["apps"],
        key=lambda a: total([value(w) for w in workers.get(a["name"], [])] or [0]),
        reverse=True,
    )
    keys = []
    for app in apps:
        keys.append(f"app:{app['name']}")
        ws = sorted(workers.get(app["name"], []), key=lambda w: w["instance"])
        keys += [f"w:{w['id']}" for w in sorted(ws, key=value, reverse=True)]
    return keys


def live(field: str) -> Any:
    return lambda w: float(w.get(field) or 0) if w.get("pid") is not None else 0.0


async def test_o_cycles_the_sort_keeps_groups_and_shows_the_order_in_the_header() -> None:
    snap = demo_snapshot(api_workers=4, busy=True)
    async with dashboard(FakeClient(snapshot=snap), size=(160, 48)) as (app, pilot, client):
        table = app.table
        file_order = table.row_keys
        await select(app, pilot, "w:3")
        cases = [
            ("cpu", live("cpu"), sum),
            ("mem", live("memory"), sum),
            ("conn/s", live("conn_rate"), sum),
            ("↻", lambda w: float(w.get("restarts") or 0), sum),
            ("up", live("uptime"), max),
        ]
        for label, value, total in cases:
            await pilot.press("o")
            assert table.row_keys == expected_order(client.snapshot, value, total), label
            assert table.row_keys != file_order, label  # the demo data does reorder
            labels = header_labels(app)
            marked = [x for x in labels if x.endswith("▼")]
            assert len(marked) == 1 and marked[0].rstrip("▼") == label.split("/")[0]
            assert "▼" in str(table.border_title)
            assert app.selection is not None and app.selection.key == "w:3"  # cursor stays
            # still grouped: each worker row right under its own app's rows
            app_of = None
            for key in table.row_keys:
                sel = table._meta[key]
                if sel.is_app:
                    app_of = sel.app
                else:
                    assert sel.app == app_of, (label, key)
        await pilot.press("o")  # back to the file's order
        assert table.row_keys == file_order
        assert not any(x.endswith("▼") for x in header_labels(app))
        assert str(table.border_title) == "processes"

        # a sorted table re-sorts as the figures change
        await pilot.press("o")  # cpu
        new = copy.deepcopy(client.snapshot)
        last_worker = [w for w in new["workers"] if w["app"] == "api"][-1]
        for w in new["workers"]:
            if w["pid"] is not None:
                w["cpu"] = 1.0
        last_worker["cpu"] = 99.0
        client.push_state(new)
        await until(pilot, lambda: table.row_keys == expected_order(new, live("cpu")))
        assert table.row_keys[:2] == ["app:api", f"w:{last_worker['id']}"]


# -- keys typed in one burst with `/` --------------------------------------------------


async def test_what_is_typed_in_one_burst_after_slash_filters_the_rows_and_the_logs() -> None:
    async with dashboard(size=(100, 30)) as (app, pilot, _):
        burst(app, "/api\r")
        await until(pilot, lambda: app.table.filter_text == "api" and app.table.has_focus)
        assert app.table.row_count == 3  # the api group row and its two workers
        await pilot.press("l")
        burst(app, "/a/b\r")  # in the box, `/` is a character
        await until(pilot, lambda: app.log_view.filter_text == "a/b" and app.log_view.has_focus)
