"""build_service: the one preamble of the services' bootstraps (adapters, then the Service)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nexus.bus.memory import MemoryBus
from nexus.eventlog.memory import MemoryEventLog
from nexus.obs import InstrumentedEventLog
from nexus.raw.memory import MemoryRaw

# Re-exported from nexus.runtime once its __init__ lists it; the module is the same.
from nexus.runtime import Service, ServiceSettings
from nexus.runtime._build import build_service


def settings(tmp_path: Path, **env: str) -> ServiceSettings:
    return ServiceSettings.from_env("kam", {"NEXUS_DATA_DIR": str(tmp_path), "NEXUS_KAM_PORT": "0", **env})


async def test_injected_adapters_are_used_and_raw_is_opened_only_when_needed(tmp_path: Path) -> None:
    log, bus = MemoryEventLog(), MemoryBus()
    service = await build_service(settings(tmp_path), title="Nexus KAM", description="keys", log=log, bus=bus)
    assert isinstance(service, Service)
    assert (service.bus, service.raw, service.title, service.description) == (bus, None, "Nexus KAM", "keys")
    assert isinstance(service.log, InstrumentedEventLog) and service.log.inner is log
    # Raw comes from NEXUS_RAW_URL when the service keeps blobs and none was injected.
    raw_service = await build_service(
        settings(tmp_path, NEXUS_RAW_URL="memory://"), title="t", description="d", log=log, bus=bus, need_raw=True
    )
    assert isinstance(raw_service.raw, MemoryRaw)
    injected = MemoryRaw()
    assert (
        await build_service(settings(tmp_path), title="t", description="d", log=log, bus=bus, raw=injected)
    ).raw is injected
    await log.close()
    await bus.close()


async def test_a_failed_build_closes_what_it_opened_and_leaves_injected_adapters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bus = MemoryBus()
    closed: list[str] = []
    original = MemoryEventLog.close

    async def close(self: MemoryEventLog) -> None:
        closed.append("log")
        await original(self)

    monkeypatch.setattr(MemoryEventLog, "close", close)

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("cannot build")

    monkeypatch.setattr("nexus.runtime._build.Service", refuse)
    with pytest.raises(RuntimeError, match="cannot build"):
        await build_service(settings(tmp_path, NEXUS_EVENT_LOG_URL="memory://"), title="t", description="d", bus=bus)
    # The log it opened from the URL is closed; the injected bus is the caller's and still open.
    assert closed == ["log"]
    await bus.ping()
    await bus.close()
