"""Expressions cannot stall the event loop: regular expressions on RE2, every query on a node budget."""

from __future__ import annotations

import subprocess
import sys

import pytest
import re2

from nexus.services.workflow.definitions import parse_workflow
from nexus.services.workflow.errors import DefinitionError, ExpressionError
from nexus.services.workflow.expressions import (
    MAX_NODES_VISITED,
    REGEX_ENGINE,
    compile_condition,
    compile_mapping,
    compile_path,
)

# Issue 9, finding 7: 26 characters of condition that Python's backtracking engine needs
# 2**n steps for (n the length of the run of "a"s), on the event loop.
CATASTROPHIC = "$.t[?search(@, '(a+)+$b')]"


def test_the_catastrophic_pattern_is_26_characters():
    assert len(CATASTROPHIC) == 26


def test_re2_is_the_engine_behind_match_and_search():
    assert REGEX_ENGINE is re2
    # A backreference is Python re syntax that RE2 does not have: refused when the path compiles,
    # so no pattern that needs backtracking reaches evaluation.
    with pytest.raises(ExpressionError) as caught:
        compile_path("$.t[?match(@, '(a)\\\\1')]")
    assert "refused by RE2" in str(caught.value) and "match()" in str(caught.value)
    with pytest.raises(ExpressionError, match="refused by RE2"):
        compile_path("$.t[?search(@, 'a(?=b)')]")


def test_a_catastrophic_pattern_over_a_long_string_completes():
    # With backtracking this would take longer than the universe has left; RE2 is linear.
    condition = compile_condition(CATASTROPHIC)
    assert condition.evaluate({"t": ["a" * 100_000 + "!"]}) is False
    assert condition.evaluate({"t": ["a" * 100_000 + "b"]}) is False  # '$' then 'b' can never match
    assert compile_condition("$.t[?match(@, '(a+)+b')]").evaluate({"t": ["a" * 100_000 + "b"]}) is True
    assert compile_condition("$.t[?match(@, '(a|aa)+c')]").evaluate({"t": ["a" * 100_000]}) is False


@pytest.mark.parametrize(
    ("function", "pattern", "value", "expected"),
    [
        # RFC 9535: match() is a full match, search() a partial one.
        ("match", "ab", "ab", True),
        ("match", "ab", "xab", False),
        ("search", "ab", "xaby", True),
        ("search", "^ab", "xab", False),
        ("match", "[a-c]+", "abcabc", True),
        ("match", "a.c", "abc", True),
        # I-Regexp: '.' matches any character but line feed and carriage return.
        ("match", "a.c", "a\nc", False),
        ("match", "a.c", "a\rc", False),
        ("match", "a[.]c", "a.c", True),
        ("search", "é+", "cafééé", True),
        ("match", "\\\\d+", "2026", True),
    ],
)
def test_match_and_search_keep_rfc_9535_semantics(function, pattern, value, expected):
    condition = compile_condition(f"$.v[?{function}(@, '{pattern}')]")
    assert condition.evaluate({"v": [value]}) is expected


def test_a_pattern_from_the_data_that_re2_refuses_matches_nothing():
    condition = compile_condition("$.v[?match(@.s, $.p)]")
    assert condition.evaluate({"v": [{"s": "aa"}], "p": "a+"}) is True
    assert condition.evaluate({"v": [{"s": "aa"}], "p": "(a)\\1"}) is False
    assert condition.evaluate({"v": [{"s": "aa"}], "p": 7}) is False


def test_a_literal_pattern_re2_refuses_makes_the_definition_a_400_problem():
    doc = {
        "id": "w",
        "steps": [{"id": "a", "service": "stub", "endpoint": "/x", "condition": "$.input[?match(@, '(x)\\\\1')]"}],
    }
    with pytest.raises(DefinitionError) as caught:
        parse_workflow(doc, known_services={"stub"}.__contains__, known_schemas=lambda _: False)
    assert caught.value.problems[0][0] == "$.steps[0].condition"
    assert "refused by RE2" in caught.value.problems[0][1]


def test_a_query_over_a_huge_document_fails_naming_the_budget():
    huge = {"items": list(range(MAX_NODES_VISITED * 2))}
    for text in ("$..*", "$.items[*]", "$.items[?@ >= 0]", "$..[?@ >= 0]"):
        with pytest.raises(ExpressionError) as caught:
            compile_mapping({"x": text}).evaluate(huge)
        assert f"more than {MAX_NODES_VISITED} nodes" in str(caught.value) and text in str(caught.value), text
    with pytest.raises(ExpressionError, match="more than"):
        compile_condition("$.items[*] == []").evaluate(huge)
    # A singular path reads its one value whatever the size of the rest.
    assert compile_mapping({"n": "$.items[7]"}).evaluate(huge) == {"n": 7}
    # Under the budget, the same queries work (the budget is per query, not per mapping).
    small = {"items": list(range(1000))}
    both = compile_mapping({"a": "$.items[*]", "b": "$..*"}).evaluate(small)
    assert both["a"] == small["items"] and len(both["b"]) == 1001


