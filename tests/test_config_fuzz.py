"""Fuzzing the ecosystem loader: any input ends in a LoadResult or a ConfigError, nothing else."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clusterui.core.config import (
    ALIASES,
    KEYS,
    PM2_UNIMPLEMENTED,
    ConfigError,
    LoadResult,
    load_ecosystem,
    spec_from_mapping,
)
from clusterui.core.spec import AppSpec

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

_counter = itertools.count()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fuzz")
    (path / "app.py").write_text("print('hi')\n")
    (path / "app.js").write_text("")
    (path / "src").mkdir()
    return path


def _check_file(workdir: Path, data: bytes, env_name: str | None = None, only=None) -> None:
    path = workdir / f"eco-{next(_counter)}.yaml"
    path.write_bytes(data)
    try:
        result = load_ecosystem(path, env_name=env_name, only=only)
    except ConfigError as e:
        assert e.problems, "a ConfigError must carry at least one problem"
        for p in [*e.problems, *e.warnings]:
            assert p.line >= 1, f"problem without a line: {p}"
            assert len(p.message.splitlines()) == 1, p.message
            assert str(p).startswith(f"{path}:{p.line}: ")
        assert all(p.severity == "error" for p in e.problems)
    else:
        _check_result(result)
    finally:
        path.unlink()


def _check_result(result: LoadResult) -> None:
    assert result.apps
    names = [a.name for a in result.apps]
    assert len(set(names)) == len(names)
    for spec in result.apps:
        _check_spec(spec)
    for w in result.warnings:
        assert w.line >= 1 and w.severity == "warning"
        assert len(w.message.splitlines()) == 1, w.message


def _check_spec(spec: AppSpec) -> None:
    assert isinstance(spec, AppSpec)
    assert spec.script and spec.cwd.startswith("/")
    assert 1 <= spec.instances <= 1024
    assert spec.exec_mode in ("fork", "cluster")
    assert all(isinstance(a, str) for a in spec.args)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in spec.env.items())
    for key in ("watch_delay", "min_uptime", "restart_delay", "kill_timeout", "listen_timeout"):
        value = getattr(spec, key)
        assert isinstance(value, int) and 0 <= value < 2**31
    assert AppSpec.from_dict(spec.to_dict()) == spec


# --- random bytes -------------------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=2000))
def test_random_bytes(workdir: Path, data: bytes) -> None:
    _check_file(workdir, data)


# --- YAML-ish text ------------------------------------------------------------------------

_VALUE_TOKENS = [
    "~", "null", "yes", "no", "on", "true", "1e400", "-1", "0", "max", "0x1F", "0o17", "1_000",
    ".nan", "-.inf", "9" * 50, "2020-01-01", "app.py", "app.js", "python3 -m http.server",
    "8000", "unix:s.sock", "10M", "2s", "SIGTERM", "src", "*.log", "[a, 1]", "{A: 1}", "'q'",
    "!!python/object:os.system x", "*a", "&a [1]", "\"x\\ty\"",
]  # fmt: skip
_TOKENS = [
    "apps:", "\n", "\n  ", "\n    ", "  ", "- ", ": ", ":", " ", ",", "[", "]", "{", "}",
    "'", '"', "#", "|", ">", "---\n", "...\n", "%YAML 1.1\n", "? ", "&a ", "*a", "&b ", "*b",
    "<<: ", "!!python/object:os.system ", "!!str ", "!!int ", "!!binary ", "!!set ", "!x ",
    "\t", "\\", "\x00", "\x85", "\ufeff", "é", "env_production:", "x-defaults:",
    *_VALUE_TOKENS,
    *(f"{k}:" for k in (*KEYS, *ALIASES, "cron_restart", "deploy")),
]  # fmt: skip


@FUZZ
@given(parts=st.lists(st.sampled_from(_TOKENS), max_size=60))
def test_yamlish_text(workdir: Path, parts: list[str]) -> None:
    _check_file(workdir, "".join(parts).encode("utf-8", "surrogatepass"))


_line = st.tuples(
    st.sampled_from(["    ", "      ", "  - ", "    - ", "", "\t"]),
    st.sampled_from([*KEYS, *ALIASES, "env_production", "cron_restart", "<<", "? x", "A"]),
    st.sampled_from([": ", ":", ": &a ", ": *a ", ":\n      - ", ":\n      X: "]),
    st.lists(st.sampled_from(_VALUE_TOKENS), max_size=3),
).map(lambda t: t[0] + t[1] + t[2] + " ".join(t[3]) + "\n")


@FUZZ
@given(lines=st.lists(_line, max_size=12), env_name=st.sampled_from([None, "production"]))
def test_yamlish_lines(workdir: Path, lines: list[str], env_name: str | None) -> None:
    text = "apps:\n  - name: a\n    script: app.py\n" + "".join(lines)
    _check_file(workdir, text.encode(), env_name=env_name)


@FUZZ
@given(
    prefix=st.sampled_from(["apps:\n  - script: app.py\n    ", "- name: a\n  script: app.py\n  "]),
    parts=st.lists(st.sampled_from(_TOKENS), max_size=30),
    env_name=st.sampled_from([None, "production", "x"]),
)
def test_yamlish_text_inside_an_app(
    workdir: Path, prefix: str, parts: list[str], env_name: str | None
) -> None:
    _check_file(workdir, (prefix + "".join(parts)).encode(), env_name=env_name)


# --- the right keys with random values ----------------------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([0, 1, -1, 8000, 65536, 2**31, 2**63, 10**300]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(
        ["app.py", "app.js", "max", "cluster", "fork_mode", "8000", "[::1]:80", "unix:a.sock",
         "10M", "1.5G", "2s", "500ms", "SIGINT", "INT", "none", "src", "", " ", "shared",
         "python3 -m http.server", "'unclosed", "all", "123", "a:b", "../..", "/", "~"]
    ),
)  # fmt: skip
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=8), inner, max_size=4),
    ),
    max_leaves=12,
)
_known_key = st.sampled_from([*KEYS, *ALIASES, *PM2_UNIMPLEMENTED, "env_production", "env_"])
_key = st.one_of(_known_key, _known_key, _known_key, st.text(max_size=12))
_app = st.dictionaries(_key, _values, max_size=8).map(lambda d: {"script": "app.py", **d})
# Mostly one or two keys at a time on an otherwise valid app, so validation runs deep.
_near_valid_app = st.dictionaries(_known_key, _values, max_size=2).map(
    lambda d: {"script": "app.py", **d}
)
_apps = st.one_of(
    st.lists(st.one_of(_app, _values), max_size=4),
    st.dictionaries(st.sampled_from(["apps", "deploy", "x-a", "app"]), _values, max_size=3),
    st.lists(_app, min_size=1, max_size=4).map(lambda apps: {"apps": apps}),
    st.lists(_near_valid_app, min_size=1, max_size=3).map(lambda apps: {"apps": apps}),
    st.lists(_near_valid_app, min_size=1, max_size=3),
)


@FUZZ
@given(
    doc=_apps,
    env_name=st.sampled_from([None, "production", "nope"]),
    only=st.sampled_from([None, ["app"], ["app", "b"], ["zzz"]]),
)
def test_random_structures_as_files(workdir: Path, doc, env_name, only) -> None:
    _check_file(workdir, yaml.safe_dump(doc, allow_unicode=True).encode(), env_name, only)


_python_values = st.one_of(
    _values,
    st.tuples(st.integers()),
    st.frozensets(st.integers(), max_size=3),
    st.binary(max_size=5),
    st.builds(object),
    st.sampled_from([math.nan, float("inf"), 10**5000, -(10**5000)]),
)


@FUZZ
@given(
    mapping=st.dictionaries(
        st.one_of(_key, st.integers(), st.none(), st.tuples(st.text(max_size=3))),
        _python_values,
        max_size=8,
    )
)
def test_random_mappings_from_the_cli(workdir: Path, mapping: dict) -> None:
    try:
        spec = spec_from_mapping({"script": "app.py", **mapping}, str(workdir))
    except ConfigError as e:
        assert e.problems
        assert all(p.line == 0 and p.message for p in e.problems)
    else:
        _check_spec(spec)
