"""``GET /providers/{provider_id}/triggered``: what a provider started, for which blob, and what its
output did (the console's providers page shows it). A client sees the runs on its own blobs only,
another client's provider is a 404 like a missing one, an admin sees every client's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from providers_harness import ALPHA, BETA, Platform, eq, platform, provider, until

OUTPUT = {"created_blobs": [{"content": "An expanded night.", "content_type": "text/markdown"}]}


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Platform]:
    async for value in platform(tmp_path):
        yield value


async def _applied(env: Platform, count: int) -> None:
    await until(lambda: sum(r.applied for r in env.state().runs.values()) == count, f"{count} runs applied")


async def test_a_clients_provider_lists_the_runs_it_started_newest_first(env: Platform) -> None:
    env.stub.outputs["wf_delta"] = OUTPUT
    status, _ = await env.call(
        "POST", "/providers", ALPHA, provider("mine", "wf_delta", "onCreate", eq("metadata.type", "draft"))
    )
    assert status == 201
    first = await env.blob(ALPHA)
    await _applied(env, 1)
    second = await env.blob(ALPHA, content={"text": "Another night."})
    await _applied(env, 2)

    status, body = await env.call("GET", "/providers/mine/triggered", ALPHA)
    assert status == 200, body
    assert (body["provider_id"], body["owner"], body.get("next_cursor")) == ("mine", ALPHA, None)
    assert [r["blob_id"] for r in body["runs"]] == [second, first]
    run = body["runs"][1]
    assert (run["workflow_id"], run["trigger"], run["blob_version"], run["blob_owner"]) == (
        "wf_delta",
        "onCreate",
        1,
        ALPHA,
    )
    assert run["applied"] and run["applied_version"] is None and not run["rolled_back"]
    [child] = run["created_blobs"]
    assert env.state().blobs[child].parent_id == first
    assert run["execution_id"] == env.state().started[(first, 1, "mine", "wf_delta")]
    assert run["derived_blobs"] == [child]
    # A blob a step of the run created through the blob routes (as the seed's book_chapter_expansion
    # saves its expansion) counts as derived by the run too.
    saved = await env.blobs().create(
        ALPHA, f"execution:{run['execution_id']}", "Saved by a step.", "text/plain", {"type": "expanded"}, first
    )
    status, body = await env.call("GET", f"/providers/mine/triggered?blob_id={first}", ALPHA)
    assert status == 200 and body["runs"][0]["derived_blobs"] == [child, saved.blob_id]
    assert body["runs"][0]["created_blobs"] == [child]

    # A page at a time: the cursor goes on from the last run shown.
    status, page = await env.call("GET", "/providers/mine/triggered?limit=1", ALPHA)
    assert status == 200 and [r["blob_id"] for r in page["runs"]] == [second]
    status, rest = await env.call("GET", f"/providers/mine/triggered?limit=1&cursor={page['next_cursor']}", ALPHA)
    assert status == 200 and [r["blob_id"] for r in rest["runs"]] == [first] and rest.get("next_cursor") is None
    status, one = await env.call("GET", f"/providers/mine/triggered?blob_id={first}", ALPHA)
    assert status == 200 and [r["blob_id"] for r in one["runs"]] == [first]


async def test_another_clients_provider_is_not_found_and_a_platform_providers_runs_are_per_client(
    env: Platform,
) -> None:
    env.stub.outputs["wf_other"] = {}
    await env.call("POST", "/providers", ALPHA, provider("mine", "wf_other", "onCreate"))
    await env.register(provider("shared", "wf_other", "onCreate"))  # the platform's: every client's blobs
    alphas = await env.blob(ALPHA)
    betas = await env.blob(BETA)
    await _applied(env, 3)

    status, missing = await env.call("GET", "/providers/no-such/triggered", BETA)
    status_other, other = await env.call("GET", "/providers/mine/triggered", BETA)
    assert (status, status_other) == (404, 404)
    assert other["message"] == missing["message"].replace("no-such", "mine")

    status, body = await env.call("GET", "/providers/shared/triggered", BETA)
    assert status == 200 and [r["blob_id"] for r in body["runs"]] == [betas]
    status, body = await env.call("GET", "/providers/shared/triggered", ALPHA)
    assert status == 200 and [r["blob_id"] for r in body["runs"]] == [alphas]
    # An admin sees every client's runs of the platform's provider, and a client's with ?owner=.
    status, body = await env.call("GET", "/providers/shared/triggered", "admin")
    assert status == 200 and {r["blob_id"] for r in body["runs"]} == {alphas, betas}
    status, body = await env.call("GET", f"/providers/mine/triggered?owner={ALPHA}", "admin")
    assert status == 200 and [r["blob_id"] for r in body["runs"]] == [alphas]
    status, _ = await env.call("GET", "/providers/mine/triggered", "admin")  # the platform has no "mine"
    assert status == 404


async def test_bad_queries_are_named(env: Platform) -> None:
    await env.register(provider("shared", "wf_other", "onCreate", eq("metadata.type", "never")))
    for query, word in (
        ("limit=0", "limit"),
        ("limit=x", "limit"),
        ("cursor=nope", "cursor"),
        (f"owner={BETA}", "owner"),
    ):
        status, body = await env.call("GET", f"/providers/shared/triggered?{query}", ALPHA)
        assert status == 400, (query, body)
        assert word in body["message"], body
    status, body = await env.call("GET", "/providers/shared/triggered", ALPHA)
    assert status == 200 and body["runs"] == []
