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

TYPE_CHECKING = False
if TYPE_CHECKING:
    import re

# The unsafe code points, as inclusive ranges; tab (0x09) is unsafe unless kept.
TAB = 0x09
_RANGES = (
    (0x00, 0x08),
    (0x0A, 0x1F),
    (0x7F, 0x9F),
    (0x2028, 0x2029),
    (0x202A, 0x202E),  # bidirectional embeddings and overrides
    (0x2066, 0x2069),  # bidirectional isolates
)
_CODES = tuple(c for low, high in _RANGES for c in range(low, high + 1))


def _escaped_char(code: int) -> str:
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _picture_char(code: int) -> str:
    if code < 0x20:
        return chr(0x2400 + code)  # ␀ .. ␟ (␛ for ESC)
    if code == 0x7F:
        return "\u2421"  # ␡
    return "\ufffd"


# `escape` is the CLI's, and `clusterui ls` must not pay for importing `re` (see
# cli/quick.py): str.translate with a table does the same job in C.
_ESCAPES = {code: _escaped_char(code) for code in _CODES}
_ESCAPES_AND_TAB = {**_ESCAPES, TAB: _escaped_char(TAB)}
# `visible` is the dashboard's, on every line drawn: a compiled pattern's search finds
# nothing in most lines and returns them as they are, faster than a translation.
_patterns: dict[bool, re.Pattern[str]] = {}


def _pattern(keep_tab: bool) -> re.Pattern[str]:
    if keep_tab not in _patterns:
        import re

        ranges = _RANGES if keep_tab else ((TAB, TAB), *_RANGES)
        members = "".join(f"{chr(low)}-{chr(high)}" for low, high in ranges)
        _patterns[keep_tab] = re.compile(f"[{members}]")
    return _patterns[keep_tab]


def _picture(match: re.Match[str]) -> str:
    return _picture_char(ord(match.group()))


def escape(text: str, *, keep_tab: bool = True) -> str:
    """`text` with every unsafe character written as \\xNN or \\uNNNN (for the CLI)."""
    if text.isprintable():  # nothing unsafe is printable: the common case, no copy
        return text
    return text.translate(_ESCAPES if keep_tab else _ESCAPES_AND_TAB)


def visible(text: str, *, keep_tab: bool = False) -> str:
    """`text` with every unsafe character replaced by one visible character (for the
    dashboard: the same length, so styles laid over it still line up)."""
    pattern = _pattern(keep_tab)
    return pattern.sub(_picture, text) if pattern.search(text) else text


_sgr: list[re.Pattern[str]] = []


def visible_except_sgr(text: str) -> str:
    """Like `visible`, but colour sequences (SGR, ``ESC [ ... m``) stay as they are, for a
    view that turns them into styles (Rich's Text.from_ansi) and draws nothing raw."""
    if "\x1b" not in text:
        return visible(text)
    if not _sgr:
        import re

        _sgr.append(re.compile(r"(\x1b\[[0-9;:]*m)"))
    parts = _sgr[0].split(text)  # odd items are the SGR sequences
    return "".join(p if i % 2 else visible(p) for i, p in enumerate(parts))


def is_safe(text: str) -> bool:
    """True when `text` has nothing `escape`/`visible` would change (tab aside)."""
    return _pattern(True).search(text) is None
