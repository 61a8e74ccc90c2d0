"""PM2's ecosystem file formats → text the YAML-based loader reads.

- `.yaml` / `.yml`: read as they are.
- `.json` (`process.json`, `ecosystem.json`, `ecosystem.config.json`): JSON is YAML, so
  the loader reads it with its lines. PM2 evaluates a .json file as a JavaScript
  expression, so comments, trailing commas or unquoted keys work there; such a file is
  evaluated by `node` here too (when installed) and read like a JS file.
- `.js` / `.cjs` / `.mjs` (`ecosystem.config.js`): evaluated by `node`, as PM2 does, with
  the caller's environment (a config may read `process.env`). The exported object comes
  back as JSON and goes through the same loader; a JS file has no line for a key, so its
  problems name the app by name and index instead (`Source.synthetic`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import yaml

from clusterui.core import environ

YAML_SUFFIXES = (".yaml", ".yml")
JSON_SUFFIXES = (".json",)
JS_SUFFIXES = (".js", ".cjs", ".mjs")
SUFFIXES = (*YAML_SUFFIXES, *JSON_SUFFIXES, *JS_SUFFIXES)
# Looked up in this order when no file is named (PM2's own default is ecosystem.config.js).
DEFAULT_FILES = (
    "ecosystem.yaml",
    "ecosystem.yml",
    "ecosystem.config.js",
    "ecosystem.config.cjs",
    "ecosystem.config.mjs",
    "ecosystem.json",
    "ecosystem.config.json",
    "process.json",
    "process.yml",
    "process.yaml",
)
NODE_TIMEOUT = 15.0

# Prints the module's export (the default export, or module.exports) as JSON.
_EVAL_MODULE = r"""
const { pathToFileURL } = require("url");
import(pathToFileURL(process.argv[1]).href).then(
  (m) => {
    const v = m.default !== undefined ? m.default : m;
    process.stdout.write(JSON.stringify(v === undefined ? null : v));
  },
  (e) => { process.stderr.write(String((e && e.stack) || e)); process.exit(1); }
);
"""
# PM2's way with a .json file: the text is one JavaScript expression.
_EVAL_EXPRESSION = r"""
const fs = require("fs");
const vm = require("vm");
try {
  const text = fs.readFileSync(process.argv[1], "utf8");
  const v = vm.runInNewContext("(" + text + ")", {}, { filename: process.argv[1] });
  process.stdout.write(JSON.stringify(v === undefined ? null : v));
} catch (e) { process.stderr.write(String((e && e.stack) || e)); process.exit(1); }
"""


class SourceError(Exception):
    """The file cannot be turned into loader text; `line` is 0 when there is none."""

    def __init__(self, message: str, line: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


@dataclass
class Source:
    text: str
    # The text was made from an evaluated object: its lines mean nothing to the user.
    synthetic: bool = False


def kind(path: str) -> str:
    suffix = os.path.splitext(path)[1].lower()
    if suffix in JS_SUFFIXES:
        return "js"
    if suffix in JSON_SUFFIXES:
        return "json"
    return "yaml"


def is_ecosystem_file(path: str) -> bool:
    """Whether a verb's argument names an ecosystem file rather than a script, as PM2
    decides: .yaml/.yml/.json, and JS only as NAME.config.js/.cjs/.mjs (app.js is an app)."""
    name = os.path.basename(path).lower()
    suffix = os.path.splitext(name)[1]
    if suffix in JS_SUFFIXES and not os.path.splitext(name)[0].endswith(".config"):
        return False
    return suffix in SUFFIXES and os.path.isfile(path)


def to_source(path: str, text: str, caller_env: Mapping[str, str] | None, max_bytes: int) -> Source:
    """The loader's text for the file at `path` whose content is `text`."""
    what = kind(path)
    if what == "yaml":
        return Source(text)
    if what == "json":
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            error = SourceError(f"invalid JSON: {e.msg}", e.lineno)
        else:
            if _reads_as_yaml(text):
                return Source(text)  # read with its lines
            # Valid JSON that this YAML parser refuses (tabs without libyaml, say).
            return Source(json.dumps(value, indent=2), synthetic=True)
        # PM2 reads a .json file as a JavaScript expression: try that before giving up.
        if _node(caller_env) is None:
            raise error
        try:
            value = evaluate(path, caller_env, max_bytes, expression=True)
        except SourceError:
            raise error from None
        return Source(json.dumps(value, indent=2), synthetic=True)
    return Source(json.dumps(evaluate(path, caller_env, max_bytes), indent=2), synthetic=True)


