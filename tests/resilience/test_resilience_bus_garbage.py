"""Garbage on the bus: every malformed message lands in NEXUS_DLQ with a reason that names the
problem, and the consumer goes on to handle a valid message.

The workflow and granulator services run from their own bootstraps over real JetStreamBus
connections, and the external ingest over its own, all on one real nats-server; the garbage is
published with plain nats-py, as any producer on the NATS account could.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NatsClient
from resilience_support import DeadLetters, cloud_event, within

from nexus.bus.jetstream import JetStreamBus
from nexus.eventlog.memory import MemoryEventLog
from nexus.ingest import ExtIngest, send_command
from nexus.raw.memory import MemoryRaw
from nexus.runtime import Service
from nexus.services.granulator import bootstrap as granulator_bootstrap
from nexus.services.granulator import load_settings as granulator_settings
from nexus.services.workflow.bootstrap import bootstrap as workflow_bootstrap
from nexus.services.workflow.settings import load_settings as workflow_settings

pytestmark = pytest.mark.nats

SOURCE = "nexus/resilience-tests"
START = "nexus.cmd.workflow.start"
PROCESS = "nexus.cmd.granulator.process"
EXT = "nexus.ext.x.y"


@dataclass
class Platform:
    nc: NatsClient
    client: JetStreamBus
    dead: DeadLetters
    workflow: Service
    granulator: Service
    ingest: ExtIngest
    ingest_log: MemoryEventLog

    async def publish(self, subject: str, payload: bytes) -> int:
        ack = await self.nc.jetstream().publish(subject, payload, timeout=10)
        return int(ack.seq)

    async def dead_letter_of(self, subject: str, seq: int, what: str) -> tuple[dict[str, str], bytes]:
        _, headers, data = await self.dead.wait_for(
            lambda h: h.get("Nexus-Original-Subject") == subject and h.get("Nexus-Original-Seq") == str(seq),
            f"the dead letter of {what} on {subject}",
        )
        return headers, data


@pytest.fixture
async def platform(tmp_path: Path, nats_server: str) -> AsyncIterator[Platform]:
    nc = await nats.connect(nats_server)
    client = await JetStreamBus.connect(nats_server, name="resilience-client")
    dead = DeadLetters()
    await dead.subscribe(nc)
    workflow = await workflow_bootstrap(
        workflow_settings(
            {
                "NEXUS_WORKFLOW_PORT": "0",
                "NEXUS_DATA_DIR": str(tmp_path / "workflow"),
                "NEXUS_WORKFLOW_BUNDLED": "none",
                "NEXUS_NATS_URL": nats_server,
            }
        ),
        log=MemoryEventLog(),
        bus=await JetStreamBus.connect(nats_server, name="nexus-workflow"),
        raw=MemoryRaw(),
        optional_modules=False,
    )
    granulator = await granulator_bootstrap(
        granulator_settings(
            {
                "NEXUS_GRANULATOR_PORT": "0",
                "NEXUS_DATA_DIR": str(tmp_path / "granulator"),
                "NEXUS_GRANULATOR_REPLICA_ID": "g",
                "NEXUS_NATS_URL": nats_server,
            }
        ),
        log=MemoryEventLog(),
        bus=await JetStreamBus.connect(nats_server, name="nexus-granulator"),
        raw=MemoryRaw(),
    )
    ingest_log = MemoryEventLog()
    ingest_bus = await JetStreamBus.connect(nats_server, name="nexus-ingest")
    ingest = ExtIngest(ingest_bus, ingest_log)
    await workflow.start()
    await granulator.start()
    await ingest.start()
    try:
        yield Platform(nc, client, dead, workflow, granulator, ingest, ingest_log)
    finally:
        await ingest.stop()
        await ingest_bus.close()
        await granulator.stop()
        await workflow.stop()
        await client.close()
        await nc.close()


def _garbage(max_payload: int) -> dict[str, tuple[bytes, str]]:
    """Each malformed message and a word its dead-letter reason must contain (per consumer below)."""
    wrong_version = json.loads(cloud_event("nexus.workflow.start", {"workflow_id": "w"}, event_id="e-1"))
    wrong_version["specversion"] = "0.3"
    huge = json.dumps({"pad": "x" * (max_payload - 1024)}).encode()
    full = json.dumps({"pad": "x" * (max_payload - 11)}).encode()
    assert len(full) == max_payload
    return {
        # Random bytes behind a byte that can never start JSON (0xFF is not UTF-8): bare random
        # bytes that happen to begin like a JSON number are refused as the wrong type (an int,
        # not an object) before the decoder reaches the garbage, and the reason names no JSON.
        "random bytes": (b"\xff" + os.urandom(511), "JSON"),
        "not JSON": (b"this is not JSON {", "JSON"),
        "JSON that is not a CloudEvent": (json.dumps({"hello": "world"}).encode(), "specversion"),
        "a CloudEvent with the wrong specversion": (json.dumps(wrong_version).encode(), "specversion"),
        "a message near the server's max payload": (huge, "specversion"),
        "a message of exactly the server's max payload": (full, "specversion"),
    }


GARBAGE_KINDS = [
    "random bytes",
    "not JSON",
    "JSON that is not a CloudEvent",
    "a CloudEvent with the wrong specversion",
    "a message near the server's max payload",
    "a message of exactly the server's max payload",
]


async def _check_garbage(platform: Platform, subject: str, expected: dict[str, str]) -> None:
    garbage = _garbage(platform.nc.max_payload)
    for kind in GARBAGE_KINDS:
        payload, _ = garbage[kind]
        seq = await platform.publish(subject, payload)
        headers, data = await platform.dead_letter_of(subject, seq, kind)
        reason = headers.get("Nexus-Error-Reason", "")
        assert headers.get("Nexus-Error"), headers
        expect = expected.get(kind, expected["a message near the server's max payload"])
        assert expect.lower() in reason.lower(), f"{kind} on {subject}: reason {reason!r}"
        if kind == "a message of exactly the server's max payload":
            # The dead letter's own headers cannot fit beside it: its payload is cut, and says so.
            assert headers.get("Nexus-Payload-Truncated") == str(len(payload)), headers
            assert data == payload[: len(data)] and len(data) > len(payload) - 2048
        else:
            assert data == payload and "Nexus-Payload-Truncated" not in headers, kind


async def test_garbage_on_workflow_start_is_dead_lettered_and_a_valid_start_follows(platform: Platform) -> None:
    await _check_garbage(
        platform,
        START,
        {
            "random bytes": "neither a CloudEvent nor a JSON object",
            "not JSON": "neither a CloudEvent nor a JSON object",
            # A bare JSON object is a command too (ARCHITECTURE: CloudEvent's data or bare JSON):
            # its problem is that it names no workflow.
            "JSON that is not a CloudEvent": "workflow",
            "a CloudEvent with the wrong specversion": "Invalid enum value '0.3'",
            "a message near the server's max payload": "workflow",
        },
    )
    definition = {"id": "noop", "steps": [{"id": "w", "type": "wait_event", "event": "x.y", "timeout_seconds": 60}]}
    registered = await send_command(
        platform.client, "workflow", "register", {"kind": "workflow", "document": definition}, source=SOURCE, timeout=10
    )
    assert registered == {"id": "noop", "version": 1}, registered
    started = await send_command(
        platform.client, "workflow", "start", {"workflow_id": "noop", "input": {}}, source=SOURCE, timeout=10
    )
    assert str(started.get("id", "")).strip(), started


async def test_a_workflow_start_with_the_wrong_specversion_is_dead_lettered_naming_it(platform: Platform) -> None:
    payload, _ = _garbage(platform.nc.max_payload)["a CloudEvent with the wrong specversion"]
    seq = await platform.publish(START, payload)
    headers, _ = await platform.dead_letter_of(START, seq, "a CloudEvent with the wrong specversion")
    assert "$.specversion" in headers["Nexus-Error-Reason"], headers


async def test_garbage_on_granulator_process_is_dead_lettered_and_a_valid_process_follows(platform: Platform) -> None:
    await _check_garbage(
        platform,
        PROCESS,
        {
            "random bytes": "not valid JSON",
            "not JSON": "not valid JSON",
            "JSON that is not a CloudEvent": "missing required field `specversion`",
            "a CloudEvent with the wrong specversion": "Invalid enum value '0.3'",
            "a message near the server's max payload": "missing required field `specversion`",
        },
    )
    body: dict[str, Any] = {
        "stage": "content_granulation",
        "execution_id": "exec_after_garbage",
        "input": {"topic": "Tea", "structure_type": "research_report"},
        "requirements": {"memory_mb": 128, "timeout_ms": 60000},
    }
    hs = await send_command(platform.client, "granulator", "handshake", body, source=SOURCE, timeout=10)
    assert hs["accepted"] is True, hs
    call = {"execution_id": "exec_after_garbage", "handshake_id": hs["handshake_id"]}
    done = await send_command(platform.client, "granulator", "process", call, source=SOURCE, timeout=15)
    assert done["accepted"] is True and done["status"] == "completed", done


async def test_garbage_on_an_external_subject_is_dead_lettered_and_a_valid_event_is_ingested(
    platform: Platform,
) -> None:
    await _check_garbage(
        platform,
        EXT,
        {
            "random bytes": "not valid JSON",
            "not JSON": "not valid JSON",
            "JSON that is not a CloudEvent": "missing required field `specversion`",
            "a CloudEvent with the wrong specversion": "Invalid enum value '0.3'",
            "a message near the server's max payload": "missing required field `specversion`",
        },
    )
    event_id = str(uuid.uuid4())
    await platform.publish(EXT, cloud_event("com.example.thing.happened", {"n": 1}, event_id=event_id))

    async def ingested() -> Any:
        async for event in platform.ingest_log.subscribe(1):
            if event.causationid == event_id:
                return event
        return None

    stored = await within(ingested(), "the valid external event in the log")
    assert stored.streamid == "ext-x" and stored.data == {"n": 1}
