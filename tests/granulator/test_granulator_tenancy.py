"""Every handshake belongs to a tenant and a worker; nobody else sees, processes or acknowledges it."""

from __future__ import annotations

from pathlib import Path

import msgspec
from granulator_support import handshake_body, running_granulator

from nexus.auth import DelegationSigner, issue_key
from nexus.eventlog.memory import MemoryEventLog
from nexus.ingest import send_command
from nexus.raw import key_tenant, ref_key
from nexus.raw.memory import MemoryRaw
from nexus.services.granulator import handlers


def client(secret: str) -> dict[str, str]:
    return {"X-API-Key": secret}


async def test_another_client_cannot_read_process_or_acknowledge_a_handshake(
    tmp_path: Path, memory_log: MemoryEventLog
) -> None:
    raw = MemoryRaw()
    alice = await issue_key(memory_log, "client", "alice")
    bob = await issue_key(memory_log, "client", "bob")
    signer = await DelegationSigner.publish(memory_log, "workflow/r1")
    async with running_granulator(tmp_path, log=memory_log, raw=raw) as g:
        # Alice's step (her delegated token) opens a handshake: it is hers.
        as_alice = client(signer.mint("alice", execution_id="exec_a", audience="granulator"))
        status, hs = await g.post("/api/handshake", handshake_body(execution_id="exec_a"), as_alice)
        assert status == 200 and hs["accepted"], hs
        call = {"execution_id": "exec_a", "handshake_id": hs["handshake_id"]}
        stream = handlers.stream_id(hs["handshake_id"])
        before = await memory_log.read_stream(stream)
        assert before[0].tenant == "alice" and before[0].data["worker_id"] == "client/alice"

        # Bob, with his key or with a step's token for him, meets a 404 exactly like a missing handshake's.
        async with g.session.get(f"{g.url}/api/handshakes/hs_missing", headers=client(bob.secret)) as r:
            missing = (r.status, (await r.json())["error"])
        assert missing == (404, "unknown_handshake")
        bob_step = signer.mint("bob", execution_id="exec_b", audience="granulator")
        for credential in (bob.secret, bob_step):
            async with g.session.get(f"{g.url}/api/handshakes/{hs['handshake_id']}", headers=client(credential)) as r:
                assert (r.status, (await r.json())["error"]) == missing
            status, error = await g.post("/api/process", call, client(credential))
            assert (status, error["error"]) == missing and error["message"] == f"no handshake {hs['handshake_id']!r}"
            status, error = await g.post("/api/acknowledge", {**call, "status": "failed"}, client(credential))
            assert (status, error["error"]) == missing
        # An external worker's token is not Alice either.
        async with g.session.get(f"{g.url}/api/handshakes/{hs['handshake_id']}", headers=g.headers()) as r:
            assert r.status == 404
        # Nothing happened to Alice's handshake.
        assert await memory_log.read_stream(stream) == before

        # Alice's own key sees it, and processes it; the output is in her namespace.
        async with g.session.get(f"{g.url}/api/handshakes/{hs['handshake_id']}", headers=client(alice.secret)) as r:
            seen = await r.json()
            assert r.status == 200 and seen["tenant"] == "alice" and seen["status"] == "accepted"
        status, result = await g.post("/api/process", call, as_alice)
        assert status == 200, result
        assert key_tenant(ref_key(result["output_ref"])) == "alice"
        assert ref_key(result["output_ref"]).startswith("t/alice/granulator/")
        status, ack = await g.post("/api/acknowledge", call, client(alice.secret))
        assert status == 200 and ack["status"] == "acknowledged"
        # An admin sees every tenant's handshakes.
        admin = await issue_key(memory_log, "client", "ops", scopes=("admin",))
        async with g.session.get(f"{g.url}/api/handshakes/{hs['handshake_id']}", headers=client(admin.secret)) as r:
            assert r.status == 200 and (await r.json())["status"] == "acknowledged"


