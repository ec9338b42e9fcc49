"""``POST /consistency/check``: a deterministic score of a chapter against its book's earlier chapters.

Seed 004's ``book_chapter_expansion`` asks, before saving an expanded chapter, how consistent it
is with the story so far. The earlier chapters are the caller's blobs (not deleted) whose
metadata says ``type: chapter``, ``book_id`` = the body's ``book_id`` and a ``chapter_number``
below the body's; their current content is read (text as it is; JSON: every string in it),
the earliest first, up to 200 chapters and 4 MB in all.

The score is computed from words only (no model), so the same texts always score the same::

    words      = runs of letters (with inner ' or -)
    names(t)   = capitalised words of t that are not sentence-starting function words
                 (The, He, She, ...) and never occur in lower case in t
    terms(t)   = the 20 most frequent lower-case words of t of 6 letters or more that are not
                 function words (ties broken alphabetically)
    past(t)    = words of t that are past-tense verbs: an irregular past form (was, had, said,
                 ...) or a word of 4+ letters ending in "ed"
    present(t) = words of t that are present-tense verbs: is, are, am, has, says, does, ...

    name_score  = 1 when the chapter has no names, else (known + 0.5 × new) / all names
                  (known: names also in earlier chapters; a new character costs half)
    term_score  = 1 when the chapter has no terms, else |terms(chapter) ∩ words(earlier)| /
                  |terms(chapter)|
    tense_ratio(t) = past / (past + present), 0.5 when t has neither
    tense_score = 1 − |tense_ratio(chapter) − tense_ratio(earlier)|
    score       = 0.4 × name_score + 0.3 × term_score + 0.3 × tense_score   (rounded to 4 places)

With no earlier chapter every part is 1 (nothing to contradict). ``issues`` name what lowered
the score: the new names (when earlier chapters have names), a tense shift above 0.3, terms
mostly unseen (term_score below 0.3).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from typing import Annotated, Any

import msgspec
from aiohttp import web

from nexus.auth import AUTH, KeyInfo
from nexus.runtime import json_response, read_json
from nexus.services.studio.blobs import BlobError, Blobs
from nexus.services.studio.content import ContentError, decode_json, kind_of
from nexus.services.studio.context import StudioContext

__all__ = ["CheckBody", "Consistency", "Issue", "install", "score_chapter"]

_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*[A-Za-z]|[A-Za-z]")
_FUNCTION = frozenset(
    """a an the and or but if then so yet for nor of in on at to from by with as into onto upon
    he she it they we i you his her its their our my your him them us me this that these those
    there here when while where after before because though although until since once then
    what which who whom whose why how not no yes all some any each every both either neither
    one two three first last next again also only just even still very much more most many
    should would could might must shall will can may do does did is are was were be been being
    have has had am""".split()
)
_PAST = frozenset(
    """was were had did said went saw came took made knew thought felt looked found gave told
    became left stood sat ran heard brought began kept held wrote spoke rose fell met led meant
    paid read lost sent built understood caught taught bought fought sought slept swept wept
    drove rode woke wore tore broke chose froze stole spoke grew threw flew drew knew shook""".split()
)
_PRESENT = frozenset(
    """is are am has does says goes sees comes takes makes knows thinks feels looks finds gives
    tells becomes leaves stands sits runs hears brings begins keeps holds writes speaks rises
    falls meets leads means pays reads loses sends builds understands catches teaches buys
    sleeps drives rides wakes wears breaks chooses grows throws flies draws shakes""".split()
)
_TOP_TERMS = 20
_MAX_CHAPTERS = 200
_MAX_TEXT = 2_000_000
_MAX_EARLIER_BYTES = 4_000_000
"""The earlier chapters read are at most this many bytes in all (the earliest first), so a book of
huge chapters cannot make one check read and scan gigabytes."""


class CheckBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /consistency/check``."""

    book_id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    chapter_content: Annotated[str, msgspec.Meta(max_length=_MAX_TEXT)]
    chapter_number: int | float | str | None = None
    """Earlier chapters are those numbered below it (None: every chapter of the book)."""


class Issue(msgspec.Struct, frozen=True, kw_only=True):
    """Something that lowered the score."""

    type: str
    """``new_names``, ``tense_shift`` or ``unfamiliar_terms``."""
    message: str
    items: list[str] = []


class Consistency(msgspec.Struct, frozen=True, kw_only=True):
    """The score (0..1) and its parts (see the module for the formula)."""

    score: float
    issues: list[Issue]
    name_score: float
    term_score: float
    tense_score: float
    compared_chapters: list[str]
    """The blob ids of the earlier chapters compared with."""
    known_names: list[str]
    new_names: list[str]
    tense: str
    """``past``, ``present`` or ``mixed`` (the chapter's)."""
    formula: str = "0.4*name_score + 0.3*term_score + 0.3*tense_score"


def _words(text: str) -> list[str]:
    return _WORD.findall(text)


def _names(words: list[str]) -> set[str]:
    lower = {w for w in words if w.islower()}
    return {w for w in words if w[0].isupper() and len(w) > 1 and w.lower() not in _FUNCTION and w.lower() not in lower}


