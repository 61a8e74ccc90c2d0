"""Pilot tests for the table's row filter, the mouse and the themes (issue 17)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as dt
import json
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fake_client import FakeClient, demo_snapshot, screen_text
from support import assert_greys_only
from support import pilot_until as until
from textual import events
from textual.color import Color
from textual.filter import dim_color
from textual.pilot import Pilot
from textual.widget import Widget

from clusterui.cli.prefs import PrefsFile, default_path
from clusterui.dashboard import DashboardApp
from clusterui.dashboard.detail import DetailPane
from clusterui.dashboard.header import StatusHeader
from clusterui.dashboard.style import fg_style

UTC = dt.UTC


@contextlib.asynccontextmanager
async def dashboard(
    client: FakeClient | None = None, *, size: tuple[int, int] = (160, 48), **kwargs: Any
) -> AsyncIterator[tuple[DashboardApp, Pilot, FakeClient]]:
    client = client or FakeClient()
    app = DashboardApp(client, tz=UTC, **kwargs)
    async with app.run_test(size=size) as pilot:
        await asyncio.wait_for(app.loaded.wait(), 5)
        await pilot.pause()
        yield app, pilot, client


def title(app: DashboardApp) -> str:
    """The table's border title as drawn on the screen."""
    return table_text(app).splitlines()[0].strip("╭─╮ ")


def table_text(app: DashboardApp) -> str:
    """What the process table draws now (its border, header and rows)."""
    region = app.table.region
    lines = screen_text(app).splitlines()[region.y : region.bottom]
    return "\n".join(line[region.x : region.right] for line in lines)


def ops(client: FakeClient) -> list[str]:
    """The operations the dashboard asked the supervisor for (not its reads)."""
    reads = ("subscribe", "logs", "state", "close", "tree", "app_events")
    return [op for op, _ in client.calls if op not in reads]


def footer(app: DashboardApp) -> str:
    return screen_text(app).splitlines()[-1]


def footer_actions(app: DashboardApp) -> list[str]:
    return [key.action for key in app.screen.query("FooterKey")]  # type: ignore[attr-defined]


def messages(app: DashboardApp) -> list[str]:
    return [n.message for n in app._notifications]


async def type_filter(pilot: Pilot, text: str) -> None:
    """`/` in the table, the text, enter: the filter is kept and the table has the focus."""
    await pilot.press("slash", *text, "enter")


# -- the row filter --------------------------------------------------------------------


async def test_slash_in_the_table_filters_rows_by_app_name_as_typed() -> None:
    async with dashboard() as (app, pilot, client):
        table = app.table
        assert table.row_keys == [
            "app:web",
            "w:0",
            "w:1",
            "app:api",
            "w:2",
            "w:3",
            "app:jobs",
            "w:4",
        ]
        await pilot.press("slash")
        assert app.focused is not None and app.focused.id == "row-filter"
        await pilot.press(*"ap")
        # narrowed as typed: "ap" is in api's name only (jobs:0 waits: "waiting" has no "ap")
        await until(pilot, lambda: table.row_keys == ["app:api", "w:2", "w:3"])
        assert title(app) == "processes · filter “ap” 2/5 workers"
        assert "filter “ap” 2/5 workers" in screen_text(app)
        await pilot.press("i", "enter")
        assert table.has_focus and table.filter_text == "api"
        assert table.row_keys == ["app:api", "w:2", "w:3"]
        assert "└ api:1" in table_text(app)  # the tree still ends on the group's last row
        # typing in the box did not run the keys ("a" is the log scope key)
        assert app.log_view.scope == (None, None) and ops(client) == []
        # the log filter is another thing, untouched
        assert app.log_view.filter_text == "" and len(app.log_view.shown) == 60


async def test_the_row_filter_matches_app_instance_and_is_a_plain_substring() -> None:
    async with dashboard() as (app, pilot, _):
        table = app.table
        await type_filter(pilot, "WEB:1")  # case-insensitive
        assert table.row_keys == ["app:web", "w:1"]
        assert "└ web:1" in table_text(app) and "web:0" not in table_text(app)
        assert "● 2/2 up" in table_text(app)  # web's row: both its workers, shown or not
        assert title(app).endswith("filter “WEB:1” 1/5 workers")
        await pilot.press("slash", "ctrl+u", *"[b]s.*", "enter")  # not markup, not a regex
        assert table.row_keys == [] and app.selection is None
        assert title(app).endswith("filter “[b]s.*” 0/5 workers")
        await pilot.press("r")  # nothing to act on: say why
        await until(pilot, lambda: any("no row matches the filter" in m for m in messages(app)))


