"""The handshake → process → acknowledge protocol over HTTP, with worker auth, capacity and idempotency."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest
from granulator_support import handshake_body, running_granulator

from nexus.auth import issue_key, revoke_key
from nexus.eventlog.memory import MemoryEventLog
from nexus.raw import resolve
from nexus.raw.memory import MemoryRaw
from nexus.services.granulator import handlers


async def test_full_round_with_output_by_reference(tmp_path: Path, memory_log: MemoryEventLog) -> None:
    raw = MemoryRaw()
    async with running_granulator(tmp_path, log=memory_log, raw=raw) as g:
        # Handshake: accepted with an id and an estimate.
        status, hs = await g.post("/api/handshake", handshake_body())
        assert status == 200, hs
        assert hs["accepted"] is True and hs["handshake_id"].startswith("hs_")
        assert hs["estimate"]["sections"] > 0 and hs["estimate"]["memory_mb"] <= 128
        assert g.worker.open_jobs == 1

        # Process: a research report is over 1 KB, so it comes back as a raw:// reference.
        status, result = await g.post("/api/process", {"execution_id": "exec_123", "handshake_id": hs["handshake_id"]})
        assert status == 200, result
        assert result["output"] is None and result["output_ref"].startswith("raw://")
        structure = await resolve(raw, result["output_ref"])
        assert structure["title"] == "AI Tools Market Analysis: Research Report"
        assert result["size_bytes"] == len(msgspec.json.encode(structure)) >= 1024
        titles = [s["title"] for s in structure["sections"]]
        assert "Market Segments" in titles and "Pricing Models" in titles
        assert all(s["subsections"] and s["key_questions"] for s in structure["sections"])

        # Acknowledge: closes the handshake and releases the capacity.
        status, ack = await g.post(
            "/api/acknowledge",
            {
                "execution_id": "exec_123",
                "handshake_id": hs["handshake_id"],
                "status": "completed",
                "output_ref": result["output_ref"],
            },
        )
        assert status == 200 and ack["status"] == "acknowledged" and ack["already_acknowledged"] is False
        assert g.worker.open_jobs == 0

        # Every step is an event in the handshake's stream.
        types = [e.type for e in await memory_log.read_stream(handlers.stream_id(hs["handshake_id"]))]
        assert types[0] == handlers.ACCEPTED and types[-1] == handlers.ACKNOWLEDGED
        assert handlers.PROGRESSED in types and handlers.COMPLETED in types


async def test_small_output_is_inline(tmp_path: Path, memory_log: MemoryEventLog) -> None:
    async with running_granulator(tmp_path, log=memory_log) as g:
        body = handshake_body(input={"topic": "Tea", "structure_type": "article", "depth": "brief", "sources": 0})
        _, hs = await g.post("/api/handshake", body)
        status, result = await g.post("/api/process", {"execution_id": "exec_123", "handshake_id": hs["handshake_id"]})
        assert status == 200, result
        assert result["output_ref"] is None
        assert result["output"]["title"] == "Tea" and result["size_bytes"] < 1024


async def test_process_is_idempotent(tmp_path: Path, memory_log: MemoryEventLog) -> None:
    async with running_granulator(tmp_path, log=memory_log) as g:
        _, hs = await g.post("/api/handshake", handshake_body())
        call = {"execution_id": "exec_123", "handshake_id": hs["handshake_id"]}
        # Concurrent duplicates and a later repeat all get the first result; one completion is recorded.
        first, second = await asyncio.gather(g.post("/api/process", call), g.post("/api/process", call))
        third = await g.post("/api/process", call)
        assert first == second == third
        events = await memory_log.read_stream(handlers.stream_id(hs["handshake_id"]))
        assert [e.type for e in events].count(handlers.COMPLETED) == 1
        assert [e.data.get("step") for e in events].count("started") == 1

        # Acknowledge is idempotent too.
        ack = {**call, "status": "completed"}
        _, a1 = await g.post("/api/acknowledge", ack)
        _, a2 = await g.post("/api/acknowledge", ack)
        assert a1["already_acknowledged"] is False and a2["already_acknowledged"] is True
        events = await memory_log.read_stream(handlers.stream_id(hs["handshake_id"]))
        assert [e.type for e in events].count(handlers.ACKNOWLEDGED) == 1

        # Process after acknowledge still answers with the first result.
        assert await g.post("/api/process", call) == first


@pytest.mark.parametrize(
    ("change", "code", "field"),
    [
        ({"requirements": {"memory_mb": 4, "timeout_ms": 60000}}, "requirement_out_of_bounds", "memory_mb"),
        ({"requirements": {"memory_mb": 999999, "timeout_ms": 60000}}, "requirement_out_of_bounds", "memory_mb"),
        ({"requirements": {"memory_mb": 128, "timeout_ms": 10**9}}, "requirement_out_of_bounds", "timeout_ms"),
        ({"requirements": {"memory_mb": 128, "timeout_ms": 1}}, "requirement_out_of_bounds", "timeout_ms"),
        ({"input": {"topic": "Bees", "structure_type": "limerick"}}, "unknown_structure_type", "structure_type"),
        ({"stage": "rss_fetching"}, "unknown_stage", "stage"),
        ({"input": {"topic": "Bees", "structure_type": "book", "depth": "galactic"}}, "invalid_input", "depth"),
        ({"validation": {"enabled": True, "level": 7}}, "invalid_input", "level"),
    ],
)
async def test_handshake_rejections_name_the_reason(
    tmp_path: Path, memory_log: MemoryEventLog, change: dict, code: str, field: str
) -> None:
    async with running_granulator(tmp_path, log=memory_log) as g:
        status, answer = await g.post("/api/handshake", handshake_body(**change))
        assert status == 200
        assert answer["accepted"] is False and answer["code"] == code and field in answer["reason"]
        assert g.worker.open_jobs == 0
        # The rejection is recorded; processing a rejected handshake is a conflict.
        events = await memory_log.read_stream(handlers.stream_id(answer["handshake_id"]))
        assert [e.type for e in events] == [handlers.REJECTED]
        status, error = await g.post(
            "/api/process", {"execution_id": "exec_123", "handshake_id": answer["handshake_id"]}
        )
        assert status == 409 and error["error"] == "handshake_conflict"


async def test_capacity_is_enforced_and_released(tmp_path: Path, memory_log: MemoryEventLog) -> None:
    async with running_granulator(tmp_path, log=memory_log, NEXUS_GRANULATOR_CAPACITY="2") as g:
        answers = await asyncio.gather(*(g.post("/api/handshake", handshake_body()) for _ in range(5)))
        accepted = [a for _, a in answers if a["accepted"]]
        refused = [a for _, a in answers if not a["accepted"]]
        assert len(accepted) == 2 and len(refused) == 3
        assert all(a["code"] == "over_capacity" for a in refused)
        # Acknowledging one frees a slot for the next handshake.
        await g.post(
            "/api/acknowledge",
            {"execution_id": "exec_123", "handshake_id": accepted[0]["handshake_id"], "status": "cancelled"},
        )
        _, again = await g.post("/api/handshake", handshake_body())
        assert again["accepted"] is True
        async with g.session.get(g.url + "/metrics") as resp:
            text = await resp.text()
        assert 'nexus_granulator_jobs_in_progress{replica="replica-a"} 2.0' in text
        assert 'nexus_granulator_handshakes_total{outcome="over_capacity"}' in text


async def test_lease_expiry_releases_capacity(tmp_path: Path, memory_log: MemoryEventLog) -> None:
    async with running_granulator(
        tmp_path, log=memory_log, NEXUS_GRANULATOR_CAPACITY="1", NEXUS_GRANULATOR_LEASE_GRACE_MS="0"
    ) as g:
        now = [1_000_000.0]
        g.worker.clock = lambda: now[0]
        _, first = await g.post("/api/handshake", handshake_body(requirements={"memory_mb": 128, "timeout_ms": 500}))
        _, second = await g.post("/api/handshake", handshake_body())
        assert first["accepted"] and not second["accepted"]
        # Past the lease (timeout_ms + grace) without an acknowledgement, the slot is freed and recorded.
        now[0] += 1.0
        _, third = await g.post("/api/handshake", handshake_body())
        assert third["accepted"], third
        events = await memory_log.read_stream(handlers.stream_id(first["handshake_id"]))
        assert events[-1].type == handlers.EXPIRED


async def test_worker_auth(tmp_path: Path, memory_log: MemoryEventLog) -> None:
    async with running_granulator(tmp_path, log=memory_log) as g:
        body = handshake_body()
        # No credential, a wrong token: 401.
        assert (await g.post("/api/handshake", body, headers={"X-Worker-ID": "w"}))[0] == 401
        assert (await g.post("/api/handshake", body, headers={"Authorization": "Bearer nxw_x.y", "X-Worker-ID": "w"}))[
            0
        ] == 401
        # A client's API key presented as a worker token: 403.
        client = await issue_key(memory_log, "client", "acme")
        headers = {"Authorization": f"Bearer {client.secret}", "X-Worker-ID": "w"}
        assert (await g.post("/api/handshake", body, headers=headers))[0] == 403
        # The same key as a client credential is a client of its tenant (checked in test_granulator_tenancy).
        for path in ("/api/process", "/api/acknowledge", "/generate"):
            assert (await g.post(path, {}, headers={"X-API-Key": client.secret}))[0] == 400
        # A valid token works, and stops working once revoked.
        assert (await g.post("/api/handshake", body))[0] == 200
        key_id = (await g.service.keys.verify(g.token)).key_id
        await revoke_key(memory_log, key_id)
        assert (await g.post("/api/handshake", body))[0] == 401


async def test_malformed_requests_get_clear_errors_and_the_service_keeps_running(
    tmp_path: Path, memory_log: MemoryEventLog
) -> None:
    async with running_granulator(tmp_path, log=memory_log) as g:
        async with g.session.post(g.url + "/api/handshake", data=b"{not json", headers=g.headers()) as resp:
            assert resp.status == 400 and "not valid JSON" in (await resp.json())["message"]
        status, error = await g.post("/api/handshake", {"stage": "content_granulation", "input": {}})
        assert status == 400 and "requirements" in error["message"]
        status, error = await g.post("/api/handshake", handshake_body(input={"structure_type": "book"}))
        assert status == 200 and error["code"] == "invalid_input" and "topic" in error["reason"]
        status, error = await g.post("/api/process", {"execution_id": "exec_123", "handshake_id": "hs_nope"})
        assert status == 404 and error["error"] == "unknown_handshake"
        status, error = await g.post("/api/process", {"handshake_id": 5})
        assert status == 400 and "handshake_id" in error["message"]
        _, hs = await g.post("/api/handshake", handshake_body())
        status, error = await g.post("/api/process", {"execution_id": "another", "handshake_id": hs["handshake_id"]})
        assert status == 404 and "does not belong" in error["message"]
        status, error = await g.post(
            "/api/process", {"execution_id": "exec_123", "handshake_id": hs["handshake_id"], "data_ref": "ftp://x/y"}
        )
        assert status == 400 and "data_ref" in error["message"]
        status, error = await g.post(
            "/api/acknowledge", {"execution_id": "exec_123", "handshake_id": hs["handshake_id"], "status": "great"}
        )
        assert status == 400 and "$.status" in error["message"]
        # Still serving.
        async with g.session.get(g.url + "/healthz") as resp:
            assert resp.status == 200


async def test_data_ref_is_resolved_from_raw_or_inline(tmp_path: Path, memory_log: MemoryEventLog) -> None:
    raw = MemoryRaw()
    await raw.store("inputs/exec_9.json", msgspec.json.encode({"topic": "Roman Empire History"}), "application/json")
    async with running_granulator(tmp_path, log=memory_log, raw=raw) as g:
        _, hs = await g.post("/api/handshake", handshake_body(execution_id="exec_9"))
        status, result = await g.post(
            "/api/process",
            {"execution_id": "exec_9", "handshake_id": hs["handshake_id"], "data_ref": "raw://inputs/exec_9.json"},
        )
        assert status == 200, result
        assert result["title"] == "Roman Empire History: Research Report"
        _, hs = await g.post("/api/handshake", handshake_body(execution_id="exec_9"))
        status, result = await g.post(
            "/api/process",
            {"execution_id": "exec_9", "handshake_id": hs["handshake_id"], "data_ref": {"topic": "Solar Energy"}},
        )
        assert status == 200 and result["title"] == "Solar Energy: Research Report"
        # A reference to nothing is a clear, permanent error, recorded as such.
        _, hs = await g.post("/api/handshake", handshake_body(execution_id="exec_9"))
        call = {"execution_id": "exec_9", "handshake_id": hs["handshake_id"], "data_ref": "raw://inputs/missing.json"}
        status, error = await g.post("/api/process", call)
        assert status == 422 and error["error"] == "input_unavailable" and error["retryable"] is False
        assert (await g.post("/api/process", call))[1] == error


async def test_a_second_replica_rebuilds_and_shares_the_work(tmp_path: Path, memory_log: MemoryEventLog) -> None:
    async with running_granulator(tmp_path / "a", log=memory_log, NEXUS_GRANULATOR_CAPACITY="1") as a:
        _, hs = await a.post("/api/handshake", handshake_body())
        # Replica b, sharing the log: it can process a's handshake, and its own capacity is free.
        async with running_granulator(
            tmp_path / "b", log=memory_log, token=a.token, NEXUS_GRANULATOR_REPLICA_ID="replica-b"
        ) as b:
            status, result = await b.post(
                "/api/process", {"execution_id": "exec_123", "handshake_id": hs["handshake_id"]}
            )
            assert status == 200 and result["replica_id"] == "replica-b"
            assert (await a.post("/api/process", {"execution_id": "exec_123", "handshake_id": hs["handshake_id"]}))[
                1
            ] == result
            assert b.worker.open_jobs == 0
            # a is full; acknowledged on b, a sees it in the log and accepts again.
            assert (await a.post("/api/handshake", handshake_body()))[1]["code"] == "over_capacity"
            await b.post("/api/acknowledge", {"execution_id": "exec_123", "handshake_id": hs["handshake_id"]})
            assert (await a.post("/api/handshake", handshake_body()))[1]["accepted"] is True
            # A restarted replica a (same replica id) rebuilds its open handshake from the log.
            from granulator_support import settings_for

            from nexus.services.granulator import BuiltinGenerator, make_worker

            again = make_worker(
                settings_for(tmp_path / "a2", NEXUS_GRANULATOR_CAPACITY="1"),
                log=memory_log,
                raw=MemoryRaw(),
                generator=BuiltinGenerator(),
            )
            assert await again.rebuild() == 1


async def test_generate_expands_text_and_can_be_opened_to_api_call_steps(
    tmp_path: Path, memory_log: MemoryEventLog
) -> None:
    body = {"prompt": "Expand this chapter:\n\nThe door creaked open.", "model": "gpt-4", "max_tokens": 300}
    async with running_granulator(tmp_path, log=memory_log) as g:
        assert (await g.post("/generate", body, headers={}))[0] == 401
        status, out = await g.post("/generate", body)
        assert status == 200 and "The door creaked open." in out["text"] and out["word_count"] > 4
        status, error = await g.post("/generate", {"prompt": ""})
        assert status == 400 and "prompt" in error["message"]
    async with running_granulator(tmp_path / "open", log=MemoryEventLog(), NEXUS_GRANULATOR_GENERATE_AUTH="none") as g:
        status, out = await g.post("/generate", body, headers={})
        assert status == 200 and out["model"] == "gpt-4"
