"""The http validator: an OpenAI-compatible model asks the questions and grades the answers (seed 002, phase 6).

Two calls, as the seed's validation service makes them: the model first writes the questions a
structure for the request must answer (3, 5 or 8 for levels 1, 2 and 3), once per job; then,
for each generated structure, it answers every question from the structure alone and grades
each answer from 0 to 100, with a sentence of feedback. The accuracy is the mean grade, so the
threshold means what it means for the builtin validator. It shares the generator's endpoint
settings (``NEXUS_GRANULATOR_HTTP_URL``, ``_MODEL``, ``_KEY``) unless ``NEXUS_GRANULATOR_VALIDATOR_MODEL``
names another model.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from nexus.services.granulator.generators._port import OutlineRequest
from nexus.services.granulator.generators.http import HttpGenerator
from nexus.services.granulator.model import GeneratorOutputError, Structure, ValidationResult
from nexus.services.granulator.validation import Grade, Question, Validator

__all__ = ["QUESTIONS_PER_LEVEL", "HttpValidator"]

QUESTIONS_PER_LEVEL = {1: 3, 2: 5, 3: 8}
"""How many questions the model is asked to write at each validation level."""


class _Questions(msgspec.Struct):
    questions: list[str]


class _Answer(msgspec.Struct):
    question: str
    score: Annotated[float, msgspec.Meta(ge=0, le=100)]
    answer: str = ""


class _Grades(msgspec.Struct):
    answers: list[_Answer]
    feedback: str = ""


def _decode(content: str, type_: type[msgspec.Struct], what: str) -> msgspec.Struct:
    text = content.strip()
    if text.startswith("```"):
        text = text.split("\n", 1)[1] if "\n" in text else ""
        text = text.rsplit("```", 1)[0]
    try:
        return msgspec.json.decode(text, type=type_)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise GeneratorOutputError(f"validator {what} is not usable: {exc}") from None


class HttpValidator(Validator):
    """Asks ``POST {url}/chat/completions`` for questions, then for graded answers."""

    name = "http"

    def __init__(self, url: str, model: str, *, key: str | None = None, timeout_s: float = 60.0) -> None:
        self._chat = HttpGenerator(url, model, key=key, timeout_s=timeout_s)

    async def questions(self, request: OutlineRequest, level: int) -> list[Question]:
        wanted = QUESTIONS_PER_LEVEL.get(level, 3)
        inp = request.input
        messages = [
            {
                "role": "system",
                "content": "You review the structure of written content. Answer with one JSON object "
                'of the shape {"questions": [str]} and nothing else.',
            },
            {
                "role": "user",
                "content": f"Write {wanted} questions that a {inp.structure_type.replace('_', ' ')} about "
                f'"{inp.topic}" at {inp.depth} depth must answer'
                + (f" for {inp.audience}" if inp.audience else "")
                + ".",
            },
        ]
        choice = await self._chat.chat(messages, json_mode=True, temperature=0.0)
        decoded = _decode(choice.message.content or "", _Questions, "questions")
        assert isinstance(decoded, _Questions)
        texts = [q.strip() for q in decoded.questions if q.strip()]
        if not texts:
            raise GeneratorOutputError("validator answered with no questions")
        return [Question(text, ()) for text in texts[:wanted]]

    async def grade(self, structure: Structure, questions: list[Question], threshold: float) -> Grade:
        asked = [q.text for q in questions]
        messages = [
            {
                "role": "system",
                "content": "You grade content structures. Answer each question from the structure alone, "
                "then grade from 0 to 100 how fully the structure answers it. Answer with one JSON object "
                'of the shape {"answers": [{"question": str, "answer": str, "score": number}], '
                '"feedback": str} and nothing else; "feedback" says in a sentence or two what the '
                "structure covers and misses.",
            },
            {
                "role": "user",
                "content": "Structure:\n"
                + msgspec.json.encode(structure).decode()
                + "\n\nQuestions:\n"
                + "\n".join(f"{i + 1}. {q}" for i, q in enumerate(asked)),
            },
        ]
        choice = await self._chat.chat(messages, json_mode=True, temperature=0.0)
        decoded = _decode(choice.message.content or "", _Grades, "grades")
        assert isinstance(decoded, _Grades)
        # Grades are matched to the questions by position: models rephrase the questions they echo.
        if len(decoded.answers) != len(asked):
            raise GeneratorOutputError(f"validator graded {len(decoded.answers)} answers for {len(asked)} questions")
        scores = [a.score for a in decoded.answers]
        accuracy = round(sum(scores) / len(scores), 1)
        missed = tuple(
            f"{q} [missing: {a.answer or 'no answer'}]"
            for q, a in zip(asked, decoded.answers, strict=True)
            if a.score < 100
        )
        feedback = decoded.feedback.strip() or f"The model graded {len(asked)} answers; the mean is {accuracy:.1f}%."
        result = ValidationResult(
            accuracy_percentage=accuracy,
            questions_asked=asked,
            passed=accuracy >= threshold,
            ai_feedback=feedback,
            feedback=feedback,
            strategy=structure.strategy,
            validator=self.name,
        )
        return Grade(result, missed)

    async def close(self) -> None:
        await self._chat.close()