async def test_the_row_filter_matches_the_status_and_follows_new_snapshots() -> None:
    async with dashboard() as (app, pilot, client):
        table = app.table
        await type_filter(pilot, "waiting")  # jobs:0 is waiting to restart
        assert table.row_keys == ["app:jobs", "w:4"]
        await pilot.press("slash", "ctrl+u", *"online", "enter")
        assert table.row_keys == ["app:web", "w:0", "w:1", "app:api", "w:2", "w:3"]
        assert title(app).endswith("filter “online” 4/5 workers")

        await pilot.press("slash", "ctrl+u", *"errored", "enter")
        assert table.row_keys == [] and title(app).endswith("0/5 workers")
        snap = copy.deepcopy(client.snapshot)
        snap["workers"][3].update(status="errored", pid=None)  # api:1 crashes
        client.push_state(snap)
        await until(pilot, lambda: table.row_keys == ["app:api", "w:3"])
        assert title(app).endswith("filter “errored” 1/5 workers")
        assert "✖ errored" in table_text(app)
        assert "✖ 1/2 up" in table_text(app)  # the app's row still sums up the whole app


async def test_esc_clears_the_row_filter_in_the_box_and_in_the_table() -> None:
    async with dashboard() as (app, pilot, _):
        table = app.table
        await pilot.press("slash", *"jobs")
        await until(pilot, lambda: table.row_count == 2)
        await pilot.press("escape")  # in the box: clears it and goes back to the table
        assert table.has_focus and table.filter_text == "" and table.row_count == 8
        assert title(app) == "processes"
        assert not app.main_screen.query_one("#row-filter").display

        await type_filter(pilot, "jobs")
        assert table.has_focus and table.row_count == 2
        await pilot.press("escape")  # in the table
        assert table.filter_text == "" and table.row_count == 8 and table.has_focus
        assert "Row filter cleared." in messages(app)


async def test_esc_clears_the_focused_panes_filter_first_then_the_others() -> None:
    async with dashboard() as (app, pilot, _):
        table, log = app.table, app.log_view
        await type_filter(pilot, "api")
        await pilot.press("l", "slash", *"slow", "enter")  # in the logs, `/` filters lines
        assert log.has_focus and log.filter_text == "slow" and table.filter_text == "api"
        await until(pilot, lambda: "filter" in footer_actions(app))
        await pilot.press("escape")
        assert log.filter_text == "" and table.filter_text == "api" and log.has_focus
        await pilot.press("escape")  # the logs have none left: the table's goes next
        assert table.filter_text == "" and log.has_focus

        await pilot.press("slash", *"slow", "enter")  # the logs still have the focus
        app.table.focus()  # the table again
        await until(pilot, lambda: table.has_focus)
        await type_filter(pilot, "api")
        await until(pilot, lambda: "filter_rows" in footer_actions(app))
        await pilot.press("escape")
        assert table.filter_text == "" and log.filter_text == "slow"
        await pilot.press("escape")
        assert log.filter_text == "" and table.has_focus


async def test_the_selection_survives_a_filter_that_keeps_its_row() -> None:
    async with dashboard() as (app, pilot, _):
        table = app.table
        assert table.select_key("w:3")  # api:1
        await type_filter(pilot, "api")
        assert app.selection is not None and app.selection.key == "w:3"
        await pilot.press("slash", "ctrl+u", *"web", "enter")  # hides api:1 and its app
        assert app.selection is not None and app.selection.key == "app:web"  # the first row
        await pilot.press("escape")  # shown again: the cursor goes back to it
        assert app.selection is not None and app.selection.key == "w:3"

        await type_filter(pilot, "api:0")  # hides api:1: its app row is still shown
        assert app.selection is not None and app.selection.key == "app:api"
        await pilot.press("j")  # the user moves: that is the selection now
        assert app.selection is not None and app.selection.key == "w:2"
        await pilot.press("escape")
        assert app.selection is not None and app.selection.key == "w:2"
        await until(pilot, lambda: "api:0  id 2" in screen_text(app))  # the details follow


def expected_groups(snapshot: dict[str, Any], query: str, field: str) -> list[str]:
    """The rows an `o` sort by `field` with filter `query` should give, worked out here:
    apps by the total of all their workers, each app's matching workers largest first."""

    def value(w: dict[str, Any]) -> float:
        return float(w.get(field) or 0) if w.get("pid") is not None else 0.0

    def matches(w: dict[str, Any]) -> bool:
        return query in f"{w['app']}:{w['instance']}" or query in w["status"]

    apps = sorted(
        snapshot["apps"],
        key=lambda a: sum(value(w) for w in snapshot["workers"] if w["app"] == a["name"]),
        reverse=True,
    )
    rows = []
    for a in apps:
        mine = [w for w in snapshot["workers"] if w["app"] == a["name"] and matches(w)]
        if mine or query in a["name"]:
            rows.append(f"app:{a['name']}")
            rows += [f"w:{w['id']}" for w in sorted(mine, key=value, reverse=True)]
    return rows


