"""Words: a topic's terms, crude stems, and the facets of the domains a topic touches.

Shared by the builtin generator (which outlines from facets and terms) and the validation
loop (which asks about them). Everything here is deterministic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9+#'\-]*")

STOPWORDS = frozenset(
    """a an and are as at be by for from how in into is it its of on or the to vs versus with without what why
    when where which who whom this that these those your our their my we you i via about over under between
    do does using use""".split()
)

# Words that say what kind of document is wanted rather than what it is about.
META_WORDS = frozenset(
    """analysis analyses overview introduction intro guide report study studies review survey course book article
    primer handbook essay tutorial deep dive complete comprehensive basic basics beginner beginners advanced
    fundamental fundamentals understanding exploring""".split()
)


def words(text: str) -> list[str]:
    return _WORD.findall(text)


@lru_cache(maxsize=8192)
def stem(word: str) -> str:
    """A crude stem so that ``segments``/``segment`` and ``policies``/``policy`` match."""
    w = word.lower().strip("'-")
    if w.endswith("'s"):
        w = w[:-2]
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 5 and w.endswith("ing"):
        return w[:-3]
    if len(w) > 3 and w.endswith("s") and not w.endswith("ss") and not w.endswith("us"):
        return w[:-1]
    return w


def stems(text: str) -> set[str]:
    return {stem(w) for w in words(text) if w.lower() not in STOPWORDS}


def display(word: str) -> str:
    """A term as it reads in a title: acronyms and mixed case kept, others capitalised."""
    if word.isupper() or any(c.isupper() for c in word[1:]) or any(c.isdigit() for c in word):
        return word
    return word[:1].upper() + word[1:].lower()


def terms(topic: str) -> list[str]:
    """The topic's content words in order, without stop and meta words, no repeats."""
    seen: set[str] = set()
    out: list[str] = []
    for w in words(topic):
        low = w.lower()
        if low in STOPWORDS or low in META_WORDS or len(low) < 2:
            continue
        key = stem(w)
        if key in seen:
            continue
        seen.add(key)
        out.append(w)
    if not out:
        # A topic made only of meta words ("Introduction") still has something to talk about.
        out = [w for w in words(topic) if w.lower() not in STOPWORDS][:3] or ["Topic"]
    return out


def subject(topic: str) -> str:
    """The topic as a noun phrase without its meta words: ``AI Tools Market Analysis`` → ``AI Tools Market``."""
    kept = [w for w in words(topic) if w.lower() not in META_WORDS]
    while kept and kept[-1].lower() in STOPWORDS:
        kept.pop()
    while kept and kept[0].lower() in STOPWORDS:
        kept.pop(0)
    return " ".join(kept) if kept else topic.strip()


@dataclass(frozen=True)
class Facet:
    """One angle on a subject: a section title, the subsections it has, the question it answers."""

    name: str
    subsections: tuple[str, ...]
    question: str
    """Template with ``{subject}``."""


def _f(name: str, subs: str, question: str) -> Facet:
    return Facet(name, tuple(s.strip() for s in subs.split(";")), question)


@dataclass(frozen=True)
class Domain:
    name: str
    cues: frozenset[str]
    """Stems that signal the domain."""
    facets: tuple[Facet, ...]


