"""JSON for the quick verbs, without the `json` package's import cost.

`import json` loads `re` (and with it `enum`, `functools`, `collections`): about a
third of what a `clusterui ls` call spends before it sends its request. The C
accelerator underneath, `_json`, needs none of that, and the `json` package itself
is a thin layer over it. These two functions are that layer for the one shape the
control protocol uses (compact, ASCII, one value per line), and give exactly what
`json.dumps(obj, separators=(",", ":"))` and `json.loads` give; tests/test_quickjson.py
checks that against `json` on generated values. Where `_json` is missing (an
interpreter without it) they are `json`'s own.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _unserialisable(obj: object) -> object:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _constant(name: str) -> float:
    return float(name)  # NaN, Infinity, -Infinity, as json.loads reads them


class _Context:
    """The options `_json.make_scanner` reads, set as `json.loads` sets them by default."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_constant)


try:
    import _json
except ImportError:  # pragma: no cover - CPython always has it
    import json as _fallback

    def dumps(obj: Any) -> str:
        return _fallback.dumps(obj, separators=(",", ":"))

    loads = _fallback.loads
else:
    _encode = _json.make_encoder(
        None, _unserialisable, _json.encode_basestring_ascii, None, ":", ",", False, False, True
    )
    _scan = _json.make_scanner(_Context())
    _WHITESPACE = " \t\n\r"

    def dumps(obj: Any) -> str:
        """`obj` as compact ASCII JSON. A circular value is not looked for (it ends in
        RecursionError): the quick verbs send only what they build."""
        return "".join(_encode(obj, 0))

    def loads(text: str | bytes) -> Any:
        """The one JSON value in `text` (UTF-8 when bytes, as the control socket
        speaks); ValueError when it is not exactly one."""
        if isinstance(text, (bytes, bytearray)):
            text = text.decode("utf-8", "surrogatepass")
        end = len(text.rstrip(_WHITESPACE))
        start = len(text) - len(text.lstrip(_WHITESPACE))
        try:
            value, stop = _scan(text, start)
        except StopIteration as exc:
            raise ValueError(f"no JSON value at character {exc.value}") from None
        if stop != end:
            raise ValueError(f"extra data at character {stop}")
        return value