async def test_a_filtered_table_stays_grouped_and_sorted() -> None:
    snap = demo_snapshot(api_workers=4)
    for w in snap["workers"]:
        w["cpu"] = {0: 1.0, 1: 60.0, 2: 5.0, 3: 40.0, 4: 10.0, 5: 30.0}.get(w["id"], 0.0)
    client = FakeClient(snap)
    async with dashboard(client) as (app, pilot, _):
        table = app.table
        await pilot.press("o")  # by CPU
        await type_filter(pilot, "online")
        want = expected_groups(client.snapshot, "online", "cpu")
        # web (61%) before api (85%)? no: api's total is larger; jobs has none online
        assert want[0] == "app:api" and "app:jobs" not in want
        assert table.row_keys == want
        assert title(app) == "processes · by CPU ▼ · filter “online” 6/7 workers"
        text = table_text(app)
        assert text.index("api:1") < text.index("api:3") < text.index("api:2")
        assert "└ api:0" in text and "└ web:0" in text  # each group ends its own tree
        await pilot.press("o")  # the next sort applies to the filtered rows too
        assert table.row_keys == expected_groups(client.snapshot, "online", "memory")


async def test_slash_elsewhere_still_filters_the_logs_and_the_palette_has_both() -> None:
    async with dashboard() as (app, pilot, _):
        await pilot.press("l", "slash")
        assert app.focused is not None and app.focused.id == "filter"
        await pilot.press(*"slow", "enter")
        assert app.log_view.filter_text == "slow" and app.table.filter_text == ""
        assert app.table.row_count == 8
        commands = {c.title.split("  (")[0]: c for c in app.get_system_commands(app.screen)}
        app.call_later(commands["Filter the table's rows"].callback)  # from the logs' focus
        await until(pilot, lambda: app.focused is not None and app.focused.id == "row-filter")


# -- the mouse ---------------------------------------------------------------------------


def wheel(app: DashboardApp, widget: Widget, down: bool, at: tuple[int, int] = (5, 3)) -> None:
    """One wheel notch over `widget`, sent as the terminal driver sends it: to the app, in
    screen coordinates; the app routes it to the widget under the pointer."""
    region = widget.region
    x, y = region.x + at[0], region.y + at[1]
    kind = events.MouseScrollDown if down else events.MouseScrollUp
    app.post_message(kind(None, x, y, 0, 1 if down else -1, 0, False, False, False, x, y))


async def test_a_click_selects_a_row_of_a_filtered_table() -> None:
    async with dashboard() as (app, pilot, _):
        await type_filter(pilot, "api")
        # the border is the widget's row 0, its header row 1, then app:api, api:0, api:1
        await pilot.click("#procs", offset=(10, 4))
        assert app.selection is not None and app.selection.key == "w:3"
        await pilot.click("#procs", offset=(10, 2))
        assert app.selection is not None and app.selection.key == "app:api"


async def test_the_wheel_scrolls_the_table_and_the_logs() -> None:
    client = FakeClient(snapshot=demo_snapshot(api_workers=40))
    async with dashboard(client, size=(80, 24)) as (app, pilot, _):
        table, log = app.table, app.log_view
        assert table.max_scroll_y > 3 and table.scroll_y == 0
        for _ in range(2):
            wheel(app, table, down=True)
        await until(pilot, lambda: table.scroll_y >= 2)
        assert app.selection is not None and app.selection.key == "app:web"  # not moved
        assert "pid status" in table_text(app)  # the header row stays put
        assert "├ web:0" not in table_text(app)
        down_at = table.scroll_y
        wheel(app, table, down=False)
        await until(pilot, lambda: table.scroll_y < down_at)

        assert log.follow and log.scroll_y == log.max_scroll_y > 0
        bottom = log.scroll_y
        for _ in range(3):
            wheel(app, log, down=False)
        await until(pilot, lambda: log.scroll_y < bottom)
        assert not log.follow  # scrolled up to read: new lines no longer drag it down
        up_at = log.scroll_y
        wheel(app, log, down=True)
        await until(pilot, lambda: log.scroll_y > up_at)


# -- themes ------------------------------------------------------------------------------


