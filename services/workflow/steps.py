"""Running one attempt of a step: ``api_call`` over HTTP, ``task`` through a worker, ``wait_event``.

Each runner returns an ``Outcome``: success with a result, or a failure that is retryable
(connection error, timeout, 5xx, 429) or not (any other 4xx, an unknown service, a worker's
final refusal). Every request carries ``Idempotency-Key: <execution id>:<step id>`` (plus
``:compensate`` for a compensation) and a W3C ``traceparent``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

__all__ = ["Outcome", "call_http", "fill_endpoint", "traceparent_for"]

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_\-]*)\}")


@dataclass(frozen=True)
class Outcome:
    """The result of one attempt."""

    ok: bool
    result: Any = None
    error: str = ""
    retryable: bool = False
    status: int | None = None
    sent_at: float = 0.0
    """``time.perf_counter()`` when the request left (for the dispatch latency figure)."""
    interrupted: bool = False
    """The attempt was cut short by a cancel request; it has no outcome to record."""


def traceparent_for(execution_id: str) -> str:
    """A W3C traceparent whose trace id is the execution's (so every call of one execution is one trace)."""
    trace_id = execution_id.replace("-", "")[:32].rjust(32, "0")
    if not re.fullmatch(r"[0-9a-f]{32}", trace_id) or trace_id == "0" * 32:
        trace_id = os.urandom(16).hex()
    return f"00-{trace_id}-{os.urandom(8).hex()}-01"


def fill_endpoint(endpoint: str, request: Any, fallback: Any) -> tuple[str, list[str]]:
    """Fill ``{name}`` path segments from the mapped input (else the execution's input).

    Returns the path and the names that could not be filled.
    """
    missing: list[str] = []

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        for source in (request, fallback):
            if isinstance(source, Mapping) and source.get(name) is not None:
                return quote(str(source[name]), safe="")
        missing.append(name)
        return match.group(0)

    return _PLACEHOLDER.sub(value, endpoint), missing


async def call_http(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    body: Any,
    *,
    idempotency_key: str,
    traceparent: str,
    timeout: float,  # noqa: ASYNC109 - each attempt has its own bound, from the step
    headers: Mapping[str, str] | None = None,
) -> Outcome:
    """Send one request and classify its outcome.

    Args:
        headers: Sent as well (the replica's credentials, for a platform service).
    """
    headers = {
        **(headers or {}),
        "Idempotency-Key": idempotency_key,
        "traceparent": traceparent,
        "Accept": "application/json",
    }
    kwargs: dict[str, Any] = {}
    if method not in ("GET", "DELETE") and body is not None:
        kwargs["data"] = json.dumps(body, separators=(",", ":"))
        headers["Content-Type"] = "application/json"
    sent = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            async with session.request(method, url, headers=headers, **kwargs) as response:
                text = await response.text()
                status = response.status
    except TimeoutError:
        return Outcome(False, error=f"{method} {url}: no answer within {timeout:g} s", retryable=True, sent_at=sent)
    except aiohttp.ClientError as exc:
        return Outcome(
            False, error=f"{method} {url}: {type(exc).__name__}: {exc}".rstrip(": "), retryable=True, sent_at=sent
        )
    except OSError as exc:
        return Outcome(False, error=f"{method} {url}: {exc}", retryable=True, sent_at=sent)
    result: Any
    try:
        result = json.loads(text) if text else None
    except ValueError:
        result = {"text": text}
    if 200 <= status < 300:
        return Outcome(True, result=result, status=status, sent_at=sent)
    detail = text[:300] if text else ""
    error = f"{method} {url} answered {status}" + (f": {detail}" if detail else "")
    return Outcome(False, error=error, retryable=status == 429 or status >= 500, status=status, sent_at=sent)
