"""Seed 002's validation result fields, and the pluggable validator: the builtin one and an
OpenAI-compatible one (here a local stub server) that writes the questions and grades the answers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web
from granulator_support import handshake_body, running_granulator

from nexus.eventlog.memory import MemoryEventLog
from nexus.proto.events.granulator import GranulatorValidationResult
from nexus.services.granulator import handlers
from nexus.services.granulator.generators import BuiltinGenerator, OutlineRequest
from nexus.services.granulator.generators.http_validator import HttpValidator
from nexus.services.granulator.model import (
    GeneratorOutputError,
    GranulationInput,
    ValidationConfig,
    normalise_input,
)
from nexus.services.granulator.validation import normalise_result, run_with_validation

SEED_FIELDS = {"accuracy_percentage", "questions_asked", "passed", "ai_feedback"}
QUESTIONS = ["What are the key market segments?", "How does pricing compare?", "Who are the main vendors?"]


class StubModel:
    """A chat-completions endpoint: questions on the first kind of call, grades on the second.

    The first structure graded scores 60 per answer, later ones 95, so the loop must retry once."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.fail_grading = False
        self.short_grades = False

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls.append({"body": body, "auth": request.headers.get("Authorization")})
        system = body["messages"][0]["content"]
        if "review the structure" in system:
            content: dict[str, Any] = {"questions": QUESTIONS}
        else:
            if self.fail_grading:
                return web.Response(status=500, text="overloaded")
            graded = sum(1 for c in self.calls if "grade content" in c["body"]["messages"][0]["content"])
            score = 60 if graded == 1 else 95
            answers = [{"question": q, "answer": "from the sections", "score": score} for q in QUESTIONS]
            if self.short_grades:
                answers = answers[:1]
            content = {"answers": answers, "feedback": f"Graded {score} per answer by the stub."}
        completion = {"choices": [{"message": {"content": json.dumps(content)}, "finish_reason": "stop"}]}
        return web.json_response(completion)


@pytest.fixture
async def stub() -> AsyncIterator[tuple[StubModel, str]]:
    model = StubModel()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", model.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield model, f"http://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()


def base(topic: str = "AI Tools Market Analysis") -> OutlineRequest:
    return OutlineRequest(normalise_input(GranulationInput(topic=topic, structure_type="research_report")))


async def test_the_builtin_result_carries_the_seeds_field_names() -> None:
    config = ValidationConfig(enabled=True, level=2, threshold=50.0, max_retries=0)
    _, result, _ = await run_with_validation(BuiltinGenerator().outline, base(), config)
    assert result is not None
    encoded = msgspec.to_builtins(result)
    assert SEED_FIELDS <= set(encoded) and encoded["validator"] == "builtin"
    assert result.ai_feedback and result.ai_feedback == result.feedback and "questions" in result.ai_feedback


def test_a_result_recorded_before_ai_feedback_reads_with_it() -> None:
    # An event written by an earlier release has only "feedback".
    old = {"accuracy_percentage": 91.0, "questions_asked": ["q"], "passed": True, "feedback": "Covers q.", "attempt": 1}
    decoded = msgspec.convert(old, GranulatorValidationResult)
    assert decoded.ai_feedback == ""
    assert normalise_result(decoded).ai_feedback == "Covers q." == normalise_result(decoded).feedback


async def test_the_http_validator_asks_once_and_grades_every_attempt(
    tmp_path: Path, memory_log: MemoryEventLog, stub: tuple[StubModel, str]
) -> None:
    model, url = stub
    env = {
        "NEXUS_GRANULATOR_VALIDATOR": "http",
        "NEXUS_GRANULATOR_HTTP_URL": url,
        "NEXUS_GRANULATOR_VALIDATOR_MODEL": "grader-1",
        "NEXUS_GRANULATOR_HTTP_KEY": "sk-test-key",
    }
    async with running_granulator(tmp_path, log=memory_log, **env) as g:
        validation = {"enabled": True, "level": 1, "threshold": 90.0, "max_retries": 2}
        _, hs = await g.post("/api/handshake", handshake_body(validation=validation))
        status, result = await g.post("/api/process", {"execution_id": "exec_123", "handshake_id": hs["handshake_id"]})
        assert status == 200, result
        verdict = result["validation"]
        # The seed's result: the stub's questions, the mean of its grades, its feedback.
        assert SEED_FIELDS <= set(verdict)
        assert verdict["questions_asked"] == QUESTIONS
        assert verdict["accuracy_percentage"] == 95.0 and verdict["passed"] is True
        assert verdict["ai_feedback"] == "Graded 95 per answer by the stub." and verdict["validator"] == "http"
        # 60 < 90 on the first attempt: one retry with another strategy, then it passed.
        assert result["attempts"] == 2 and verdict["attempt"] == 2 and verdict["strategy"] == "term_focused"
        events = await memory_log.read_stream(handlers.stream_id(hs["handshake_id"]))

    kinds = [
        "questions" if "review the structure" in c["body"]["messages"][0]["content"] else "grade" for c in model.calls
    ]
    assert kinds == ["questions", "grade", "grade"]
    assert all(c["body"]["model"] == "grader-1" and c["auth"] == "Bearer sk-test-key" for c in model.calls)
    # The structure itself is what the model grades, with every question numbered.
    graded = model.calls[1]["body"]["messages"][1]["content"]
    assert '"sections"' in graded and f"1. {QUESTIONS[0]}" in graded
    # Both attempts are in the handshake's history with their own accuracy.
    validated = [e.data["result"] for e in events if e.type == handlers.VALIDATED]
    assert [(v["accuracy_percentage"], v["passed"]) for v in validated] == [(60.0, False), (95.0, True)]


async def test_a_failing_or_unusable_grader_fails_the_job_clearly(
    tmp_path: Path, memory_log: MemoryEventLog, stub: tuple[StubModel, str]
) -> None:
    model, url = stub
    env = {"NEXUS_GRANULATOR_VALIDATOR": "http", "NEXUS_GRANULATOR_HTTP_URL": url, "NEXUS_GRANULATOR_HTTP_MODEL": "m"}
    async with running_granulator(tmp_path, log=memory_log, **env) as g:
        validation = {"enabled": True, "level": 1, "threshold": 90.0, "max_retries": 0}
        model.fail_grading = True
        _, hs = await g.post("/api/handshake", handshake_body(validation=validation))
        status, error = await g.post("/api/process", {"execution_id": "exec_123", "handshake_id": hs["handshake_id"]})
        assert status == 503 and error["error"] == "generator_unavailable" and error["retryable"] is True

    validator = HttpValidator(url, "m")
    try:
        model.fail_grading, model.short_grades = False, True
        questions = await validator.questions(base(), 1)
        assert [q.text for q in questions] == QUESTIONS
        structure = await BuiltinGenerator().outline(base())
        with pytest.raises(GeneratorOutputError, match="graded 1 answers for 3 questions"):
            await validator.grade(structure, questions, 90.0)
    finally:
        await validator.close()
