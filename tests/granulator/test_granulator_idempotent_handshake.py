"""A handshake sent again with the same Idempotency-Key (an orchestrator's step resumed after a crash)
answers the recorded handshake: one handshake, one reservation of capacity."""

from __future__ import annotations

from pathlib import Path

from granulator_support import handshake_body, running_granulator

from nexus.auth import issue_key
from nexus.eventlog.memory import MemoryEventLog
from nexus.services.granulator import handlers


async def test_the_same_key_is_the_same_handshake(tmp_path: Path, memory_log: MemoryEventLog) -> None:
    other = await issue_key(memory_log, "worker", "other-orchestrator")
    async with running_granulator(tmp_path, log=memory_log, NEXUS_GRANULATOR_CAPACITY="2") as g:
        keyed = g.headers(**{"Idempotency-Key": "exec_1:stage:handshake"})
        status, first = await g.post("/api/handshake", handshake_body(), keyed)
        assert status == 200 and first["accepted"], first
        status, again = await g.post("/api/handshake", handshake_body(), keyed)
        assert status == 200 and again == first
        assert g.worker.open_jobs == 1
        events = await memory_log.read_stream(handlers.stream_id(first["handshake_id"]))
        assert [e.type for e in events] == [handlers.ACCEPTED]

        # Another key, or another worker with the same key: another handshake.
        _, second = await g.post("/api/handshake", handshake_body(), g.headers(**{"Idempotency-Key": "exec_2"}))
        assert second["accepted"] and second["handshake_id"] != first["handshake_id"]
        other_headers = {
            "Authorization": f"Bearer {other.secret}",
            "X-Worker-ID": "other-orchestrator",
            "Idempotency-Key": "exec_1:stage:handshake",
        }
        _, foreign = await g.post("/api/handshake", handshake_body(), other_headers)
        # Capacity 2 is used up by the two distinct handshakes: the other worker's is refused, not merged.
        assert foreign["handshake_id"] != first["handshake_id"] and foreign["accepted"] is False
        assert foreign["code"] == "over_capacity"
        # The refusal is recorded under its key too: asked again, the same answer.
        assert (await g.post("/api/handshake", handshake_body(), other_headers))[1] == foreign

        # Processing the repeated handshake's id works as for the first answer.
        status, result = await g.post(
            "/api/process", {"execution_id": "exec_123", "handshake_id": first["handshake_id"]}
        )
        assert status == 200 and result["handshake_id"] == first["handshake_id"]

        status, error = await g.post("/api/handshake", handshake_body(), g.headers(**{"Idempotency-Key": "k" * 300}))
        assert status == 400 and "Idempotency-Key" in error["message"]
