"""cli/quickjson.py gives exactly what `json` gives, for any value the protocol can carry."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clusterui.cli import quickjson

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


@given(values)
def test_dumps_is_json_dumps_compact(value) -> None:
    assert quickjson.dumps(value) == json.dumps(value, separators=(",", ":"))


@given(values)
def test_loads_reads_what_json_writes(value) -> None:
    for text in (json.dumps(value), json.dumps(value, indent=2), json.dumps(value) + "\n"):
        assert quickjson.loads(text) == json.loads(text)
        assert quickjson.loads(text.encode()) == json.loads(text.encode())


def test_loads_reads_constants_and_surrogates_as_json_does() -> None:
    assert math.isnan(quickjson.loads("NaN"))
    assert quickjson.loads("[Infinity,-Infinity]") == [math.inf, -math.inf]
    assert quickjson.loads('"\\ud800"') == json.loads('"\\ud800"')
    assert quickjson.loads(b' {"a": "\xc3\xa9"} ') == {"a": "é"}


@pytest.mark.parametrize("text", ["", " ", "{", '{"a":1}}', "[1] [2]", "nul", '"\x01"', b"\xff"])
def test_loads_refuses_what_json_refuses(text) -> None:
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        quickjson.loads(text)


def test_dumps_refuses_what_json_cannot_write() -> None:
    with pytest.raises(TypeError, match="set is not JSON serializable"):
        quickjson.dumps({"a": {1}})
