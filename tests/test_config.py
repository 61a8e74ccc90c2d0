"""Ecosystem loader: the corpus of broken files, resolved fields of good ones, and semantics."""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

import pytest
import yaml

from clusterui.core import nodeapp
from clusterui.core.config import (
    MAX_FILE_BYTES,
    ConfigError,
    LoadResult,
    Problem,
    find_default_file,
    load_ecosystem,
    spec_from_mapping,
    yamlfile,
)
from clusterui.core.spec import AppSpec, Listen

CORPUS = Path(__file__).parent / "corpus"
BAD = sorted((CORPUS / "bad").glob("*.yaml"))
GOOD = CORPUS / "good"

_DIRECTIVE = re.compile(r"#\s*(expect|env|only):\s*(.*)")


def _directives(path: Path) -> tuple[list[tuple[int, str]], str | None, list[str] | None]:
    """The leading `# expect: LINE: fragment`, `# env: NAME` and `# only: a,b` comments."""
    expects: list[tuple[int, str]] = []
    env = only = None
    for line in path.read_text().splitlines():
        m = _DIRECTIVE.match(line)
        if not m:
            break
        kind, rest = m.groups()
        if kind == "expect":
            num, _, fragment = rest.partition(": ")
            expects.append((int(num), fragment.strip()))
        elif kind == "env":
            env = rest.strip()
        else:
            only = rest.strip().split(",")
    return expects, env, only


