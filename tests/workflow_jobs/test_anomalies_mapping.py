"""Seed 000's step 5: an anomaly mapped onto a workflow's jobPayloadSchema (``map_anomaly``)."""

from __future__ import annotations

from typing import Any

import pytest
from anomaly_platform import SCHEMA, SEED_ANOMALY
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexus.client import JOB_TYPES, PayloadError, PayloadField, check_instance, job_payload_schema
from nexus.services.workflow.anomalies import SEVERITY_SCALE, SOURCES, map_anomaly, submission

SEED_SCHEMA = job_payload_schema(SCHEMA["definition"])
FILES = ["https://files.example/file1.pdf", "https://files.example/file2.pdf"]


def schema(**types: str) -> dict[str, PayloadField]:
    return {name: PayloadField(name=name, type=kind) for name, kind in types.items()}


def test_the_seeds_example_maps_as_step_5_says() -> None:
    instance = map_anomaly(SEED_ANOMALY, SEED_SCHEMA, files=FILES)
    metadata = dict(SEED_ANOMALY)
    assert instance == {
        "workflow_input_we4tej0ly": {"value": "Seismic Activity", "type": "str"},
        "workflow_input_a0hk6ujuo": {"value": 0.95, "type": "float"},
        "workflow_input_h69vx5i4a": {"value": FILES[0], "type": "file"},
        "workflow_input_m2z6rkzgj": {"value": True, "type": "bool"},
        "workflow_input_2kbsjrx1y": {"value": ["seismic", "environmental"], "type": "array"},
        "workflow_input_bzti690ga": {"value": metadata, "type": "object"},
        "workflow_input_k3ayfjyh7": {"value": "2025-11-19T10:00:00Z", "type": "date"},
        "workflow_input_auqgnzk8d": {"value": FILES, "type": "array_files"},
    }
    # The job API accepts it as it is.
    assert check_instance(SEED_SCHEMA, instance)["workflow_input_a0hk6ujuo"] == 0.95


def test_each_type_takes_its_keys_in_order_and_each_key_once() -> None:
    fields = schema(a="str", b="str", c="str", x="float", y="float", t1="array", t2="array", f1="file", f2="file")
    anomaly = dict(SEED_ANOMALY, tags=["urgent"])
    instance = map_anomaly(anomaly, fields, files=FILES[:1])
    assert instance["a"]["value"] == "Seismic Activity" and instance["b"]["value"] == "Unusual patterns"
    assert "c" not in instance  # a third str field has no source: left out (it is optional)
    assert instance["x"]["value"] == 0.95 and instance["y"]["value"] == SEVERITY_SCALE["high"]
    assert instance["t1"]["value"] == ["seismic", "environmental"] and instance["t2"]["value"] == ["urgent"]
    assert instance["f1"]["value"] == FILES[0] and "f2" not in instance


def test_names_and_an_explicit_mapping_come_first() -> None:
    fields = schema(description="str", summary="str", score="float", place="object")
    anomaly = {"title": "Quake", "description": "Deep", "score": "0.4", "confidence": 0.9, "location": {"lat": 1}}
    instance = map_anomaly(anomaly, fields, mapping={"place": "location"})
    # "description" by name; "summary" then takes the next str source not used: the title.
    assert instance["description"]["value"] == "Deep" and instance["summary"]["value"] == "Quake"
    assert instance["score"]["value"] == 0.4  # a numeric string, by name
    assert instance["place"]["value"] == {"lat": 1}


def test_severity_words_numbers_and_dates_are_converted() -> None:
    fields = schema(sev="float", when="date")
    assert map_anomaly({"severity": " Critical ", "timestamp": 0}, fields) == {
        "sev": {"value": 1.0, "type": "float"},
        "when": {"value": "1970-01-01T00:00:00Z", "type": "date"},
    }