@pytest.fixture
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    return home


async def choose_theme(app: DashboardApp, pilot: Pilot, name: str) -> None:
    """`T`, the theme's name in Textual's theme picker, enter."""
    from textual.command import CommandList, CommandPalette
    from textual.widgets import Input

    await pilot.press("T")
    await until(pilot, lambda: isinstance(app.screen, CommandPalette))
    app.screen.query_one(Input).value = name

    def best() -> str:
        hits = app.screen.query_one(CommandList)
        if hits.highlighted is None or not hits.option_count:
            return ""
        return str(hits.get_option_at_index(hits.highlighted).prompt)

    await until(pilot, lambda: best() == name)
    await pilot.press("enter")
    await until(pilot, lambda: app.theme == name)


async def test_t_picks_a_theme_and_the_next_start_has_it(config_home: Path) -> None:
    path = config_home / "clusterui" / "dashboard.json"
    assert default_path() == path
    async with dashboard(prefs=PrefsFile()) as (app, pilot, _):
        assert app.theme == "textual-dark" and not path.exists()
        await choose_theme(app, pilot, "textual-light")
        await until(pilot, lambda: path.exists())
        assert json.loads(path.read_text()) == {"theme": "textual-light"}
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert "processes" in screen_text(app)  # still drawn
    async with dashboard(prefs=PrefsFile()) as (app, pilot, _):
        assert app.theme == "textual-light"
        assert not [m for m in messages(app) if "theme" in m or "settings" in m]
    async with dashboard() as (app, pilot, _):  # no prefs: nothing read, nothing written
        assert app.theme == "textual-dark"
        await choose_theme(app, pilot, "nord")
    assert json.loads(path.read_text()) == {"theme": "textual-light"}


@pytest.mark.parametrize(
    ("content", "said"),
    [
        ('{"theme": "textual-light"', "not valid JSON (line 1, column 26)"),
        ("[1, 2]", "not a JSON object"),
        (b"\xff\xfe", "not UTF-8 text"),
        ('{"theme": "no-such-theme"}', "unknown dashboard theme 'no-such-theme'"),
        ('{"theme": 7}', "the saved dashboard theme is not a name"),
    ],
)
async def test_a_bad_settings_file_warns_once_and_the_defaults_apply(
    config_home: Path, content: str | bytes, said: str
) -> None:
    path = config_home / "clusterui" / "dashboard.json"
    path.parent.mkdir(parents=True, mode=0o700)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    async with dashboard(prefs=PrefsFile()) as (app, pilot, _):
        assert app.theme == "textual-dark" and app.is_running
        warnings = [n.message for n in app._notifications if n.severity == "warning"]
        assert len(warnings) == 1 and said in warnings[0], warnings
        assert "\n" not in warnings[0]
        await choose_theme(app, pilot, "textual-light")  # a new choice replaces the file
        await until(pilot, lambda: b"textual-light" in path.read_bytes())
    assert json.loads(path.read_text())["theme"] == "textual-light"


async def test_the_settings_file_is_never_followed_through_a_link(config_home: Path) -> None:
    folder = config_home / "clusterui"
    folder.mkdir(parents=True, mode=0o700)
    target = config_home / "elsewhere.json"
    target.write_text('{"theme": "nord"}')
    (folder / "dashboard.json").symlink_to(target)
    async with dashboard(prefs=PrefsFile()) as (app, pilot, _):
        assert app.theme == "textual-dark"  # the link was not read
        assert any("symbolic link" in m for m in messages(app))
        await choose_theme(app, pilot, "textual-light")
        await until(pilot, lambda: any("could not save" in m for m in messages(app)))
    assert target.read_text() == '{"theme": "nord"}'  # nor written through
    assert (folder / "dashboard.json").is_symlink()  # nor replaced
    assert sorted(os.listdir(folder)) == ["dashboard.json"]  # no temporary file left


