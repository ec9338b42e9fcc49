"""The validation loop (seed 002, phase 6): ask questions of a structure, score it, retry below the threshold.

The validator is pluggable like the generator (``NEXUS_GRANULATOR_VALIDATOR``): the ``builtin``
one below (offline, deterministic) or ``http`` (``generators/http_validator.py``: an
OpenAI-compatible model writes the questions, then answers them from the structure and grades
each answer). Either gives seed 002's result: ``accuracy_percentage``, ``questions_asked``,
``passed`` and ``ai_feedback``.

The builtin validator's questions are derived from the request alone (topic, structure type, depth, sources), more of
them at higher levels. Each question carries the words an answer must contain; a section
answers it to the degree its content (title, summary, subsections and their points, not its
restated key questions) contains them. The accuracy is the mean over questions, so the same
structure always gets the same score.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from itertools import combinations

import msgspec

from nexus.services.granulator import _text
from nexus.services.granulator.generators._port import OutlineRequest, strategy_for
from nexus.services.granulator.model import (
    InvalidRequestError,
    Section,
    Structure,
    ValidationConfig,
    ValidationResult,
)

__all__ = [
    "BuiltinValidator",
    "Grade",
    "Question",
    "Validator",
    "check_config",
    "derive_questions",
    "normalise_result",
    "run_with_validation",
    "score",
]


@dataclass(frozen=True)
class Question:
    """A question and what answering it takes."""

    text: str
    groups: tuple[frozenset[str], ...]
    """Each group is a set of alternative stems; an answer mentions one of each group."""
    body_only: bool = False
    """Only the body sections (not the skeleton around them) may answer it."""


_TYPE_QUESTIONS: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "research_report": [
        ("What are the key findings about {subject}?", ("finding",)),
        ("What recommendations follow from the analysis?", ("recommendation",)),
        ("How was the analysis done, and on what sources?", ("methodology|approach|data", "source|data")),
    ],
    "course": [
        ("What will learners be able to do after the course?", ("learning", "objective")),
        ("How is progress assessed?", ("assessment|self-assessment|project",)),
        ("Which exercises give practice?", ("practice|exercise|project",)),
    ],
    "book": [
        ("How does the book open?", ("introduction|preface",)),
        ("How does the book close?", ("conclusion|epilogue",)),
        ("Where can readers go further?", ("further|glossary|appendice|reading",)),
    ],
    "article": [
        ("Why does {subject} matter?", ("matter|why",)),
        ("What is the main takeaway?", ("takeaway",)),
        ("What should readers watch for next?", ("watch|next|outlook",)),
    ],
}

_LIMITS = "limitation|risk|challenge|pitfall|barrier|uncertainty|criticism|mistake"


def _group(spec: str) -> frozenset[str]:
    return frozenset(_text.stem(w) for w in spec.split("|"))


def _term_group(term: str) -> frozenset[str]:
    return frozenset({_text.stem(term)})


def check_config(config: ValidationConfig) -> None:
    """Raise InvalidRequestError when the configuration is out of range."""
    if not 1 <= config.level <= 3:
        raise InvalidRequestError(f"$.validation.level: must be 1, 2 or 3, got {config.level}")
    if not 0 <= config.threshold <= 100:
        raise InvalidRequestError(f"$.validation.threshold: must be between 0 and 100, got {config.threshold}")
    if not 0 <= config.max_retries <= 5:
        raise InvalidRequestError(f"$.validation.max_retries: must be between 0 and 5, got {config.max_retries}")


def derive_questions(topic: str, structure_type: str, level: int) -> list[Question]:
    """The questions a structure for this request should answer; a superset at each higher level."""
    subj = _text.subject(topic)
    terms = [_text.display(t) for t in _text.terms(topic)]
    facets = _text.facets_for(topic)
    type_qs = _TYPE_QUESTIONS[structure_type]
    subject_group = tuple(_term_group(t) for t in terms[:3])

    out: list[Question] = [Question(f"What is {subj}, and why does it matter?", subject_group)]
    out.append(Question(type_qs[0][0].format(subject=subj), tuple(_group(g) for g in type_qs[0][1])))
    for facet in facets[:2]:
        out.append(Question(facet.question.format(subject=subj), _facet_group(facet)))
    if level >= 2:
        for text, groups in type_qs[1:]:
            out.append(Question(text.format(subject=subj), tuple(_group(g) for g in groups)))
        for facet in facets[2:4]:
            out.append(Question(facet.question.format(subject=subj), _facet_group(facet)))
        for term in terms[:4] if len(terms) > 1 else []:
            out.append(Question(f"What part does {term} play in {subj}?", (_term_group(term),), body_only=True))
    if level >= 3:
        for a, b in list(combinations(terms[:4], 2))[:3]:
            out.append(Question(f"How do {a} and {b} relate?", (_term_group(a), _term_group(b)), body_only=True))
        out.append(Question(f"What are the limitations and risks of {subj}?", (_group(_LIMITS),)))
        for facet in facets[4:6]:
            out.append(Question(facet.question.format(subject=subj), _facet_group(facet)))
    return out


def _facet_group(facet: _text.Facet) -> tuple[frozenset[str], ...]:
    return tuple(frozenset({s}) for s in sorted(_text.stems(facet.name)) if s not in ("and", "the"))


def _section_text(section: Section) -> set[str]:
    parts = [section.title, section.summary]
    for sub in section.subsections:
        parts.append(sub.title)
        parts.extend(sub.points)
    return _text.stems(" ".join(parts))


def score(structure: Structure, questions: list[Question], threshold: float) -> ValidationResult:
    """Score ``structure`` against ``questions``: accuracy, pass/fail and feedback in words."""
    result, _ = _score(structure, questions, threshold)
    return result


def _score(structure: Structure, questions: list[Question], threshold: float) -> tuple[ValidationResult, list[str]]:
    texts = [_section_text(s) for s in structure.sections]
    body = [s.part == "body" for s in structure.sections]
    coverage: list[float] = []
    missed: list[str] = []
    for q in questions:
        best, lacking = 0.0, list(q.groups)
        for i, words in enumerate(texts):
            if q.body_only and not body[i]:
                continue
            absent = [g for g in q.groups if not g & words]
            got = 1.0 - len(absent) / len(q.groups) if q.groups else 1.0
            if got > best:
                best, lacking = got, absent
            if best == 1.0:
                break
        coverage.append(best)
        if best < 1.0:
            # The hint names the words the best section lacked, as a reviewer's note would.
            missed.append(f"{q.text} [missing: {', '.join(sorted(g)[0] for g in lacking)}]")
    accuracy = round(100.0 * sum(coverage) / len(coverage), 1) if coverage else 100.0
    passed = accuracy >= threshold
    answered = len(questions) - len(missed)
    feedback = f"The structure answers {answered} of {len(questions)} questions fully ({accuracy:.1f}%)."
    if missed:
        texts_missed = [m.split(" [missing:", 1)[0] for m in missed]
        feedback += " Not fully answered: " + "; ".join(texts_missed[:5]) + ("; …" if len(missed) > 5 else "") + "."
    else:
        feedback += " Every question is covered by a section's content."
    result = ValidationResult(
        accuracy_percentage=accuracy,
        questions_asked=[q.text for q in questions],
        passed=passed,
        ai_feedback=feedback,
        feedback=feedback,
        strategy=structure.strategy,
        validator="builtin",
    )
    return result, missed


def normalise_result(result: ValidationResult) -> ValidationResult:
    """``result`` with both ``ai_feedback`` and ``feedback`` set: a result recorded before
    ``ai_feedback`` existed carries only ``feedback``."""
    if result.ai_feedback and result.feedback:
        return result
    text = result.ai_feedback or result.feedback
    return msgspec.structs.replace(result, ai_feedback=text, feedback=text)


@dataclass(frozen=True)
class Grade:
    """A validator's verdict on one structure."""

    result: ValidationResult
    """Seed 002's fields (``attempt`` and ``strategy`` are filled in by the loop)."""
    missed: tuple[str, ...] = ()
    """Hints for the next attempt: the questions not fully answered (``<question> [missing: …]``)."""