DOMAINS: tuple[Domain, ...] = (
    Domain(
        "market",
        frozenset(
            stem(w)
            for w in "market markets industry business pricing price sales tools vendors startup startups "
            "economy commerce retail competition saas product products customers revenue".split()
        ),
        (
            _f(
                "Market Segments",
                "Segment sizes; Customer profiles; Growth by segment",
                "What are the key market segments?",
            ),
            _f("Pricing Models", "Price points; Pricing comparison; Value for money", "How does pricing compare?"),
            _f(
                "Competitive Landscape",
                "Leading vendors; Challengers; Differentiators",
                "Who are the main competitors in {subject}?",
            ),
            _f(
                "Adoption Drivers", "Demand signals; Buyer motivations; Use cases", "What drives adoption of {subject}?"
            ),
            _f(
                "Risks and Barriers", "Regulatory risks; Switching costs; Market saturation", "What risks limit growth?"
            ),
            _f("Market Outlook", "Forecasts; Emerging trends; Scenarios", "How will the market evolve?"),
        ),
    ),
    Domain(
        "technology",
        frozenset(
            stem(w)
            for w in "ai software data cloud computing machine learning algorithms network networks security "
            "blockchain robotics automation llm models platform platforms digital internet quantum chips".split()
        ),
        (
            _f("Core Technology", "Key components; How it works; Technical foundations", "How does {subject} work?"),
            _f(
                "Capabilities and Limitations", "Strengths; Known limitations; Benchmarks", "What can and cannot it do?"
            ),
            _f("Architecture", "Building blocks; Integration points; Scalability", "How is it built and integrated?"),
            _f("Use Cases", "Enterprise uses; Consumer uses; Case studies", "Where is {subject} applied?"),
            _f("Security and Ethics", "Security threats; Privacy; Responsible use", "What are the ethical concerns?"),
        ),
    ),
    Domain(
        "learning",
        frozenset(
            stem(w)
            for w in "python programming javascript language languages coding code learning teaching skills "
            "math mathematics statistics writing design photography cooking music guitar piano".split()
        ),
        (
            _f("Fundamentals", "Key terms; Core principles; First steps", "What are the fundamentals of {subject}?"),
            _f("Core Concepts", "Essential ideas; Worked examples; Mental models", "Which core concepts matter most?"),
            _f("Practical Exercises", "Guided practice; Projects; Self-checks", "How can learners practise?"),
            _f(
                "Common Pitfalls",
                "Typical mistakes; Debugging habits; Misconceptions",
                "What mistakes should be avoided?",
            ),
            _f("Advanced Techniques", "Expert practices; Optimisation; Further study", "What comes after the basics?"),
        ),
    ),
    Domain(
        "history",
        frozenset(
            stem(w)
            for w in "history historical war wars empire empires ancient medieval revolution civilization "
            "dynasty century renaissance colonial era".split()
        ),
        (
            _f("Origins", "Early context; Founding events; Precursors", "How did {subject} begin?"),
            _f("Key Events", "Turning points; Timeline; Decisive moments", "What were the key events?"),
            _f("Influential Figures", "Leaders; Thinkers; Ordinary lives", "Who shaped {subject}?"),
            _f(
                "Causes and Consequences",
                "Underlying causes; Immediate effects; Long-term effects",
                "Why did it happen?",
            ),
            _f("Legacy", "Lasting influence; Historiography; Modern relevance", "What is the legacy of {subject}?"),
        ),
    ),
    Domain(
        "health",
        frozenset(
            stem(w)
            for w in "health medicine medical disease diseases nutrition diet fitness sleep mental therapy "
            "cancer diabetes vaccine vaccines wellbeing care clinical".split()
        ),
        (
            _f("Causes and Risk Factors", "Biological causes; Lifestyle factors; Who is at risk", "What causes it?"),
            _f(
                "Symptoms and Diagnosis",
                "Early signs; Diagnostic tests; Differential diagnosis",
                "How is it diagnosed?",
            ),
            _f("Treatment Options", "Standard treatments; Emerging therapies; Effectiveness", "How is it treated?"),
            _f("Prevention", "Lifestyle measures; Screening; Public health", "How can it be prevented?"),
            _f("Living With It", "Daily management; Support; Outcomes", "What is life like with {subject}?"),
        ),
    ),
    Domain(
        "environment",
        frozenset(
            stem(w)
            for w in "climate environment environmental energy renewable solar wind carbon emissions ocean "
            "oceans biodiversity pollution water agriculture sustainability sustainable forest forests".split()
        ),
        (
            _f("Mechanisms", "Physical processes; Feedback loops; Measurements", "What mechanisms are at work?"),
            _f("Evidence", "Observations; Models; Uncertainties", "What does the evidence show?"),
            _f("Impacts", "Ecological impacts; Economic impacts; Social impacts", "What are the impacts?"),
            _f("Mitigation and Adaptation", "Policy options; Technologies; Local action", "What can be done?"),
            _f("Outlook", "Scenarios; Targets; Open questions", "What does the future hold?"),
        ),
    ),
    Domain(
        "policy",
        frozenset(
            stem(w)
            for w in "policy policies law laws legal regulation regulations government governance election "
            "elections rights tax taxes public compliance privacy".split()
        ),
        (
            _f("Regulatory Framework", "Current rules; Jurisdictions; Enforcement bodies", "What rules apply?"),
            _f("Stakeholders", "Governments; Industry; Citizens", "Who is affected by {subject}?"),
            _f("Enforcement and Compliance", "Obligations; Penalties; Compliance costs", "How is it enforced?"),
            _f("Reform Options", "Proposals; Trade-offs; International comparison", "What reforms are proposed?"),
        ),
    ),
    Domain(
        "story",
        frozenset(
            stem(w)
            for w in "novel story stories fiction fantasy mystery romance adventure characters dragon dragons "
            "detective journey kingdom quest myth myths legend legends".split()
        ),
        (
            _f("Setting", "The world; Time and place; Atmosphere", "Where and when does the story take place?"),
            _f("Characters", "Protagonist; Antagonist; Supporting cast", "Who are the main characters?"),
            _f("Rising Conflict", "Inciting incident; Complications; Stakes", "What conflict drives the story?"),
            _f("Climax", "Confrontation; Turning point; Sacrifice", "How does the conflict come to a head?"),
            _f("Resolution", "Aftermath; Character arcs; Themes", "How is the story resolved?"),
        ),
    ),
)

GENERAL = Domain(
    "general",
    frozenset(),
    (
        _f("Core Concepts", "Definitions; Key ideas; Scope", "What are the core concepts of {subject}?"),
        _f("Current State", "Recent developments; Key players; Data points", "What is the current state of {subject}?"),
        _f("Challenges", "Obstacles; Open problems; Criticism", "What challenges does {subject} face?"),
        _f("Opportunities", "Emerging possibilities; Innovations; Benefits", "What opportunities does it offer?"),
        _f("Future Outlook", "Trends; Predictions; Open questions", "What is the future of {subject}?"),
    ),
)


def domains_for(topic: str) -> list[Domain]:
    """The domains whose cues the topic mentions, most cues first; GENERAL when none."""
    topic_stems = stems(topic)
    scored = [(len(d.cues & topic_stems), i, d) for i, d in enumerate(DOMAINS)]
    found = [d for score, _, d in sorted(scored, key=lambda t: (-t[0], t[1])) if score > 0]
    return found or [GENERAL]


def facets_for(topic: str) -> list[Facet]:
    """Facets of the topic's domains interleaved (the strongest domain first), then the general ones."""
    lists = [list(d.facets) for d in domains_for(topic)]
    out: list[Facet] = []
    seen: set[str] = set()
    while any(lists):
        for facet_list in lists:
            if facet_list:
                facet = facet_list.pop(0)
                if facet.name not in seen:
                    seen.add(facet.name)
                    out.append(facet)
    for facet in GENERAL.facets:
        if facet.name not in seen:
            seen.add(facet.name)
            out.append(facet)
    return out
