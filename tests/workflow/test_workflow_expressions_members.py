"""Plain member paths (``$.data.workflow_id``) are answered by lookups: the same answers as the general query."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from nexus.services.workflow.expressions import _member_names, _query, compile_path, evaluator

NAMES = st.sampled_from(["a", "b", "data", "0", "x y", "é"])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(NAMES, children, max_size=4),
    max_leaves=20,
)


def _path(names: list[str]) -> str:
    return "$" + "".join(f"['{n}']" if not n.isidentifier() else f".{n}" for n in names)


@settings(max_examples=400, deadline=None)
@given(names=st.lists(NAMES, min_size=1, max_size=4), document=JSON)
def test_a_member_path_answers_what_the_query_answers(names: list[str], document: Any) -> None:
    text = _path(names)
    path = compile_path(text)
    assert _member_names(path) == tuple(names)
    assert evaluator(path, text)(document) == _query(path, document, text)


def test_other_paths_take_the_general_query() -> None:
    for text in ("$.a[0]", "$.a.*", "$..a", "$.a[?@.b == 1]", "$['a','b']"):
        path = compile_path(text)
        assert _member_names(path) is None
        document = {"a": [{"b": 1}, {"b": 2}], "b": 3}
        assert evaluator(path, text)(document) == _query(path, document, text)


def test_a_string_document_is_a_value_not_json_text_to_parse() -> None:
    # python-jsonpath would parse '{"a": 1}' and answer 1 for $.a; in a workflow it is a string.
    for text, expected in (("$", '{"a": 1}'), ("$.a", None), ("$[0]", None), ("$.*", [])):
        path = compile_path(text)
        assert _query(path, '{"a": 1}', text) == expected
        assert evaluator(path, text)('{"a": 1}') == expected
