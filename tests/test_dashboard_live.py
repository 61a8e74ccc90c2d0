"""The dashboard on a real supervisor through the real client: `+` gives one more worker."""

from __future__ import annotations

import asyncio

import pytest
from support import pilot_until, wait_for

from clusterui.client import Client
from clusterui.core.home import Home
from clusterui.dashboard import DashboardApp

pytestmark = pytest.mark.timeout(90)


async def test_plus_scales_a_real_app_and_the_table_follows(cu):
    cu.write(
        "tick.py",
        """
        import time
        while True:
            print("tick", flush=True)
            time.sleep(0.2)
        """,
    )
    cu.write("ecosystem.yaml", "apps:\n  - name: tick\n    script: tick.py\n    instances: 1\n")
    cu.run("up", "-d", check=True)
    home = Home.from_env(cu.home)
    client = await Client.connect(home)
    app = DashboardApp(client, client_factory=lambda: Client.connect(home))
    try:
        async with app.run_test(size=(160, 48)) as pilot:
            await asyncio.wait_for(app.loaded.wait(), 10)
            assert app.table.select_key("app:tick")
            await pilot.pause()
            await pilot.press("plus")
            await pilot_until(pilot, lambda: len(app.table.rows) >= 3, 10, "a row for tick:1")
            rows = await asyncio.to_thread(
                wait_for,
                lambda: (r := cu.ls()) and [w["status"] for w in r] == ["online"] * 2 and r,
                10,
                "two online workers",
            )
            assert [w["instance"] for w in rows] == [0, 1]
            await pilot_until(
                pilot,
                lambda: any("tick: 2 instance" in n.message for n in app._notifications),
                10,
                "the scale notice",
            )
            await pilot.press("d")
    finally:
        await client.close()
