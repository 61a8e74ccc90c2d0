"""PM2's ecosystem files in every format (tests/corpus/pm2: real-world-shaped files), read
by the same loader; JS files evaluated by the real `node`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from clusterui.core.config import ConfigError, find_default_file, load_ecosystem
from clusterui.core.formats import is_ecosystem_file

PM2 = Path(__file__).parent / "corpus" / "pm2"
needs_node = pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")


def load(name: str, **kw):
    return load_ecosystem(PM2 / name, **kw)


def by_name(result):
    return {s.name: s for s in result.apps}


def warnings_of(result) -> list[str]:
    return [str(w) for w in result.warnings]


@needs_node
def test_ecosystem_config_js_module_exports(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    result = load("ecosystem.config.js", env_name="production", caller_env={"QUEUE_NAME": "q7"})
    apps = by_name(result)
    api, worker = apps["api"], apps["worker"]
    assert api.instances == 4  # 'max'
    assert api.exec_mode == "cluster"
    assert api.env == {"NODE_ENV": "production", "PORT": "8080"}  # env_production over env
    assert api.interpreter == "node" and api.interpreter_args == ["--max-old-space-size=4096"]
    assert api.max_memory_restart == 1024**3
    assert api.error_file == str(PM2 / "logs" / "api-error.log")  # path.join(__dirname, ...)
    assert api.merge_logs is True
    assert worker.instances == 2 and worker.max_restarts == 10  # numeric strings
    assert worker.min_uptime == 10_000 and worker.restart_delay == 4000
    assert worker.env == {"QUEUE": "q7"}  # process.env is the caller's environment
    text = "\n".join(warnings_of(result))
    assert "ecosystem.config.js: warning: 'deploy' is a PM2 key clusterui does not" in text
    assert "app 'api' (apps[0]): 'time' is a PM2 key" in text
    assert worker.cron_restart == "0 0 * * *"  # implemented: read, not warned about
    assert "cron_restart" not in text
    # Without the caller's variable the file's own default applies.
    assert by_name(load("ecosystem.config.js", caller_env={}))["worker"].env == {"QUEUE": "default"}


@needs_node
def test_cjs_and_mjs():
    cjs = by_name(load("ecosystem.config.cjs", env_name="production"))["cjs-app"]
    assert cjs.env == {"NODE_ENV": "production"}
    esm = by_name(load("ecosystem.config.mjs"))["esm-app"]
    assert esm.interpreter_args == ["--enable-source-maps"]


def test_process_json_with_lines():
    result = load("process.json", env_name="production")
    apps = by_name(result)
    api, worker = apps["json-api"], apps["json-worker"]
    assert (api.instances, api.exec_mode) == (2, "cluster")  # "2", "cluster_mode"
    assert api.interpreter_args == ["--harmony"]
    assert api.max_memory_restart == 300 * 1024**2
    assert api.env == {"NODE_ENV": "production"}
    assert api.ignore_watch == ["node_modules", "logs"]
    assert worker.args == ["--queue", "emails", "--concurrency", "4"]
    assert worker.max_restarts == 5
    # JSON is read with its lines.
    assert "process.json:12: warning: 'watch_options'" in "\n".join(warnings_of(result))


@needs_node
def test_json_read_as_pm2_does(monkeypatch):
    """Comments, unquoted keys and trailing commas: PM2 evaluates .json as JavaScript."""
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    app = by_name(load("ecosystem.json"))["lenient"]
    assert app.instances == 3  # "-1": all CPUs but one
    assert app.env == {"NODE_ENV": "development"}


def test_tab_indented_json_and_aliases():
    app = by_name(load("ecosystem.config.json", env_name="production"))["tabbed"]
    assert app.interpreter == "node"  # exec_interpreter
    assert app.merge_logs is True and app.env == {"NODE_ENV": "production"}


def test_process_yml_string_values():
    result = load("process.yml", env_name="production")
    apps = by_name(result)
    assert apps["yml-api"].instances == 2 and apps["yml-api"].max_restarts == 10
    assert apps["yml-api"].kill_timeout == 1600
    assert apps["yml-worker"].interpreter_args == ["--max-old-space-size=512"]
    assert any("process.yml:16: warning: 'deploy'" in w for w in warnings_of(result))


@needs_node
def test_js_errors_name_the_app_and_index():
    with pytest.raises(ConfigError) as info:
        load("bad/bad_value.config.js")
    text = str(info.value)
    assert "bad_value.config.js: app 'broken' (apps[1]): instances: must be a whole number" in text
    assert "app 'broken' (apps[1]): max_restarts: must be a whole number, not 'many'" in text
    assert "'fine'" not in text


@needs_node
def test_js_syntax_and_runtime_errors_are_one_line():
    with pytest.raises(ConfigError) as info:
        load("bad/syntax.config.js")
    [problem] = info.value.problems
    assert problem.line == 3 and "SyntaxError" in problem.message and "node" in problem.message
    with pytest.raises(ConfigError) as info:
        load("bad/throws.config.js")
    [problem] = info.value.problems
    assert "Cannot find module" in problem.message and "\n" not in str(problem)


def test_broken_json_names_the_line():
    with pytest.raises(ConfigError) as info:
        load("bad/broken.json")
    [problem] = info.value.problems
    assert problem.line == 5 and "invalid JSON" in problem.message


def test_js_without_node_is_one_clear_line(tmp_path):
    with pytest.raises(ConfigError) as info:
        load("ecosystem.config.js", caller_env={"PATH": str(tmp_path)})
    [problem] = info.value.problems
    assert "node" in problem.message and "not installed" in problem.message
    assert str(problem).startswith(str(PM2 / "ecosystem.config.js") + ": ")


def test_which_arguments_are_files(tmp_path):
    for name in ("ecosystem.config.js", "process.json", "process.yml", "x.config.mjs"):
        (tmp_path / name).write_text("{}")
        assert is_ecosystem_file(str(tmp_path / name))
    (tmp_path / "app.js").write_text("")
    assert not is_ecosystem_file(str(tmp_path / "app.js"))  # an app, as PM2 decides
    assert not is_ecosystem_file(str(tmp_path / "missing.json"))


def test_default_lookup_finds_pm2_names(tmp_path):
    (tmp_path / "ecosystem.config.js").write_text("module.exports = {apps: []}")
    assert find_default_file(tmp_path).name == "ecosystem.config.js"
    (tmp_path / "ecosystem.yaml").write_text("apps: []")
    assert find_default_file(tmp_path).name == "ecosystem.yaml"


def test_json_the_yaml_parser_refuses_is_still_read(monkeypatch):
    """Valid JSON with tab indentation: without libyaml, PyYAML refuses the tabs; the file
    is then read from its parsed value (problems name the app instead of a line)."""
    import json

    import yaml

    from clusterui.core import formats

    text = (PM2 / "ecosystem.config.json").read_text()
    assert formats.to_source("ecosystem.config.json", text, None, 1 << 20).synthetic is False
    monkeypatch.delattr(yaml, "CSafeLoader", raising=False)
    source = formats.to_source("ecosystem.config.json", text, None, 1 << 20)
    assert source.synthetic and json.loads(source.text) == json.loads(text)
