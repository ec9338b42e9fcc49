"""NATS dies (SIGKILL) and comes back on the same port and store: services and the relay carry on.

The granulator runs in this process from its own bootstrap over a real JetStreamBus; the
nats-server is the embedded one on a fixed free port with a store directory, killed as a crash
would kill it and started again on the same port and store.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import nats
import pytest
from processes import free_port
from resilience_support import WAIT, get_json, until_status, within

from nexus.bus import BusTimeoutError
from nexus.bus.embedded import EmbeddedNats, load_credentials
from nexus.bus.jetstream import JetStreamBus
from nexus.eventlog.memory import MemoryEventLog
from nexus.ingest import send_command
from nexus.proto import STREAM_EVT, new_event
from nexus.raw.memory import MemoryRaw
from nexus.relay import Relay
from nexus.services.granulator import bootstrap, load_settings

pytestmark = pytest.mark.nats

SOURCE = "nexus/orchestrator"


def handshake(execution_id: str) -> dict[str, object]:
    return {
        "stage": "content_granulation",
        "execution_id": execution_id,
        "input": {"topic": "Resilience", "structure_type": "research_report"},
        "requirements": {"memory_mb": 128, "timeout_ms": 60000},
    }


class Nats:
    """The embedded nats-server on one fixed port and store, which a test can kill and restart."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.port = free_port()
        self.server: EmbeddedNats | None = None

    @property
    def url(self) -> str:
        # With the operator's credentials, which survive restarts in the store directory.
        password = load_credentials(self.store)["users"]["operator"]
        return f"nats://operator:{password}@127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.server = EmbeddedNats(self.store, port=self.port)
        await self.server.start()

    async def kill(self) -> None:
        assert self.server is not None
        await self.server.kill()
        self.server = None

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None


@pytest.fixture
async def restartable_nats(tmp_path: Path) -> AsyncIterator[Nats]:
    server = Nats(tmp_path / "nats")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_granulator_rides_out_a_nats_crash(tmp_path: Path, restartable_nats: Nats) -> None:
    settings = load_settings(
        {
            "NEXUS_DATA_DIR": str(tmp_path / "data"),
            "NEXUS_GRANULATOR_PORT": "0",
            "NEXUS_GRANULATOR_REPLICA_ID": "resilience",
            "NEXUS_NATS_URL": restartable_nats.url,
        }
    )
    bus = await JetStreamBus.connect(restartable_nats.url, name="nexus-granulator")
    service = await bootstrap(settings, log=MemoryEventLog(), bus=bus, raw=MemoryRaw())
    await service.start()
    client = await JetStreamBus.connect(restartable_nats.url, name="orchestrator")
    base = f"http://127.0.0.1:{service.port}"
    try:
        async with aiohttp.ClientSession() as http:
            assert (await get_json(http, base + "/readyz"))[0] == 200
            before = await send_command(client, "granulator", "handshake", handshake("before"), source=SOURCE)
            assert before["accepted"] is True, before

            await restartable_nats.kill()
            down = await until_status(http, base + "/readyz", 503, seconds=5)
            assert down["failed"] == ["nats"], down
            assert "NATS" in down["checks"]["nats"], down
            assert down["checks"]["log"] == "ok"
            status, health = await get_json(http, base + "/healthz")
            assert (status, health["status"]) == (200, "ok")

            # A command sent while NATS is down is refused with a clear error, not hung.
            with pytest.raises(BusTimeoutError, match=r"not acknowledged within 1 s \(not connected to NATS\)"):
                await send_command(client, "granulator", "handshake", handshake("down"), source=SOURCE, timeout=1)

            await restartable_nats.start()
            up = await until_status(http, base + "/readyz", 200, seconds=8)
            assert up["failed"] == [] and up["status"] == "ready"

            # The durable command consumers pull again: a handshake gets its reply.
            after = await send_command(client, "granulator", "handshake", handshake("after"), source=SOURCE, timeout=10)
            assert after["accepted"] is True and after["handshake_id"] != before["handshake_id"], after
    finally:
        await client.close()
        await service.stop()


async def _nexus_evt(url: str) -> list[tuple[str, int]]:
    """(Nats-Msg-Id, Nexus-Position) of every message NEXUS_EVT holds, in stream order."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(STREAM_EVT)
        held = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(STREAM_EVT, seq)
            headers = msg.headers or {}
            held.append((headers["Nats-Msg-Id"], int(headers["Nexus-Position"])))
        return held
    finally:
        await nc.close()


async def test_relay_resumes_after_a_nats_crash_and_loses_nothing(restartable_nats: Nats) -> None:
    log = MemoryEventLog()
    bus = await JetStreamBus.connect(restartable_nats.url, name="nexus-relay", ack_timeout=2.0)
    relay = Relay(log, bus, lease_ttl=1.5)
    await relay.start()

    async def append(count: int, label: str) -> int:
        events = [
            new_event("nexus.resilience.batch.appended", {"n": i, "label": label}, source="nexus/resilience")
            for i in range(count)
        ]
        stored = await log.append(f"resilience-{label}-{uuid.uuid4().hex[:8]}", events, expected_version=0)
        return stored[-1].position or 0

    try:
        head = await append(40, "before")
        await within(relay.wait_relayed(head), "the first 40 events relayed")

        await restartable_nats.kill()
        # Appends go on while NATS is down: the log is the record.
        for batch in range(3):
            head = await append(20, f"down{batch}")
            await asyncio.sleep(0.05)

        await restartable_nats.start()
        await within(relay.wait_relayed(head), f"every event up to position {head} relayed after NATS came back", WAIT)
        head = await append(10, "after")
        await within(relay.wait_relayed(head), "an event appended after the restart relayed")
    finally:
        await relay.stop()
        await bus.close()

    held = await _nexus_evt(restartable_nats.url)
    logged = [(event.id, event.position) for batch in [await log.read_all(1)] for event in batch]
    assert len(logged) == 110
    assert sorted(held, key=lambda item: item[1]) == logged, "NEXUS_EVT must hold every logged event exactly once"


async def test_a_bus_closes_cleanly_and_a_request_keeps_its_deadline_with_nats_dead(restartable_nats: Nats) -> None:
    bus = await JetStreamBus.connect(restartable_nats.url, name="nexus-closing")
    try:
        await restartable_nats.kill()
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(BusTimeoutError, match=r"not acknowledged within 0\.5 s"):
            await bus.request("nexus.cmd.granulator.handshake", b"{}", timeout=0.5)
        # The caller's deadline bounds the publish too (the bus's ack_timeout is 10 s).
        assert loop.time() - started < 2.0
    finally:
        # With the server gone for good, closing neither raises nor hangs.
        await within(bus.close(), "closing a bus whose server is dead", 5)