def _reads_as_yaml(text: str) -> bool:
    try:
        yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        return True
    except yaml.YAMLError:
        return False


def _node(caller_env: Mapping[str, str] | None) -> str | None:
    path = (caller_env or {}).get("PATH") or os.environ.get("PATH", os.defpath)
    return shutil.which("node", path=path)


def evaluate(
    path: str, caller_env: Mapping[str, str] | None, max_bytes: int, *, expression: bool = False
) -> object:
    """Run `node` on the file and return what it exports (as plain JSON values)."""
    node = _node(caller_env)
    if node is None:
        raise SourceError(
            "a JavaScript ecosystem file is evaluated by node, which is not installed"
            " (not on PATH); install Node.js, or write the file as YAML or JSON"
        )
    env = environ.basics(os.environ)
    env.update(caller_env or {})
    argv = [node, "-e", _EVAL_EXPRESSION if expression else _EVAL_MODULE, os.path.abspath(path)]
    try:
        proc = subprocess.Popen(
            argv,
            cwd=os.path.dirname(os.path.abspath(path)) or "/",
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # whatever the config starts goes with it on a timeout
        )
    except OSError as e:
        raise SourceError(f"cannot run node: {e.strerror or e}") from None
    try:
        stdout, stderr = proc.communicate(timeout=NODE_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise SourceError(f"node did not finish evaluating it within {NODE_TIMEOUT:g} s") from None
    if proc.returncode != 0:
        line, message = _js_error(stderr.decode(errors="replace"), path)
        raise SourceError(f"node could not evaluate it: {message}", line)
    if len(stdout) > max_bytes:
        raise SourceError(f"what it exports is larger than {max_bytes // 1024} KiB as JSON")
    try:
        return json.loads(stdout or b"null")
    except ValueError:
        raise SourceError("node printed something that is not JSON") from None


def _js_error(stderr: str, path: str) -> tuple[int, str]:
    """(line in the file or 0, the error's one-line message) from node's stack trace."""
    line = 0
    m = re.search(re.escape(os.path.abspath(path)) + r":(\d+)", stderr)
    if m:
        line = int(m.group(1))
    message = ""
    for text in stderr.splitlines():
        if re.match(r"^[A-Za-z]*(Error|Exception)\b", text.strip()):
            message = text.strip()
            break
    if not message:
        message = next((t.strip() for t in stderr.splitlines() if t.strip()), "unknown error")
    message = "".join(c if c.isprintable() else "?" for c in message)
    return line, message[:300]


def app_labels(text: str) -> Callable[[int], str | None]:
    """For synthetic text: line → "app 'api' (apps[1])" naming the app that line is in
    (None outside every app), since the user's file has no such line."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        root = yaml.compose(text, Loader=loader)
    except yaml.YAMLError:
        root = None
    items: list[yaml.Node] = []
    if isinstance(root, yaml.SequenceNode):
        items = root.value
    elif isinstance(root, yaml.MappingNode):
        for key, value in root.value:
            if key.value == "apps" and isinstance(value, yaml.SequenceNode):
                items = value.value
    spans = []
    for i, item in enumerate(items):
        name = None
        if isinstance(item, yaml.MappingNode):
            name = next(
                (
                    v.value
                    for k, v in item.value
                    if k.value == "name" and isinstance(v, yaml.ScalarNode)
                ),
                None,
            )
        label = f"app {name!r} (apps[{i}])" if name else f"apps[{i}]"
        spans.append((item.start_mark.line + 1, item.end_mark.line + 1, label))

    def label(line: int) -> str | None:
        return next((text for first, last, text in spans if first <= line <= last), None)

    return label
