"""The protocol over NATS commands (nexus.cmd.granulator.<verb>) with a real nats-server."""

from __future__ import annotations

from pathlib import Path

import pytest
from granulator_support import handshake_body, running_granulator

from nexus.bus.jetstream import JetStreamBus
from nexus.eventlog.memory import MemoryEventLog
from nexus.ingest import send_command
from nexus.raw import resolve
from nexus.raw.memory import MemoryRaw
from nexus.services.granulator import handlers

pytestmark = pytest.mark.nats

SOURCE = "nexus/orchestrator"


async def test_handshake_process_acknowledge_over_nats(
    tmp_path: Path, nats_server: str, memory_log: MemoryEventLog
) -> None:
    raw = MemoryRaw()
    service_bus = await JetStreamBus.connect(nats_server, name="granulator-test")
    client = await JetStreamBus.connect(nats_server, name="orchestrator-test")
    try:
        async with running_granulator(tmp_path, log=memory_log, raw=raw, bus=service_bus) as g:
            body = handshake_body(execution_id="exec_nats")
            hs = await send_command(client, "granulator", "handshake", body, source=SOURCE, timeout=10)
            assert hs["accepted"] is True and hs["handshake_id"].startswith("hs_"), hs
            call = {"execution_id": "exec_nats", "handshake_id": hs["handshake_id"]}
            result = await send_command(client, "granulator", "process", call, source=SOURCE, timeout=10)
            assert result["accepted"] is True and result["status"] == "completed"
            structure = await resolve(raw, result["output_ref"])
            assert structure["structure_type"] == "research_report"
            # A repeated process over NATS returns the first result.
            again = await send_command(client, "granulator", "process", call, source=SOURCE, timeout=10)
            assert again == result
            ack = await send_command(
                client, "granulator", "acknowledge", {**call, "status": "completed"}, source=SOURCE, timeout=10
            )
            assert ack["accepted"] is True and ack["status"] == "acknowledged"
            assert g.worker.open_jobs == 0
            events = await memory_log.read_stream(handlers.stream_id(hs["handshake_id"]))
            assert events[0].data["worker_id"] == SOURCE

            # Rejections and errors come back as answers; the consumer keeps running.
            rejected = await send_command(
                client,
                "granulator",
                "handshake",
                handshake_body(input={"topic": "x", "structure_type": "sonnet"}),
                source=SOURCE,
                timeout=10,
            )
            assert rejected["accepted"] is False and rejected["code"] == "unknown_structure_type"
            missing = await send_command(
                client, "granulator", "process", {"execution_id": "e", "handshake_id": "hs_none"}, source=SOURCE
            )
            assert missing == {"accepted": False, "error": "unknown_handshake", "reason": "no handshake 'hs_none'"}
            bad = await send_command(client, "granulator", "process", {"handshake_id": 3}, source=SOURCE)
            assert bad["accepted"] is False and bad["error"] == "invalid_request"

            # granulate: the whole round in one command (what a workflow task step sends).
            small = await send_command(
                client,
                "granulator",
                "granulate",
                {
                    "execution_id": "exec_small",
                    "input": {"topic": "Tea", "structure_type": "article", "depth": 1, "sources": 0},
                },
                source=SOURCE,
                timeout=10,
            )
            assert small["accepted"] is True and small["output"]["title"] == "Tea" and small["output_ref"] is None
            assert g.worker.open_jobs == 0

            text = await send_command(
                client, "granulator", "generate", {"prompt": "Expand:\n\nThe sea was calm."}, source=SOURCE
            )
            assert text["accepted"] is True and "The sea was calm." in text["text"]
    finally:
        await client.close()
