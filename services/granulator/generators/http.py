"""The http generator: an OpenAI-compatible chat-completions endpoint.

Configured from the environment (``NEXUS_GRANULATOR_HTTP_URL``, ``NEXUS_GRANULATOR_HTTP_MODEL``,
``NEXUS_GRANULATOR_HTTP_KEY``); the key has no default and is sent only when set. A connection
failure, a timeout, a 429 or a 5xx is a GeneratorUnavailableError (retryable); an answer that
is not a structure is a GeneratorOutputError naming what is wrong.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import msgspec

from nexus.services.granulator.generators._port import Generator, OutlineRequest
from nexus.services.granulator.model import (
    ExpandRequest,
    ExpandResult,
    GeneratorOutputError,
    GeneratorUnavailableError,
    Section,
    Structure,
    Subsection,
)

__all__ = ["HttpGenerator"]

_STRATEGY_HINTS = {
    "template": "Follow the conventional structure of this kind of document.",
    "term_focused": "Bind every body section explicitly to the words of the topic.",
    "question_driven": "Make sure the structure's content answers each of the listed questions.",
}

_SHAPE = (
    '{"title": str, "sections": [{"title": str, "summary": str, "subsections": [{"title": str, '
    '"points": [str]}], "key_questions": [str], "suggested_sources": int, "estimated_words": int}]}'
)


class _Message(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    message: _Message
    finish_reason: str | None = None


class _Completion(msgspec.Struct):
    choices: list[_Choice]
    model: str = ""


class _LooseSection(msgspec.Struct):
    title: str
    subsections: list[Subsection | str]
    key_questions: list[str]
    suggested_sources: int = 0
    estimated_words: int = 0
    summary: str = ""


class _LooseStructure(msgspec.Struct):
    title: str
    sections: list[_LooseSection]


class HttpGenerator(Generator):
    """Calls ``POST {url}/chat/completions`` (``url`` may also name the full endpoint)."""

    name = "http"

    def __init__(self, url: str, model: str, *, key: str | None = None, timeout_s: float = 60.0) -> None:
        if not url:
            raise ValueError("NEXUS_GRANULATOR_HTTP_URL must be set for the http generator")
        if not model:
            raise ValueError("NEXUS_GRANULATOR_HTTP_MODEL must be set for the http generator")
        url = url.rstrip("/")
        self.endpoint = url if url.endswith("/chat/completions") else f"{url}/chat/completions"
        self.model = model
        self._key = key or None
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def chat(self, messages: list[dict[str, str]], *, json_mode: bool, **params: Any) -> _Choice:
        """One chat completion (the validator asks its questions through it too).

        Raises:
            GeneratorUnavailableError: the endpoint failed, timed out, or answered 429 or 5xx.
            GeneratorOutputError: it refused the request (4xx) or answered something else.
        """
        body: dict[str, Any] = {"model": params.pop("model", None) or self.model, "messages": messages, **params}
        if json_mode:
            body["response_format"] = {"type": "json_object"}
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        try:
            async with self._client().post(self.endpoint, json=body, headers=headers) as resp:
                raw = await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise GeneratorUnavailableError(f"generator endpoint {self.endpoint} failed: {exc!r}") from None
        if status == 429 or status >= 500:
            raise GeneratorUnavailableError(f"generator endpoint {self.endpoint} answered HTTP {status}")
        if status >= 400:
            snippet = raw[:200].decode("utf-8", "replace")
            raise GeneratorOutputError(
                f"generator endpoint {self.endpoint} refused the request: HTTP {status} {snippet}"
            )
        try:
            completion = msgspec.json.decode(raw, type=_Completion)
        except msgspec.DecodeError as exc:
            raise GeneratorOutputError(f"generator answer is not a chat completion: {exc}") from None
        if not completion.choices or completion.choices[0].message.content is None:
            raise GeneratorOutputError("generator answer has no choices[0].message.content")
        return completion.choices[0]

    async def outline(self, request: OutlineRequest) -> Structure:
        inp = request.input
        lines = [
            f"Topic: {inp.topic}",
            f"Structure type: {inp.structure_type}",
            f"Depth: {inp.depth}",
            f"Sources to draw on: {inp.sources}",
        ]
        if inp.audience:
            lines.append(f"Audience: {inp.audience}")
        lines.append(_STRATEGY_HINTS.get(request.strategy, ""))
        if request.hints:
            lines.append("Questions the structure must answer:")
            lines.extend(f"- {q}" for q in request.hints)
        messages = [
            {
                "role": "system",
                "content": "You design the structure of written content. Answer with one JSON object of "
                f"this shape and nothing else: {_SHAPE}",
            },
            {"role": "user", "content": "\n".join(lines)},
        ]
        choice = await self.chat(messages, json_mode=True, temperature=0.2)
        return _parse_structure(choice.message.content or "", request)

    async def expand(self, request: ExpandRequest) -> ExpandResult:
        messages = [{"role": "user", "content": request.prompt}]
        choice = await self.chat(
            messages,
            json_mode=False,
            model=request.model or self.model,
            temperature=request.temperature,
            max_tokens=request.max_tokens,
        )
        text = (choice.message.content or "").strip()
        if not text:
            raise GeneratorOutputError("generator answered with an empty text")
        return ExpandResult(
            text=text,
            word_count=len(text.split()),
            model=request.model or self.model,
            generator=self.name,
            finish_reason=choice.finish_reason or "stop",
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _parse_structure(content: str, request: OutlineRequest) -> Structure:
    text = content.strip()
    if text.startswith("```"):
        # Models often fence JSON even when asked not to.
        text = text.split("\n", 1)[1] if "\n" in text else ""
        text = text.rsplit("```", 1)[0]
    try:
        loose = msgspec.json.decode(text, type=_LooseStructure)
    except msgspec.ValidationError as exc:
        raise GeneratorOutputError(f"generator structure is invalid: {exc}") from None
    except msgspec.DecodeError as exc:
        raise GeneratorOutputError(f"generator answer is not JSON: {exc}") from None
    if not loose.sections:
        raise GeneratorOutputError("generator structure has no sections")
    sections = []
    for i, s in enumerate(loose.sections):
        if not s.title.strip():
            raise GeneratorOutputError(f"generator structure: sections[{i}].title is empty")
        if s.suggested_sources < 0 or s.estimated_words < 0:
            raise GeneratorOutputError(f"generator structure: sections[{i}] has a negative count")
        subs = [Subsection(title=x) if isinstance(x, str) else x for x in s.subsections]
        if any(not x.title.strip() for x in subs):
            raise GeneratorOutputError(f"generator structure: sections[{i}] has a subsection without a title")
        sections.append(
            Section(
                title=s.title,
                subsections=subs,
                key_questions=s.key_questions,
                suggested_sources=s.suggested_sources,
                estimated_words=s.estimated_words,
                summary=s.summary,
            )
        )
    inp = request.input
    return Structure(
        title=loose.title or inp.topic,
        structure_type=inp.structure_type,
        topic=inp.topic,
        depth=str(inp.depth),
        audience=inp.audience,
        sections=sections,
        suggested_sources=sum(s.suggested_sources for s in sections) or inp.sources,
        estimated_words=sum(s.estimated_words for s in sections),
        generator="http",
        strategy=request.strategy,
    )