def _write(tmp_path: Path, text: str, name: str = "ecosystem.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _load_one(tmp_path: Path, app_yaml: str, **kwargs) -> tuple[AppSpec, LoadResult]:
    (tmp_path / "app.py").write_text("print('hi')\n")
    body = "apps:\n  - " + app_yaml.strip().replace("\n", "\n    ") + "\n"
    result = load_ecosystem(_write(tmp_path, body), **kwargs)
    assert len(result.apps) == 1
    return result.apps[0], result


def _errors(tmp_path: Path, text: str, **kwargs) -> list[Problem]:
    with pytest.raises(ConfigError) as info:
        load_ecosystem(_write(tmp_path, text), **kwargs)
    return info.value.problems


# --- the corpus ---------------------------------------------------------------------------


def test_corpus_is_big_enough() -> None:
    assert len(BAD) >= 30
    for path in BAD:
        assert _directives(path)[0], f"{path.name} has no '# expect:' line"


@pytest.fixture(params=["libyaml", "python"])
def yaml_loader(request, monkeypatch) -> str:
    """Both parsers the loader may use: libyaml when installed, else PyYAML's own."""
    if request.param == "python":
        monkeypatch.setattr(yamlfile, "_LOADER", yaml.SafeLoader)
        monkeypatch.setattr(yamlfile, "_C_LOADER", False)
    elif not yamlfile._C_LOADER:
        pytest.skip("PyYAML is built without libyaml")
    return request.param


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_corpus(path: Path, yaml_loader: str) -> None:
    expects, env, only = _directives(path)
    with pytest.raises(ConfigError) as info:
        load_ecosystem(path, env_name=env, only=only)
    problems = info.value.problems
    report = str(info.value)
    # Exactly the expected problems: no cascade of follow-on errors.
    assert len(problems) == len(expects), report
    for line, fragment in expects:
        assert any(p.line == line and fragment in p.message for p in problems), (
            f"expected line {line}: {fragment!r}\ngot:\n{report}"
        )
    for p in problems:
        assert p.severity == "error"
        assert p.file == str(path)
        assert str(p) == f"{path}:{p.line}: {p.message}"
    assert report.splitlines() == [str(p) for p in problems]


# --- good files ---------------------------------------------------------------------------


def test_good_full_file_resolves_every_key() -> None:
    result = load_ecosystem(GOOD / "full.yaml", env_name="production")
    assert result.path == str(GOOD / "full.yaml")
    assert result.warnings == []
    [web] = result.apps
    base = str(GOOD)
    assert web.name == "web"
    assert web.script == f"{base}/scripts/web.py"
    assert web.args == ["--greeting", "hi", "42"]
    assert web.cwd == base
    assert web.interpreter == sys.executable
    assert web.interpreter_args == ["-u"]
    assert web.instances == 3
    assert web.exec_mode == "cluster"
    assert web.listen == Listen("tcp", "127.0.0.1", 8000)
    assert web.dispatch == "least-connections"
    assert web.watch == [f"{base}/scripts"]
    assert web.ignore_watch == ["*.log", "tmp"]
    assert web.watch_delay == 1000
    assert web.env == {"GREETING": "hi", "PORT_BASE": "9000", "DEBUG": "false", "RATIO": "1.5"}
    assert web.autorestart is False
    assert web.max_restarts == 3
    assert web.min_uptime == 2000
    assert web.restart_delay == 250
    assert web.exp_backoff_restart_delay == 100
    assert web.kill_timeout == 5000
    assert web.kill_signal == signal.SIGTERM
    assert web.wait_ready is True
    assert web.listen_timeout == 60_000
    assert web.max_memory_restart == 300 * 1024**2
    assert web.out_file == f"{base}/logs/web-out.log"
    assert web.error_file == f"{base}/logs/web-err.log"
    assert web.merge_logs is True
    assert web.log_date_format == "YYYY-MM-DD HH:mm:ss"
    assert web.log_max_size == 1024**3
    assert web.log_retain == 2
    assert web.source == str(GOOD / "full.yaml")
    assert web.source_line == 3
    assert web.argv() == [sys.executable, "-u", f"{base}/scripts/web.py", "--greeting", "hi", "42"]
    # The spec survives the control socket's round trip.
    assert AppSpec.from_dict(web.to_dict()) == web


def test_good_pm2_process_yml_with_aliases_and_warnings(monkeypatch) -> None:
    result = load_ecosystem(GOOD / "process.yml", env_name="production")
    worker, tasks = result.apps
    base = str(GOOD)
    assert worker.name == "worker"  # derived from scripts/worker.js
    assert worker.interpreter == "node"
    assert worker.interpreter_args == ["--max-old-space-size=256"]
    assert worker.exec_mode == "cluster"
    assert worker.instances == 2
    assert worker.out_file == f"{base}/logs/worker.out"
    assert worker.error_file == f"{base}/logs/worker.err"
    assert worker.merge_logs is True
    assert worker.env == {"NODE_ENV": "production"}
    assert tasks.interpreter == "sh"
    assert tasks.autorestart is False
    assert tasks.max_memory_restart == 512 * 1024
    messages = [(w.line, w.message) for w in result.warnings]
    assert worker.cron_restart == "0 3 * * *"  # implemented now: no warning
    assert not any("cron_restart" in m for _line, m in messages)
    assert (11, "'vizion' is a PM2 key clusterui does not implement; ignored") in messages
    # A Node app in cluster mode without 'listen' takes the port from its own listen().
    assert not any("cluster mode without 'listen'" in m for _, m in messages)
    assert nodeapp.learns_port(worker)
    assert all(w.severity == "warning" for w in result.warnings)


def test_good_top_level_list() -> None:
    one, two = load_ecosystem(GOOD / "list_top.yaml").apps
    assert (one.name, two.name) == ("one", "two")
    assert two.args == ["--fast", "--port", "8001"]
    assert (one.source_line, two.source_line) == (2, 4)


def test_good_anchors_and_merge_keys() -> None:
    api, admin = load_ecosystem(GOOD / "anchors.yaml").apps
    assert api.cwd == str(GOOD / "scripts")
    assert api.script == str(GOOD / "scripts" / "web.py")
    assert api.max_restarts == 5
    assert api.env == {"SHARED": "yes"}
    # Keys written in the app win over merged ones.
    assert admin.max_restarts == 9
    assert admin.env == {"OWN": "1"}


def test_good_unix_listen_command_and_watch_true() -> None:
    [static] = load_ecosystem(GOOD / "unix_static.yaml").apps
    assert static.script == "python3"
    assert static.args == ["-m", "http.server", "--directory", "static"]
    assert static.interpreter is None
    assert static.listen == Listen("unix", path=str(GOOD / "run" / "static.sock"))
    assert static.exec_mode == "cluster"  # implied by listen
    assert static.dispatch == "proxy"
    assert static.watch == [str(GOOD)]
    assert static.log_max_size is None
    assert static.kill_signal == signal.SIGTERM


# --- semantics ----------------------------------------------------------------------------


def test_env_selection_merges_over_env(tmp_path: Path) -> None:
    text = """
name: web
script: app.py
env: {A: "1", B: "2"}
env_production: {B: "20", C: 30}
env_staging: {A: x}
"""
    plain, _ = _load_one(tmp_path, text)
    assert plain.env == {"A": "1", "B": "2"}
    prod, _ = _load_one(tmp_path, text, env_name="production")
    assert prod.env == {"A": "1", "B": "20", "C": "30"}
    staging, _ = _load_one(tmp_path, text, env_name="staging")
    assert staging.env == {"A": "x", "B": "2"}


def test_env_selection_needs_one_app_with_it(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("")
    text = """apps:
  - name: a
    script: app.py
    env_production: {X: 1}
  - name: b
    script: app.py
"""
    result = load_ecosystem(_write(tmp_path, text), env_name="production")
    assert [a.env for a in result.apps] == [{"X": "1"}, {}]
    problems = _errors(tmp_path, text, env_name="prod")
    assert [(p.line, p.message) for p in problems] == [(1, "no app has 'env_prod'")]
    # With --only, the selected apps must have it.
    problems = _errors(tmp_path, text, env_name="production", only=["b"])
    assert [p.message for p in problems] == ["no app has 'env_production'"]


def test_env_values_become_strings(tmp_path: Path) -> None:
    spec, _ = _load_one(
        tmp_path,
        """
script: app.py
env: {S: text, I: 8000, F: 0.5, T: true, N: false, on: 1, "1": one, E: ""}
""",
    )
    assert spec.env == {
        "S": "text",
        "I": "8000",
        "F": "0.5",
        "T": "true",
        "N": "false",
        "on": "1",  # a key is the text written, never YAML 1.1's boolean
        "1": "one",
        "E": "",
    }


def test_only_keeps_named_apps_in_file_order(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("")
    text = "apps:\n" + "".join(f"  - name: {n}\n    script: app.py\n" for n in ("a", "b", "c"))
    path = _write(tmp_path, text)
    assert [s.name for s in load_ecosystem(path, only=["c", "a"]).apps] == ["a", "c"]
    assert [s.name for s in load_ecosystem(path, only=["b,c"]).apps] == ["b", "c"]
    with pytest.raises(ConfigError) as info:
        load_ecosystem(path, only=["a", "d"])
    [problem] = info.value.problems
    assert "--only names 'd', which is not an app in this file (apps: a, b, c)" in problem.message


def test_only_still_validates_the_whole_file(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("")
    text = "apps:\n  - name: a\n    script: app.py\n  - name: b\n    script: app.py\n    bogus: 1\n"
    problems = _errors(tmp_path, text, only=["a"])
    assert [(p.line, p.message) for p in problems] == [(6, "unknown key 'bogus'")]


@pytest.mark.parametrize(
    ("filename", "content", "expected"),
    [
        ("app.py", "", sys.executable),
        ("app.js", "", "node"),
        ("app.mjs", "", "node"),
        ("app.cjs", "", "node"),
        ("app.sh", "", "bash"),
        ("app.PY", "", sys.executable),
    ],
)
def test_interpreter_inferred_from_extension(
    tmp_path: Path, filename: str, content: str, expected: str
) -> None:
    (tmp_path / filename).write_text(content)
    result = load_ecosystem(_write(tmp_path, f"apps:\n  - script: {filename}\n"))
    [spec] = result.apps
    assert spec.interpreter == expected
    assert spec.name == "app"
    assert spec.argv() == [expected, str(tmp_path / filename)]


def test_interpreter_explicit_none_and_relative_path(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("")
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").write_text("")
    spec, _ = _load_one(tmp_path, "script: app.py\ninterpreter: none")
    assert spec.interpreter is None
    assert spec.argv() == [str(tmp_path / "app.py")]
    spec, _ = _load_one(tmp_path, "script: app.py\ninterpreter: ./venv/bin/python")
    assert spec.interpreter == str(venv / "python")
    spec, _ = _load_one(tmp_path, "script: app.py\ninterpreter: 'python3 -X dev'")
    assert spec.interpreter == "python3"
    assert spec.interpreter_args == ["-X", "dev"]


def test_executable_without_extension_is_run_directly(tmp_path: Path) -> None:
    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\necho hi\n")
    tool.chmod(0o755)
    result = load_ecosystem(_write(tmp_path, "apps:\n  - script: tool\n"))
    assert result.apps[0].interpreter is None
    assert result.warnings == []
    tool.chmod(0o644)
    result = load_ecosystem(_write(tmp_path, "apps:\n  - script: tool\n"))
    [warning] = result.warnings
    assert "is not executable and has no known extension; set 'interpreter'" in warning.message


def test_missing_node_is_a_warning(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "app.js").write_text("")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    result = load_ecosystem(_write(tmp_path, "apps:\n  - script: app.js\n"))
    assert result.apps[0].interpreter == "node"
    [warning] = result.warnings
    assert (warning.line, warning.severity) == (2, "warning")
    assert "needs 'node', which is not on PATH" in warning.message


def test_relative_paths_are_relative_to_the_file_not_the_process(
    tmp_path: Path, monkeypatch
) -> None:
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("")
    (project / "assets").mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    text = """apps:
  - name: main
    cwd: src
    script: main.py
    watch: [., ../assets]
    out_file: ../logs/out.log
  - name: root
    script: src/main.py
"""
    main, root = load_ecosystem(_write(project, text)).apps
    assert main.cwd == str(project / "src")
    assert main.script == str(project / "src" / "main.py")
    assert main.watch == [str(project / "src"), str(project / "assets")]
    assert main.out_file == str(project / "logs" / "out.log")
    assert root.cwd == str(project)
    assert root.script == str(project / "src" / "main.py")


def test_absolute_and_home_paths(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "app.py").write_text("")
    spec, _ = _load_one(tmp_path, f"script: {tmp_path}/app.py\ncwd: ~/")
    assert spec.script == str(tmp_path / "app.py")
    assert spec.cwd == str(tmp_path)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("max", 8), ("MAX", 8), (0, 8), (-1, 7), (-3, 5), (-8, 1), (-100, 1), (1, 1), (64, 64)],
)
def test_instances(tmp_path: Path, monkeypatch, value, expected: int) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    spec, _ = _load_one(tmp_path, f"script: app.py\ninstances: {value}")
    assert spec.instances == expected


@pytest.mark.parametrize(
    ("value", "dispatch", "expected"),
    [
        (None, "round-robin", 1),
        (2, "round-robin", 2),
        ("auto", "round-robin", 8),
        ("AUTO", "round-robin", 8),
        ("auto", "least-connections", 1),  # auto: one where the mode cannot share
        ("auto", "proxy", 1),
    ],
)
def test_dispatchers(tmp_path: Path, monkeypatch, value, dispatch: str, expected: int) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    key = f"\ndispatchers: {value}" if value is not None else ""
    spec, _ = _load_one(tmp_path, f"script: app.py\nlisten: 8000\ndispatch: {dispatch}{key}")
    assert spec.dispatchers == expected


def test_script_as_command(tmp_path: Path) -> None:
    spec, result = _load_one(tmp_path, "script: python3 -m http.server\nargs: 9000")
    assert spec.name == "python3"
    assert spec.script == "python3"
    assert spec.args == ["-m", "http.server", "9000"]
    assert spec.interpreter is None
    assert result.warnings == []
    # A file named in a command is made absolute, and its interpreter inferred.
    spec, _ = _load_one(tmp_path, "name: web\nscript: app.py --port 8000")
    assert spec.script == str(tmp_path / "app.py")
    assert spec.args == ["--port", "8000"]
    assert spec.interpreter == sys.executable
    # Quoting works as in a shell, with no shell involved.
    spec, _ = _load_one(tmp_path, "name: e\nscript: echo 'a b' \"$HOME\" '|' x")
    assert spec.args == ["a b", "$HOME", "|", "x"]


def test_command_not_on_path_is_a_warning(tmp_path: Path) -> None:
    spec, result = _load_one(tmp_path, "name: x\nscript: no-such-command-xyz --flag")
    assert spec.script == "no-such-command-xyz"
    [warning] = result.warnings
    assert warning.line == 3
    assert "'no-such-command-xyz' is neither a file in" in warning.message
    assert "nor a command on PATH" in warning.message


def test_script_with_spaces_in_its_file_name(tmp_path: Path) -> None:
    (tmp_path / "my app.py").write_text("")
    result = load_ecosystem(_write(tmp_path, "apps:\n  - name: a\n    script: my app.py\n"))
    assert result.apps[0].script == str(tmp_path / "my app.py")
    assert result.apps[0].args == []


def test_derived_name_that_is_not_valid(tmp_path: Path) -> None:
    (tmp_path / "8000.py").write_text("")
    problems = _errors(tmp_path, "apps:\n  - script: 8000.py\n")
    assert [(p.line, p.message[:44]) for p in problems] == [
        (2, "'name' is missing and cannot be derived from")
    ]


@pytest.mark.parametrize("name", ["web", "web-1", "api_v2", "a.b", "A1"])
def test_valid_names(tmp_path: Path, name: str) -> None:
    spec, _ = _load_one(tmp_path, f"name: {name}\nscript: app.py")
    assert spec.name == name


@pytest.mark.parametrize("name", ["a b", "web:0", "42", "all", "ALL", "-x", "x" * 65, "é", ""])
def test_invalid_names(tmp_path: Path, name: str) -> None:
    (tmp_path / "app.py").write_text("")
    problems = _errors(tmp_path, f"apps:\n  - name: '{name}'\n    script: app.py\n")
    assert len(problems) == 1
    assert problems[0].line == 2
    assert problems[0].message.startswith("name: ")


def test_exec_mode_and_listen(tmp_path: Path) -> None:
    spec, result = _load_one(tmp_path, "script: app.py\nlisten: 8000")
    assert (spec.exec_mode, spec.listen) == ("cluster", Listen("tcp", "0.0.0.0", 8000))
    assert result.warnings == []
    spec, _ = _load_one(tmp_path, "script: app.py\nlisten: '[::1]:9000'\nexec_mode: cluster")
    assert spec.listen == Listen("tcp", "::1", 9000)
    spec, _ = _load_one(tmp_path, "script: app.py\nexec_mode: fork_mode")
    assert (spec.exec_mode, spec.listen) == ("fork", None)
    spec, result = _load_one(tmp_path, "script: app.py\nexec_mode: cluster\ninstances: 4")
    assert spec.exec_mode == "cluster"
    [warning] = result.warnings
    assert warning.message == (
        "exec_mode: cluster mode without 'listen' runs 4 instance(s) with no dispatch"
    )
    spec, result = _load_one(tmp_path, "script: app.py\ndispatch: shared")
    [warning] = result.warnings
    assert warning.message == "dispatch: 'dispatch' has no effect without 'listen'"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("SIGINT", signal.SIGINT), ("INT", signal.SIGINT), ("sigterm", signal.SIGTERM),
     ("HUP", signal.SIGHUP), (9, signal.SIGKILL), ("15", signal.SIGTERM)],
)  # fmt: skip
def test_kill_signal(tmp_path: Path, value, expected: int) -> None:
    spec, _ = _load_one(tmp_path, f"script: app.py\nkill_signal: {value}")
    assert spec.kill_signal == expected
    assert isinstance(spec.kill_signal, int)


@pytest.mark.parametrize("value", ["SIGNOPE", "SIG_DFL", 0, 999, "true", "[1]"])
def test_bad_kill_signal(tmp_path: Path, value) -> None:
    (tmp_path / "app.py").write_text("")
    problems = _errors(tmp_path, f"apps:\n  - script: app.py\n    kill_signal: {value}\n")
    assert [p.line for p in problems] == [3]
    assert problems[0].message.startswith("kill_signal: ")


def test_watch_forms(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    spec, _ = _load_one(tmp_path, "script: app.py\nwatch: true")
    assert spec.watch == [str(tmp_path)]
    spec, _ = _load_one(tmp_path, "script: app.py\nwatch: false")
    assert spec.watch == []
    spec, _ = _load_one(tmp_path, "script: app.py\nwatch: src")
    assert spec.watch == [str(tmp_path / "src")]
    spec, result = _load_one(tmp_path, "script: app.py\nwatch: [src, missing]")
    assert spec.watch == [str(tmp_path / "src"), str(tmp_path / "missing")]
    [warning] = result.warnings
    assert "does not exist" in warning.message
    spec, _ = _load_one(tmp_path, "script: app.py\nignore_watch: '*.tmp'")
    assert spec.ignore_watch == ["*.tmp"]


def test_durations_and_sizes(tmp_path: Path) -> None:
    spec, _ = _load_one(
        tmp_path,
        """
script: app.py
min_uptime: 1.5s
restart_delay: "250"
kill_timeout: 3000
listen_timeout: 2m
watch_delay: 500ms
max_memory_restart: 1.5G
log_max_size: 512k
""",
    )
    assert (spec.min_uptime, spec.restart_delay, spec.kill_timeout) == (1500, 250, 3000)
    assert (spec.listen_timeout, spec.watch_delay) == (120_000, 500)
    assert spec.max_memory_restart == int(1.5 * 1024**3)
    assert spec.log_max_size == 512 * 1024
    for off in ("0", "null", "false"):
        spec, _ = _load_one(tmp_path, f"script: app.py\nlog_max_size: {off}")
        assert spec.log_max_size is None


def test_defaults_match_appspec(tmp_path: Path) -> None:
    spec, result = _load_one(tmp_path, "script: app.py")
    default = AppSpec(name="app", script=str(tmp_path / "app.py"))
    for key in ("watch_delay", "min_uptime", "kill_timeout", "kill_signal", "max_restarts"):
        assert getattr(spec, key) == getattr(default, key)
    assert (spec.log_max_size, spec.log_retain) == (default.log_max_size, default.log_retain)
    assert (spec.instances, spec.exec_mode, spec.listen) == (1, "fork", None)
    assert result.warnings == []


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("")
    text = """apps:
  - name: a
    script: app.py
    instances: lots
    min_uptime: soon
  - name: b
    script: app.py
    autorestart: maybe
    exec_mode: swarm
"""
    problems = _errors(tmp_path, text)
    assert [p.line for p in problems] == [4, 5, 8, 9]


def test_problem_and_error_formatting() -> None:
    assert str(Problem("f.yaml", 3, "bad")) == "f.yaml:3: bad"
    assert str(Problem("f.yaml", 3, "meh", "warning")) == "f.yaml:3: warning: meh"
    assert str(Problem("f.yaml", 0, "missing")) == "f.yaml: missing"
    assert str(Problem("", 0, "plain")) == "plain"
    err = ConfigError([Problem("f", 1, "one"), Problem("f", 2, "two")])
    assert str(err) == "f:1: one\nf:2: two"
    assert len(err.problems) == 2


# --- reading the file ---------------------------------------------------------------------


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_ecosystem(tmp_path / "nope.yaml")
    assert str(info.value) == f"{tmp_path / 'nope.yaml'}: file not found"
    with pytest.raises(ConfigError) as info:
        load_ecosystem(tmp_path)
    assert "is a directory" in str(info.value)


def test_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "e.yaml"
    path.write_bytes(b"apps:\n  - name: web\n    script: caf\xe9.py\n")
    with pytest.raises(ConfigError) as info:
        load_ecosystem(path)
    [problem] = info.value.problems
    assert (problem.line, problem.message) == (3, "the file is not UTF-8 text (byte 0xe9)")


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("")
    path = tmp_path / "e.yaml"
    path.write_bytes(b"\xef\xbb\xbfapps:\n  - script: app.py\n")
    assert load_ecosystem(path).apps[0].name == "app"


def test_control_characters_name_the_line(tmp_path: Path, yaml_loader: str) -> None:
    path = tmp_path / "e.yaml"
    path.write_bytes("apps:\n  - name: wéb\x00\n".encode())
    with pytest.raises(ConfigError) as info:
        load_ecosystem(path)
    [problem] = info.value.problems
    assert problem.line == 2
    assert "U+0000 is not allowed" in problem.message


def test_file_size_cap(tmp_path: Path) -> None:
    path = tmp_path / "e.yaml"
    path.write_bytes(b"# " + b"x" * MAX_FILE_BYTES + b"\n")
    with pytest.raises(ConfigError) as info:
        load_ecosystem(path)
    assert "larger than 1024 KiB" in str(info.value)


def test_deep_nesting(tmp_path: Path, yaml_loader: str) -> None:
    (tmp_path / "app.py").write_text("")
    for depth in (60, 5000):
        text = "apps:\n  - script: app.py\n    env: " + "[" * depth + "]" * depth + "\n"
        problems = _errors(tmp_path, text)
        assert len(problems) == 1
        assert "nest" in problems[0].message
        assert problems[0].line >= 1


def test_find_default_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        find_default_file(tmp_path)
    [problem] = info.value.problems
    assert "no ecosystem file" in problem.message and "ecosystem.config.js" in problem.message
    assert "ecosystem.example.yaml" in problem.message
    assert str(info.value) == problem.message
    (tmp_path / "process.json").write_text("{}")
    assert find_default_file(tmp_path) == tmp_path / "process.json"
    (tmp_path / "ecosystem.config.js").write_text("module.exports = {}")
    assert find_default_file(tmp_path) == tmp_path / "ecosystem.config.js"
    (tmp_path / "ecosystem.yml").write_text("")
    assert find_default_file(tmp_path) == tmp_path / "ecosystem.yml"
    (tmp_path / "ecosystem.yaml").write_text("")
    assert find_default_file(tmp_path) == tmp_path / "ecosystem.yaml"


# --- spec_from_mapping (the CLI's `clusterui start SCRIPT`) -------------------------------


def test_spec_from_mapping_like_the_cli(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    (tmp_path / "server.py").write_text("")
    warnings: list[Problem] = []
    spec = spec_from_mapping(
        {
            "script": "server.py",
            "instances": "max",
            "name": "api",
            "listen": "8000",
            "watch": True,
            "args": ["--port", 1],
        },
        str(tmp_path),
        warnings=warnings,
    )
    assert spec.name == "api"
    assert spec.script == str(tmp_path / "server.py")
    assert spec.instances == 4
    assert spec.exec_mode == "cluster"
    assert spec.listen == Listen("tcp", "0.0.0.0", 8000)
    assert spec.watch == [str(tmp_path)]
    assert spec.args == ["--port", "1"]
    assert spec.interpreter == sys.executable
    assert warnings == []


def test_spec_from_mapping_errors_have_no_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        spec_from_mapping({"script": "missing.py", "instances": -0.5, 3: "x"}, str(tmp_path))
    messages = sorted(str(p) for p in info.value.problems)
    assert messages == [
        "instances: must be a whole number, 'max', 0 or -N, not -0.5",
        "key 3 is not a string",
        f"script: 'missing.py' not found (looked in {tmp_path})",
    ]
    with pytest.raises(ConfigError) as info:
        spec_from_mapping({"script": "missing.py"}, str(tmp_path), source="cli", line=0)
    assert str(info.value).startswith("cli: script: ")
    with pytest.raises(ConfigError):
        spec_from_mapping(["not", "a", "dict"], str(tmp_path))  # type: ignore[arg-type]


def test_top_level_deploy_warns_and_x_keys_are_free(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("")
    text = """x-notes: anything at all
deploy:
  production: {user: node}
apps:
  - script: app.py
"""
    result = load_ecosystem(_write(tmp_path, text))
    assert [a.name for a in result.apps] == ["app"]
    assert [(w.line, w.message) for w in result.warnings] == [
        (2, "'deploy' is a PM2 key clusterui does not implement; ignored")
    ]


def test_more_pm2_spellings(tmp_path: Path) -> None:
    spec, result = _load_one(
        tmp_path,
        """
exec: app.py
interpreterArgs: [-O]
out: o.log
err_log: e.log
log_file: combined.log
uid: www-data
""",
    )
    assert spec.script == str(tmp_path / "app.py")
    assert spec.interpreter_args == ["-O"]
    assert (spec.out_file, spec.error_file) == (str(tmp_path / "o.log"), str(tmp_path / "e.log"))
    assert [w.message for w in result.warnings] == [
        "'log_file' is a PM2 key clusterui does not implement; ignored"
        " (use out_file and error_file)",
        "'uid' is a PM2 key clusterui does not implement; ignored (run clusterui as that user;"
        " `clusterui export systemd` maps it to User=)",
    ]
    assert spec.user == "www-data"  # kept for `clusterui export`, not applied


def test_interpreter_args_without_interpreter_warns(tmp_path: Path) -> None:
    spec, result = _load_one(tmp_path, "script: app.py\ninterpreter: none\nnode_args: -u")
    assert (spec.interpreter, spec.interpreter_args) == (None, [])
    [warning] = result.warnings
    assert warning.message == "node_args: has no effect without an interpreter"
    assert warning.line == 4


def test_messages_quote_odd_keys_on_one_line(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("")
    problems = _errors(tmp_path, 'apps:\n  - script: app.py\n    "bad\\nkey": 1\n')
    assert [(p.line, p.message) for p in problems] == [(3, "unknown key 'bad\\nkey'")]
