"""Component styles as foreground-only Rich styles."""

from __future__ import annotations

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
