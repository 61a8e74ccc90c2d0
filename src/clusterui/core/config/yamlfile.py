"""YAML text → plain values, each remembering the line it came from.

The YAML is composed (not constructed) with the safe loader so each value keeps its
line; nodes are then turned into plain Python objects here, which is also where tags,
alias bombs and deep nesting are refused. Problems go to the caller's list.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.constructor import SafeConstructor

from clusterui.core.config.problems import Problem, quote

# Total values after alias expansion: far above any real file, far below a "billion laughs".
MAX_VALUES = 100_000
MAX_DEPTH = 50

_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_TAG + t for t in ("str", "int", "float", "bool", "null")}


class _Invalid:
    """A value that could not be read; already reported, so validation skips it."""

    def __repr__(self) -> str:
        return "<invalid>"


INVALID: Any = _Invalid()


class _TooBig(Exception):
    def __init__(self, line: int) -> None:
        super().__init__(line)
        self.line = line


def has_invalid(value: Any) -> bool:
    """Whether a value holds something already reported (so it is not reported again)."""
    if value is INVALID:
        return True
    if isinstance(value, dict):
        return any(has_invalid(v) for v in value.values())
    if isinstance(value, list):
        return any(has_invalid(v) for v in value)
    return False


def _tag_name(tag: str) -> str:
    return "!!" + tag[len(_TAG) :] if tag.startswith(_TAG) else tag


def node_line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


class Reader:
    """Converts a composed node graph to dicts/lists/scalars, recording where each came from.

    `lines[path]` is the line of the value at `path` (a tuple of keys and list indexes from
    the document root); `keylines[path]` the line of the mapping key naming it.
    """

    def __init__(self, errors: list[Problem], file: str) -> None:
        self.errors = errors
        self.file = file
        self.lines: dict[tuple[Any, ...], int] = {}
        self.keylines: dict[tuple[Any, ...], int] = {}
        self.count = 0
        self.active: set[int] = set()
        self.constructor = SafeConstructor()

    def error(self, line: int, message: str) -> None:
        self.errors.append(Problem(self.file, line, message))

    def read(self, node: yaml.Node) -> Any:
        try:
            return self.convert(node, (), 0)
        except _TooBig as e:
            self.error(
                e.line,
                f"the file expands to more than {MAX_VALUES} values (aliases nested too deeply?)",
            )
            return INVALID

    def convert(self, node: yaml.Node, path: tuple[Any, ...], depth: int) -> Any:
        self.count += 1
        line = node_line(node)
        if self.count > MAX_VALUES:
            raise _TooBig(line)
        self.lines[path] = line
        if depth > MAX_DEPTH:
            self.error(line, f"values are nested more than {MAX_DEPTH} levels deep")
            return INVALID
        if id(node) in self.active:
            self.error(line, "an alias refers to a value that contains it (a recursive alias)")
            return INVALID
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.ScalarNode):
                return self.scalar(node)
            if isinstance(node, yaml.SequenceNode):
                if node.tag != _TAG + "seq":
                    self.error(line, f"unsupported YAML tag '{_tag_name(node.tag)}'")
                    return INVALID
                return self.sequence(node, path, depth)
            if isinstance(node, yaml.MappingNode):
                if node.tag != _TAG + "map":
                    self.error(line, f"unsupported YAML tag '{_tag_name(node.tag)}'")
                    return INVALID
                return self.mapping(node, path, depth)
            self.error(line, "unsupported YAML node")
            return INVALID
        finally:
            self.active.discard(id(node))

    def sequence(self, node: yaml.SequenceNode, path: tuple[Any, ...], depth: int) -> list:
        out = []
        for i, item in enumerate(node.value):
            try:
                out.append(self.convert(item, (*path, i), depth + 1))
            except _TooBig:
                if depth == 0:
                    raise _TooBig(node_line(item)) from None
                raise
        return out

    def scalar(self, node: yaml.ScalarNode) -> Any:
        tag = node.tag
        if tag == _TAG + "timestamp":
            # A date-looking value is almost always meant as text here.
            return node.value
        if tag not in _SCALAR_TAGS:
            self.error(node_line(node), f"unsupported YAML tag '{_tag_name(tag)}'")
            return INVALID
        try:
            return self.constructor.yaml_constructors[tag](self.constructor, node)
        except Exception:  # e.g. `!!int abc`, or an integer too long for int()
            shown = node.value if len(node.value) <= 40 else node.value[:37] + "..."
            self.error(node_line(node), f"cannot read {shown!r} as {_tag_name(tag)}")
            return INVALID

    def mapping(self, node: yaml.MappingNode, path: tuple[Any, ...], depth: int) -> dict:
        result: dict[str, Any] = {}
        seen: dict[str, int] = {}
        merges: list[tuple[dict, dict, dict]] = []
        for key_node, value_node in node.value:
            key_line = node_line(key_node)
            if key_node.tag == _TAG + "merge":
                merges.extend(self.merge(value_node, path, depth))
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self.error(key_line, "a mapping key must be a plain string, not a list or mapping")
                continue
            # The key's text as written: `on:` or `1:` in env means the name "on" or "1".
            key = key_node.value
            if key in seen:
                self.error(key_line, f"duplicate key {quote(key)} (first on line {seen[key]})")
                continue
            seen[key] = key_line
            self.keylines[(*path, key)] = key_line
            try:
                result[key] = self.convert(value_node, (*path, key), depth + 1)
            except _TooBig:
                if depth == 0:  # name the top-level entry that explodes, not a leaf deep inside
                    raise _TooBig(key_line) from None
                raise
        # Merged keys (`<<: *defaults`) never override keys written in this mapping, and
        # the first merged mapping wins, as in YAML's merge spec.
        n = len(path)
        for merged, lines, keylines in merges:
            for key, value in merged.items():
                if key in result:
                    continue
                result[key] = value
                for src, dst in ((lines, self.lines), (keylines, self.keylines)):
                    for p, line in src.items():
                        if len(p) > n and p[n] == key:
                            dst[p] = line
        return result

    def merge(
        self, node: yaml.Node, path: tuple[Any, ...], depth: int
    ) -> list[tuple[dict, dict, dict]]:
        """Each mapping `<<` names, with the lines recorded while reading it (kept apart so
        they cannot overwrite those of keys written in the merging mapping)."""
        nodes = node.value if isinstance(node, yaml.SequenceNode) else [node]
        out = []
        for item in nodes:
            if not isinstance(item, yaml.MappingNode):
                self.error(node_line(item), "'<<' (merge) needs a mapping or a list of mappings")
                continue
            saved = self.lines, self.keylines
            self.lines, self.keylines = {}, {}
            try:
                value = self.convert(item, path, depth + 1)
            finally:
                scratch = self.lines, self.keylines
                self.lines, self.keylines = saved
            if isinstance(value, dict):
                out.append((value, *scratch))
        return out


# libyaml when present: the pure-Python parser needs tens of seconds for a hostile 1 MiB file.
_LOADER: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_C_LOADER = _LOADER is not yaml.SafeLoader


class _Refused(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def _precheck(text: str) -> None:
    """Walk the event stream (no nodes, no recursion) and refuse what composing must not see:
    nesting deep enough to exhaust the stack, or more values than any real file has."""
    loader = _LOADER(text)
    try:
        depth = count = 0
        while loader.check_event():
            event = loader.get_event()
            if isinstance(event, yaml.NodeEvent):
                count += 1
                if count > MAX_VALUES:
                    line = event.start_mark.line + 1
                    raise _Refused(line, f"the file has more than {MAX_VALUES} values")
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    line = event.start_mark.line + 1
                    raise _Refused(line, f"values are nested more than {MAX_DEPTH} levels deep")
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    finally:
        loader.dispose()


def _yaml_message(e: yaml.MarkedYAMLError, text: str) -> tuple[int, str]:
    mark = e.problem_mark or e.context_mark
    line = mark.line + 1 if mark else 1
    problem = e.problem or ""
    lines = text.split("\n")
    source_line = lines[line - 1] if mark and 0 < line <= len(lines) else ""
    column = mark.column if mark else 0
    if problem == "found undefined alias":  # libyaml leaves the name out
        m = re.match(r"\*([^\s,\[\]{}]+)", source_line[column:])
        if m:
            problem = f"found undefined alias '{m.group(1)}'"
    message = problem or e.context or "invalid YAML"
    if e.context and problem:
        ctx_line = e.context_mark.line + 1 if e.context_mark else line
        where = f" on line {ctx_line}" if ctx_line != line else ""
        if problem.startswith("but "):  # "expected X (line N), but found Y"
            message = f"{e.context}{where}, {problem}"
        else:
            message = f"{problem} ({e.context}{where})"
    if source_line[column : column + 1] == "\t" and "tab" not in message:
        message += "; YAML indents with spaces, not tabs"
    return line, message


def compose(text: str, file: str, errors: list[Problem]) -> yaml.Node | None | _Invalid:
    loader = None
    try:
        _precheck(text)
        loader = _LOADER(text)
        return loader.get_single_node()
    except _Refused as e:
        errors.append(Problem(file, e.line, e.message))
    except yaml.MarkedYAMLError as e:
        line, message = _yaml_message(e, text)
        errors.append(Problem(file, line, f"invalid YAML: {message}"))
    except yaml.reader.ReaderError as e:
        # libyaml counts UTF-8 bytes; the Python reader counts characters.
        before = text.encode("utf-8", "surrogatepass")[: e.position] if _C_LOADER else text
        line = before[: max(e.position, 0)].count(b"\n" if _C_LOADER else "\n") + 1
        errors.append(
            Problem(file, line, f"invalid YAML: character U+{e.character:04X} is not allowed")
        )
    except RecursionError:
        line = getattr(loader, "line", 0) + 1
        errors.append(Problem(file, line, "invalid YAML: values are nested too deeply"))
    except yaml.YAMLError as e:
        errors.append(Problem(file, 1, f"invalid YAML: {e}".splitlines()[0]))
    except Exception:  # a parser bug must still end as one clear problem, not a traceback
        line = getattr(loader, "line", 0) + 1
        errors.append(Problem(file, line, "invalid YAML: the parser could not read this"))
    finally:
        if loader is not None:
            loader.dispose()
    return INVALID
