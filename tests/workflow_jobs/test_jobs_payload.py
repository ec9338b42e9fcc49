"""Job payload typing (seed 000): schema → job types, every type checked, every mismatch named."""

from __future__ import annotations

import datetime as dt

import pytest

from nexus.client import (
    JOB_TYPES,
    PayloadError,
    build_instance,
    check_instance,
    check_value,
    job_payload_schema,
    job_type,
    schema_from_json,
)

FILE = {"type": "string", "contentMediaType": "application/pdf"}

# ARCHITECTURE.md's table, row by row.
TYPE_TABLE = [
    ({"type": "string"}, "str"),
    ({"type": "number"}, "float"),
    ({"type": "integer"}, "float"),
    ({"type": "boolean"}, "bool"),
    ({"type": "string", "format": "date"}, "date"),
    ({"type": "string", "format": "date-time"}, "date"),
    ({"type": "object", "properties": {"lat": {"type": "number"}}}, "object"),
    ({"type": "array", "items": {"type": "string"}}, "array"),
    ({"type": "array"}, "array"),
    (FILE, "file"),
    ({"type": "array", "items": FILE}, "array_files"),
    ({"type": ["string", "null"]}, "str"),
]


@pytest.mark.parametrize(("prop", "expected"), TYPE_TABLE)
def test_job_type_follows_the_architecture_table(prop: dict, expected: str) -> None:
    assert job_type(prop) == expected


def test_a_property_without_a_job_type_is_refused_by_name() -> None:
    with pytest.raises(PayloadError) as info:
        job_payload_schema({"type": "object", "properties": {"ok": {"type": "string"}, "weird": {"type": "null"}}})
    assert info.value.problems[0][0] == "weird"


GOOD = "https://files.example/a.pdf"

# (type, valid values, invalid values)
VALUE_TABLE = [
    ("str", ["", "Seismic Activity"], [1, 0.5, True, None, [], {}]),
    ("float", [0.95, 3, -1.5], ["0.95", True, None, float("nan"), float("inf"), []]),
    ("bool", [True, False], [1, 0, "true", None]),
    (
        "date",
        ["2025-11-19", "2025-11-19T10:00:00Z", "2025-11-19T10:00:00.5+02:00"],
        ["2025-13-01", "2025-02-30", "yesterday", "19/11/2025", 1732000000, None],
    ),
    ("object", [{}, {"lat": 1.0, "lng": 2.0}], [[], "x", 1, None]),
    ("array", [[], ["seismic", "environmental"], [1, {"a": 2}]], [{}, "seismic", None]),
    ("file", [GOOD, "http://127.0.0.1:9/x.bin"], ["file.pdf", "ftp://x/y", "", 1, [GOOD], None]),
    ("array_files", [[], [GOOD, GOOD]], [GOOD, ["not a url"], [GOOD, 3], {}, None]),
]


@pytest.mark.parametrize(("kind", "good", "bad"), VALUE_TABLE, ids=[row[0] for row in VALUE_TABLE])
def test_every_type_accepts_its_values_and_refuses_the_rest(kind: str, good: list, bad: list) -> None:
    assert {row[0] for row in VALUE_TABLE} == set(JOB_TYPES)
    for value in good:
        assert check_value(kind, value) is None, (kind, value)
    for value in bad:
        assert check_value(kind, value) is not None, (kind, value)


INPUT_SCHEMA = {
    "type": "object",
    "required": ["title", "confidence"],
    "properties": {
        "title": {"type": "string", "description": "what was seen"},
        "confidence": {"type": "number"},
        "count": {"type": "integer"},
        "verified": {"type": "boolean"},
        "day": {"type": "string", "format": "date"},
        "seen_at": {"type": "string", "format": "date-time"},
        "metadata": {"type": "object"},
        "modalities": {"type": "array", "items": {"type": "string"}},
        "report": FILE,
        "attachments": {"type": "array", "items": FILE},
    },
}


def test_the_payload_schema_names_every_field_with_its_type() -> None:
    schema = job_payload_schema(INPUT_SCHEMA)
    as_json = {name: f.as_json() for name, f in schema.items()}
    assert as_json["title"] == {"type": "str", "required": True, "description": "what was seen"}
    assert {name: f.type for name, f in schema.items()} == {
        "title": "str",
        "confidence": "float",
        "count": "float",
        "verified": "bool",
        "day": "date",
        "seen_at": "date",
        "metadata": "object",
        "modalities": "array",
        "report": "file",
        "attachments": "array_files",
    }
    # The client reads the same schema back from its JSON form.
    assert {n: f.type for n, f in schema_from_json(as_json).items()} == {n: f.type for n, f in schema.items()}


def _instance(**values: object) -> dict:
    schema = job_payload_schema(INPUT_SCHEMA)
    return {name: {"value": value, "type": schema[name].type} for name, value in values.items()}