async def test_a_worker_is_bound_to_its_token(tmp_path: Path, memory_log: MemoryEventLog) -> None:
    other = await issue_key(memory_log, "worker", "other-worker")
    async with running_granulator(tmp_path, log=memory_log) as g:
        # The token was issued to "orchestrator": another X-Worker-ID is refused, naming both.
        status, error = await g.post("/api/handshake", handshake_body(), g.headers(worker_id="someone-else"))
        assert status == 403 and error["error"] == "worker_mismatch"
        assert "'someone-else'" in error["message"] and "'orchestrator'" in error["message"]
        assert (await g.post("/generate", {"prompt": "x"}, g.headers(worker_id="someone-else")))[0] == 403
        status, hs = await g.post("/api/handshake", handshake_body())
        assert status == 200 and hs["accepted"]
        events = await memory_log.read_stream(handlers.stream_id(hs["handshake_id"]))
        assert events[0].data["worker_id"] == "orchestrator" and events[0].tenant == "platform"
        # Another worker (its own token, its own id) cannot touch the handshake.
        call = {"execution_id": "exec_123", "handshake_id": hs["handshake_id"]}
        as_other = {"Authorization": f"Bearer {other.secret}", "X-Worker-ID": "other-worker"}
        assert (await g.post("/api/process", call, as_other))[0] == 404
        assert (await g.post("/api/acknowledge", call, as_other))[0] == 404
        async with g.session.get(f"{g.url}/api/handshakes/{hs['handshake_id']}", headers=as_other) as r:
            assert r.status == 404
        # Claiming to be the owner with one's own token does not help either.
        assert (await g.post("/api/process", call, {**as_other, "X-Worker-ID": "orchestrator"}))[0] == 403
        # Its own worker still can.
        status, result = await g.post("/api/process", call)
        assert status == 200 and result["status"] == "completed"
        assert (await g.post("/api/acknowledge", call))[0] == 200


async def test_a_data_ref_of_another_tenant_is_no_such_reference(tmp_path: Path, memory_log: MemoryEventLog) -> None:
    raw = MemoryRaw()
    topic = msgspec.json.encode({"topic": "Alice's secret plan"})
    await raw.store("t/alice/inputs/plan.json", topic, "application/json")
    await raw.store("t/bob/inputs/plan.json", msgspec.json.encode({"topic": "Bob's plan"}), "application/json")
    alice = await issue_key(memory_log, "client", "alice")
    bob = await issue_key(memory_log, "client", "bob")
    async with running_granulator(tmp_path, log=memory_log, raw=raw) as g:
        _, hs = await g.post("/api/handshake", handshake_body(execution_id="exec_b"), client(bob.secret))
        call = {"execution_id": "exec_b", "handshake_id": hs["handshake_id"]}
        # Bob names Alice's input: 404, nothing recorded, and the handshake is still usable.
        status, error = await g.post(
            "/api/process", {**call, "data_ref": "raw://t/alice/inputs/plan.json"}, client(bob.secret)
        )
        assert status == 404 and error["error"] == "unknown_reference" and "no such reference" in error["message"]
        assert [e.type for e in await memory_log.read_stream(handlers.stream_id(hs["handshake_id"]))] == [
            handlers.ACCEPTED
        ]
        # A platform key is not Bob's either (an external worker's namespace is the platform's).
        await raw.store("inputs/platform.json", msgspec.json.encode({"topic": "Platform"}), "application/json")
        status, _ = await g.post("/api/process", {**call, "data_ref": "raw://inputs/platform.json"}, client(bob.secret))
        assert status == 404
        # A key that could leave the store is a 400 naming the field.
        status, error = await g.post("/api/process", {**call, "data_ref": "raw://../x"}, client(bob.secret))
        assert status == 400 and "data_ref" in error["message"]
        # His own input is read.
        status, result = await g.post(
            "/api/process", {**call, "data_ref": "raw://t/bob/inputs/plan.json"}, client(bob.secret)
        )
        assert status == 200 and result["title"].startswith("Bob's plan"), result
        # A worker (platform tenant) cannot read a tenant's input either; an admin may.
        _, whs = await g.post("/api/handshake", handshake_body(execution_id="exec_w"))
        wcall = {
            "execution_id": "exec_w",
            "handshake_id": whs["handshake_id"],
            "data_ref": "raw://t/alice/inputs/plan.json",
        }
        assert (await g.post("/api/process", wcall))[0] == 404
        admin = await issue_key(memory_log, "client", "ops", scopes=("admin",))
        _, ahs = await g.post("/api/handshake", handshake_body(execution_id="exec_o"), client(admin.secret))
        acall = {
            "execution_id": "exec_o",
            "handshake_id": ahs["handshake_id"],
            "data_ref": "raw://t/alice/inputs/plan.json",
        }
        status, result = await g.post("/api/process", acall, client(alice.secret))
        assert status == 404  # Alice is not the admin's handshake's tenant
        status, result = await g.post("/api/process", acall, client(admin.secret))
        assert status == 200 and result["title"].startswith("Alice's secret plan")


