"""``nexus streams`` and ``nexus dlq list|redrive`` against a real nats-server."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import nats
import pytest
from processes import free_port

from nexus.bus.deadletters import dead_letters, redrive
from nexus.bus.embedded import EmbeddedNats
from nexus.bus.jetstream import JetStreamBus
from nexus.eventlog import open_event_log
from nexus.proto import STREAM_DLQ, STREAM_EVT

pytestmark = pytest.mark.nats


async def nexus(*args: str, server: EmbeddedNats) -> tuple[int, str]:
    # No credentials in the URL: the commands use the operator identity kept in the data directory.
    env = {**os.environ, "NEXUS_NATS_URL": server.url, "NEXUS_DATA_DIR": str(server.store_dir.parent)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nexus.cli.main", *args, env=env, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(process.communicate(), 20)
    return process.returncode or 0, out.decode()


async def test_dead_letters_are_listed_and_redriven_to_their_original_subject(embedded_nats: EmbeddedNats) -> None:
    bus = await JetStreamBus.connect(embedded_nats.client_url())
    try:
        # Two dead letters of two consumers, as the bus writes them.
        for consumer, subject in (("kam-costs", "nexus.evt.kam.cost.recorded"), ("studio-deltas", "nexus.evt.x.y.z")):
            await bus.publish(
                f"nexus.dlq.{consumer}",
                b'{"n": 1}',
                headers={
                    "Nexus-Error": "EnvelopeError",
                    "Nexus-Error-Reason": "invalid event: $.id: missing",
                    "Nexus-Consumer": consumer,
                    "Nexus-Original-Subject": subject,
                    "Nexus-Deliveries": "1",
                    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                },
            )
        status, listing = await nexus("dlq", "list", "--consumer", "kam-costs", server=embedded_nats)
        assert status == 0 and "kam-costs" in listing and "studio-deltas" not in listing
        assert "nexus.evt.kam.cost.recorded" in listing and "invalid event" in listing
        status, streams = await nexus("streams", server=embedded_nats)
        assert status == 0
        [dlq_row] = [line for line in streams.splitlines() if line.startswith(STREAM_DLQ)]
        assert dlq_row.split()[1] == "2"

        count, problems = await redrive(bus, "kam-costs")
        assert (count, problems) == (1, [])
        remaining = [m.headers["Nexus-Consumer"] async for m in dead_letters(bus)]
        assert remaining == ["studio-deltas"]
        redriven = await bus.last_message(STREAM_EVT, "nexus.evt.kam.cost.recorded")
        assert redriven is not None and redriven.data == b'{"n": 1}'
        assert "Nexus-Error" not in redriven.headers
        assert redriven.headers["traceparent"].startswith("00-4bf92f35")
    finally:
        await bus.close()


async def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nexus.cli.main",
        *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    return process.returncode or 0, out.decode(), err.decode()


async def test_nexus_streams_fails_fast_with_the_reason_when_nats_is_down(tmp_path: Path) -> None:
    # Nothing listens there: the command used to reconnect forever.
    started = time.monotonic()
    status, _, err = await run_cli(
        "streams", env={"NEXUS_NATS_URL": f"nats://127.0.0.1:{free_port()}", "NEXUS_DATA_DIR": str(tmp_path)}
    )
    assert time.monotonic() - started < 10
    assert status == 1
    assert "cannot connect to NATS" in err and "ConnectionRefusedError" in err and "nexus up" in err


async def test_a_wrong_password_is_named_and_never_printed(embedded_nats: EmbeddedNats, tmp_path: Path) -> None:
    env = {
        "NEXUS_NATS_URL": embedded_nats.url,
        "NEXUS_DATA_DIR": str(tmp_path),
        "NEXUS_NATS_USER": "operator",
        "NEXUS_NATS_PASSWORD": "wrong-password-123",
    }
    status, out, err = await run_cli("streams", env=env)
    assert status == 1 and "Authorization Violation" in err
    assert "wrong-password-123" not in out + err


async def test_a_producer_credential_is_printed_once_and_publishes_on_its_source(embedded_nats: EmbeddedNats) -> None:
    await (await JetStreamBus.connect(embedded_nats.client_url())).close()  # the Nexus streams
    env = {"NEXUS_DATA_DIR": str(embedded_nats.store_dir.parent)}
    status, out, err = await run_cli("keys", "create", "--producer", "acme", env=env)
    assert status == 0, err
    fields = dict(line.split(": ", 1) for line in out.splitlines()[1:])
    assert fields["user"] == "producer-acme" and "reloaded" in err
    # The running server accepts it at once, for nexus.ext.acme.> only.
    nc = await nats.connect(
        embedded_nats.url, user=fields["user"], password=fields["password"], inbox_prefix=fields["inbox prefix"]
    )
    try:
        ack = await nc.jetstream().publish("nexus.ext.acme.order.placed", b"{}")
        assert ack.stream == "NEXUS_EXT"
    finally:
        await nc.close()
    status, _, err = await run_cli("keys", "create", "--producer", "no.dots", env=env)
    assert status == 2 and "subject token" in err
    # A source bound to a client: the ingest will stamp its events with that tenant.
    status, out, err = await run_cli("keys", "create", "--producer", "shop", "--tenant", "acme-co", env=env)
    assert status == 0 and "client 'acme-co'" in out, err
    status, _, err = await run_cli("keys", "create", "--producer", "x", "--tenant", "platform", env=env)
    assert status == 2 and "not a client name" in err
    log = await open_event_log(f"sqlite:///{embedded_nats.store_dir.parent / 'events.db'}")
    try:
        bindings = [(e.data["source"], e.data.get("tenant")) for e in await log.read_stream("producers")]
    finally:
        await log.close()
    assert bindings == [("acme", None), ("shop", "acme-co")]
