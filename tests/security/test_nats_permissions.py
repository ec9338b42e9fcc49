"""NATS refuses strangers: anonymous clients are refused, and each identity reaches only its subjects.

Issue 9, finding 3: anyone who reached the NATS port read NEXUS_EVT, sent commands and forged
``nexus.evt.*`` events. Every check here runs against the real embedded nats-server.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from nexus.bus import BusTimeoutError, BusUnavailableError
from nexus.bus.embedded import (
    IDENTITIES,
    EmbeddedNats,
    add_producer,
    load_credentials,
    producer_inbox_prefix,
    revoke_producer,
)
from nexus.bus.jetstream import JetStreamBus
from nexus.proto import STREAM_CMD, STREAM_EVT, STREAM_EXT

pytestmark = pytest.mark.nats


@pytest.fixture
async def operator(nats_server: str) -> AsyncIterator[JetStreamBus]:
    """The operator's bus, which also creates the Nexus streams."""
    bus = await JetStreamBus.connect(nats_server)
    yield bus
    await bus.close()


async def messages(bus: JetStreamBus, stream: str) -> int:
    return int((await bus.js.stream_info(stream)).state.messages)


class Watched:
    """A raw nats-py client whose asynchronous errors (permission violations) are kept."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc: Client | None = None

    async def connect(self, url: str, **options: object) -> Client:
        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc))

        self.nc = await nats.connect(url, error_cb=on_error, allow_reconnect=False, **options)  # type: ignore[arg-type]
        return self.nc

    async def violations(self, subject: str) -> bool:
        assert self.nc is not None
        await self.nc.flush()
        for _ in range(50):
            # nats-py lower-cases the server's error line.
            if any("permissions violation" in e and f'"{subject.lower()}"' in e for e in self.errors):
                return True
            await asyncio.sleep(0.02)
        return False


async def test_an_anonymous_client_is_refused(embedded_nats: EmbeddedNats) -> None:
    # No user at all, and a known user with a wrong password: both refused at connect.
    with pytest.raises(BusUnavailableError, match="Authorization Violation"):
        await JetStreamBus.connect(embedded_nats.url, reconnect=False, connect_timeout=2)
    with pytest.raises(BusUnavailableError, match="Authorization Violation"):
        await JetStreamBus.connect(
            embedded_nats.url, user="relay", password="not-the-password", reconnect=False, connect_timeout=2
        )


async def test_only_the_relay_publishes_platform_events(embedded_nats: EmbeddedNats, operator: JetStreamBus) -> None:
    before = await messages(operator, STREAM_EVT)
    # A service (here KAM) is refused nexus.evt.>: its publish is dropped, no ack comes back.
    kam = await JetStreamBus.connect(embedded_nats.client_url("kam"), ack_timeout=1.0)
    try:
        with pytest.raises(BusTimeoutError):
            await kam.publish("nexus.evt.workflow.execution.completed", b"{}", msg_id="forged-by-kam")
        # What a service does need works: a command, and a dead letter.
        assert (await kam.publish("nexus.cmd.kam.noop", b"{}")).stream == STREAM_CMD
        assert (await kam.publish("nexus.dlq.kam-test", b"{}")).stream == "NEXUS_DLQ"
    finally:
        await kam.close()
    assert await messages(operator, STREAM_EVT) == before

    relay = await JetStreamBus.connect(embedded_nats.client_url("relay"))
    try:
        ack = await relay.publish("nexus.evt.workflow.execution.completed", b"{}", msg_id="relayed")
    finally:
        await relay.close()
    assert ack.stream == STREAM_EVT and await messages(operator, STREAM_EVT) == before + 1


async def test_a_producer_publishes_only_on_its_own_external_subjects(
    embedded_nats: EmbeddedNats, operator: JetStreamBus
) -> None:
    user, password, reloaded = add_producer(embedded_nats.store_dir, "acme")
    # The running server took the new user up by a configuration reload.
    assert reloaded
    await asyncio.sleep(0.3)
    watched = Watched()
    nc = await watched.connect(
        embedded_nats.url, user=user, password=password, inbox_prefix=producer_inbox_prefix("acme")
    )
    try:
        js = nc.jetstream()
        ack = await js.publish("nexus.ext.acme.order.placed", b'{"n": 1}')
        assert ack.stream == STREAM_EXT

        evt, cmd, ext = [await messages(operator, s) for s in (STREAM_EVT, STREAM_CMD, STREAM_EXT)]
        # Forging platform events, sending commands, or writing as another source: refused.
        for subject in ("nexus.evt.workflow.execution.completed", "nexus.cmd.workflow.start", "nexus.ext.other.x"):
            await nc.publish(subject, b"{}")
            assert await watched.violations(subject), subject
        assert (await messages(operator, STREAM_EVT), await messages(operator, STREAM_CMD)) == (evt, cmd)
        assert await messages(operator, STREAM_EXT) == ext

        # Reading NEXUS_EVT: neither through the JetStream API nor by subscribing to the events
        # or to the platform's inboxes, where the API's answers travel.
        api = f"$JS.API.STREAM.MSG.GET.{STREAM_EVT}"
        await nc.publish(api, json.dumps({"seq": 1}).encode(), reply=producer_inbox_prefix("acme") + ".x")
        assert await watched.violations(api), watched.errors
        for subject in ("nexus.evt.>", "_INBOX.>"):
            await nc.subscribe(subject)
            assert await watched.violations(subject), subject
    finally:
        await nc.close()

    # A revoked producer can no longer connect.
    assert revoke_producer(embedded_nats.store_dir, "acme")
    await asyncio.sleep(0.3)
    with pytest.raises(BusUnavailableError, match="Authorization Violation"):
        await JetStreamBus.connect(embedded_nats.url, user=user, password=password, reconnect=False)


async def test_credentials_are_private_and_survive_a_restart(tmp_path: Path) -> None:
    store = tmp_path / "nats"
    async with EmbeddedNats(store) as server:
        first = load_credentials(store)
    assert set(first["users"]) == set(IDENTITIES)
    assert len(set(first["users"].values())) == len(IDENTITIES)
    for name in ("credentials.json", "authorization.conf", "nats-server.conf"):
        assert (store / name).stat().st_mode & 0o777 == 0o600, name
    assert store.stat().st_mode & 0o777 == 0o700
    # Started again on the same store: the same passwords, so running clients reconnect.
    async with EmbeddedNats(store) as server:
        assert load_credentials(store) == first
        bus = await JetStreamBus.connect(server.url, user="operator", password=first["users"]["operator"])
        await bus.close()
