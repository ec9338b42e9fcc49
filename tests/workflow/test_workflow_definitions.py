"""Definitions, schemas and expressions: what is accepted, and every problem named by path."""

from __future__ import annotations

from pathlib import Path

import pytest

from nexus.services.workflow.definitions import RetryPolicy, parse_schema, parse_workflow
from nexus.services.workflow.errors import DefinitionError, ExpressionError
from nexus.services.workflow.expressions import compile_condition, compile_mapping
from nexus.services.workflow.settings import BUNDLED_DIR

KNOWN_SERVICES = {"studio", "core", "stub"}


def parse(doc):
    return parse_workflow(doc, known_services=KNOWN_SERVICES.__contains__, known_schemas={"in_v1"}.__contains__)


def step(**fields):
    return {"id": "a", "service": "stub", "endpoint": "/x", **fields}


BAD = [
    ("no id", {"steps": [step()]}, ("$.id", "is required")),
    ("no steps", {"id": "w"}, ("$.steps", "non-empty list")),
    ("duplicate step id", {"id": "w", "steps": [step(), step()]}, ("$.steps[1].id", "duplicate step id 'a'")),
    (
        "unknown step in a JSONPath",
        {"id": "w", "steps": [step(input_map={"v": "$.steps.ghost.output"})]},
        ("$.steps[0].input_map.v", "unknown step 'ghost'"),
    ),
    (
        "a step that runs later",
        {"id": "w", "steps": [step(input_map={"v": "$.steps.b.output"}), step(id="b")]},
        ("$.steps[0].input_map.v", "runs later"),
    ),
    (
        "malformed JSONPath",
        {"id": "w", "steps": [step(input_map={"v": "$.input[?"})]},
        ("$.steps[0].input_map.v", "malformed JSONPath"),
    ),
    (
        "malformed JSONPath in a template",
        {"id": "w", "steps": [step(input_map={"p": "hello {$.input..[}"})]},
        ("$.steps[0].input_map.p", "malformed JSONPath"),
    ),
    (
        "malformed condition",
        {"id": "w", "steps": [step(condition="$.input.x ==")]},
        ("$.steps[0].condition", "malformed"),
    ),
    (
        "condition with a word",
        {"id": "w", "steps": [step(condition="$.a == yes")]},
        ("$.steps[0].condition", "unknown word"),
    ),
    (
        "unknown context root",
        {"id": "w", "steps": [step(input_map={"v": "$.secrets.x"})]},
        ("$.steps[0].input_map.v", "unknown $.secrets"),
    ),
    (
        "unknown service",
        {"id": "w", "steps": [step(service="nowhere")]},
        ("$.steps[0].service", "unknown service 'nowhere'"),
    ),
    (
        "unknown schema",
        {"id": "w", "input_schema_id": "nope", "steps": [step()]},
        ("$.input_schema_id", "'nope' is not registered"),
    ),
    ("unknown step type", {"id": "w", "steps": [step(type="magic")]}, ("$.steps[0].type", "unknown step type")),
    (
        "bad on_failure",
        {"id": "w", "steps": [step(on_failure="retry")]},
        ("$.steps[0].on_failure", "'fail' or 'continue'"),
    ),
    (
        "bad retry",
        {"id": "w", "steps": [step(retry={"max_attempts": 0})]},
        ("$.steps[0].retry.max_attempts", "must be >= 1"),
    ),
    ("bad jitter", {"id": "w", "steps": [step(retry={"jitter": 2})]}, ("$.steps[0].retry.jitter", "between 0 and 1")),
    ("unknown field", {"id": "w", "stepz": [], "steps": [step()]}, ("$.stepz", "unknown field")),
    (
        "task without command",
        {"id": "w", "steps": [{"id": "t", "type": "task", "service": "ocr"}]},
        ("$.steps[0].command", "is required"),
    ),
    (
        "wait without event",
        {"id": "w", "steps": [{"id": "t", "type": "wait_event"}]},
        ("$.steps[0].event", "is required"),
    ),
    (
        "endpoint without slash",
        {"id": "w", "steps": [step(endpoint="x")]},
        ("$.steps[0].endpoint", "starting with '/'"),
    ),
    (
        "compensation to an unknown service",
        {"id": "w", "steps": [step(compensation={"service": "gone", "endpoint": "/undo"})]},
        ("$.steps[0].compensation.service", "unknown service 'gone'"),
    ),
    ("bad max_concurrent", {"id": "w", "max_concurrent": 0, "steps": [step()]}, ("$.max_concurrent", "must be >= 1")),
]


@pytest.mark.parametrize(("name", "doc", "expected"), BAD, ids=[b[0] for b in BAD])
def test_bad_definitions_are_refused_naming_the_path(name, doc, expected):
    with pytest.raises(DefinitionError) as caught:
        parse(doc)
    path, fragment = expected
    assert any(p == path and fragment in m for p, m in caught.value.problems), caught.value.problems


def test_every_problem_is_listed_at_once():
    doc = {
        "id": "w",
        "input_schema_id": "nope",
        "steps": [
            step(service="nowhere", input_map={"a": "$.steps.ghost.output", "b": "$.input["}),
            step(condition="$.x =="),
        ],
    }
    with pytest.raises(DefinitionError) as caught:
        parse(doc)
    paths = [p for p, _ in caught.value.problems]
    assert paths == [
        "$.input_schema_id",
        "$.steps[0].service",
        "$.steps[0].input_map.b",
        "$.steps[0].input_map.a",
        "$.steps[1].id",
        "$.steps[1].condition",
    ]


