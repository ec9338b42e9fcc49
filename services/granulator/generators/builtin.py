"""The builtin generator: offline, deterministic, built from structure templates and topic terms.

The outline of a structure type is a skeleton (an executive summary and a methodology for a
research report, an overview and an assessment for a course, …) around body sections drawn
from the facets of the domains the topic touches (markets, technology, history, …). The
topic's own words name the document, fill the skeleton and, depending on the strategy, bind the
body sections to them. The same request always yields the same structure.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from nexus.services.granulator import _text
from nexus.services.granulator._text import Facet, display
from nexus.services.granulator.generators._port import Generator, OutlineRequest
from nexus.services.granulator.model import (
    DEPTHS,
    ExpandRequest,
    ExpandResult,
    InvalidRequestError,
    Section,
    Structure,
    Subsection,
)

__all__ = ["BuiltinGenerator", "expand", "outline"]

BODY_SECTIONS = {1: 2, 2: 4, 3: 6, 4: 8}
SUBSECTIONS = {1: 2, 2: 3, 3: 3, 4: 4}
QUESTIONS = {1: 1, 2: 2, 3: 2, 4: 3}
WORDS_PER_SUBSECTION = {1: 120, 2: 250, 3: 350, 4: 450}
TYPE_WORD_FACTOR = {"research_report": 1.0, "course": 1.2, "book": 3.0, "article": 0.6}


@dataclass(frozen=True)
class _Part:
    title: str
    subsections: tuple[str, ...]
    question: str
    body: bool = False
    facet: Facet | None = None


def _skeleton(kind: str, level: int, subj: str, sources: int, audience: str) -> tuple[list[_Part], list[_Part]]:
    """The fixed sections before and after the body, for a structure type and depth."""
    who = audience or "the reader"
    if kind == "research_report":
        head = [
            _Part(
                "Executive Summary",
                ("Scope of the report", "Key findings", "Recommendations at a glance"),
                "What are the key findings about {subject}?",
            )
        ]
        if level >= 2:
            head.append(
                _Part(
                    f"Background: {subj}",
                    (f"Defining {subj}", "Historical context", "Why it matters now"),
                    "What is {subject} and why does it matter?",
                )
            )
        if level >= 3 or sources >= 10:
            head.append(
                _Part(
                    "Methodology",
                    ("Sources and data" if sources else "Data collection", "Analytical approach", "Limitations"),
                    "How was {subject} studied?",
                )
            )
        if sources >= 10:
            head.append(
                _Part(
                    "Literature Review",
                    ("Foundational work", "Recent studies", "Gaps in the literature"),
                    "What does existing research say?",
                )
            )
        tail = [_Part("Recommendations", ("Short-term actions", "Long-term strategy", "Open questions"), "")]
        if level >= 2:
            tail.append(_Part("Conclusion", ("Summary of findings", "Implications"), "What should be done next?"))
        return head, tail
    if kind == "course":
        head = [
            _Part(
                f"Course Overview: {subj}",
                ("Learning objectives", f"Who this course is for: {who}", "Prerequisites"),
                "What will learners be able to do after the course?",
            )
        ]
        tail = [_Part("Assessment and Practice", ("Final project", "Self-assessment", "Certification criteria"), "")]
        if level >= 2:
            tail.append(_Part("Next Steps", ("Further learning", "Community and resources"), ""))
        return head, tail
    if kind == "book":
        head = [_Part(f"Introduction: {subj}", ("Why this book", "How to read it", f"Who it is for: {who}"), "")]
        if level >= 3:
            head.insert(0, _Part("Preface", ("Origins of the book", "Acknowledgements"), ""))
        tail = [_Part("Conclusion", ("Looking back", "Looking ahead"), "What is the lasting lesson of {subject}?")]
        if level >= 2:
            tail.append(_Part("Appendices", ("Glossary", "Further reading" if sources else "Index"), ""))
        return head, tail
    if kind == "article":
        head = [_Part("Introduction", (f"Why {subj} matters", "What this article covers"), "")]
        tail = [_Part("Conclusion", ("Main takeaway", "What to watch"), "What is the main takeaway?")]
        return head, tail
    raise InvalidRequestError(
        f"$.input.structure_type: unknown structure type {kind!r}; use one of research_report, course, book, article"
    )


def _body_title(kind: str, index: int, name: str) -> str:
    if kind == "course":
        return f"Module {index}: {name}"
    if kind == "book":
        return f"Chapter {index}: {name}"
    return name


def _seed(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "big")


def _question_words(question: str) -> str:
    """A hint as a short subsection title.

    ``How do AI and Market relate? [missing: market]`` → ``AI and Market``; the words a
    validation note says are missing are added when the question does not carry them.
    """
    question, _, note = question.partition(" [missing:")
    lacking = [w.strip() for w in note.rstrip("]").split(",") if w.strip()]
    kept = [w for w in _text.words(question) if w.lower() not in _text.STOPWORDS or w.lower() == "and"]
    while kept and kept[0].lower() == "and":
        kept.pop(0)
    while kept and kept[-1].lower() == "and":
        kept.pop()
    title = " ".join(display(w) if w.lower() != "and" else "and" for w in kept) or question.rstrip("?")
    have = _text.stems(title)
    extra = [display(w) for w in lacking if _text.stem(w) not in have]
    return f"{title}: {', '.join(extra)}" if extra else title


def outline(request: OutlineRequest) -> Structure:
    """Build the structure for one attempt (pure and deterministic)."""
    inp = request.input
    kind = inp.structure_type
    level = DEPTHS[str(inp.depth)]
    subj = _text.subject(inp.topic)
    terms = [display(t) for t in _text.terms(inp.topic)]
    strategy = request.strategy
    head, tail = _skeleton(kind, level, subj, inp.sources, inp.audience)

    # Body: the domain facets, then (for long documents on narrow topics) one section per term.
    facets = _text.facets_for(inp.topic)
    n_body = BODY_SECTIONS[level]
    chosen = facets[:n_body]
    extra = 0
    while len(chosen) < n_body:
        term = terms[extra % len(terms)]
        chosen.append(Facet(f"{term} in Depth", (f"{term} explained", f"{term} in practice", f"{term} today"), ""))
        extra += 1
    # Rotate the order of the middle facets by the topic, so outlines of one domain differ.
    if len(chosen) > 3:
        middle = chosen[1:-1]
        shift = _seed(inp.topic.lower()) % len(middle)
        chosen = [chosen[0], *middle[shift:], *middle[:shift], chosen[-1]]

    body: list[_Part] = []
    for i, facet in enumerate(chosen):
        subs = list(facet.subsections)
        name = facet.name
        if strategy in ("term_focused", "question_driven"):
            term = terms[i % len(terms)]
            if term.lower() not in name.lower():
                name = f"{name}: {term}"
            subs = [f"{s} in {term}" if j == 0 else s for j, s in enumerate(subs)]
            if len(terms) > 1:
                partner = terms[(i + 1) % len(terms)]
                subs.append(f"{term} and {partner}")
        body.append(_Part(name, tuple(subs), facet.question, body=True, facet=facet))

    if strategy == "question_driven" and request.hints:
        # Each question the last attempt missed becomes content of the body section sharing
        # most words with it, so the retry answers it rather than only restating it.
        for question in request.hints:
            qstems = _text.stems(question)
            best = max(
                range(len(body)),
                key=lambda k: (len(qstems & _text.stems(body[k].title + " " + " ".join(body[k].subsections))), -k),
            )
            part = body[best]
            body[best] = _Part(
                part.title, (*part.subsections, _question_words(question)), part.question, True, part.facet
            )

    n_subs = SUBSECTIONS[level]
    n_questions = QUESTIONS[level]
    words_per = int(WORDS_PER_SUBSECTION[level] * TYPE_WORD_FACTOR[kind])
    share, spare = divmod(inp.sources, len(body))

    sections: list[Section] = []
    parts = [(p, "front") for p in head] + [(p, "body") for p in body] + [(p, "back") for p in tail]
    body_index = 0
    for part, role in parts:
        if part.body:
            body_index += 1
            title = _body_title(kind, body_index, part.title)
            limit = n_subs + (len(part.subsections) - len(part.facet.subsections) if part.facet else 0)
            sub_titles = part.subsections[: max(limit, n_subs)]
            sources = share + (1 if body_index <= spare else 0)
        else:
            title = part.title
            sub_titles = part.subsections[:n_subs]
            sources = 0
        subsections = [
            Subsection(title=s, points=_points(s, subj, terms, level) if level >= 3 else []) for s in sub_titles
        ]
        questions = _questions(part, subj, terms, n_questions, body_index if part.body else 0)
        sections.append(
            Section(
                title=title,
                subsections=subsections,
                key_questions=questions,
                suggested_sources=sources,
                estimated_words=words_per * len(subsections),
                summary=_summary(part, subj) if level >= 2 else "",
                part=role,
            )
        )
    return Structure(
        title=_title(kind, inp.topic, subj, inp.audience),
        structure_type=kind,
        topic=inp.topic,
        depth=str(inp.depth),
        audience=inp.audience,
        sections=sections,
        suggested_sources=inp.sources,
        estimated_words=sum(s.estimated_words for s in sections),
        generator="builtin",
        strategy=strategy,
    )


def _title(kind: str, topic: str, subj: str, audience: str) -> str:
    topic = topic.strip()
    if kind == "research_report":
        return f"{topic}: Research Report"
    if kind == "course":
        return f"{subj}: A Course" + (f" for {audience}" if audience else "")
    if kind == "book":
        return f"{subj}: A Book"
    return topic


def _questions(part: _Part, subj: str, terms: list[str], count: int, body_index: int) -> list[str]:
    out: list[str] = []
    if part.question:
        out.append(part.question.format(subject=subj))
    for sub in part.subsections:
        if len(out) >= count:
            break
        out.append(f"What does {sub[:1].lower() + sub[1:]} reveal about {subj}?")
    if not out:
        out.append(f"How does {part.title.lower()} relate to {subj}?")
    return out[:count]


def _points(sub: str, subj: str, terms: list[str], level: int) -> list[str]:
    term = terms[_seed(sub) % len(terms)]
    points = [f"Define {sub[:1].lower() + sub[1:]} and its scope", f"An example involving {term}"]
    if level >= 4:
        points.append(f"Evidence and open debates on {sub[:1].lower() + sub[1:]}")
    return points


def _summary(part: _Part, subj: str) -> str:
    if part.body:
        return f"{part.title} as it applies to {subj}."
    return f"{part.title} for {subj}."


# Text expansion -------------------------------------------------------------------------------

_SENTENCE = re.compile(r"(?<=[.!?])\s+")

_ELABORATIONS = (
    "The moment lingers: {a} takes on weight, and {b} is felt before it is seen.",
    "Details sharpen around {a}; the texture of {b} and the quiet of {c} fill the space between words.",
    "Here {a} matters most, shaping how {b} is remembered.",
    "Light and sound gather around {a}, while {b} stays just out of reach.",
    "Beneath it runs a current of {a}, coloured by {b}.",
)


def _instruction_and_content(prompt: str) -> tuple[str, str]:
    """Split a prompt into its instruction and the content it asks to work on.

    The content is what follows the first blank line (or the first line ending in ':');
    a prompt without either is all content.
    """
    text = prompt.strip()
    if "\n\n" in text:
        head, rest = text.split("\n\n", 1)
        return head.strip(), rest.strip()
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.rstrip().endswith(":") and i + 1 < len(lines):
            return "\n".join(lines[: i + 1]).strip(), "\n".join(lines[i + 1 :]).strip()
    return "", text


def expand(request: ExpandRequest) -> ExpandResult:
    """Expand the prompt's content deterministically: each sentence is kept and elaborated from its own words."""
    _, content = _instruction_and_content(request.prompt)
    # max_tokens bounds the output; about 0.75 words per token, as with most tokenisers.
    budget = max(1, int(request.max_tokens * 0.75))
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", content) if p.strip()]
    out_paragraphs: list[str] = []
    used = 0
    finish = "stop"
    for paragraph in paragraphs:
        sentences = [s for s in _SENTENCE.split(paragraph) if s.strip()]
        out: list[str] = []
        for sentence in sentences:
            key = (
                [
                    w.lower()
                    for w in _text.words(sentence)
                    if w.lower() not in _text.STOPWORDS and len(w) > 3 and not w[0].isupper()
                ]
                or [w.lower() for w in _text.words(sentence)]
                or ["silence"]
            )
            pick = _seed(sentence)
            template = _ELABORATIONS[pick % len(_ELABORATIONS)]
            a, b, c = (key[(pick + k) % len(key)] for k in range(3))
            for piece in (sentence.strip(), template.format(a=a, b=b, c=c)):
                n = len(piece.split())
                if used + n > budget:
                    finish = "length"
                    break
                out.append(piece)
                used += n
            if finish == "length":
                break
        if out:
            out_paragraphs.append(" ".join(out))
        if finish == "length":
            break
    text = "\n\n".join(out_paragraphs)
    return ExpandResult(
        text=text,
        word_count=len(text.split()),
        model=request.model or "builtin",
        generator="builtin",
        finish_reason=finish,
    )


class BuiltinGenerator(Generator):
    """The offline generator (``NEXUS_GRANULATOR_GENERATOR=builtin``)."""

    name = "builtin"

    async def outline(self, request: OutlineRequest) -> Structure:
        return outline(request)

    async def expand(self, request: ExpandRequest) -> ExpandResult:
        return expand(request)
