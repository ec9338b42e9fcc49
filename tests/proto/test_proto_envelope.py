"""The CloudEvents envelope, the catalogue and subject naming."""

from __future__ import annotations

import re

import msgspec
import pytest

from nexus.proto import (
    CATALOG,
    CloudEvent,
    EnvelopeError,
    canonical_bytes,
    cmd_subject,
    decode_event,
    decode_events,
    dlq_subject,
    encode_event,
    evt_subject,
    ext_stream_id,
    new_event,
    new_event_id,
    subject_for,
)
from nexus.proto.events.workflow import ExecutionCompleted

VALID = {
    "specversion": "1.0",
    "id": "e-1",
    "source": "nexus/test",
    "type": "nexus.workflow.execution.completed",
    "time": "2026-11-22T10:00:00.123Z",
    "datacontenttype": "application/json",
    "data": {"execution_id": "x-1", "workflow_id": "wf"},
}


def _bytes(**changes: object) -> bytes:
    body = {**VALID, **changes}
    return msgspec.json.encode({k: v for k, v in body.items() if v is not ...})


def test_round_trip_keeps_every_attribute() -> None:
    event = new_event(
        "nexus.workflow.execution.completed",
        ExecutionCompleted(execution_id="x", workflow_id="wf", output={"n": 1}),
        source="nexus/workflow",
        correlationid="c-1",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    assert decode_event(encode_event(event)) == event
    assert event.data == {"execution_id": "x", "workflow_id": "wf", "output": {"n": 1}}


def test_unset_extensions_are_omitted_and_required_attributes_are_written() -> None:
    body = msgspec.json.decode(encode_event(new_event("nexus.a.b.c", None, source="s")))
    assert set(body) == {"specversion", "id", "source", "type", "time", "datacontenttype", "data"}


@pytest.mark.parametrize(
    ("payload", "field", "reason"),
    [
        (b"{not json", "$", "not valid JSON"),
        (_bytes(id=...), "$.id", "missing required field"),
        (_bytes(type=...), "$.type", "missing required field"),
        (_bytes(specversion="0.3"), "$.specversion", "Invalid enum value '0.3'"),
        (_bytes(time="yesterday"), "$.time", "RFC 3339"),
        (_bytes(id=""), "$.id", "length"),
        (_bytes(streamversion=0), "$.streamversion", ">= 1"),
        (_bytes(hash="abc"), "$.hash", "sha256"),
        (b"[1, 2]", "$", "Expected `object`"),
    ],
)
def test_malformed_events_raise_one_error_naming_field_and_reason(payload: bytes, field: str, reason: str) -> None:
    with pytest.raises(EnvelopeError) as info:
        decode_event(payload)
    assert info.value.field == field
    assert reason in info.value.reason
    assert isinstance(info.value, ValueError)


def test_batch_decoding_names_the_index_of_the_bad_event() -> None:
    with pytest.raises(EnvelopeError) as info:
        decode_events(b"[" + _bytes() + b"," + _bytes(time="x") + b"]")
    assert info.value.field == "$[1].time"


def test_catalogue_decodes_known_types_and_leaves_unknown_raw() -> None:
    known = decode_event(_bytes())
    assert CATALOG.decode_data(known) == ExecutionCompleted(execution_id="x-1", workflow_id="wf")
    unknown = decode_event(_bytes(type="com.example.thing", data={"a": 1}))
    assert CATALOG.decode_data(unknown) == {"a": 1}


def test_data_that_fails_its_struct_names_the_data_field() -> None:
    event = decode_event(_bytes(data={"execution_id": 7, "workflow_id": "wf"}))
    with pytest.raises(EnvelopeError) as info:
        CATALOG.validate(event)
    assert info.value.field == "$.data.execution_id"
    assert "Expected `str`, got `int`" in info.value.reason


def test_a_type_cannot_be_declared_twice_with_another_struct() -> None:
    class Other(msgspec.Struct):
        x: int

    with pytest.raises(ValueError, match="already declared"):
        CATALOG.register("nexus.workflow.execution.completed", Other)


def test_canonical_bytes_ignore_key_order_and_the_hash_itself() -> None:
    a = decode_event(_bytes(data={"a": 1, "b": 2}))
    b = decode_event(_bytes(data={"b": 2, "a": 1}))
    assert canonical_bytes(a) == canonical_bytes(b)
    sealed = msgspec.structs.replace(a, hash="0" * 64)
    assert canonical_bytes(sealed) == canonical_bytes(a)


def test_event_ids_are_uuid7_and_time_ordered() -> None:
    ids = [new_event_id() for _ in range(200)]
    assert len(set(ids)) == 200
    assert all(re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", i) for i in ids)
    millis = [i[:13] for i in ids]
    assert millis == sorted(millis)


def test_subjects() -> None:
    assert evt_subject("nexus.workflow.execution.completed") == "nexus.evt.workflow.execution.completed"
    assert cmd_subject("granulator", "handshake") == "nexus.cmd.granulator.handshake"
    assert dlq_subject("workflow-executions") == "nexus.dlq.workflow-executions"
    assert ext_stream_id("acme") == "ext-acme"
    for bad in ("workflow.execution.completed", "nexus.workflow.completed", "nexus.a b.c.d", "nexus.a.*.c"):
        with pytest.raises(ValueError, match=r"not of the form|not a valid subject token"):
            evt_subject(bad)  # each names what is wrong with the type
    with pytest.raises(ValueError, match="subject token"):
        cmd_subject("gran.ulator", "x")


def test_subject_for_external_events_uses_the_ingested_token() -> None:
    base = decode_event(_bytes(type="com.acme.anomaly.detected"))
    ext = msgspec.structs.replace(base, streamid="ext-acme", extevent="anomaly")
    assert subject_for(ext) == "nexus.evt.ext.acme.anomaly"
    assert subject_for(msgspec.structs.replace(ext, extevent=None)) == "nexus.evt.ext.acme.detected"
    with pytest.raises(ValueError, match="not of the form"):
        subject_for(base)  # an external type outside an ext- stream has no platform subject


def test_envelope_struct_is_frozen() -> None:
    event = decode_event(_bytes())
    assert isinstance(event, CloudEvent)
    with pytest.raises(AttributeError):
        event.id = "other"  # type: ignore[misc]


def test_event_ids_from_threads_and_a_forked_child_never_repeat() -> None:
    import multiprocessing
    import threading

    ids: list[str] = [new_event_id() for _ in range(10)]  # the parent's pool now holds bytes
    lock = threading.Lock()

    def draw() -> None:
        mine = [new_event_id() for _ in range(500)]
        with lock:
            ids.extend(mine)

    threads = [threading.Thread(target=draw) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    context = multiprocessing.get_context("fork")
    with context.Pool(1) as pool:
        from_child = pool.apply(_draw_ids, (500,))
    ids.extend(from_child)
    ids.extend(new_event_id() for _ in range(500))  # the parent goes on with the same pool
    assert len(ids) == len(set(ids)) == 10 + 4 * 500 + 500 + 500
    # The random parts too: a child that reused its parent's pool would repeat them.
    assert len({i[15:] for i in ids}) == len(ids)


def _draw_ids(count: int) -> list[str]:
    return [new_event_id() for _ in range(count)]
