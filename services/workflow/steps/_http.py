"""What steps send: one HTTP call classified as an ``Outcome``, a task command's headers, the trace.

Every request carries ``Idempotency-Key: <execution id>:<step id>`` (plus ``:compensate`` for a
compensation) and a W3C ``traceparent``.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
import msgspec

from nexus.proto.commands import EXECUTION_HEADER, TENANT_HEADER
from nexus.services.workflow.steps._base import Outcome

__all__ = [
    "EXECUTION_HEADER",
    "TENANT_HEADER",
    "call_http",
    "fill_endpoint",
    "task_headers",
    "traceparent_for",
]


_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_\-]*)\}")
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


async def _read_bounded(response: aiohttp.ClientResponse, limit: int | None) -> bytes | None:
    """The body, or None as soon as it passes ``limit`` bytes (declared or actual)."""
    if limit is None:
        return await response.read()
    if response.content_length is not None and response.content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _urandom_hex(n: int) -> str:
    return os.urandom(n).hex()


def traceparent_for(execution_id: str, random_hex: Callable[[int], str] = _urandom_hex) -> str:
    """A W3C traceparent whose trace id is the execution's (so every call of one execution is one trace).

    Args:
        random_hex: ``random_hex(n)`` gives ``n`` random bytes as hex (the engine passes its
            ``nexus.proto.RandomPool``; by default ``os.urandom``).
    """
    trace_id = execution_id.replace("-", "")[:32].rjust(32, "0")
    if not _TRACE_ID.fullmatch(trace_id) or trace_id == "0" * 32:
        trace_id = random_hex(16)
    return f"00-{trace_id}-{random_hex(8)}-01"


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


def task_headers(idempotency_key: str, traceparent: str, tenant: str, execution_id: str) -> dict[str, str]:
    """The NATS headers of a ``task`` step's command: its key, its trace, and whom the worker acts for."""
    return {
        "Idempotency-Key": idempotency_key,
        "traceparent": traceparent,
        TENANT_HEADER: tenant,
        EXECUTION_HEADER: execution_id,
    }


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
    max_bytes: int | None = None,
) -> Outcome:
    """Send one request and classify its outcome.

    The body is encoded and the answer decoded with msgspec, from and to bytes: aiohttp's
    ``text()`` would first guess the charset, and the standard ``json`` module is several times
    slower; both ran for every step attempt.

    Args:
        headers: Sent as well (a delegated credential, for a platform service).
        max_bytes: The largest answer taken (the step's output must fit in one event of the
            log); a larger one fails the attempt, not retryable, without being read whole.
    """
    sent_headers = {
        **(headers or {}),
        "Idempotency-Key": idempotency_key,
        "traceparent": traceparent,
        "Accept": "application/json",
    }
    data: bytes | None = None
    if method not in ("GET", "DELETE") and body is not None:
        data = _encode(body)
        sent_headers["Content-Type"] = "application/json"
    sent = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            async with session.request(method, url, headers=sent_headers, data=data) as response:
                status = response.status
                raw = await _read_bounded(response, max_bytes)
                if raw is None:
                    error = (
                        f"{method} {url}: the answer is larger than the {max_bytes} bytes a step output may have; "
                        "return large values as a raw:// reference"
                    )
                    return Outcome(False, error=error, status=status, sent_at=sent)
    except TimeoutError:
        return Outcome(False, error=f"{method} {url}: no answer within {timeout:g} s", retryable=True, sent_at=sent)
    except aiohttp.ClientError as exc:
        return Outcome(
            False, error=f"{method} {url}: {type(exc).__name__}: {exc}".rstrip(": "), retryable=True, sent_at=sent
        )
    except OSError as exc:
        return Outcome(False, error=f"{method} {url}: {exc}", retryable=True, sent_at=sent)
    result: Any = None
    if raw:
        try:
            result = _decode(raw)
        except msgspec.DecodeError:
            result = {"text": raw.decode("utf-8", errors="replace")}
    if 200 <= status < 300:
        return Outcome(True, result=result, status=status, sent_at=sent)
    detail = raw[:300].decode("utf-8", errors="replace") if raw else ""
    error = f"{method} {url} answered {status}" + (f": {detail}" if detail else "")
    return Outcome(False, error=error, retryable=status == 429 or status >= 500, status=status, sent_at=sent)
