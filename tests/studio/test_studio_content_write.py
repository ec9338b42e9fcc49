"""The studio's write path and Raw: an update's event is appended only once its content is stored."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nexus.bus.memory import MemoryBus
from nexus.eventlog.memory import MemoryEventLog
from nexus.raw import DEFAULT_CONTENT_TYPE, RawStat, RawUnavailableError
from nexus.raw.memory import MemoryRaw
from nexus.services.studio.blobs import BLOBS, Blobs
from nexus.services.studio.bootstrap import bootstrap
from nexus.services.studio.settings import load_settings


class FailingRaw(MemoryRaw):
    """A memory Raw whose content stores fail while ``failing`` is set."""

    failing = False

    async def store_if_absent(self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> RawStat | None:
        if self.failing:
            raise RawUnavailableError("the disk is gone")
        return await super().store_if_absent(key, data, content_type)


@pytest.fixture
async def studio(tmp_path: Path) -> AsyncIterator[tuple[Blobs, MemoryEventLog, FailingRaw]]:
    env = {"NEXUS_DATA_DIR": str(tmp_path), "NEXUS_STUDIO_PORT": "0"}
    log, raw, bus = MemoryEventLog(), FailingRaw(), MemoryBus()
    await bus.ensure_streams()
    service = await bootstrap(dataclasses.replace(load_settings(env), port=0), log=log, bus=bus, raw=raw)
    await service.start()
    try:
        yield service.app[BLOBS], log, raw
    finally:
        await service.stop()


async def test_an_update_whose_content_is_not_stored_appends_nothing(
    studio: tuple[Blobs, MemoryEventLog, FailingRaw],
) -> None:
    blobs, log, raw = studio
    blob = await blobs.create("acme", "key:a", {"title": "one"}, "application/json")
    head = await log.head()
    # The content store fails while the deltas are computed beside it: the update fails, and no
    # event names content that Raw does not hold.
    raw.failing = True
    with pytest.raises(RawUnavailableError, match="the disk is gone"):
        await blobs.update(blob.blob_id, "key:a", {"title": "two"})
    assert await log.head() == head
    assert blobs.get(blob.blob_id).version == 1
    raw.failing = False
    updated = await blobs.update(blob.blob_id, "key:a", {"title": "two"})
    assert updated.version == 2
    assert await raw.exists(updated.current.content_ref.removeprefix("raw://"))