def test_a_valid_instance_becomes_the_workflow_input() -> None:
    schema = job_payload_schema(INPUT_SCHEMA)
    out = check_instance(
        schema,
        _instance(
            title="Seismic Activity",
            confidence=0.95,
            count=3.0,
            verified=True,
            day="2025-11-19T10:00:00Z",
            seen_at="2025-11-19",
            metadata={"lat": 1},
            modalities=["seismic"],
            report=GOOD,
            attachments=[GOOD],
        ),
    )
    # Integers go back as integers, dates to the format the input schema asks for.
    assert out["count"] == 3 and isinstance(out["count"], int)
    assert out["day"] == "2025-11-19"
    assert out["seen_at"] == "2025-11-19T00:00:00Z"
    assert out["title"] == "Seismic Activity"


MISMATCHES = [
    ("title", 42, "str"),
    ("confidence", "high", "float"),
    ("verified", "yes", "bool"),
    ("day", "next tuesday", "date"),
    ("metadata", ["a"], "object"),
    ("modalities", "seismic", "array"),
    ("report", "report.pdf", "file"),
    ("attachments", ["report.pdf"], "array_files"),
]


@pytest.mark.parametrize(("field", "value", "kind"), MISMATCHES, ids=[m[2] for m in MISMATCHES])
def test_each_mismatch_is_refused_naming_the_field(field: str, value: object, kind: str) -> None:
    schema = job_payload_schema(INPUT_SCHEMA)
    instance = _instance(title="t", confidence=0.5)
    instance[field] = {"value": value, "type": kind}
    with pytest.raises(PayloadError) as info:
        check_instance(schema, instance)
    assert [p[0] for p in info.value.problems] == [field]
    assert kind in info.value.problems[0][1]
    assert field in info.value.as_json()["error"]


def test_structural_problems_are_all_listed() -> None:
    schema = job_payload_schema(INPUT_SCHEMA)
    with pytest.raises(PayloadError) as info:
        check_instance(
            schema,
            {
                "title": {"value": "t", "type": "float"},  # declared type disagrees with the schema
                "nonsense": {"value": 1, "type": "float"},  # not a field
                "verified": True,  # not wrapped in {value, type}
            },
        )
    fields = sorted(p[0] for p in info.value.problems)
    assert fields == ["confidence", "nonsense", "title", "verified"]
    with pytest.raises(PayloadError):
        check_instance(schema, ["not", "an", "object"])


def test_a_record_is_mapped_and_converted_to_the_schema_types() -> None:
    schema = job_payload_schema(INPUT_SCHEMA)
    anomaly = {
        "id": 123,
        "title": "Seismic Activity",
        "score": "0.95",
        "timestamp": dt.datetime(2025, 11, 19, 10, 0, tzinfo=dt.UTC),
        "location": {"lat": 1.0, "lng": 2.0},
        "modalities": ("seismic", "environmental"),
        "verified": False,
    }
    instance = build_instance(schema, anomaly, {"confidence": "score", "seen_at": "timestamp", "metadata": "location"})
    assert instance["confidence"] == {"value": 0.95, "type": "float"}
    assert instance["seen_at"] == {"value": "2025-11-19T10:00:00Z", "type": "date"}
    assert instance["modalities"] == {"value": ["seismic", "environmental"], "type": "array"}
    assert instance["verified"] == {"value": False, "type": "bool"}
    assert "report" not in instance
    # What the client builds, the server accepts.
    assert check_instance(schema, instance)["metadata"] == {"lat": 1.0, "lng": 2.0}


def test_building_from_a_record_names_missing_and_unconvertible_fields() -> None:
    schema = job_payload_schema(INPUT_SCHEMA)
    with pytest.raises(PayloadError) as info:
        build_instance(schema, {"title": "t", "score": "high"}, {"confidence": "score", "bogus": "x"})
    problems = dict(info.value.problems)
    assert set(problems) == {"confidence", "bogus"}
    assert "'score'" in problems["confidence"]


def test_the_one_rfc3339_parser() -> None:
    from nexus.proto._envelope import now_rfc3339, parse_rfc3339

    utc = dt.UTC
    assert parse_rfc3339("2025-11-19T10:00:00Z") == dt.datetime(2025, 11, 19, 10, tzinfo=utc)
    assert parse_rfc3339("2025-11-19t10:00:00.250000z") == dt.datetime(2025, 11, 19, 10, 0, 0, 250000, tzinfo=utc)
    # An offset is kept as the same instant; a time without one is taken as UTC, never as local time.
    assert parse_rfc3339("2025-11-19T12:00:00+02:00") == dt.datetime(2025, 11, 19, 10, tzinfo=utc)
    assert parse_rfc3339("2025-11-19T10:00:00").tzinfo is not None
    now = parse_rfc3339(now_rfc3339())
    assert abs((dt.datetime.now(utc) - now).total_seconds()) < 60
    for bad in ("", "yesterday", "2025-13-01T00:00:00Z", "2025-02-30T00:00:00Z"):
        with pytest.raises(ValueError):
            parse_rfc3339(bad)