def test_queries_embedded_in_filters_share_the_budget():
    # Each of 1,000 lists walks its own 100 items: 100,000 nodes charged in all, in one query,
    # which would grow with the square of the document with a nested descendant over the root.
    doc = {"rows": [list(range(100)) for _ in range(1000)]}
    with pytest.raises(ExpressionError, match="more than"):
        compile_mapping({"x": "$.rows[?count(@..*) > 1]"}).evaluate(doc)
    assert compile_mapping({"x": "$.rows[?count(@..*) > 1]"}).evaluate({"rows": [[1, 2], [3]]}) == {"x": [[1, 2]]}


def test_descendants_keep_the_library_semantics():
    doc = {"a": [{"b": 1}, {"c": {"b": 2}}], "b": 0, "s": "text"}
    assert compile_mapping({"q": "$..b"}).evaluate(doc) == {"q": [0, 1, 2]}
    assert len(compile_mapping({"q": "$..*"}).evaluate(doc)["q"]) == 8


async def test_a_condition_over_a_huge_input_fails_the_step_instead_of_stalling(workflow_service):
    svc = await workflow_service()
    definition = {
        "id": "scan",
        "steps": [{"id": "look", "service": "stub", "endpoint": "/echo", "condition": "$.input..*"}],
    }
    code, body = await svc.post("/workflows", definition)
    assert code == 201, body
    code, body = await svc.post("/executions", {"workflow_id": "scan", "input": {"xs": [0] * (MAX_NODES_VISITED + 10)}})
    assert code == 202, body
    state = await svc.wait_final(body["id"], timeout=30)
    assert state.status == "FAILED"
    code, shown = await svc.get(f"/executions/{body['id']}")
    assert f"more than {MAX_NODES_VISITED} nodes" in str(shown), shown


# --- expressions of hostile size or shape are refused when compiled -------------------------


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("$" + ".a" * 3000, "the limit is 4096"),
        ("$" + ".a" * 100, "has 100 segments; the limit is 64"),
        ("$.x == " + "9" * 4300, "the limit is 4096"),
        ("not " * 33 + "$.x", "deeper than 32"),
        ("(" * 33 + "$.x" + ")" * 33, "deeper than 32"),
        ("$.x in " + "[" * 33 + "]" * 33, "deeper than 32"),
        ("$.x[?@ == " + "9" * 900 + "]", "malformed JSONPath"),
        ("$.x[?" + "(" * 600 + "@" + ")" * 600 + "]", "the limit is 1024"),
    ],
    ids=["long", "segments", "long number", "not", "parentheses", "lists", "filter number", "long path"],
)
def test_hostile_conditions_are_expression_errors(condition, expected):
    with pytest.raises(ExpressionError) as caught:
        compile_condition(condition)
    assert expected in str(caught.value)


def test_long_chains_and_nesting_within_the_limits_still_work():
    chain = " and ".join(["$.a"] * 400)
    assert compile_condition(chain).evaluate({"a": 1}) is True
    assert compile_condition(" or ".join(["$.b"] * 400 + ["$.a"])).evaluate({"a": 1}) is True
    assert compile_condition("not " * 32 + "$.a").evaluate({"a": 1}) is True
    assert compile_condition("(" * 32 + "$.a" + ")" * 32).evaluate({"a": 1}) is True
    assert compile_mapping({"x": "$.a" + "[0]" * 60}).evaluate({"a": [[[1]]]}) == {"x": None}


def test_a_path_of_a_hundred_thousand_segments_does_not_crash_the_process():
    # Evaluated, its generators stack 100,000 deep in C: the interpreter died with a segmentation
    # fault. Run in a child process so a crash fails this test instead of the whole run.
    code = (
        "from nexus.services.workflow.expressions import compile_condition\n"
        "from nexus.services.workflow.errors import ExpressionError\n"
        "try:\n"
        "    compile_condition('$' + '.a' * 100000).evaluate({'a': 1})\n"
        "except ExpressionError as exc:\n"
        "    print('refused:', exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert "refused:" in done.stdout and "limit" in done.stdout, done.stdout


async def test_a_hostile_condition_is_a_400_naming_the_step(workflow_service):
    svc = await workflow_service()
    for condition in ("$.input.x[?@ == " + "9" * 900 + "]", "not " * 40 + "$.input"):
        definition = {"id": "w", "steps": [{"id": "a", "service": "stub", "endpoint": "/echo", "condition": condition}]}
        code, body = await svc.post("/workflows", definition)
        assert code == 400, body
        assert body["problems"][0]["path"] == "$.steps[0].condition", body
