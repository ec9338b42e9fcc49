"""The per-event size limit: where it comes from and how a bad setting is reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from nexus.eventlog import (
    DEFAULT_MAX_EVENT_BYTES,
    EventLogArgumentError,
    EventLogError,
    EventTooLargeError,
    open_event_log,
    resolve_max_event_bytes,
)
from nexus.proto import new_event


def test_the_default_leaves_room_under_nats_default_max_payload() -> None:
    assert resolve_max_event_bytes(environ={}) == DEFAULT_MAX_EVENT_BYTES == 512 * 1024
    assert DEFAULT_MAX_EVENT_BYTES <= 1024 * 1024 // 2
    assert issubclass(EventTooLargeError, EventLogError)


def test_the_setting_and_an_explicit_value() -> None:
    assert resolve_max_event_bytes(environ={"NEXUS_MAX_EVENT_BYTES": " 2048 "}) == 2048
    # An explicit value wins over the environment.
    assert resolve_max_event_bytes(4096, environ={"NEXUS_MAX_EVENT_BYTES": "2048"}) == 4096


@pytest.mark.parametrize("text", ["lots", "-5", "1.5", "512KiB", "100"])
def test_a_bad_setting_is_refused_naming_the_variable(text: str) -> None:
    with pytest.raises(EventLogArgumentError, match="NEXUS_MAX_EVENT_BYTES"):
        resolve_max_event_bytes(environ={"NEXUS_MAX_EVENT_BYTES": text})


@pytest.mark.parametrize("value", [0, 10, -1, True, 2.5])
def test_a_bad_value_is_refused(value: object) -> None:
    with pytest.raises(EventLogArgumentError, match="max_event_bytes"):
        resolve_max_event_bytes(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("scheme", ["memory://", "sqlite:///events.db"])
async def test_open_event_log_reads_the_setting_and_takes_an_override(
    scheme: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NEXUS_MAX_EVENT_BYTES", "2048")
    log = await open_event_log(scheme)
    try:
        assert log.max_event_bytes == 2048
        with pytest.raises(EventTooLargeError):
            await log.append("s", [new_event("nexus.test.thing.big", {"x": "x" * 3000}, source="nexus/test")])
    finally:
        await log.close()
    # A larger limit, given by the caller (a tool that copies an old log, a test).
    log = await open_event_log(scheme, max_event_bytes=8192)
    try:
        [stored] = await log.append("s", [new_event("nexus.test.thing.big", {"x": "x" * 3000}, source="nexus/test")])
        assert stored.position == 1
    finally:
        await log.close()
    monkeypatch.setenv("NEXUS_MAX_EVENT_BYTES", "nope")
    with pytest.raises(EventLogArgumentError, match="NEXUS_MAX_EVENT_BYTES='nope'"):
        await open_event_log(scheme)


def test_sealing_with_contents_encoded_by_the_size_check_gives_the_same_record() -> None:
    # The MongoDB and memory adapters seal with the contents encode_contents made (no second
    # encoding); the record and hash must be those of sealing from scratch.
    from nexus.eventlog import chain, event_hash
    from nexus.eventlog._common import encode_contents

    event = new_event("nexus.test.thing.changed", {"x": [1, "two"]}, source="nexus/test")
    [content] = encode_contents([event], stream_id="s", limit=DEFAULT_MAX_EVENT_BYTES)
    place = {"stream_id": "s", "version": 3, "position": 9, "prevhash": "a" * 64}
    assert chain.seal_encoded(event, **place, content=content) == chain.seal_encoded(event, **place)  # type: ignore[arg-type]
    sealed = chain.seal(event, **place, content=content[1].decode())  # type: ignore[arg-type]
    assert sealed == chain.seal(event, **place)  # type: ignore[arg-type]
    assert sealed.hash == event_hash(sealed)
