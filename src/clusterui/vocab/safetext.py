"""Text a worker controls, made safe to print to a terminal or draw in the dashboard.

A worker decides its log lines, its metric names, the names of files it writes under a
watched folder, and (through a .env or a shell) environment names. Printed raw, an
ESC or C1 sequence in any of them acts on the user's terminal: OSC 2 sets the window
title, OSC 52 writes the clipboard, CSI 2J clears the screen. This module is the one
place that decides what is unsafe; the CLI and the dashboard both call it (it imports
nothing from Rich or Textual).

- `escape` (CLI): each unsafe character becomes a visible escape such as ``\\x1b``,
  and a backslash that could be mistaken for one is left as it is (this is for eyes,
  not for parsing back; `logs --raw` and `--json` are the exact forms).
- `visible` (dashboard): each unsafe character becomes one visible character (a
  Unicode control picture, or U+FFFD), so the length, and Rich spans over it, stay right.

Unsafe: C0 controls (tab too, unless keep_tab), DEL, the C1 range U+0080..U+009F
(8-bit CSI/OSC on some terminals), the line and paragraph separators, and the
bidirectional overrides and isolates (they reorder what is shown, "Trojan Source").
"""

from __future__ import annotations

import re

_BIDI = "\u202a-\u202e\u2066-\u2069"
_UNSAFE = re.compile(f"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029{_BIDI}]")
_UNSAFE_OR_TAB = re.compile(f"[\x00-\x1f\x7f-\x9f\u2028\u2029{_BIDI}]")


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _picture(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x20:
        return chr(0x2400 + code)  # ␀ .. ␟ (␛ for ESC)
    if code == 0x7F:
        return "\u2421"  # ␡
    return "\ufffd"


def escape(text: str, *, keep_tab: bool = True) -> str:
    """`text` with every unsafe character written as \\xNN or \\uNNNN (for the CLI)."""
    pattern = _UNSAFE if keep_tab else _UNSAFE_OR_TAB
    return pattern.sub(_escaped, text) if pattern.search(text) else text


def visible(text: str, *, keep_tab: bool = False) -> str:
    """`text` with every unsafe character replaced by one visible character (for the
    dashboard: the same length, so styles laid over it still line up)."""
    pattern = _UNSAFE if keep_tab else _UNSAFE_OR_TAB
    return pattern.sub(_picture, text) if pattern.search(text) else text


_SGR = re.compile(r"(\x1b\[[0-9;:]*m)")


def visible_except_sgr(text: str) -> str:
    """Like `visible`, but colour sequences (SGR, ``ESC [ ... m``) stay as they are, for a
    view that turns them into styles (Rich's Text.from_ansi) and draws nothing raw."""
    if "\x1b" not in text:
        return visible(text)
    parts = _SGR.split(text)  # odd items are the SGR sequences
    return "".join(p if i % 2 else visible(p) for i, p in enumerate(parts))


def is_safe(text: str) -> bool:
    """True when `text` has nothing `escape`/`visible` would change (tab aside)."""
    return _UNSAFE.search(text) is None
