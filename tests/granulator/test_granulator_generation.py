"""Generators: the builtin one (deterministic, topic-driven) and the http one against a local stub."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from nexus.services.granulator.generators import BuiltinGenerator, HttpGenerator, OutlineRequest
from nexus.services.granulator.model import (
    STRUCTURE_TYPES,
    ExpandRequest,
    GeneratorOutputError,
    GeneratorUnavailableError,
    GranulationInput,
    InvalidRequestError,
    normalise_input,
)


def request(topic: str, kind: str = "research_report", **kw: Any) -> OutlineRequest:
    return OutlineRequest(normalise_input(GranulationInput(topic=topic, structure_type=kind, **kw)))


@pytest.mark.parametrize("kind", STRUCTURE_TYPES)
async def test_every_structure_type_has_a_sensible_outline(kind: str) -> None:
    s = await BuiltinGenerator().outline(request("Climate Change Adaptation", kind, sources=6))
    assert s.structure_type == kind and s.title
    assert len(s.sections) >= 4
    assert all(sec.subsections and sec.key_questions for sec in s.sections)
    assert s.suggested_sources == 6 == sum(sec.suggested_sources for sec in s.sections)
    assert s.estimated_words == sum(sec.estimated_words for sec in s.sections) > 0
    titles = " ".join(sec.title for sec in s.sections)
    # The topic's domain (environment) shapes the body.
    assert "Impacts" in titles or "Mitigation" in titles


async def test_builtin_is_deterministic_and_topic_driven() -> None:
    gen = BuiltinGenerator()
    a1 = await gen.outline(request("AI Tools Market Analysis"))
    a2 = await gen.outline(request("AI Tools Market Analysis"))
    assert msgspec.json.encode(a1) == msgspec.json.encode(a2)
    b = await gen.outline(request("The History of the Ottoman Empire"))
    titles_a = [s.title for s in a1.sections]
    titles_b = [s.title for s in b.sections]
    assert "Market Segments" in titles_a and "Pricing Models" in titles_a
    assert "Key Events" in titles_b or "Origins" in titles_b
    assert set(titles_a) != set(titles_b)
    # Two topics of one domain still differ (the subject fills the skeleton and the questions).
    c = await gen.outline(request("Electric Bicycle Market Analysis"))
    assert msgspec.json.encode(c) != msgspec.json.encode(a1)
    assert any("Electric Bicycle" in s.title for s in c.sections)


async def test_depth_and_sources_change_the_structure() -> None:
    gen = BuiltinGenerator()
    brief = await gen.outline(request("Python Programming", "course", depth="brief", sources=2))
    deep = await gen.outline(request("Python Programming", "course", depth="comprehensive", sources=20))
    assert len(deep.sections) > len(brief.sections)
    assert deep.estimated_words > 3 * brief.estimated_words
    assert max(len(s.subsections) for s in deep.sections) > max(len(s.subsections) for s in brief.sections)
    assert any(sub.points for s in deep.sections for sub in s.subsections)
    assert (brief.suggested_sources, deep.suggested_sources) == (2, 20)
    many = await gen.outline(request("Solar Energy", sources=12))
    assert "Literature Review" in [s.title for s in many.sections]
    assert (await gen.outline(request("Solar Energy", depth=4))).depth == "comprehensive"


def test_unknown_depth_or_type_is_a_clear_error() -> None:
    with pytest.raises(InvalidRequestError, match=r"\$\.input\.depth"):
        normalise_input(GranulationInput(topic="x", structure_type="book", depth="huge"))
    with pytest.raises(InvalidRequestError, match="structure_type"):
        from nexus.services.granulator.generators.builtin import outline

        outline(OutlineRequest(GranulationInput(topic="x", structure_type="poem", depth="brief")))


async def test_builtin_expansion_is_deterministic_and_bounded() -> None:
    gen = BuiltinGenerator()
    prompt = (
        "Expand the following chapter content with more descriptive details:\n\n"
        "The rain fell on the harbour. Mara waited by the lighthouse, counting ships."
    )
    a = await gen.expand(ExpandRequest(prompt=prompt))
    b = await gen.expand(ExpandRequest(prompt=prompt))
    assert a == b and a.generator == "builtin"
    assert "The rain fell on the harbour." in a.text and "Mara waited" in a.text
    assert a.word_count == len(a.text.split()) > len(prompt.split(":\n\n")[1].split())
    assert "Expand the following" not in a.text
    short = await gen.expand(ExpandRequest(prompt=prompt, max_tokens=8))
    assert short.finish_reason == "length" and short.word_count <= 6


# -- the http generator against a stub OpenAI-compatible server --------------------------------


def _completion(content: str) -> dict[str, Any]:
    return {"choices": [{"message": {"role": "assistant", "content": content}, "finish_reason": "stop"}], "model": "m"}


GOOD = {
    "title": "Stub Report",
    "sections": [
        {
            "title": "Market Segments",
            "subsections": [{"title": "Enterprise"}, "Consumer"],
            "key_questions": ["What are the key market segments?"],
            "suggested_sources": 3,
            "estimated_words": 400,
        }
    ],
}


@pytest.fixture
async def stub() -> AsyncIterator[tuple[str, list[dict[str, Any]], dict[str, Any]]]:
    seen: list[dict[str, Any]] = []
    behaviour: dict[str, Any] = {"status": 200, "body": _completion(json.dumps(GOOD))}

    async def completions(req: web.Request) -> web.Response:
        seen.append({"headers": dict(req.headers), "body": await req.json()})
        return web.json_response(behaviour["body"], status=behaviour["status"])

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{server.port}/v1", seen, behaviour
    finally:
        await server.close()


async def test_http_generator_outline(stub: tuple[str, list[dict[str, Any]], dict[str, Any]]) -> None:
    url, seen, _ = stub
    gen = HttpGenerator(url, "model-x", key="sk-test-123")
    try:
        s = await gen.outline(request("AI Tools Market Analysis"))
    finally:
        await gen.close()
    assert s.title == "Stub Report" and s.generator == "http"
    assert [x.title for x in s.sections[0].subsections] == ["Enterprise", "Consumer"]
    assert s.structure_type == "research_report" and s.suggested_sources == 3 and s.estimated_words == 400
    sent = seen[0]
    assert sent["headers"]["Authorization"] == "Bearer sk-test-123"
    assert sent["body"]["model"] == "model-x" and sent["body"]["response_format"] == {"type": "json_object"}
    assert "AI Tools Market Analysis" in sent["body"]["messages"][1]["content"]


async def test_http_generator_without_key_sends_no_authorization(
    stub: tuple[str, list[dict[str, Any]], dict[str, Any]],
) -> None:
    url, seen, _ = stub
    gen = HttpGenerator(url + "/chat/completions", "model-x")
    try:
        out = await gen.expand(ExpandRequest(prompt="hello", max_tokens=50))
    finally:
        await gen.close()
    assert "Authorization" not in seen[0]["headers"]
    assert out.generator == "http" and seen[0]["body"]["max_tokens"] == 50


@pytest.mark.parametrize(
    ("status", "body", "error", "match"),
    [
        (503, {"error": "overloaded"}, GeneratorUnavailableError, "HTTP 503"),
        (429, {"error": "slow down"}, GeneratorUnavailableError, "HTTP 429"),
        (401, {"error": "bad key"}, GeneratorOutputError, "HTTP 401"),
        (200, {"nothing": True}, GeneratorOutputError, "not a chat completion"),
        (200, _completion("this is not json"), GeneratorOutputError, "not JSON"),
        (200, _completion(json.dumps({"title": "x"})), GeneratorOutputError, "sections"),
        (200, _completion(json.dumps({"title": "x", "sections": []})), GeneratorOutputError, "no sections"),
    ],
)
async def test_http_generator_failures(
    stub: tuple[str, list[dict[str, Any]], dict[str, Any]], status: int, body: Any, error: type, match: str
) -> None:
    url, _, behaviour = stub
    behaviour.update(status=status, body=body)
    gen = HttpGenerator(url, "model-x")
    try:
        with pytest.raises(error, match=match) as caught:
            await gen.outline(request("Bees"))
    finally:
        await gen.close()
    assert caught.value.retryable is (error is GeneratorUnavailableError)


async def test_http_generator_unreachable_is_retryable() -> None:
    gen = HttpGenerator("http://127.0.0.1:9/v1", "m", timeout_s=2)
    try:
        with pytest.raises(GeneratorUnavailableError):
            await gen.outline(request("Bees"))
    finally:
        await gen.close()
