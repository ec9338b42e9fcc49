"""Definitions, schemas and expressions: what is accepted, and every problem named by path."""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import pytest

from nexus.services.workflow.definitions import RetryPolicy, parse_schema, parse_workflow
from nexus.services.workflow.errors import DefinitionError, ExpressionError
from nexus.services.workflow.expressions import compile_condition, compile_mapping
from nexus.services.workflow.settings import BUNDLED_DIR
from nexus.yamlsafe import InvalidYAMLError, UnsafeYAMLError, load_yaml

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
        "kam-comprehensive-report.yaml",
        "kam-quick-brief.yaml",
        "kam-structured-content.yaml",
        "text-expansion.yaml",
    ]
    assert Path(BUNDLED_DIR / "schemas" / "blob-output-schema.yaml").exists()


# --- YAML: no aliases, bounded -------------------------------------------------------------

# "Billion laughs" in YAML: nine anchors, each a list of nine aliases of the previous one.
# PyYAML's safe_load expands it to 9**9 strings (gigabytes); it must be refused unread.
ALIAS_BOMB = (
    "id: bomb\nsteps: *i\n"
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    + "".join(f"{b}: &{b} [{','.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True))
    + "description: billion laughs, written out nowhere, refused before it is built\n"
)


def test_the_alias_bomb_is_small():
    assert 400 <= len(ALIAS_BOMB) <= 450


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (ALIAS_BOMB, "alias *i (line 2"),
        ("id: w\nname: &n x\n", "anchor &n (line 2"),
        ("a: " + "[" * 64 + "]" * 64, "deeper than 64 levels"),
        ("- " * 65 + "x", "deeper than 64 levels"),
        ("xs: [" + ",".join(["1"] * 20_001) + "]", "more than 20000 YAML values"),
        ("x: " + "y" * (1024 * 1024), "the limit is 1048576 bytes"),
    ],
    ids=["alias bomb", "anchor", "deep flow", "deep block", "too many values", "too long"],
)
def test_unsafe_yaml_is_refused_naming_the_problem(text, expected):
    with pytest.raises(UnsafeYAMLError) as caught:
        load_yaml(text, what="workflow")
    assert expected in str(caught.value) and "workflow" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"id: \xff\xfe", "not UTF-8 text"),
        ("id: [", "not valid YAML or JSON"),
        ("a: 1\n---\nb: 2\n", "not valid YAML or JSON"),
        ("n: " + "7" * 5000, "cannot be read"),
        ("x: !!python/object/apply:os.system [ls]", "not valid YAML or JSON"),
        ("x: a\x00b", "not valid YAML or JSON"),
    ],
    ids=["invalid utf-8", "syntax", "two documents", "huge integer", "python tag", "NUL"],
)
def test_invalid_yaml_is_a_clear_value_error(text, expected):
    with pytest.raises(InvalidYAMLError) as caught:
        load_yaml(text, what="workflow")
    assert isinstance(caught.value, ValueError) and expected in str(caught.value)


def test_plain_yaml_and_json_still_load_within_the_limits():
    assert load_yaml("a: {b: [1, 2.5, true, null, 'x']}\n") == {"a": {"b": [1, 2.5, True, None, "x"]}}
    assert load_yaml(b'{"id": "w", "steps": []}') == {"id": "w", "steps": []}
    # 64 levels: the mapping and 63 lists inside it.
    assert load_yaml("a: " + "[" * 63 + "]" * 63) == {"a": json.loads("[" * 63 + "]" * 63)}
    assert len(load_yaml("xs: [" + ",".join(["1"] * 19_000) + "]")["xs"]) == 19_000
    # Every bundled definition is within the limits (they are loaded through the same function).
    for path in BUNDLED_DIR.rglob("*.yaml"):
        assert isinstance(load_yaml(path.read_text(), what=path.name), dict | list), path


def test_load_document_turns_yaml_refusals_into_definition_problems():
    with pytest.raises(DefinitionError) as caught:
        parse(ALIAS_BOMB)
    assert caught.value.problems[0][0] == "$" and "alias" in caught.value.problems[0][1]


async def test_the_alias_bomb_is_refused_by_post_workflows_and_post_triggers(workflow_service):
    running = await workflow_service(modules=True)
    head = await running.service.log.head()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    for route in ("/workflows", "/triggers"):
        started = time.perf_counter()
        status, body = await running.post(route, data=ALIAS_BOMB.encode())
        elapsed = time.perf_counter() - started
        # Refused at once, naming the alias, with nothing expanded...
        assert status == 400, (route, body)
        assert "alias *i" in json.dumps(body), (route, body)
        assert elapsed < 1.0, (route, elapsed)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert grown_mib < 50, f"peak memory grew by {grown_mib:.0f} MiB"
    # ...and nothing was appended to the log.
    assert await running.service.log.head() == head
    # The service still registers a valid definition afterwards.
    status, body = await running.post(
        "/workflows", data=b"id: fine\nsteps:\n  - {id: a, service: stub, endpoint: /echo}\n"
    )
    assert status == 201, body