class Validator(abc.ABC):
    """Asks questions of a structure and grades how well it answers them.

    Raises (from every method): GeneratorUnavailableError (transient: the job may be retried)
    or GeneratorOutputError (the validator's answer is unusable).
    """

    name: str = ""

    @abc.abstractmethod
    async def questions(self, request: OutlineRequest, level: int) -> list[Question]:
        """The questions a structure for ``request`` should answer (more at higher levels);
        asked once per job, so every attempt is graded on the same questions."""

    @abc.abstractmethod
    async def grade(self, structure: Structure, questions: list[Question], threshold: float) -> Grade:
        """Grade ``structure`` against ``questions``; ``passed`` when the accuracy reaches ``threshold``."""

    async def close(self) -> None:  # noqa: B027 - the builtin validator holds nothing to release
        """Release connections."""


class BuiltinValidator(Validator):
    """Offline and deterministic: questions from the request's words, answers by word coverage."""

    name = "builtin"

    async def questions(self, request: OutlineRequest, level: int) -> list[Question]:
        return derive_questions(request.input.topic, request.input.structure_type, level)

    async def grade(self, structure: Structure, questions: list[Question], threshold: float) -> Grade:
        result, missed = _score(structure, questions, threshold)
        return Grade(result, tuple(missed))


Outline = Callable[[OutlineRequest], Awaitable[Structure]]
OnAttempt = Callable[[Structure, ValidationResult | None], Awaitable[None]]


async def run_with_validation(
    generate: Outline,
    base: OutlineRequest,
    config: ValidationConfig,
    *,
    on_attempt: OnAttempt | None = None,
    validator: Validator | None = None,
) -> tuple[Structure, ValidationResult | None, int]:
    """Generate, validate, and regenerate with the next strategy until it passes or retries run out.

    Returns:
        The structure kept (the best-scoring one), its validation (None when disabled), and
        the number of attempts made.
    """
    if not config.enabled:
        structure = await generate(base)
        if on_attempt is not None:
            await on_attempt(structure, None)
        return structure, None, 1
    validator = validator or BuiltinValidator()
    questions = await validator.questions(base, config.level)
    best: tuple[Structure, ValidationResult] | None = None
    hints: tuple[str, ...] = ()
    attempts = 0
    # Hints read "<question> [missing: word, word]": what the next attempt should cover.
    for attempt in range(1, config.max_retries + 2):
        attempts = attempt
        request = OutlineRequest(base.input, strategy_for(attempt), attempt, hints)
        structure = await generate(request)
        grade = await validator.grade(structure, questions, config.threshold)
        missed = list(grade.missed)
        result = msgspec.structs.replace(
            normalise_result(grade.result), attempt=attempt, strategy=request.strategy, validator=validator.name
        )
        if on_attempt is not None:
            await on_attempt(structure, result)
        if best is None or result.accuracy_percentage > best[1].accuracy_percentage:
            best = (structure, result)
        if result.passed:
            break
        # The next attempt is told what this one missed, as the seed's generator is re-prompted.
        hints = tuple(missed)
    assert best is not None
    return best[0], best[1], attempts