def _terms(words: list[str]) -> list[str]:
    counts = Counter(w for w in words if w.islower() and len(w) >= 6 and w not in _FUNCTION)
    return [w for w, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:_TOP_TERMS]]


def _tense_ratio(words: Iterable[str]) -> tuple[float, int, int]:
    past = present = 0
    for word in words:
        low = word.lower()
        if low in _PAST or (len(low) >= 4 and low.endswith("ed")):
            past += 1
        elif low in _PRESENT:
            present += 1
    total = past + present
    return (past / total if total else 0.5), past, present


def score_chapter(chapter: str, earlier: list[str], compared: list[str] | None = None) -> Consistency:
    """The consistency of ``chapter`` with the ``earlier`` chapters' texts (see the module)."""
    words = _words(chapter)
    names = _names(words)
    terms = _terms(words)
    ratio, _, _ = _tense_ratio(words)
    tense = "past" if ratio >= 0.7 else "present" if ratio <= 0.3 else "mixed"
    if not earlier:
        return Consistency(
            score=1.0,
            issues=[],
            name_score=1.0,
            term_score=1.0,
            tense_score=1.0,
            compared_chapters=[],
            known_names=[],
            new_names=sorted(names),
            tense=tense,
        )
    before_words = [w for text in earlier for w in _words(text)]
    before_names = _names(before_words)
    known = names & before_names
    new = names - before_names
    name_score = 1.0 if not names else (len(known) + 0.5 * len(new)) / len(names)
    vocabulary = {w.lower() for w in before_words}
    term_score = 1.0 if not terms else sum(1 for t in terms if t in vocabulary) / len(terms)
    before_ratio, _, _ = _tense_ratio(before_words)
    tense_score = 1.0 - abs(ratio - before_ratio)
    issues = []
    if new and before_names:
        issues.append(
            Issue(
                type="new_names",
                message=f"{len(new)} name(s) not in the earlier chapters",
                items=sorted(new)[:50],
            )
        )
    if abs(ratio - before_ratio) > 0.3:
        issues.append(
            Issue(
                type="tense_shift",
                message=f"past-tense share {ratio:.2f} against {before_ratio:.2f} in the earlier chapters",
            )
        )
    if terms and term_score < 0.3:
        unseen = [t for t in terms if t not in vocabulary]
        issues.append(
            Issue(type="unfamiliar_terms", message="most of the chapter's key terms are new to the book", items=unseen)
        )
    score = 0.4 * name_score + 0.3 * term_score + 0.3 * tense_score
    return Consistency(
        score=round(score, 4),
        issues=issues,
        name_score=round(name_score, 4),
        term_score=round(term_score, 4),
        tense_score=round(tense_score, 4),
        compared_chapters=list(compared or []),
        known_names=sorted(known),
        new_names=sorted(new),
        tense=tense,
    )


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


async def earlier_chapters(
    ctx: StudioContext, blobs: Blobs, owner: str, book_id: str, number: Any
) -> tuple[list[str], list[str]]:
    """The texts and blob ids of ``owner``'s chapters of ``book_id`` numbered below ``number``, in order."""
    limit = _number(number)
    found: list[tuple[float, str]] = []
    for blob in ctx.state.blobs.values():
        if blob.owner != owner or blob.deleted:
            continue
        metadata = blob.current.metadata
        if metadata.get("type") != "chapter" or str(metadata.get("book_id")) != book_id:
            continue
        own = _number(metadata.get("chapter_number"))
        if limit is not None and (own is None or own >= limit):
            continue
        found.append((own if own is not None else 0.0, blob.blob_id))
    found.sort()
    texts, ids = [], []
    budget = _MAX_EARLIER_BYTES
    for _, blob_id in found[:_MAX_CHAPTERS]:
        size = ctx.state.blobs[blob_id].current.size
        if size > budget:
            break
        budget -= size
        try:
            data, version = await blobs.read(blob_id)
        except BlobError:
            continue
        kind = kind_of(version.content_type)
        if kind == "text":
            texts.append(data.decode("utf-8", errors="replace"))
        elif kind == "json":
            try:
                texts.append("\n".join(_strings(decode_json(data))))
            except ContentError:
                continue
        else:
            continue
        ids.append(blob_id)
    return texts, ids


def install(ctx: StudioContext) -> None:
    """Add ``POST /consistency/check``."""
    blobs = Blobs(ctx)

    @ctx.service.route(
        "POST",
        "/consistency/check",
        summary="Score a chapter against the book's earlier chapters (names, terms, tense; deterministic)",
        request=CheckBody,
        response=Consistency,
        responses={400: "The body is not understood"},
        tags=["books"],
        auth="client",
    )
    async def check(request: web.Request) -> web.Response:
        info: KeyInfo = request[AUTH]
        body = await read_json(request, CheckBody)
        texts, ids = await earlier_chapters(ctx, blobs, info.tenant, body.book_id, body.chapter_number)
        return json_response(score_chapter(body.chapter_content, texts, ids))
