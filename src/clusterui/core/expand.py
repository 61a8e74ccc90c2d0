"""`$PORT` and `${NAME}` in a worker's command line, from the worker's own environment.

clusterui never runs a shell, so `args: main:app --port $PORT` would reach the program
as the literal text `$PORT`. The supervisor expands these words itself, when it
spawns the worker, with the environment that worker gets (PORT in proxy mode,
CLUSTERUI_INSTANCE, the app's env...). `$$` is a literal `$`; a `$` not followed by a
name or `{` is kept as it is. Nothing else a shell does happens (no globbing, no
command substitution, no word splitting).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_TOKEN = re.compile(r"\$(?:\$|\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ExpandError(ValueError):
    """A word refers to a variable the worker's environment does not have."""


def check_expansion(word: str) -> str | None:
    """Why `word` cannot be expanded whatever the environment (bad syntax), else None."""
    if "${" in word.replace("$$", ""):
        for match in _TOKEN.finditer(word):
            braced = match.group(1)
            if braced is not None and not _NAME.fullmatch(braced):
                return f"{match.group(0)!r} is not a variable name (use $$ for a literal $)"
        stripped = _TOKEN.sub("", word)
        if "${" in stripped:
            return f"unclosed '${{' in {word!r} (use $$ for a literal $)"
    return None


def expand(word: str, env: Mapping[str, str]) -> str:
    """`word` with $NAME/${NAME} replaced from env; ExpandError names a missing one."""
    if "$" not in word:
        return word

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) if match.group(1) is not None else match.group(2)
        if not _NAME.fullmatch(name):
            raise ExpandError(f"{match.group(0)!r} is not a variable name")
        try:
            return env[name]
        except KeyError:
            raise ExpandError(f"${name} is not set in the worker's environment") from None

    return _TOKEN.sub(replace, word)


def expand_argv(argv: list[str], env: Mapping[str, str], skip: int = 0) -> list[str]:
    """Every word from index `skip` on expanded (the interpreter is left alone)."""
    return [*argv[:skip], *(expand(w, env) for w in argv[skip:])]
