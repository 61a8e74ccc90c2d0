#!/usr/bin/env python3
"""Make the dashboard screenshots in screenshots/ from the fixed demo data.

    .venv/bin/python scripts/screenshots.py [OUTDIR]

Writes SVGs (Textual's own export). If `rsvg-convert` is on PATH or `cairosvg` can be
imported, PNGs are written next to them as well; otherwise only SVGs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the FakeClient and its demo data live there

from fake_client import FakeClient, demo_snapshot  # noqa: E402

from clusterui.dashboard import DashboardApp  # noqa: E402


@dataclass
class Shot:
    name: str
    size: tuple[int, int]
    title: str
    api_workers: int = 2
    busy: bool = False
    select: str | None = None
    keys: list[str] = field(default_factory=list)
    theme: str | None = None


SHOTS = [
    Shot("main", (160, 48), "clusterui: three apps, 160×48"),
    Shot(
        "scaled-under-load",
        (200, 60),
        "clusterui: api scaled to 6 workers under load, 200×60",
        api_workers=6,
        busy=True,
        select="app:api",
    ),
    Shot(
        "detail-pane",
        (160, 48),
        "clusterui: a worker's details",
        api_workers=4,
        busy=True,
        select="w:3",
    ),
    Shot(
        "log-filter",
        (160, 48),
        "clusterui: log filter",
        keys=["slash", *"slow", "enter"],
    ),
    Shot("80x24", (80, 24), "clusterui at 80×24"),
    Shot("80x24-details", (80, 24), "clusterui at 80×24, details", select="w:4", keys=["enter"]),
    Shot("quit", (100, 30), "clusterui: quit", keys=["q"]),
    Shot(
        "sorted-filtered",
        (160, 48),
        "clusterui: sorted by CPU, rows filtered to the online workers",
        api_workers=4,
        busy=True,
        select="w:3",
        keys=["o", "slash", *"online", "enter"],
    ),
    Shot(
        "process-tree-and-timeline",
        (160, 48),
        "clusterui: a worker's processes and its events timeline",
        select="w:1",
    ),
    Shot(
        "crash-timeline",
        (160, 48),
        "clusterui: a crash-looping worker's events timeline",
        select="w:4",
    ),
    Shot(
        "full-screen-log",
        (120, 36),
        "clusterui: a worker's log full screen, searching",
        select="w:4",
        keys=["L", "slash", *"keyerror", "enter", "n"],
    ),
    Shot("signal-menu", (100, 30), "clusterui: the signal menu", select="w:1", keys=["x"]),
    Shot(
        "light-theme", (160, 48), "clusterui in textual-light", select="w:2", theme="textual-light"
    ),
]


async def take(shot: Shot, outdir: Path) -> Path:
    client = FakeClient(demo_snapshot(api_workers=shot.api_workers, busy=shot.busy))
    app = DashboardApp(client, tz=dt.UTC, started_supervisor=True)
    async with app.run_test(size=shot.size) as pilot:
        await asyncio.wait_for(app.loaded.wait(), 10)
        if shot.theme:
            app.theme = shot.theme
        await pilot.pause()
        if shot.select:
            app.table.select_key(shot.select)
            await pilot.pause()
        for key in shot.keys:
            await pilot.press(key)
            await pilot.pause()
        await pilot.pause(0.3)  # the detail pane's events and tree answers, drawn
        path = outdir / f"{shot.name}.svg"
        path.write_text(app.export_screenshot(title=shot.title))
    return path


def to_png(svg: Path) -> Path | None:
    png = svg.with_suffix(".png")
    if shutil.which("rsvg-convert"):
        subprocess.run(["rsvg-convert", "-o", str(png), str(svg)], check=True)
        return png
    try:
        import cairosvg  # type: ignore[import-not-found]
    except ImportError:
        return None
    cairosvg.svg2png(url=str(svg), write_to=str(png))
    return png


async def main(outdir: Path) -> None:
    outdir.mkdir(parents=True, exist_ok=True)
    pngs = 0
    for shot in SHOTS:
        svg = await take(shot, outdir)
        png = to_png(svg)
        pngs += png is not None
        print(
            f"{svg.relative_to(outdir.parent) if outdir.parent in svg.parents else svg}"
            + (f"  (+ {png.name})" if png else "")
        )
    if not pngs:
        print("PNGs skipped: neither rsvg-convert nor cairosvg is available.")


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "screenshots"))