@pytest.mark.parametrize(
    ("anomaly", "field", "words"),
    [
        ({"title": "x"}, "workflow_input_a0hk6ujuo", "required float"),
        ({"confidence": 0.5}, "workflow_input_we4tej0ly", "required str"),
        ({"title": "x", "confidence": "very"}, "workflow_input_a0hk6ujuo", "'very' is not a number"),
        ({"title": "x", "confidence": 10**400}, "workflow_input_a0hk6ujuo", "does not fit a float"),
        ({"title": "x", "confidence": float("nan")}, "workflow_input_a0hk6ujuo", "not a finite number"),
        ({"title": ["x"], "confidence": 1}, "workflow_input_we4tej0ly", "is not a string"),
        ({"title": "x", "confidence": 1, "timestamp": "yesterday"}, "workflow_input_k3ayfjyh7", "not a date"),
    ],
)
def test_what_cannot_be_mapped_is_a_problem_naming_the_field(anomaly: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(PayloadError) as caught:
        map_anomaly(anomaly, SEED_SCHEMA)
    assert any(name == field and words in reason for name, reason in caught.value.problems), caught.value.problems


def test_a_bad_mapping_or_anomaly_is_a_problem() -> None:
    with pytest.raises(PayloadError, match="not a field"):
        map_anomaly(SEED_ANOMALY, SEED_SCHEMA, mapping={"nope": "title"})
    with pytest.raises(PayloadError, match="takes the anomaly's files"):
        map_anomaly(SEED_ANOMALY, SEED_SCHEMA, mapping={"workflow_input_h69vx5i4a": "title"})
    with pytest.raises(PayloadError, match="expected a JSON object"):
        map_anomaly(["not", "an", "object"], SEED_SCHEMA)


def test_the_anomalys_files_key_is_never_read_as_a_value() -> None:
    # Files come only through the upload path (resolved URLs), not from what the anomaly claims.
    fields = schema(files="array_files", meta="object")
    instance = map_anomaly({"files": ["https://elsewhere.example/x"]}, fields, files=FILES)
    assert instance["files"]["value"] == FILES and "files" not in instance["meta"]["value"]


def test_a_submission_is_the_anomaly_or_an_envelope_around_it() -> None:
    wrapped = submission({"anomaly": {"title": "a"}, "workflowId": "w", "mapping": {"x": "y"}})
    assert (wrapped.anomaly, wrapped.workflow_id, wrapped.mapping) == ({"title": "a"}, "w", {"x": "y"})
    flat = submission({"title": "a", "workflowId": "w"})
    assert (flat.anomaly, flat.workflow_id) == ({"title": "a"}, "w")
    for bad in ([], {"anomaly": "text"}, {"workflowId": 7}, {"workflowId": " "}):
        with pytest.raises(PayloadError):
            submission(bad)


# -- the contract, for any input: a valid instance or a PayloadError, and always the same one ---

_KEYS = st.sampled_from(sorted({k for keys in SOURCES.values() for k in keys} | {"id", "files", "location", "x"}))
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**500), max_value=10**500)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(["high", "LOW", "2025-11-19T10:00:00Z", "2025-02-30", "0.5", "true", "nan", "1e999"])
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
_ANOMALY = st.dictionaries(_KEYS | st.text(max_size=6), _JSON, max_size=8) | _JSON
_FIELD_NAMES = _KEYS | st.text(min_size=1, max_size=8)
_SCHEMA = st.dictionaries(
    _FIELD_NAMES, st.tuples(st.sampled_from(JOB_TYPES), st.booleans()), min_size=0, max_size=8
).map(lambda d: {n: PayloadField(name=n, type=t, required=r) for n, (t, r) in d.items()})
_FILES = st.lists(st.sampled_from([*FILES, "https://files.example/3.bin"]), max_size=3)
_MAPPING = st.none() | _JSON | st.dictionaries(_FIELD_NAMES, _KEYS | _JSON, max_size=3)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(anomaly=_ANOMALY, fields=_SCHEMA, files=_FILES, mapping=_MAPPING)
def test_mapping_never_raises_anything_but_a_payload_error_and_its_result_is_valid(
    anomaly: Any, fields: dict[str, PayloadField], files: list[str], mapping: Any
) -> None:
    try:
        instance = map_anomaly(anomaly, fields, files=files, mapping=mapping)
    except PayloadError as exc:
        # A clear 400: every problem names a field (or the anomaly, or the mapping) and says why.
        assert exc.problems and all(name and reason for name, reason in exc.problems)
        assert all(name in fields or name in ("anomaly", "mapping") for name, _ in exc.problems)
        with pytest.raises(PayloadError) as again:
            map_anomaly(anomaly, fields, files=files, mapping=mapping)
        assert again.value.problems == exc.problems
        return
    check_instance(fields, instance)  # valid against the schema
    assert set(instance) <= set(fields)
    assert all(name in instance for name, field in fields.items() if field.required)
    assert map_anomaly(anomaly, fields, files=files, mapping=mapping) == instance  # deterministic


def test_the_job_apis_check_refuses_an_integer_too_large_for_a_float() -> None:
    # JSON carries integers of any size; the payload check answered them with an OverflowError (a 500).
    fields = schema(x="float")
    with pytest.raises(PayloadError, match="finite number"):
        check_instance(fields, {"x": {"value": 10**400, "type": "float"}})
