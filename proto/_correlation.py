"""The correlation id of the work in progress: who asked, carried through events and logs.

It lives here, beside the envelope, because ``new_event`` stamps it on every event it builds
(``correlationid``) and the envelope depends on nothing; ``nexus.obs`` re-exports it as the
public API and its JSON log formatter writes it on every line.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from contextvars import ContextVar

from nexus.proto._ids import new_event_id

__all__ = [
    "CORRELATION_ID",
    "CorrelationProvider",
    "check_correlation_id",
    "correlation",
    "current_correlation_id",
    "set_correlation_provider",
]

CorrelationProvider = Callable[[], "str | None"]
"""Answers the correlation id of the current work, or None (seed 003's ``CorrelationProvider``)."""

CORRELATION_ID: ContextVar[str | None] = ContextVar("nexus_correlation_id", default=None)
"""The id set by ``correlation()`` for the current task (asyncio copies it into the tasks it starts)."""

_provider: CorrelationProvider | None = None
_VALID = re.compile(r"^[\x21-\x7e]{1,256}$")


def current_correlation_id() -> str | None:
    """The id set by the innermost ``correlation()`` block, else the installed provider's, else None."""
    value = CORRELATION_ID.get()
    if value is not None:
        return value
    return _provider() if _provider is not None else None


def set_correlation_provider(provider: CorrelationProvider | None) -> CorrelationProvider | None:
    """Install ``provider`` as the process's source of ids outside a ``correlation()`` block.

    For a framework that keeps its own request id (or a test that wants fixed ids). Returns the
    previous provider, so a caller can put it back.
    """
    global _provider
    previous, _provider = _provider, provider
    return previous


def check_correlation_id(value: str) -> str:
    """``value`` when it is 1-256 printable ASCII characters without spaces.

    Raises:
        ValueError: otherwise (an id ends up in every log line and event: no control characters).
    """
    if not isinstance(value, str) or not _VALID.match(value):
        raise ValueError(f"a correlation id is 1-256 printable ASCII characters without spaces, got {value!r}")
    return value


@contextlib.contextmanager
def correlation(correlation_id: str | None = None) -> Iterator[str]:
    """Within the block, events built by ``new_event`` and log lines carry ``correlation_id``.

    Args:
        correlation_id: The id to carry (a caller's request id, an execution's); a new random
            one (UUIDv7) when None.

    Yields:
        The id in effect.

    Raises:
        ValueError: the id is not 1-256 printable ASCII characters without spaces.
    """
    value = check_correlation_id(correlation_id) if correlation_id is not None else new_event_id()
    token = CORRELATION_ID.set(value)
    try:
        yield value
    finally:
        CORRELATION_ID.reset(token)