def test_seed_004_examples_parse_field_for_field():
    bundled = {p.stem: p.read_text() for p in (BUNDLED_DIR / "workflows").glob("*.yaml")}
    blob = parse_workflow(bundled["blob-processing"])
    assert blob.id == "blob_processing_workflow" and blob.provider_id == "memmie-studio"
    assert [s.id for s in blob.steps] == ["validate_blob", "extract_metadata", "trigger_providers", "generate_deltas"]
    first = blob.steps[0]
    assert (first.retry.max_attempts, first.retry.backoff_ms, first.timeout_seconds, first.on_failure) == (
        2,
        1000,
        30,
        "fail",
    )
    assert blob.steps[2].on_failure == "continue" and blob.steps[2].compensation.endpoint == "/providers/rollback"
    assert blob.steps[1].condition.text == "$.steps.validate_blob.output.valid == true"
    book = parse_workflow(bundled["book-chapter-expansion"])
    assert book.steps[0].endpoint == "/blobs/{blob_id}" and book.steps[0].method == "GET"
    prompt = book.steps[1].input_map.evaluate({"steps": {"load_chapter": {"output": {"content": "It was dark."}}}})
    assert prompt["prompt"].endswith("style:\n\nIt was dark.\n") and prompt["temperature"] == 0.7


def test_schemas_are_json_schema_2020_12():
    schema = parse_schema((BUNDLED_DIR / "schemas" / "blob-input-schema.yaml").read_text())
    assert (
        schema.errors(
            {
                "blob_id": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
                "user_id": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
                "provider_ids": [],
            }
        )
        == []
    )
    problems = schema.errors({"blob_id": "not-a-uuid", "provider_ids": "x"}, "$.input")
    assert ("$.input.user_id", "is required") in problems
    assert any(p == "$.input.blob_id" and "uuid" in m for p, m in problems)
    assert any(p == "$.input.provider_ids" for p, _ in problems)
    with pytest.raises(DefinitionError) as caught:
        parse_schema({"id": "s", "definition": {"type": "strange", "required": "x"}})
    assert {p for p, _ in caught.value.problems} == {"$.definition.type", "$.definition.required"}
    with pytest.raises(DefinitionError):
        parse_schema("id: s\ndefinition: [")


CONDITIONS = [
    ("$.a == 1", {"a": 1.0}, True),
    ("$.a == true", {"a": 1}, False),
    ("$.a != null", {}, False),
    ("$.a == null", {}, True),
    ("$.a > 2 and $.b < 'm'", {"a": 3, "b": "k"}, True),
    ("$.a > 'x'", {"a": 3}, False),
    ("$.a >= 3 or $.b", {"a": 1, "b": []}, False),
    ("not $.a", {"a": ""}, True),
    ("!($.a || $.b) && true", {"a": 0, "b": None}, True),
    ("'x' in $.tags", {"tags": ["x", "y"]}, True),
    ("$.s in 'abc'", {"s": "bc"}, True),
    ("$.o == {}", {"o": {}}, None),
    ("$.l == [1, 'a', null]", {"l": [1, "a", None]}, True),
    ("$.items[?@.price > 10] != []", {"items": [{"price": 12}]}, True),
    ("$.n == -2.5e0", {"n": -2.5}, True),
    ("$['odd key'] == \"v\"", {"odd key": "v"}, True),
]


@pytest.mark.parametrize(("text", "data", "expected"), CONDITIONS, ids=[c[0] for c in CONDITIONS])
def test_conditions(text, data, expected):
    if expected is None:
        with pytest.raises(ExpressionError):
            compile_condition(text)
        return
    assert compile_condition(text).evaluate(data) is expected


def test_mappings_paths_templates_and_literals():
    mapping = compile_mapping(
        {
            "one": "$.input.a",
            "many": "$.input.list[*].v",
            "missing": "$.input.nope",
            "text": "a={$.input.a}, obj={$.input.o}, {{literal}}",
            "dollar": "$$5",
            "nested": [{"x": "$.input.a"}, 3, None, True],
        }
    )
    out = mapping.evaluate({"input": {"a": "A", "o": {"k": 1}, "list": [{"v": 1}, {"v": 2}]}})
    assert out == {
        "one": "A",
        "many": [1, 2],
        "missing": None,
        "text": 'a=A, obj={"k":1}, {literal}',
        "dollar": "$5",
        "nested": [{"x": "A"}, 3, None, True],
    }


def test_retry_back_off_grows_and_is_capped():
    policy = RetryPolicy(max_attempts=10, backoff_ms=100, multiplier=3, max_backoff_ms=1000, jitter=0)
    assert [policy.delay_ms(n, 0.5) for n in (1, 2, 3, 4)] == [100, 300, 900, 1000]
    jittered = RetryPolicy(backoff_ms=1000, jitter=0.5)
    assert jittered.delay_ms(1, 0.0) == 500 and jittered.delay_ms(1, 0.999) == pytest.approx(999.5)


def test_bundled_directory_layout():
    assert sorted(p.name for p in (BUNDLED_DIR / "workflows").glob("*.yaml")) == [
        "blob-processing.yaml",
        "book-chapter-expansion.yaml",
        "text-expansion.yaml",
    ]
    assert Path(BUNDLED_DIR / "schemas" / "blob-output-schema.yaml").exists()