async def test_no_color_holds_in_a_saved_light_theme(
    config_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert PrefsFile().save(theme="textual-light") is None
    monkeypatch.setenv("NO_COLOR", "1")
    async with dashboard(size=(100, 30), prefs=PrefsFile()) as (app, pilot, _):
        assert app.theme == "textual-light" and app.no_color
        await pilot.pause()
        svg = app.export_screenshot()
    assert_greys_only(svg)


def _luminance(c: Color) -> float:
    def channel(v: int) -> float:
        x = v / 255
        return x / 12.92 if x <= 0.03928 else ((x + 0.055) / 1.055) ** 2.4

    r, g, b = c.rgb
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


def contrast(fg: Color, bg: Color) -> float:
    """The WCAG contrast ratio, 1 (invisible) to 21 (black on white)."""
    hi, lo = sorted((_luminance(fg), _luminance(bg)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


DECORATION = set("╭╮╰╯─│├└▁ ")  # borders, tree lines and an empty sparkline


def weakest_text(widget: Widget, skip: set[str] = frozenset()) -> tuple[float, str]:
    """The lowest contrast of any text the widget and the widgets in it draw now (as the
    terminal gets it); fails if there is no text at all (a test that checks nothing)."""
    worst = (99.0, "")
    parts = [widget, *(w for w in widget.query("*") if w.display and w.size.area)]
    strips = [strip for w in parts for strip in w.render_lines(w.size.region)]
    assert any(seg.text.strip() for strip in strips for seg in strip), widget
    for strip in strips:
        for seg in strip:
            text = seg.text.strip()
            if not text or set(text) <= DECORATION or seg.style is None or text in skip:
                continue
            assert seg.style.color is not None and seg.style.bgcolor is not None, seg
            fg, bg = (
                Color.from_rich_color(seg.style.color),
                Color.from_rich_color(seg.style.bgcolor),
            )
            if seg.style.reverse:
                fg, bg = bg, fg
            if seg.style.dim:
                fg = dim_color(bg, fg)
            worst = min(worst, (contrast(fg, bg), text))
    return worst


@pytest.mark.parametrize("theme", ["textual-light", "textual-dark", "solarized-light"])
async def test_every_row_reads_in_light_and_dark_themes(theme: str) -> None:
    """Each status, figure and name in the table (the cursor row included) and the log
    lines reach 3:1 contrast (WCAG's floor for large text and controls) in the theme."""
    snap = demo_snapshot(api_workers=3)
    snap["workers"][1].update(status="errored", pid=None)
    snap["workers"][3].update(status="suspended")
    snap["workers"][4].update(status="stopped", pid=None)
    snap["apps"][1]["reloading"] = True
    async with dashboard(FakeClient(snap)) as (app, pilot, _):
        app.theme = theme
        # the cells are made again with the theme's colours (they hold their styles)
        good = lambda: fg_style(app.table, "proc--good")  # noqa: E731
        await until(pilot, lambda: app.table.get_cell("w:0", "status").spans[0].style == good())
        for key in ("app:web", "w:1", "w:3"):  # the cursor on an app, an errored, a paused
            assert app.table.select_key(key)
            await pilot.pause()
            ratio, text = weakest_text(app.table)
            assert ratio >= 3.0, (theme, key, text, ratio)
        # log lines: the timestamps are muted on purpose; everything else reads
        ratio, text = weakest_text(app.log_view, skip=_clock_texts(app))
        assert ratio >= 3.0, (theme, text, ratio)
        ratio, text = weakest_text(app.main_screen.query_one(StatusHeader))
        assert ratio >= 3.0, (theme, text, ratio)
        detail = app.main_screen.query_one(DetailPane)
        assert app.details_visible and "api:1" in screen_text(app)  # w:3's details
        ratio, text = weakest_text(detail)
        assert ratio >= 3.0, (theme, text, ratio)


def _clock_texts(app: DashboardApp) -> set[str]:
    from clusterui.dashboard.model import fmt_clock

    return {fmt_clock(r.time, UTC) for r in app.log_view.records}


def test_the_settings_path_follows_the_xdg_rules(tmp_path: Path) -> None:
    home = str(tmp_path)
    assert default_path({"HOME": home}) == tmp_path / ".config/clusterui/dashboard.json"
    assert default_path({"HOME": home, "XDG_CONFIG_HOME": "/etc/xdg-u"}) == Path(
        "/etc/xdg-u/clusterui/dashboard.json"
    )
    # a relative XDG_CONFIG_HOME is invalid (the spec says to ignore it)
    assert default_path({"HOME": home, "XDG_CONFIG_HOME": "rel"}) == default_path({"HOME": home})


def test_a_settings_folder_others_can_write_is_refused(config_home: Path) -> None:
    folder = config_home / "clusterui"
    folder.mkdir(parents=True)
    (folder / "dashboard.json").write_text('{"theme": "nord"}')
    folder.chmod(0o777)  # another user could swap the file for a link
    data, warning = PrefsFile().load()
    assert data == {} and warning is not None
    assert "can be written by other users" in warning and "\n" not in warning
    # saving makes the folder ours alone again (0700), as CLUSTERUI_HOME's are made
    assert PrefsFile().save(theme="nord") is None
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert PrefsFile().load() == ({"theme": "nord"}, None)
