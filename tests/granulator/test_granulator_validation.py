"""The validation loop: questions from the request, deterministic scores, retries with other strategies."""

from __future__ import annotations

from pathlib import Path

import pytest
from granulator_support import handshake_body, running_granulator

from nexus.eventlog.memory import MemoryEventLog
from nexus.services.granulator import handlers
from nexus.services.granulator.generators import BuiltinGenerator, OutlineRequest
from nexus.services.granulator.model import GranulationInput, InvalidRequestError, ValidationConfig, normalise_input
from nexus.services.granulator.validation import check_config, derive_questions, run_with_validation, score


def base(topic: str, kind: str, depth: str) -> OutlineRequest:
    return OutlineRequest(normalise_input(GranulationInput(topic=topic, structure_type=kind, depth=depth)))


def test_more_questions_at_higher_levels() -> None:
    counts = [len(derive_questions("AI Tools Market Analysis", "research_report", level)) for level in (1, 2, 3)]
    assert counts[0] < counts[1] < counts[2]
    level1 = [q.text for q in derive_questions("AI Tools Market Analysis", "research_report", 1)]
    assert "What are the key market segments?" in level1 and "How does AI Tools Market work?" in level1
    other = [q.text for q in derive_questions("Python Programming", "course", 1)]
    assert set(other) != set(level1)


async def test_scores_are_deterministic_and_discriminate() -> None:
    gen = BuiltinGenerator()
    questions = derive_questions("AI Tools Market Analysis", "research_report", 2)
    good = await gen.outline(base("AI Tools Market Analysis", "research_report", "standard"))
    r1, r2 = score(good, questions, 80), score(good, questions, 80)
    assert r1 == r2
    # An outline of another topic answers this topic's questions much worse.
    unrelated = await gen.outline(base("Medieval Castle Architecture", "research_report", "standard"))
    assert score(unrelated, questions, 80).accuracy_percentage < r1.accuracy_percentage - 20


async def test_retry_with_another_strategy_until_the_threshold() -> None:
    seen: list[tuple[str, float]] = []

    async def record(structure, result) -> None:  # type: ignore[no-untyped-def]
        seen.append((result.strategy, result.accuracy_percentage))

    config = ValidationConfig(enabled=True, level=3, threshold=95.0, max_retries=2)
    structure, result, attempts = await run_with_validation(
        BuiltinGenerator().outline, base("Ocean Plastic Pollution", "article", "standard"), config, on_attempt=record
    )
    assert attempts == 3 == len(seen)
    assert [s for s, _ in seen] == ["template", "term_focused", "question_driven"]
    assert seen[0][1] < 95.0 <= seen[-1][1]
    assert result.passed and result.attempt == 3 and structure.strategy == "question_driven"
    assert len(result.questions_asked) == len(derive_questions("Ocean Plastic Pollution", "article", 3))
    assert "answers" in result.feedback


async def test_retries_run_out_and_the_best_attempt_is_kept() -> None:
    config = ValidationConfig(enabled=True, level=3, threshold=99.0, max_retries=1)
    scores: dict[str, float] = {}

    async def record(structure, result) -> None:  # type: ignore[no-untyped-def]
        scores[structure.strategy] = result.accuracy_percentage

    structure, result, attempts = await run_with_validation(
        BuiltinGenerator().outline, base("Quantum Error Correction", "article", "brief"), config, on_attempt=record
    )
    assert attempts == 2 and result.passed is False
    assert result.accuracy_percentage == max(scores.values()) == scores[structure.strategy]
    assert "Not fully answered" in result.feedback
    # Disabled: one attempt, no result.
    _, none, one = await run_with_validation(
        BuiltinGenerator().outline, base("Bees", "book", "brief"), ValidationConfig()
    )
    assert none is None and one == 1


@pytest.mark.parametrize(
    ("config", "field"),
    [
        (ValidationConfig(enabled=True, level=0), "level"),
        (ValidationConfig(enabled=True, threshold=101), "threshold"),
        (ValidationConfig(enabled=True, max_retries=9), "max_retries"),
    ],
)
def test_config_bounds(config: ValidationConfig, field: str) -> None:
    with pytest.raises(InvalidRequestError, match=field):
        check_config(config)


async def test_validation_results_are_kept_in_the_log(tmp_path: Path, memory_log: MemoryEventLog) -> None:
    async with running_granulator(tmp_path, log=memory_log) as g:
        body = handshake_body(
            input={"topic": "Ocean Plastic Pollution", "structure_type": "article"},
            validation={"enabled": True, "level": 3, "threshold": 95.0, "max_retries": 2},
        )
        _, hs = await g.post("/api/handshake", body)
        assert hs["estimate"]["attempts"] == 3
        status, result = await g.post("/api/process", {"execution_id": "exec_123", "handshake_id": hs["handshake_id"]})
        assert status == 200, result
        assert result["attempts"] == 3 and result["validation"]["passed"] is True
        assert set(result["validation"]) >= {"accuracy_percentage", "questions_asked", "passed", "feedback"}
        events = await memory_log.read_stream(handlers.stream_id(hs["handshake_id"]))
        validated = [e.data["result"] for e in events if e.type == handlers.VALIDATED]
        assert [v["attempt"] for v in validated] == [1, 2, 3]
        assert [v["passed"] for v in validated] == [False, False, True]
        async with g.session.get(g.url + "/metrics") as resp:
            text = await resp.text()
        assert "nexus_granulator_validation_retries_total" in text
        assert "nexus_granulator_validation_accuracy_percent_bucket" in text
