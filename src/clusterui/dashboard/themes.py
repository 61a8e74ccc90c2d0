"""The colour theme: one of Textual's built-in set, chosen with `T`, kept across runs.

The dashboard does not read or write the settings file itself: it is handed an object
with `load()` and `save()` (the CLI's clusterui.cli.prefs.PrefsFile), so a test, or an
embedding program, can run it without touching anyone's configuration.
"""

from __future__ import annotations

from typing import Any, Protocol

from textual.app import App
from textual.theme import Theme

from clusterui.vocab.safetext import visible


class Prefs(Protocol):
    def load(self) -> tuple[dict[str, Any], str | None]:
        """The saved preferences, and a one-line warning if they could not be read."""
        ...

    def save(self, **changes: Any) -> str | None:
        """Save `changes`; None, or one line saying why not."""
        ...


class ThemeMemory:
    """Puts the saved theme on at the start, and saves each theme chosen after that."""

    def __init__(self, app: App[Any], prefs: Prefs) -> None:
        self.app = app
        self.prefs = prefs
        self._saved: str | None = None

    def start(self) -> None:
        data, warning = self.prefs.load()
        name = data.get("theme")
        if name is not None and not isinstance(name, str):
            warning = warning or "the saved dashboard theme is not a name; using the default."
        elif name is not None and name not in self.app.available_themes:
            shown = name if len(name) <= 40 else name[:39] + "…"
            warning = f"unknown dashboard theme {shown!r}; using the default."
        elif name is not None:
            self._saved = name
            self.app.theme = name
        if warning:
            self.app.notify(visible(warning), severity="warning", timeout=8, markup=False)
        self.app.theme_changed_signal.subscribe(self.app, self._changed)

    def _changed(self, theme: Theme) -> None:
        if theme.name == self._saved:
            return  # the one put on at the start, or the same one chosen again
        problem = self.prefs.save(theme=theme.name)
        if problem:
            self.app.notify(visible(problem), severity="warning", markup=False)
        else:
            self._saved = theme.name
