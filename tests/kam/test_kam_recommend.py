"""``POST /api/recommend-template``: the builtin recommender, and an OpenAI-compatible one with its fallback.

The OpenAI-compatible endpoint is a stub aiohttp server on port 0 whose answer each step chooses:
a ranking, a fenced ranking, garbage, an HTTP error, silence past the timeout, and finally no
server at all.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from inprocess import build

from nexus.auth import issue_key
from nexus.config import ConfigError
from nexus.eventlog.memory import MemoryEventLog
from nexus.proto import new_event
from nexus.proto.events.kam import KamClientCreated
from nexus.services.kam.context import CLIENT_SCOPES
from nexus.services.kam.recommend import tokens
from nexus.services.kam.settings import load_settings
from nexus.services.kam.state import ACCOUNTS_STREAM, CLIENT_CREATED

MARKET = {
    "title": "Market Analysis for AI Tools",
    "description": "Need comprehensive analysis of the competitive landscape, industry trends and pricing.",
    "urgency": "normal",
    "category": "research",
}
COURSE = {
    "title": "Onboarding course for new support engineers",
    "description": "A training curriculum with lessons and modules for their first month.",
    "urgency": "low",
    "category": "education",
}
MEMO = {
    "title": "Quick summary of the outage for the board",
    "description": "A short memo, today.",
    "urgency": "urgent",
    "category": "writing",
}


@dataclass
class Stub:
    """The OpenAI-compatible endpoint: answers as ``mode`` says, records what it was sent."""

    mode: str = "answer"
    ranking: Any = None
    seen: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    async def completions(self, request: web.Request) -> web.StreamResponse:
        self.seen.append({"authorization": request.headers.get("Authorization"), "body": await request.json()})
        if self.mode == "slow":
            await asyncio.sleep(1.0)  # twice the timeout KAM gives the model
        if self.mode == "http500":
            return web.json_response({"error": {"message": "overloaded"}}, status=500)
        if self.mode == "not_a_completion":
            return web.json_response({"result": "fine"})
        content = {
            "answer": json.dumps(self.ranking),
            "fenced": f"```json\n{json.dumps(self.ranking)}\n```",
            "garbage": "I would pick the report pipeline, probably.",
            "wrong_shape": json.dumps({"recommendations": "comprehensive_report_pipeline"}),
        }[self.mode]
        return web.json_response({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]})


@dataclass
class Kam:
    url: str
    http: aiohttp.ClientSession
    keys: dict[str, str]

    async def call(self, method: str, path: str, who: str, body: Any = None) -> tuple[int, Any]:
        async with self.http.request(method, self.url + path, json=body, headers={"X-API-Key": self.keys[who]}) as r:
            return r.status, await r.json()

    async def request(self, fields: dict[str, str]) -> str:
        status, body = await self.call("POST", "/api/requests", "alpha", fields)
        assert status == 201, body
        return str(body["request_id"])

    async def recommend(self, request_id: str, **context: Any) -> dict[str, Any]:
        body = {"request_id": request_id, "client_context": context}
        status, answer = await self.call("POST", "/api/kam/recommend-template", "admin", body)
        assert status == 200, answer
        return dict(answer)


async def start_kam(tmp_path: Path, **env: str) -> AsyncIterator[Kam]:
    log = MemoryEventLog()
    data = KamClientCreated(client_id="alpha", name="Alpha", tier="premium")
    await log.append(ACCOUNTS_STREAM, [new_event(CLIENT_CREATED, data, source="nexus/kam", tenant="alpha")])
    service = await build("kam", tmp_path, log=log, **env)
    await service.start()
    keys = {
        "admin": (await issue_key(log, "client", "ops", scopes=("admin",))).secret,
        "alpha": (await issue_key(log, "client", "alpha", scopes=CLIENT_SCOPES)).secret,
    }
    async with aiohttp.ClientSession() as http:
        yield Kam(f"http://127.0.0.1:{service.port}", http, keys)
    await service.stop()


@pytest.fixture
async def kam(tmp_path: Path) -> AsyncIterator[Kam]:
    async for running in start_kam(tmp_path):
        yield running


@pytest.fixture
async def stub() -> AsyncIterator[tuple[Stub, web.AppRunner]]:
    state = Stub()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", state.completions)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.url = f"http://127.0.0.1:{port}/v1"
    yield state, runner
    await runner.cleanup()


def names(answer: dict[str, Any]) -> list[str]:
    return [r["template_name"] for r in answer["recommendations"]]


def reasons(answer: dict[str, Any], name: str) -> list[str]:
    return next(r["reasons"] for r in answer["recommendations"] if r["template_name"] == name)


async def test_builtin_ranks_by_the_request_and_says_why(kam: Kam) -> None:
    market = await kam.recommend(await kam.request(MARKET))
    assert market["recommender"] == "builtin" and market["fallback"] is False and "fallback_reason" not in market
    assert names(market)[0] == "comprehensive_report_pipeline"
    top = market["recommendations"][0]
    assert top["template_id"] == 5 and top["tier"] == "premium" and top["currency"] == "USD"
    assert top["estimated_cost"] == pytest.approx(0.78)
    scores = [r["score"] for r in market["recommendations"]]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    # Each part of the score is a reason: the shared words, the category, urgency against tier,
    # and (without a preferred tier) the client's own tier.
    why = reasons(market, "comprehensive_report_pipeline")
    assert [r.split(":")[0] for r in why] == ["text", "category", "urgency", "tier"]
    assert "'analysis'" in why[0] and "'market'" in why[0]
    assert "'research' is the template's" in why[1] and "client's tier (premium)" in why[3]
    # Other requests, other winners.
    assert names(await kam.recommend(await kam.request(COURSE)))[0] == "course_outline_builder"
    memo = await kam.recommend(await kam.request(MEMO))
    assert names(memo)[0] == "quick_brief"
    assert any("suits urgent urgency" in r for r in reasons(memo, "quick_brief"))
    # Deterministic: the same question, the same answer.
    request_id = await kam.request(MARKET)
    assert await kam.recommend(request_id, budget=1) == await kam.recommend(request_id, budget=1)


async def test_budget_tier_and_history_move_the_ranking(kam: Kam) -> None:
    request_id = await kam.request({**MARKET, "category": "general", "description": "Need an analysis."})
    plain = await kam.recommend(request_id, preferred_tier="premium")
    assert names(plain)[0] == "comprehensive_report_pipeline"
    # A budget the premium template exceeds pushes it down, saying so.
    tight = await kam.recommend(request_id, preferred_tier="premium", budget=0.1)
    assert names(tight)[0] != "comprehensive_report_pipeline"
    assert any("over the budget of 0.10: score halved" in r for r in reasons(tight, "comprehensive_report_pipeline"))
    assert any("within the budget" in r for r in reasons(tight, "quick_brief"))
    # The client's habits count: a template used before gains.
    before = {r["template_name"]: r["score"] for r in plain["recommendations"]}
    habit = await kam.recommend(request_id, preferred_tier="premium", history=["article_draft", "article_draft"])
    after = {r["template_name"]: r["score"] for r in habit["recommendations"]}
    assert any("used this template before (2 times)" in r for r in reasons(habit, "article_draft"))
    assert after["article_draft"] - after["quick_brief"] > before["article_draft"] - before["quick_brief"]
    # A preferred tier beats the client's own.
    basic = await kam.recommend(request_id, preferred_tier="basic")
    assert any("is the preferred tier (basic)" in r for r in reasons(basic, "quick_brief"))


async def test_the_route_is_for_admins_and_checks_its_body(kam: Kam) -> None:
    request_id = await kam.request(MARKET)
    status, body = await kam.call("POST", "/api/recommend-template", "alpha", {"request_id": request_id})
    assert status == 403
    status, body = await kam.call("POST", "/api/recommend-template", "admin", {"request_id": "req_nope"})
    assert status == 404 and "req_nope" in body["message"]
    status, body = await kam.call("POST", "/api/recommend-template", "admin", {"request_id": 123})
    assert status == 404  # the seed's numeric id is accepted, and there is no such request
    for context, named in (({"budget": -1}, "budget"), ({"mood": "good"}, "mood"), ({"preferred_tier": "gold"}, "")):
        status, body = await kam.call(
            "POST", "/api/recommend-template", "admin", {"request_id": request_id, "client_context": context}
        )
        assert status == 400 and named in body["message"], body


def test_tokens_drop_stop_words_and_meet_plurals() -> None:
    assert tokens("The Reports and an Analysis of markets") == [
        ("report", "reports"),
        ("analys", "analysis"),
        ("market", "markets"),
    ]
    assert {s for s, _ in tokens("analyses")} == {s for s, _ in tokens("analysis")}
    assert tokens("comprehensive_report_pipeline")[0] == ("comprehensive", "comprehensive")


def test_the_openai_recommender_needs_its_url() -> None:
    with pytest.raises(ConfigError, match="NEXUS_KAM_OPENAI_URL"):
        load_settings({"NEXUS_KAM_RECOMMENDER": "openai"})
    with pytest.raises(ConfigError, match="NEXUS_KAM_RECOMMENDER"):
        load_settings({"NEXUS_KAM_RECOMMENDER": "oracle"})
    settings = load_settings({})
    assert settings.recommender == "builtin" and settings.openai_api_key is None


async def test_the_model_ranks_and_builtin_answers_when_it_fails(
    tmp_path: Path, stub: tuple[Stub, web.AppRunner]
) -> None:
    model, runner = stub
    env = {
        "NEXUS_KAM_RECOMMENDER": "openai",
        "NEXUS_KAM_OPENAI_URL": model.url,
        "NEXUS_KAM_OPENAI_MODEL": "small-model",
        "NEXUS_KAM_OPENAI_API_KEY": "sk-test-secret",
        "NEXUS_KAM_OPENAI_TIMEOUT_SECONDS": "0.5",
    }
    async for kam in start_kam(tmp_path, **env):
        request_id = await kam.request(MARKET)
        # The model's ranking, with an invented template (dropped) and an out-of-range score (dropped).
        model.ranking = {
            "recommendations": [
                {"template_name": "quick_brief", "score": 0.4, "reasons": ["cheap"]},
                {"template_name": "mega_pipeline", "score": 0.99, "reasons": ["invented"]},
                {"template_name": "comprehensive_report_pipeline", "score": 0.92, "reasons": ["deep research"]},
                {"template_name": "article_draft", "score": 7, "reasons": ["off the scale"]},
            ]
        }
        answer = await kam.recommend(request_id, budget=2)
        assert answer["recommender"] == "openai" and answer["fallback"] is False
        assert names(answer) == ["comprehensive_report_pipeline", "quick_brief"]
        top = answer["recommendations"][0]
        assert top["score"] == 0.92 and top["reasons"] == ["deep research"] and top["template_id"] == 5
        assert top["estimated_cost"] == pytest.approx(0.78)
        # What the model was asked: the configured model, JSON, the request and the templates.
        [asked] = model.seen
        assert asked["authorization"] == "Bearer sk-test-secret"
        assert asked["body"]["model"] == "small-model"
        assert asked["body"]["response_format"] == {"type": "json_object"}
        prompt = json.loads(asked["body"]["messages"][1]["content"])
        assert prompt["request"]["title"] == MARKET["title"] and prompt["client_context"]["budget"] == 2
        assert {t["template_name"] for t in prompt["templates"]} >= {"quick_brief", "comprehensive_report_pipeline"}
        # A fenced JSON answer is read too.
        model.mode = "fenced"
        assert (await kam.recommend(request_id))["recommender"] == "openai"
        # Everything else falls back to builtin, saying why (and never the key).
        for mode, why in (
            ("garbage", "not JSON"),
            ("wrong_shape", "not a ranking"),
            ("not_a_completion", "not a chat completion"),
            ("http500", "HTTP 500"),
            ("slow", "within 0.5 s"),
        ):
            model.mode = mode
            answer = await kam.recommend(request_id)
            assert answer["recommender"] == "builtin" and answer["fallback"] is True, answer
            assert why in answer["fallback_reason"] and "sk-test" not in answer["fallback_reason"], answer
            assert names(answer)[0] == "comprehensive_report_pipeline"
        model.mode = "answer"
        model.ranking = {"recommendations": [{"template_name": "mega_pipeline", "score": 0.9}]}
        answer = await kam.recommend(request_id)
        assert answer["fallback"] is True and "no known template" in answer["fallback_reason"]
        # The model's server is gone.
        await runner.cleanup()
        answer = await kam.recommend(request_id)
        assert answer["fallback"] is True and "unreachable" in answer["fallback_reason"], answer
