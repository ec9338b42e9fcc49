"""NATS subject wildcard matching (``*`` one token, ``>`` one or more trailing tokens)."""

from __future__ import annotations

from collections.abc import Iterable


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether ``subject`` matches the NATS filter ``pattern``."""
    wanted = pattern.split(".")
    tokens = subject.split(".")
    for index, part in enumerate(wanted):
        if part == ">":
            return len(tokens) > index
        if index >= len(tokens) or (part != "*" and part != tokens[index]):
            return False
    return len(tokens) == len(wanted)


def matches_any(patterns: Iterable[str], subject: str) -> bool:
    return any(subject_matches(pattern, subject) for pattern in patterns)
