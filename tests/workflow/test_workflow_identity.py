"""The workflow service's identity: each replica's worker token, sent to platform services only."""

from __future__ import annotations

import aiohttp

from nexus.auth import KeyView, issue_key
from nexus.services.workflow.identity import ServiceIdentity
from nexus.services.workflow.settings import load_settings

EXPAND = {
    "id": "expand_only",
    "steps": [
        {
            "id": "expand",
            "service": "core",
            "endpoint": "/generate",
            "input_map": {"prompt": "Expand: {$.input.text}", "max_tokens": 200},
            "retry": {"max_attempts": 1},
        },
        {"id": "echo", "service": "stub", "endpoint": "/echo", "input_map": {"text": "$.steps.expand.output.text"}},
    ],
}


async def test_book_chapter_expansion_runs_through_a_real_granulator_by_default(granulator, workflow_service, stub):
    # Studio's chapter routes are the stub (an external service); core is the real granulator,
    # whose /generate needs a worker token (its default).
    svc = await workflow_service(
        await granulator.open_log(),
        NEXUS_WORKFLOW_BUNDLED="",
        NEXUS_GRANULATOR_PORT=str(granulator.port),
        NEXUS_SERVICE_STUDIO=stub.url,
        NEXUS_WORKFLOW_REPLICA_ID="wf-a",
    )
    assert "core" in svc.ctx.settings.platform_services and "studio" not in svc.ctx.settings.platform_services
    code, body = await svc.post("/executions", {"workflow_id": "book_chapter_expansion", "input": {"blob_id": "ch-3"}})
    assert code == 202, body
    state = await svc.wait_final(body["id"], timeout=20)
    assert state.status == "COMPLETED", state.error
    expanded = state.steps["expand_content"].output
    assert expanded["generator"] == "builtin" and expanded["word_count"] > 0 and "text of ch-3" in expanded["text"]
    [saved] = [r["body"] for r in stub.log if r["path"] == "/blobs"]
    assert saved["content"] == expanded["text"] and saved["metadata"]["word_count"] == expanded["word_count"]
    assert saved["metadata"]["consistency_score"] == 0.92
    assert state.output == {"new_blob_id": "blob-1", "deltas": [{"op": "expand", "parent": saved}]}
    # The bundled text_expansion needs nothing but the platform's own services.
    code, body = await svc.post(
        "/executions", {"workflow_id": "text_expansion", "input": {"title": "tea", "text": "Tea is a drink."}}
    )
    assert code == 202, body
    state = await svc.wait_final(body["id"], timeout=20)
    assert state.status == "COMPLETED", state.error
    assert state.output["generator"] == "builtin" and "Tea is a drink." in state.output["text"]
    # The external service (studio's stand-in) never saw the token.
    assert stub.log and all(r["authorization"] is None and r["worker_id"] is None for r in stub.log)


async def test_the_token_is_a_hash_in_the_log_and_revoked_at_stop(granulator, workflow_service, stub):
    svc = await workflow_service(
        await granulator.open_log(), NEXUS_GRANULATOR_PORT=str(granulator.port), NEXUS_WORKFLOW_REPLICA_ID="wf-b"
    )
    identity = svc.ctx.engine.identity
    assert identity.worker_id == "workflow/wf-b" and "nxw_" not in repr(identity)
    secret = identity.headers()["Authorization"].removeprefix("Bearer ")
    keys = KeyView(granulator.log)
    assert (await keys.verify(secret)).owner == "workflow/wf-b"
    async for batch in granulator.log.iter_all():
        assert all(secret not in repr(event.data) for event in batch)
    await svc.post("/workflows", EXPAND)
    _, body = await svc.post("/executions", {"workflow_id": "expand_only", "input": {"text": "a quiet harbour"}})
    state = await svc.wait_final(body["id"], timeout=20)
    assert state.status == "COMPLETED", state.error
    assert "harbour" in state.steps["expand"].output["text"]
    # The stub is external: no token, no worker id.
    assert [r["authorization"] for r in stub.log] == [None]
    await svc.service.stop()
    assert await keys.verify(secret) is None
    # The granulator (its own connection to the log) refuses the token from then on.
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"http://127.0.0.1:{granulator.port}/generate",
            json={"prompt": "x"},
            headers={"Authorization": f"Bearer {secret}", "X-Worker-ID": identity.worker_id},
        ) as r:
            assert r.status == 401
    record = keys.record(identity.key_id)
    assert record.revoked_by is not None and record.revoked_by.data["reason"] == "replica stopped"


async def test_without_the_identity_core_refuses_the_step(granulator, workflow_service):
    svc = await workflow_service(await granulator.open_log(), NEXUS_GRANULATOR_PORT=str(granulator.port))
    svc.ctx.engine.identity = None
    await svc.post("/workflows", EXPAND)
    _, body = await svc.post("/executions", {"workflow_id": "expand_only", "input": {"text": "x"}})
    state = await svc.wait_final(body["id"], timeout=20)
    assert state.status == "FAILED" and "401" in state.error


async def test_a_restarted_replica_revokes_the_token_a_killed_run_left(memory_log):
    first = await ServiceIdentity.issue(memory_log, "r1")
    other = await issue_key(memory_log, "worker", "workflow/r2")
    second = await ServiceIdentity.issue(memory_log, "r1")
    keys = KeyView(memory_log)
    assert await keys.verify(first.headers()["Authorization"][7:]) is None
    assert (await keys.verify(second.headers()["Authorization"][7:])).owner == "workflow/r1"
    assert await keys.verify(other.secret) is not None


def test_a_name_pointed_elsewhere_is_external():
    settings = load_settings({"NEXUS_SERVICE_CORE": "http://127.0.0.1:9", "NEXUS_SERVICE_EXTRA": "http://127.0.0.1:9"})
    assert settings.platform_services == {"kam", "workflow", "granulator", "studio"}
    assert load_settings({}).platform_services == {"kam", "workflow", "granulator", "studio", "core"}
