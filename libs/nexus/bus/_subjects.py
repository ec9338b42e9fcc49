"""Subjects and headers: NATS wildcard matching, and the checks every adapter applies before sending.

The checks are the bus's, not the client library's, so the memory bus and JetStream refuse the
same subjects and headers with the same error (``BusArgumentError``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from nexus.bus._port import BusArgumentError

_SUBJECT_INVALID = re.compile(r"\s")
_HEADER_KEY = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_NEWLINES = str.maketrans({"\r": " ", "\n": " "})


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


def check_subject(subject: str) -> None:
    """Refuse an empty subject or one with whitespace (CR/LF would inject protocol commands).

    Raises:
        BusArgumentError: naming the subject.
    """
    if not subject or _SUBJECT_INVALID.search(subject):
        raise BusArgumentError(f"invalid subject {subject!r}")


def clean_value(value: str) -> str:
    """A header value safe to format into a block (CR and LF would end the header line)."""
    if "\r" in value or "\n" in value:
        return value.translate(_NEWLINES)
    return value


def clean_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Headers as they travel: names stripped (empty ones dropped), values stripped, CR/LF as spaces.

    Raises:
        BusArgumentError: a name that is not an HTTP token (``Bad Name``, ``a:b``).
    """
    cleaned = []
    for key, value in headers:
        key = key.strip()
        if not key:
            continue
        if not _HEADER_KEY.fullmatch(key):
            raise BusArgumentError(f"invalid header name {key!r}")
        cleaned.append((key, value.strip().translate(_NEWLINES)))
    return cleaned


def clean_header_dict(headers: Mapping[str, str]) -> dict[str, str]:
    """``clean_headers`` for a mapping, as a dict."""
    return dict(clean_headers(headers.items()))
