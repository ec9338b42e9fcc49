"""The delta transformer: a run's output becomes changes on its blob exactly once (completion delivered
twice, two replicas, a studio killed half-way), lineage, rollback, /deltas/generate, /consistency/check."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from providers_harness import ALPHA, BETA, Platform, platform, provider, until

from nexus.services.studio.blobs import Blobs
from nexus.services.studio.consistency import score_chapter
from nexus.services.studio.state import run_stream

OUTPUT = {
    "delta_operations": [
        {"op": "add", "path": "/summary", "value": "A night."},
        {"op": "replace", "path": "/metadata/status", "value": "processed"},
    ],
    "created_blobs": [
        {"content": "An expanded night.", "content_type": "text/markdown", "metadata": {"type": "expanded"}}
    ],
}


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Platform]:
    async for value in platform(tmp_path):
        yield value


async def _run(env: Platform, output: Any, workflow_id: str = "wf_delta", index: int = 0) -> tuple[str, str]:
    """A blob whose onCreate runs ``workflow_id`` answering ``output``; (blob id, execution id) once applied."""
    env.stub.outputs[workflow_id] = output
    await env.register(provider("proc", workflow_id, "onCreate"))
    blob_id = await env.blob(ALPHA, status="new")
    state = env.state(index)
    await until(lambda: any(r.applied for r in state.runs.values()), "the output applied")
    [run] = state.runs.values()
    return blob_id, run.execution_id


async def _content(env: Platform, blob_id: str, version: int | None = None) -> Any:
    data, found = await env.blobs().read(blob_id, version)
    return json.loads(data) if found.content_type == "application/json" else data.decode()


async def test_the_output_becomes_a_version_and_a_derived_blob(env: Platform) -> None:
    blob_id, execution_id = await _run(env, OUTPUT)
    state = env.state()
    blob = state.blobs[blob_id]
    assert blob.version == 2
    assert await _content(env, blob_id) == {"text": "It was a dark night.", "summary": "A night."}
    assert blob.current.metadata == {"type": "draft", "status": "processed"}
    assert blob.current.reason == "delta"
    assert blob.current.origin is not None and blob.current.origin.execution_id == execution_id
    run = state.runs[execution_id]
    [child_id] = run.created_blobs
    child = state.blobs[child_id]
    assert child.parent_id == blob_id and child.owner == ALPHA
    assert child.origin is not None and (child.origin.provider_id, child.origin.workflow_id) == ("proc", "wf_delta")
    assert await _content(env, child_id) == "An expanded night."

    status, lineage = await env.call("GET", f"/blobs/{child_id}/lineage", ALPHA)
    assert status == 200, lineage
    assert lineage["ancestors"] == [blob_id]
    root = lineage["root"]
    assert root["blob_id"] == blob_id and root["versions_by_runs"][0]["edge"]["execution_id"] == execution_id
    [edge_child] = root["children"]
    assert edge_child["blob_id"] == child_id
    assert edge_child["edge"] == {
        "provider_id": "proc",
        "workflow_id": "wf_delta",
        "execution_id": execution_id,
        "step": "created_blobs[0]",
    }
    status, _ = await env.call("GET", f"/blobs/{child_id}/lineage", BETA)
    assert status == 404


async def test_transformed_content_replaces_the_content(env: Platform) -> None:
    blob_id, _ = await _run(env, {"transformed_content": {"text": "Rewritten."}})
    assert await _content(env, blob_id) == {"text": "Rewritten."}


async def test_an_output_without_changes_changes_nothing(env: Platform) -> None:
    blob_id, execution_id = await _run(env, {"report": "fine"})
    assert env.state().blobs[blob_id].version == 1
    run = env.state().runs[execution_id]
    assert run.applied and run.applied_version is None and run.created_blobs == []


async def test_operations_that_do_not_apply_change_nothing_and_say_why(env: Platform) -> None:
    blob_id, execution_id = await _run(env, {"delta_operations": [{"op": "remove", "path": "/absent"}]})
    assert env.state().blobs[blob_id].version == 1
    [_, applied] = await env.log.read_stream(run_stream(execution_id))
    assert "delta_operations" in applied.data["error"]


async def test_a_completion_delivered_twice_to_two_replicas_applies_once(env: Platform) -> None:
    await env.start_studio()
    await env.register(provider("proc", "wf_delta", "onCreate"))
    await until(lambda: ("platform", "proc") in env.state(1).providers, "the second replica's fold")
    env.stub.outputs["wf_delta"] = OUTPUT
    blob_id = await env.blob(ALPHA, status="new")
    for index in (0, 1):
        await until(lambda i=index: any(r.applied for r in env.state(i).runs.values()), f"replica {index} applied")  # type: ignore[misc]
    [execution_id] = env.state(0).runs
    # Delivered again, to both, at once: nothing more is written.
    [end] = [
        e
        for e in await env.log.read_stream(f"execution-{execution_id}")
        if e.type == "nexus.workflow.execution.completed"
    ]
    for index in (0, 1):
        env.transformer(index).observe(end)
    results = await asyncio.gather(env.transformer(0).settle(execution_id), env.transformer(1).settle(execution_id))
    assert results == [False, False]
    await asyncio.sleep(0.2)
    assert env.state(0).blobs[blob_id].version == 2
    types = [e.type for e in await env.log.read_stream(run_stream(execution_id))]
    assert types.count("nexus.studio.delta.applied") == 1
    assert sum(1 for b in env.state(0).blobs.values() if b.parent_id == blob_id) == 1


async def test_a_studio_killed_mid_apply_finishes_once_after_restart(
    env: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    hung = asyncio.Event()
    original = Blobs.create

    async def hang(self: Blobs, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("origin") is not None:
            hung.set()
            await asyncio.Event().wait()  # killed here: the version is written, the rest is not
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(Blobs, "create", hang)
    env.stub.outputs["wf_delta"] = OUTPUT
    await env.register(provider("proc", "wf_delta", "onCreate"))
    blob_id = await env.blob(ALPHA, status="new")
    await asyncio.wait_for(hung.wait(), 10)
    assert env.state().blobs[blob_id].version == 2  # the first half is in the log
    [execution_id] = env.state().runs
    assert not env.state().runs[execution_id].applied
    await env.stop_studio(env.studio)
    monkeypatch.setattr(Blobs, "create", original)

    await env.start_studio()
    state = env.state()
    await until(lambda: state.runs[execution_id].applied, "the apply finished after the restart")
    assert state.blobs[blob_id].version == 2  # not applied a second time
    assert len(state.runs[execution_id].created_blobs) == 1
    types = [e.type for e in await env.log.read_stream(run_stream(execution_id))]
    assert types.count("nexus.studio.delta.applied") == 1


async def test_rollback_restores_the_version_before_and_deletes_what_it_created(env: Platform) -> None:
    blob_id, execution_id = await _run(env, OUTPUT)
    [child_id] = env.state().runs[execution_id].created_blobs
    status, body = await env.call(
        "POST", "/providers/rollback", BETA, {"blob_id": blob_id, "execution_id": execution_id}
    )
    assert status == 404
    status, body = await env.call(
        "POST", "/providers/rollback", ALPHA, {"blob_id": blob_id, "execution_id": execution_id}
    )
    assert status == 200, body
    assert body["restored_version"] == 1 and body["deleted_blobs"] == [child_id]
    blob = env.state().blobs[blob_id]
    assert blob.version == 3 and blob.current.reason == "rollback"
    assert await _content(env, blob_id) == {"text": "It was a dark night."}
    assert blob.current.metadata == {"type": "draft", "status": "new"}
    assert env.state().blobs[child_id].deleted
    assert env.state().runs[execution_id].rolled_back
    # Again: nothing more changes.
    status, body = await env.call(
        "POST", "/providers/rollback", ALPHA, {"blob_id": blob_id, "execution_id": execution_id}
    )
    assert status == 200 and env.state().blobs[blob_id].version == 3


async def test_deltas_generate_previews_outputs(env: Platform) -> None:
    blob_id = await env.blob(ALPHA)
    status, body = await env.call("POST", "/deltas/generate", ALPHA, {"blob_id": blob_id, "provider_outputs": None})
    assert status == 200 and body["deltas"] == [] and body["created_blobs"] == []
    status, body = await env.call("POST", "/deltas/generate", ALPHA, {"blob_id": blob_id, "provider_outputs": OUTPUT})
    assert [(d["type"], d["path"]) for d in body["deltas"]] == [
        ("json-patch", "/content"),
        ("json-patch", "/metadata"),
        ("create_derived", "/derived"),
    ]
    assert body["created_blobs"][0]["content"] == "An expanded night."
    assert env.state().blobs[blob_id].version == 1  # nothing written
    status, _ = await env.call("POST", "/deltas/generate", BETA, {"blob_id": blob_id})
    assert status == 404


async def test_deltas_generate_reports_what_triggered_runs_made(env: Platform) -> None:
    blob_id, execution_id = await _run(env, OUTPUT)
    answer = {"blob_id": blob_id, "executions": [{"execution_id": execution_id}]}
    status, body = await env.call("POST", "/deltas/generate", ALPHA, {"blob_id": blob_id, "provider_outputs": answer})
    assert status == 200, body
    assert body["created_blobs"] == env.state().runs[execution_id].created_blobs
    assert body["deltas"][0]["execution_id"] == execution_id and body["deltas"][0]["version"] == 2


EARLIER = "Anna walked to the harbour. She looked at the lighthouse and waited for Tomas. The lighthouse keeper smiled."


def test_consistency_is_deterministic_and_documented() -> None:
    same = score_chapter("Anna returned to the lighthouse. Tomas waited at the harbour.", [EARLIER])
    assert same.new_names == [] and same.known_names == ["Anna", "Tomas"]
    assert same.tense == "past" and same.name_score == 1.0
    shifted = score_chapter("Anna walks to the lighthouse. Zed is there and says hello. Anna is happy.", [EARLIER])
    assert shifted.new_names == ["Zed"] and shifted.name_score == pytest.approx((1 + 0.5 * 1) / 2, abs=1e-4)
    assert any(i.type == "tense_shift" for i in shifted.issues)
    assert shifted.score < same.score
    assert score_chapter("Anything at all.", []).score == 1.0
    assert score_chapter("Anna returned.", [EARLIER]) == score_chapter("Anna returned.", [EARLIER])


async def test_consistency_route_reads_the_owners_earlier_chapters(env: Platform) -> None:
    blobs = env.blobs()
    for number, text in ((1, EARLIER), (3, "Mira sails away.")):
        await blobs.create(
            ALPHA, "key:t", text, "text/plain", {"type": "chapter", "book_id": "book:x", "chapter_number": number}
        )
    await blobs.create(
        BETA, "key:t", "Secret Villain.", "text/plain", {"type": "chapter", "book_id": "book:x", "chapter_number": 1}
    )
    body = {"book_id": "book:x", "chapter_content": "Anna saw Tomas.", "chapter_number": 2}
    status, answer = await env.call("POST", "/consistency/check", ALPHA, body)
    assert status == 200, answer
    assert len(answer["compared_chapters"]) == 1 and answer["known_names"] == ["Anna", "Tomas"]
    assert 0 <= answer["score"] <= 1
    status, answer = await env.call("POST", "/consistency/check", ALPHA, {**body, "chapter_content": 5})
    assert status == 400
