"""Opening a text box on a key, so that what is typed right after reaches the box.

A terminal delivers a fast typist's `/api⏎` as one burst. Textual hands each key to the
widget focused when the app reads it, and `Widget.focus()` only takes effect after the
messages already queued. So the key that opens a box has a priority binding (run as
the app reads it, before the next key is handed on), and its action focuses the box
with `focus_now`. The binding's check_action lets the key through to a box that
already has the focus, where it is a character.
"""

from __future__ import annotations

from textual.widget import Widget


def focus_now(widget: Widget) -> None:
    widget.screen.set_focus(widget)
