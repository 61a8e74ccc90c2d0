"""Component styles as foreground-only Rich styles."""

from __future__ import annotations

from collections.abc import Callable

from rich.style import Style
from textual.widget import Widget


def fg_style(widget: Widget, name: str) -> Style:
    """The component's colour and text style, blended for the theme, without a background.

    Textual's partial component style drops colour alpha (so "$text-muted" comes out as
    full-strength text, invisible on light themes); the full style resolves alpha but
    carries a background that would paint over a cursor row. Keep the foreground only.
    """
    full = widget.get_component_rich_style(name)
    return Style(
        color=full.color,
        bold=full.bold,
        dim=full.dim,
        italic=full.italic,
        reverse=full.reverse,
        underline=full.underline,
    )


class StyleCache:
    """A widget's styles, resolved once until its styles change (call clear() then).

    Resolving walks the DOM; a widget that draws a line per log record or table row asks
    for the same few styles thousands of times between two style updates.
    """

    def __init__(self, widget: Widget) -> None:
        self._widget = widget
        self._styles: dict[tuple[str, str], Style] = {}

    def clear(self) -> None:
        self._styles.clear()

    def base(self) -> Style:
        """The widget's own style (its background and colour)."""
        return self._get("base", "", lambda _: self._widget.rich_style)

    def fg(self, name: str) -> Style:
        """fg_style(): a component's foreground only."""
        return self._get("fg", name, lambda n: fg_style(self._widget, n))

    def full(self, name: str) -> Style:
        """A component's whole style, background included."""
        return self._get("full", name, self._widget.get_component_rich_style)

    def _get(self, kind: str, name: str, resolve: Callable[[str], Style]) -> Style:
        style = self._styles.get((kind, name))
        if style is None:
            style = self._styles[kind, name] = resolve(name)
        return style
