"""One table of the dashboard's keys: the bindings, the `?` help and the palette use it."""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding


@dataclass(frozen=True)
class Key:
    keys: str  # Textual key names, comma separated
    show: str  # how the key is written for people
    action: str  # Textual action string
    label: str  # short, for the footer
    help: str  # one line, for `?` and the palette
    footer: bool = True
    palette: bool = True
    priority: bool = False


SCALE = Binding.Group("Scale", compact=True)

# Footer order is this order: help first (as htop's F1), the app verbs, the filter,
# quit, then detach: an 80-column footer has room for all but the last, and `q` leaves
# too (asking about the apps only if this dashboard started them).
KEYS: tuple[Key, ...] = (
    Key("question_mark", "?", "help", "Help", "Show these keys", palette=False),
    Key(
        "r",
        "r",
        "restart",
        "Restart",
        "Restart the selected worker (on an app row: the whole app, after asking)",
    ),
    Key(
        "R",
        "R",
        "reload",
        "Reload",
        "Rolling reload of the selected app: workers replaced one at a time",
    ),
    Key("plus,equals_sign", "+", "scale('+1')", "Scale+", "Add one worker to the selected app"),
    Key("minus", "-", "scale('-1')", "Scale-", "Remove one worker from the selected app"),
    Key(
        "s",
        "s",
        "stop",
        "Stop",
        "Stop the selected worker (on an app row: the whole app, after asking)",
    ),
    Key("S", "S", "start", "Start", "Start the selected worker or app"),
    Key("w", "w", "watch", "Watch", "Turn file-watch reload on or off for the selected app"),
    Key(
        "u",
        "u",
        "apply_file",
        "Apply",
        "Apply the ecosystem file as it is now: new apps start, changed ones reload",
        footer=False,
    ),
    Key("l", "l", "logs", "Logs", "Focus the log pane; again to maximise it; again to restore"),
    # `/` filters the focused pane: this entry the logs (and, in the footer, holds the
    # place of the table's, at the end of KEYS: the footer shows the one that applies).
    Key(
        "slash",
        "/",
        "filter",
        "Filter",
        "Outside the table: filter the log lines (enter keeps it, esc clears)",
        priority=True,
    ),
    Key(
        "q",
        "q",
        "quit",
        "Quit",
        "Quit (asks whether to stop the apps if this dashboard started them)",
    ),
    Key("d", "d", "detach", "Detach", "Leave the dashboard; the apps keep running"),
    Key("enter", "enter", "details", "Details", "Show or hide the detail pane", footer=False),
    Key("a", "a", "log_scope", "Scope", "Logs of all apps, or of the selection only", footer=False),
    Key(
        "v",
        "v",
        "sys_lines",
        "Sup lines",
        "Logs: everything, only the supervisor's lines (exits, restarts, reloads), or none",
        footer=False,
    ),
    Key(
        "o",
        "o",
        "sort",
        "Sort",
        "Sort by cpu, memory, req|conn/s, restarts, uptime, then the file's order (by app)",
        footer=False,
    ),
    Key("f", "f", "follow", "Follow", "Follow new log lines on or off", footer=False),
    Key("t", "t", "timestamps", "Times", "Log timestamps on or off", footer=False),
    Key(
        "x",
        "x",
        "signal",
        "Signal…",
        "Send a signal (HUP, USR1, USR2, INT, TERM, KILL) to the selected worker, or to "
        "every worker on an app row; KILL asks first",
        footer=False,
    ),
    Key(
        "L",
        "L",
        "log_screen",
        "Full log",
        "The selected worker's log (an app row: the app's) full screen: "
        "w wrap, t times, / search, n/N next/previous, r last restart, g/G top/bottom",
        footer=False,
    ),
    Key(
        "slash",
        "/",
        "filter_rows",
        "Filter",
        "In the table: show the rows whose app, app:instance or status has this text "
        "(enter keeps it, esc clears)",
        priority=True,
    ),
    Key(
        "T",
        "T",
        "change_theme",
        "Theme",
        "Choose a colour theme (remembered for the next start)",
        footer=False,
    ),
)

NAVIGATION = (
    ("j / k, ↓ / ↑", "Move the selection (or scroll the logs)"),
    ("tab", "Next pane"),
    ("ctrl+p", "Command palette"),
    ("esc", "Close a dialog, clear the focused pane's filter, restore a maximised pane"),
)


def bindings() -> list[Binding]:
    out = []
    for key in KEYS:
        out.append(
            Binding(
                key.keys,
                key.action,
                key.label,
                show=key.footer,
                key_display=key.show,
                tooltip=key.help,
                group=SCALE if key.action.startswith("scale") else None,
                priority=key.priority,
            )
        )
    return out
