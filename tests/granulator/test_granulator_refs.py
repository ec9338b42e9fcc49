"""Seed 002's references at the granulator: kv:// and r2:// inputs and outputs, each in the caller's
tenant namespace; another tenant's reference is answered as a missing one (404)."""

from __future__ import annotations

from pathlib import Path

import pytest
from granulator_support import handshake_body, running_granulator

from nexus.auth import DelegationSigner, issue_key
from nexus.eventlog.memory import MemoryEventLog
from nexus.raw import RawNotFoundError, RefPolicy, put_ref, resolve
from nexus.raw.memory import MemoryRaw
from nexus.services.granulator import handlers


def client(secret: str) -> dict[str, str]:
    return {"X-API-Key": secret}


async def test_kv_input_and_tiered_output_stay_in_the_tenants_namespace(
    tmp_path: Path, memory_log: MemoryEventLog
) -> None:
    raw = MemoryRaw()
    bob = await issue_key(memory_log, "client", "bob")
    signer = await DelegationSigner.publish(memory_log, "workflow/r1")
    # Alice's input, stored as the seed's orchestrator does: kv://input/<execution>.
    plan = {"topic": "Tea Trade Routes", "structure_type": "research_report", "sources": 12, "audience": "x" * 1100}
    data_ref = await put_ref(raw, plan, namespace="input", name="exec_a", tenant="alice")
    assert data_ref == "kv://input/exec_a"
    async with running_granulator(tmp_path, log=memory_log, raw=raw, NEXUS_GRANULATOR_OUTPUT_REFS="tiered") as g:
        as_alice = client(signer.mint("alice", execution_id="exec_a", audience="granulator"))
        _, hs = await g.post("/api/handshake", handshake_body(execution_id="exec_a"), as_alice)
        call = {"execution_id": "exec_a", "handshake_id": hs["handshake_id"]}
        stream = handlers.stream_id(hs["handshake_id"])
        before = await memory_log.read_stream(stream)

        # Bob (his key, or a step's token for him) presenting Alice's reference: a 404, nothing recorded.
        bob_step = signer.mint("bob", execution_id="exec_a", audience="granulator")
        for credential in (bob.secret, bob_step):
            status, error = await g.post("/api/process", {**call, "data_ref": data_ref}, client(credential))
            assert status == 404, error
        # Alice naming a reference that holds nothing in her namespace: the same 404; a malformed one: 400.
        status, error = await g.post("/api/process", {**call, "data_ref": "kv://input/nothing"}, as_alice)
        assert (status, error["error"]) == (404, "unknown_reference") and "kv://input/nothing" in error["message"]
        status, error = await g.post("/api/process", {**call, "data_ref": "kv://input"}, as_alice)
        assert status == 400 and "data_ref" in error["message"]
        assert await memory_log.read_stream(stream) == before

        # Alice's own reference is read: the structure is about her stored topic.
        status, result = await g.post("/api/process", {**call, "data_ref": data_ref}, as_alice)
        assert status == 200, result
        assert "Tea Trade Routes" in result["title"] and result["output"] is None
        # Over 1 KB and under 25 MB: a kv:// reference in Alice's namespace, resolvable by her only.
        assert result["output_ref"] == f"kv://granulator/{hs['handshake_id']}.json"
        assert await raw.exists(f"t/alice/kv/granulator/{hs['handshake_id']}.json")
        structure = await resolve(raw, result["output_ref"], tenant="alice")
        assert structure["title"] == result["title"] and len(structure["sections"]) == result["sections"]
        with pytest.raises(RawNotFoundError, match="t/bob/"):
            await resolve(raw, result["output_ref"], tenant="bob")

        # The acknowledgement's output_ref is checked the same way.
        status, error = await g.post(
            "/api/acknowledge", {**call, "output_ref": "kv://granulator/someone-elses.json"}, as_alice
        )
        assert (status, error["error"]) == (404, "unknown_reference")
        status, ack = await g.post("/api/acknowledge", {**call, "output_ref": result["output_ref"]}, as_alice)
        assert status == 200 and ack["status"] == "acknowledged"


async def test_outputs_above_the_kv_limit_become_r2_references(
    tmp_path: Path, memory_log: MemoryEventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The tier limits are settings: with a 2 KB kv limit, a research report goes to r2://.
    monkeypatch.setenv("NEXUS_REF_KV_MAX", "2048")
    monkeypatch.setenv("NEXUS_REF_R2_PREFIX", "bulk/")
    raw = MemoryRaw()
    async with running_granulator(tmp_path, log=memory_log, raw=raw, NEXUS_GRANULATOR_OUTPUT_REFS="tiered") as g:
        _, hs = await g.post(
            "/api/handshake",
            handshake_body(
                input={
                    "topic": "AI Tools Market Analysis",
                    "structure_type": "research_report",
                    "depth": "comprehensive",
                }
            ),
        )
        status, result = await g.post("/api/process", {"execution_id": "exec_123", "handshake_id": hs["handshake_id"]})
        assert status == 200 and result["size_bytes"] > 2048, result
        assert result["output_ref"] == f"r2://granulator/{hs['handshake_id']}.json"
        # The external worker's token acts for the platform: the blob is in the platform's namespace.
        assert await raw.exists(f"bulk/granulator/{hs['handshake_id']}.json")
        policy = RefPolicy.from_env({"NEXUS_REF_R2_PREFIX": "bulk/"})
        assert (await resolve(raw, result["output_ref"], policy=policy))["title"] == result["title"]


async def test_the_default_output_is_still_a_raw_reference(tmp_path: Path, memory_log: MemoryEventLog) -> None:
    async with running_granulator(tmp_path, log=memory_log) as g:
        _, hs = await g.post("/api/handshake", handshake_body())
        status, result = await g.post("/api/process", {"execution_id": "exec_123", "handshake_id": hs["handshake_id"]})
        assert status == 200 and result["output_ref"].startswith("raw://")
