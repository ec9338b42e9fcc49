"""Blob events start the providers' workflows: once per (blob version, provider, workflow), as the
blob's owner, with seed 004's input; a run's own writes never loop; POST /providers/trigger."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from providers_harness import ALPHA, BETA, Platform, eq, platform, provider, until

from nexus.auth import KeyInfo
from nexus.proto import new_event
from nexus.proto.events.studio import BlobCreated
from nexus.services.studio.state import BLOB_CREATED, blob_stream, run_stream
from nexus.services.studio.triggers import MAX_CHAIN, run_depth, user_id


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Platform]:
    async for value in platform(tmp_path):
        yield value


async def _execution(env: Platform, execution_id: str) -> list[object]:
    return list(await env.log.read_stream(f"execution-{execution_id}"))


async def test_a_matching_create_starts_the_workflow_once_as_the_owner(env: Platform) -> None:
    await env.register(provider("writer", "wf_other", "onCreate", eq("metadata.type", "draft"), priority=7))
    await env.register(provider("never", "wf_other", "onCreate", eq("metadata.type", "outline")))
    blob_id = await env.blob(ALPHA, book="b1")
    state = env.state()
    await until(lambda: len(state.runs) == 1, "the run's start")
    [run] = state.runs.values()
    assert (run.blob_id, run.blob_version, run.provider_id, run.workflow_id, run.trigger, run.priority) == (
        blob_id,
        1,
        "writer",
        "wf_other",
        "onCreate",
        7,
    )
    events = await env.log.read_stream(f"execution-{run.execution_id}")
    assert events[0].tenant == ALPHA  # the execution is the client's
    assert events[0].data["input"] == {
        "blob_id": blob_id,
        "user_id": user_id(ALPHA),
        "provider_ids": ["writer"],
        "metadata": {"type": "draft", "book": "b1"},
    }
    assert events[0].data["priority"] == 7
    # Another client's blob does not reach a client's provider; a platform provider sees both.
    await env.call("POST", "/providers", BETA, provider("betas", "wf_other", "onCreate"))
    await env.blob(ALPHA, content={"x": 1})
    await asyncio.sleep(0.2)
    assert not [r for r in state.runs.values() if r.provider_id == "betas"]


async def test_two_replicas_following_the_same_event_start_one_run(env: Platform) -> None:
    await env.start_studio()
    await env.register(provider("writer", "wf_other", "onCreate"))
    await until(lambda: ("platform", "writer") in env.state(1).providers, "the second replica's fold")
    await env.blob(ALPHA)
    await until(lambda: len(env.state(0).runs) == 1 and len(env.state(1).runs) == 1, "the run on both replicas")
    await asyncio.sleep(0.3)
    [execution_id] = env.state(0).runs
    recorded = [e.type for e in await env.log.read_stream(run_stream(execution_id))]
    assert recorded.count("nexus.studio.run.started") == 1
    assert recorded.count("nexus.studio.delta.applied") <= 1
    executions = [e for e in await env.log.read_all(1, 10_000) if e.type == "nexus.workflow.execution.queued"]
    assert len(executions) == 1


async def test_an_update_and_a_delete_start_their_triggers(env: Platform) -> None:
    document = provider("watch", "wf_other", "onUpdate", eq("metadata.status", "draft"))
    document["workflows"].append(
        {"workflow_id": "wf_other", "triggers": [{"event": "onDelete", "conditions": []}], "priority": 1}
    )
    await env.register(document)
    blob_id = await env.blob(ALPHA)
    blobs = env.blobs()
    await blobs.update(blob_id, "key:test", {"v": 2}, metadata={"type": "draft", "status": "final"})
    await blobs.update(blob_id, "key:test", {"v": 3}, metadata={"type": "draft", "status": "draft"})
    await until(lambda: len(env.state().runs) == 1, "the update's run")
    [run] = env.state().runs.values()
    assert (run.trigger, run.blob_version) == ("onUpdate", 3)
    await blobs.delete(blob_id, "key:test")
    await until(lambda: len(env.state().runs) == 2, "the delete's run")
    assert {r.trigger for r in env.state().runs.values()} == {"onUpdate", "onDelete"}


async def test_a_runs_own_write_does_not_trigger_its_provider_again(env: Platform) -> None:
    # The workflow rewrites the blob it was triggered by: its update must not start it again.
    env.stub.outputs["wf_ping"] = {"delta_operations": [{"op": "add", "path": "/seen", "value": True}]}
    await env.register(provider("self", "wf_ping", "onUpdate"))
    blob_id = await env.blob(ALPHA)
    await env.blobs().update(blob_id, "key:test", {"v": 2})
    await until(lambda: any(r.applied for r in env.state().runs.values()), "the run's output applied")
    await asyncio.sleep(0.3)
    assert len(env.state().runs) == 1
    assert env.state().blobs[blob_id].version == 3


async def test_two_providers_feeding_each_other_stop_at_the_chain_limit(env: Platform) -> None:
    env.stub.outputs["wf_ping"] = {"delta_operations": [{"op": "add", "path": "/ping", "value": 1}]}
    env.stub.outputs["wf_pong"] = {"delta_operations": [{"op": "add", "path": "/pong", "value": 1}]}
    await env.register(provider("ping", "wf_ping", "onUpdate"))
    await env.register(provider("pong", "wf_pong", "onUpdate"))
    blob_id = await env.blob(ALPHA)
    await env.blobs().update(blob_id, "key:test", {"v": 2})
    state = env.state()

    def settled() -> bool:
        return bool(state.runs) and all(r.applied for r in state.runs.values())

    await until(settled, "the chain's end")
    await asyncio.sleep(0.5)
    assert settled()
    # Depth 1: both providers for the client's write; each later level one provider, up to MAX_CHAIN.
    assert 2 <= len(state.runs) <= 2 * MAX_CHAIN
    count = len(state.runs)
    await asyncio.sleep(0.3)
    assert len(state.runs) == count


async def test_trigger_route_starts_the_named_providers_now(env: Platform) -> None:
    await env.register(provider("manual", "wf_other", "onUpdate", eq("metadata.type", "never")))
    blob_id = await env.blob(ALPHA)
    status, body = await env.call(
        "POST",
        "/providers/trigger",
        ALPHA,
        {"blob_id": blob_id, "provider_ids": ["manual", "nope"], "metadata": {"k": 1}},
    )
    assert status == 200, body
    assert body["unknown_providers"] == ["nope"]
    [started] = body["executions"]
    assert started["provider_id"] == "manual" and started["workflow_id"] == "wf_other"
    run = env.state().runs[started["execution_id"]]
    assert run.trigger == "manual"
    events = await env.log.read_stream(f"execution-{started['execution_id']}")
    assert events[0].data["input"]["metadata"] == {"k": 1}
    # Another client's blob is a 404, as is an unknown one; unknown fields are 400.
    status, _ = await env.call("POST", "/providers/trigger", BETA, {"blob_id": blob_id})
    assert status == 404
    status, body = await env.call("POST", "/providers/trigger", ALPHA, {"blob_id": blob_id, "extra": 1})
    assert status == 400 and "extra" in body["message"]


async def test_a_run_triggering_its_own_provider_stops_at_the_chain_limit(env: Platform) -> None:
    # The run's step asks for its own provider again (as a seed pipeline naming itself would).
    await env.register(provider("again", "wf_other", "onCreate"))
    blob_id = await env.blob(ALPHA)
    await until(lambda: len(env.state().runs) == 1, "the first run")
    state = env.state()
    triggers = env.triggers()
    caller = next(iter(state.runs))
    for _ in range(MAX_CHAIN + 2):
        info = KeyInfo(key_id="d", kind="client", owner=ALPHA, scopes=("delegated",), execution_id=caller)
        if run_depth(state, caller) >= MAX_CHAIN:
            break
        answer = await triggers.trigger_now(
            state.blobs[blob_id], ["again"], None, caller, requested_by=info.execution_id or ""
        )
        caller = answer.executions[0].execution_id
        await until(lambda c=caller: c in state.runs, "the manual run folded")  # type: ignore[misc]
    assert run_depth(state, caller) == MAX_CHAIN
    assert len(state.runs) == MAX_CHAIN


async def test_a_write_made_while_no_studio_followed_starts_its_run_at_start(env: Platform) -> None:
    await env.register(provider("late", "wf_other", "onCreate", eq("metadata.type", "draft")))
    blob_id = await env.blob(ALPHA)
    await until(lambda: len(env.state().runs) == 1, "the first run")
    await env.stop_studio(env.studio)
    # Another replica wrote a blob and stopped before starting its run (its event is in the log).
    event = new_event(
        BLOB_CREATED,
        BlobCreated(
            blob_id="written-meanwhile",
            owner=ALPHA,
            created_by="key:t",
            content_type="application/json",
            content_ref="raw://t/alpha/studio/sha256/00",
            size=2,
            sha256="00",
            metadata={"type": "draft"},
        ),
        source="test",
        tenant=ALPHA,
    )
    await env.log.append(blob_stream("written-meanwhile"), [event])
    await env.start_studio()
    state = env.state()
    await until(lambda: any(r.blob_id == "written-meanwhile" for r in state.runs.values()), "the missed start")
    await asyncio.sleep(0.2)
    assert len(state.runs) == 2  # the first blob's run is not started again
    # A provider registered after the blobs were written does not fire on them at the next start.
    await env.register(provider("newer", "wf_other", "onCreate"))
    await env.stop_studio(env.studio)
    await env.start_studio()
    await asyncio.sleep(0.3)
    assert not [r for r in env.state().runs.values() if r.provider_id == "newer"]
    assert blob_id in env.state().blobs
