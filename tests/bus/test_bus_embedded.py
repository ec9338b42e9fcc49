"""The embedded nats-server launcher and open_bus."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nexus.bus import open_bus
from nexus.bus.embedded import EmbeddedNats, EmbeddedNatsError
from nexus.config import PlatformSettings

pytestmark = pytest.mark.nats


async def test_a_busy_port_is_named_in_the_error(embedded_nats: EmbeddedNats, tmp_path: Path) -> None:
    port = int(embedded_nats.url.rsplit(":", 1)[1])
    with pytest.raises(EmbeddedNatsError, match=rf"port {port} .*already in use.*NEXUS_NATS_PORT"):
        async with EmbeddedNats(tmp_path / "second", port=port):
            pass


async def test_sync_always_makes_jetstream_fsync_every_write(tmp_path: Path) -> None:
    async with EmbeddedNats(tmp_path / "nats", sync_always=True) as server:
        assert server.url.startswith("nats://127.0.0.1:")
        config = (tmp_path / "nats" / "nats-server.conf").read_text()
    assert 'sync_interval: "always"' in config
    assert "http" not in config


async def test_open_bus_starts_the_embedded_server_and_stops_it_on_close(tmp_path: Path) -> None:
    settings = PlatformSettings.from_env({"NEXUS_DATA_DIR": str(tmp_path), "NEXUS_NATS_PORT": "0"})
    bus = await open_bus(settings)
    await bus.ping()
    ack = await bus.publish("nexus.evt.test.thing.done", b"x", msg_id="one")
    assert ack.seq == 1
    (server,) = bus._owned
    pid = server.pid
    await bus.close()
    assert server.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert (tmp_path / "nats" / "jetstream").is_dir()


async def test_open_bus_uses_nexus_nats_url_when_set(nats_server: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    settings = PlatformSettings.from_env({"NEXUS_DATA_DIR": str(data_dir), "NEXUS_NATS_URL": nats_server})
    bus = await open_bus(settings)
    try:
        assert bus._owned == []
        await bus.ping()
    finally:
        await bus.close()
    assert not (data_dir / "nats").exists()