async def test_a_delegated_token_for_another_service_is_refused(tmp_path: Path, memory_log: MemoryEventLog) -> None:
    signer = await DelegationSigner.publish(memory_log, "workflow/r1")
    async with running_granulator(tmp_path, log=memory_log) as g:
        for_studio = signer.mint("alice", execution_id="exec_a", audience="studio")
        assert (await g.post("/api/handshake", handshake_body(), client(for_studio)))[0] == 401
        for_us = signer.mint("alice", execution_id="exec_a", audience="granulator")
        assert (await g.post("/api/handshake", handshake_body(), client(for_us)))[0] == 200


async def test_commands_act_for_their_tenant_and_worker(tmp_path: Path, memory_log: MemoryEventLog) -> None:
    raw = MemoryRaw()
    await raw.store("t/alice/inputs/plan.json", msgspec.json.encode({"topic": "Alice's plan"}), "application/json")
    async with running_granulator(tmp_path, log=memory_log, raw=raw) as g:
        bus = g.service.bus

        async def send(verb: str, data: dict, tenant: str | None, source: str = "nexus/workflow") -> dict:
            extra = {"tenant": tenant} if tenant else {}
            return await send_command(bus, "granulator", verb, data, source=source, timeout=10, **extra)

        hs = await send("handshake", handshake_body(execution_id="exec_a"), "alice")
        assert hs["accepted"] is True, hs
        call = {"execution_id": "exec_a", "handshake_id": hs["handshake_id"]}
        # Another tenant's command, or the same tenant from another worker: no such handshake.
        assert (await send("process", call, "bob"))["error"] == "unknown_handshake"
        assert (await send("process", call, "alice", source="nexus/other"))["error"] == "unknown_handshake"
        assert (await send("acknowledge", call, None))["error"] == "unknown_handshake"
        # Another tenant's input: no such reference.
        bob_ref = await send(
            "granulate",
            {
                "execution_id": "e",
                "input": {"topic": "t", "structure_type": "article"},
                "data_ref": "raw://t/alice/inputs/plan.json",
            },
            "bob",
        )
        assert bob_ref["error"] == "unknown_reference", bob_ref
        # A tenant that cannot be a tenant's name is refused.
        assert (await send("process", call, "../etc"))["error"] == "invalid_request"
        # The tenant's own worker processes it, with its input, into its namespace.
        result = await send("process", {**call, "data_ref": "raw://t/alice/inputs/plan.json"}, "alice")
        assert result["accepted"] is True and result["title"].startswith("Alice's plan"), result
        if result["output_ref"]:
            assert ref_key(result["output_ref"]).startswith("t/alice/granulator/")
        assert (await send("acknowledge", call, "alice"))["accepted"] is True
