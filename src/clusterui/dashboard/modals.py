"""Dialogs: confirm a whole-app action, the quit question, the signal menu, key help."""

from __future__ import annotations

from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, OptionList, Static
from textual.widgets.option_list import Option

from clusterui.dashboard.keys import KEYS, NAVIGATION
from clusterui.vocab.safetext import visible
from clusterui.vocab.signals import SIGNALS


class ConfirmScreen(ModalScreen[bool]):
    """Yes/no for a destructive action. Cancel has the focus, so a stray enter is safe."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes", show=False),
        Binding("n,escape", "answer(False)", "No", show=False),
    ]

    def __init__(self, question: str, confirm_label: str) -> None:
        super().__init__(classes="dialog")
        self.question = question
        self.confirm_label = confirm_label

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box"):
            yield Static(Text(self.question), classes="dialog-question")
            with Horizontal(classes="dialog-buttons"):
                yield Button(f"{self.confirm_label} (y)", variant="error", id="yes")
                yield Button("Cancel (n)", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class QuitScreen(ModalScreen[str | None]):
    """Asked on quit when this dashboard started the supervisor: "stop", "leave" or None."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("s", "answer('stop')", "Stop all", show=False),
        Binding("l", "answer('leave')", "Leave running", show=False),
        Binding("c,escape", "answer(None)", "Cancel", show=False),
    ]

    def __init__(self, apps: int) -> None:
        super().__init__(classes="dialog")
        self.apps = apps

    def compose(self) -> ComposeResult:
        what = f"{self.apps} app{'s' if self.apps != 1 else ''}"
        with Vertical(classes="dialog-box"):
            yield Static(
                Text(
                    f"This dashboard started the supervisor. Stop all apps ({what}), "
                    "or leave them running in the background?\n"
                    "(`clusterui attach` shows them again; `clusterui down` stops them.)"
                ),
                classes="dialog-question",
            )
            with Horizontal(classes="dialog-buttons"):
                yield Button("Stop all (s)", variant="error", id="stop")
                yield Button("Leave running (l)", variant="primary", id="leave")
                yield Button("Cancel (c)", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#leave", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss({"stop": "stop", "leave": "leave"}.get(event.button.id or ""))

    def action_answer(self, answer: str | None) -> None:
        self.dismiss(answer)


class SignalScreen(ModalScreen[str | None]):
    """Which signal to send (vocab.signals): its name, or None when cancelled. The
    dashboard then asks the supervisor to send it; KILL is confirmed first."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "cancel", "Cancel", show=False),
    ]

    def __init__(self, target: str, workers: int) -> None:
        super().__init__(classes="dialog")
        self.target = target
        self.count = workers

    def compose(self) -> ComposeResult:
        whom = f"{self.count} workers of " if self.count > 1 else ""
        options = [
            Option(Text.assemble((f"{name:<5}", "bold"), f" {meaning}"), id=name)
            for name, meaning in SIGNALS
        ]
        with Vertical(classes="dialog-box signal-box"):
            yield Static(
                Text(visible(f"Send a signal to {whom}{self.target}"), style="bold"),
                classes="dialog-title",
            )
            yield OptionList(*options, id="signals")
            yield Static(
                Text("enter sends · esc cancels · INT/TERM/KILL: it restarts", style="dim"),
                classes="dialog-hint",
            )

    def on_mount(self) -> None:
        menu = self.query_one(OptionList)
        menu.highlighted = 0  # enter right away sends the first one, as a menu does
        menu.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_cancel(self) -> None:
        self.dismiss(None)


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,question_mark,q", "close", "Close", show=False),
    ]

    def __init__(self) -> None:
        super().__init__(classes="dialog")

    def compose(self) -> ComposeResult:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        for key in KEYS:
            table.add_row(key.show, key.help)
        table.add_row("", "")
        for keys, text in NAVIGATION:
            table.add_row(keys, text)
        with Vertical(classes="dialog-box help-box"):
            yield Static(Text("Keys", style="bold"), classes="dialog-title")
            with VerticalScroll(classes="help-keys"):
                yield Static(table)
            yield Static(Text("esc or ? closes", style="dim"), classes="dialog-hint")

    def action_close(self) -> None:
        self.dismiss(None)
