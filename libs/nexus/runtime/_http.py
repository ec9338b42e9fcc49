"""HTTP plumbing shared by every service: JSON errors, body decoding, metrics and tracing."""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

from nexus.obs import HTTP_REQUEST_DURATION, HTTP_REQUESTS, RateLimitedLog, exemplar, extract_context

logger = logging.getLogger("nexus.runtime.http")

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

UNMATCHED_ROUTE = "unmatched"
"""The ``route`` label of requests no route matched (404s): paths never become labels."""

# Paths polled by orchestrators and Prometheus: counted, but not traced (they would drown the
# traces that matter).
_UNTRACED = frozenset({"/healthz", "/readyz", "/metrics"})

_encoder = msgspec.json.Encoder()


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The body of every error response."""

    error: str
    """A stable, machine-readable code: ``bad_request``, ``not_found``, ``payload_too_large``…"""
    message: str
    """What went wrong, in words meant for the caller."""
    trace_id: str | None = None
    """The request's trace id (500s only), to find the server-side log line."""


def json_response(body: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response encoded with msgspec (Structs, dataclasses, dicts, lists…)."""
    return web.Response(body=_encoder.encode(body), status=status, content_type="application/json", headers=headers)


def error_response(status: int, error: str, message: str, *, headers: dict[str, str] | None = None) -> web.Response:
    """An ErrorBody response."""
    return json_response(ErrorBody(error=error, message=message), status=status, headers=headers)


class HTTPError(Exception):
    """Raise from a handler to answer with an ErrorBody: ``raise HTTPError(404, "no job 42")``.

    Args:
        status: HTTP status code (4xx or 5xx).
        message: What went wrong, for the caller.
        error: Machine-readable code (default derived from the status: ``not_found``…).
    """

    def __init__(self, status: int, message: str, *, error: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error = error or _error_code(status)


MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects a request body may have (no Nexus document comes close)."""

# A JSON string (valid JSON only: the body has decoded before this runs), and the bytes that are
# not brackets; with both gone, what is left of a body is its brackets in order.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_BRACKET_STEP = [0] * 256
for _open in b"[{":
    _BRACKET_STEP[_open] = 1
for _close in b"]}":
    _BRACKET_STEP[_close] = -1


def json_depth_exceeds(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether valid JSON text ``raw`` nests arrays and objects deeper than ``limit`` levels.

    Linear in the size of ``raw`` and done in C but for one pass over the brackets; a body
    with no more than ``limit`` brackets in all is answered without scanning.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    return max(itertools.accumulate(map(_BRACKET_STEP.__getitem__, brackets)), default=0) > limit


def _too_deep() -> HTTPError:
    return HTTPError(
        400,
        f"the request body nests arrays and objects deeper than the limit of {MAX_JSON_DEPTH} levels",
        error="too_deep",
    )


def _not_utf8(exc: UnicodeDecodeError) -> HTTPError:
    return HTTPError(
        400, f"the request body is not valid UTF-8 (invalid byte at offset {exc.start})", error="bad_encoding"
    )


async def read_json(request: web.Request, type_: type[T]) -> T:
    """Decode the request body as JSON into ``type_`` (a msgspec Struct, ``dict``, ``list[...]``…).

    Raises:
        HTTPRequestEntityTooLarge: the body exceeds the service's ``max_body_bytes`` (413).
        HTTPError: 400 when the body is empty, not UTF-8, not JSON, nested deeper than
            :data:`MAX_JSON_DEPTH` levels, or does not match ``type_``; the message names the
            problem (the offending field, the byte offset).
    """
    raw = await request.read()
    if not raw.strip():
        raise HTTPError(400, "the request body is empty; send a JSON document", error="bad_json") from None
    try:
        decoded = msgspec.json.decode(raw, type=type_)
    except msgspec.ValidationError as exc:
        message = f"the request body does not match the expected schema: {exc}"
        raise HTTPError(400, message, error="invalid_body") from None
    except msgspec.DecodeError as exc:
        raise HTTPError(400, f"the request body is not valid JSON: {exc}", error="bad_json") from None
    except UnicodeDecodeError as exc:
        raise _not_utf8(exc) from None
    except RecursionError:
        # msgspec stops at the interpreter's recursion limit (about a thousand levels).
        raise _too_deep() from None
    if json_depth_exceeds(raw):
        raise _too_deep()
    return decoded


def _header_problem(request: web.Request) -> str | None:
    """The first header whose value is not UTF-8 (aiohttp hands such bytes over as surrogates)."""
    for name, value in request.headers.items():
        if value.isascii():
            continue
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"the {name} header is not valid UTF-8"
    return None


def _raised_by_json(exc: BaseException) -> bool:
    """Whether ``exc`` comes from the standard library's JSON decoder (``request.json()``)."""
    return any(
        frame.f_globals.get("__name__", "").split(".")[0] == "json" for frame, _ in traceback.walk_tb(exc.__traceback__)
    )


def _event_too_large_error() -> type[Exception] | None:
    # The event log's size limit error; looked up lazily so this module does not import the log.
    from nexus import eventlog

    found = getattr(eventlog, "EventTooLargeError", None)
    return found if isinstance(found, type) else None


def _error_code(status: int) -> str:
    known = {
        400: "bad_request",
        401: "unauthorized",
        403: "forbidden",
        404: "not_found",
        405: "method_not_allowed",
        409: "conflict",
        413: "payload_too_large",
        415: "unsupported_media_type",
        422: "unprocessable",
        429: "too_many_requests",
        503: "unavailable",
    }
    return known.get(status, "internal" if status >= 500 else "error")


def route_template(request: web.Request) -> str:
    """The matched route's template (``/v1/jobs/{id}``), or ``unmatched``: never the raw path."""
    resource = request.match_info.route.resource
    if resource is None:
        return UNMATCHED_ROUTE
    return resource.canonical


def _http_message(exc: web.HTTPException, request: web.Request, max_body: int) -> str:
    if exc.status == 404:
        return f"no route for {request.path}"
    if exc.status == 405:
        allowed = exc.headers.get("Allow", "")
        suffix = f"; allowed: {allowed}" if allowed else ""
        return f"method {request.method} is not allowed on {request.path}{suffix}"
    if exc.status == 413:
        return f"the request body is larger than the limit of {max_body} bytes"
    return exc.text or exc.reason


def error_middleware(max_body_bytes: int) -> Any:
    """Turn every error into an ErrorBody with a clear message; 500s never leak internals.

    Bodies whose declared ``Content-Length`` exceeds ``max_body_bytes`` are refused with 413
    before the handler runs; chunked bodies hit the same limit when the handler reads them. A
    header that is not UTF-8 is a 400 naming it. What a handler fails to decode of the request
    (``UnicodeDecodeError``, ``RecursionError``, msgspec's errors) is a 400 saying so, and an event
    the log refuses as too large (``EventTooLargeError``) is a 413 ``event_too_large``.
    """

    too_large = _event_too_large_error()

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if request.content_length is not None and request.content_length > max_body_bytes:
                raise web.HTTPRequestEntityTooLarge(max_size=max_body_bytes, actual_size=request.content_length)
            problem = _header_problem(request)
            if problem is not None:
                raise HTTPError(400, problem, error="bad_header")
            return await handler(request)
        except HTTPError as exc:
            return error_response(exc.status, exc.error, exc.message)
        except web.HTTPException as exc:
            if exc.status < 400 or exc.content_type == "application/json":
                raise
            headers = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
            return error_response(
                exc.status, _error_code(exc.status), _http_message(exc, request, max_body_bytes), headers=headers
            )
        except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
            raise
        # A handler's own decode of what the caller sent is the caller's problem, never a 500.
        except UnicodeDecodeError as exc:
            return error_response(400, "bad_encoding", f"the request is not valid UTF-8: {exc.reason} at {exc.start}")
        except RecursionError:
            return error_response(400, "too_deep", "the request nests too deeply to be read")
        except msgspec.ValidationError as exc:
            return error_response(400, "invalid_body", f"the request does not match the expected schema: {exc}")
        except msgspec.DecodeError as exc:
            return error_response(400, "bad_json", f"the request body is not valid JSON: {exc}")
        except Exception as exc:
            if too_large is not None and isinstance(exc, too_large):
                return error_response(413, "event_too_large", str(exc))
            if isinstance(exc, ValueError) and _raised_by_json(exc):
                # ``await request.json()``: not JSON, or a number longer than Python converts (4300 digits).
                return error_response(400, "bad_json", f"the request body cannot be read as JSON: {exc}")
            context = trace.get_current_span().get_span_context()
            trace_id = format(context.trace_id, "032x") if context.is_valid else None
            logger.exception("unhandled error in %s %s", request.method, route_template(request))
            body = ErrorBody(error="internal", message="internal server error", trace_id=trace_id)
            return json_response(body, status=500)

    return errors


def observe_middleware(tracer: trace.Tracer) -> Any:
    """Count and time every request by route template and status; trace it as a SERVER span.

    The span continues the caller's trace when the request carries a W3C ``traceparent``.
    """

    @web.middleware
    async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = route_template(request)
        started = time.perf_counter()
        status = 500
        traced: dict[str, str] | None = None  # the request's trace id: the duration's exemplar
        try:
            if request.path in _UNTRACED:
                response = await handler(request)
            else:
                with tracer.start_as_current_span(
                    f"{request.method} {route}",
                    context=extract_context(request.headers),
                    kind=SpanKind.SERVER,
                    attributes={"http.request.method": request.method, "http.route": route, "url.path": request.path},
                ) as span:
                    try:
                        response = await handler(request)
                    except web.HTTPException as exc:
                        span.set_attribute("http.response.status_code", exc.status)
                        raise
                    span.set_attribute("http.response.status_code", response.status)
                    if response.status >= 500:
                        span.set_status(StatusCode.ERROR)
                    traced = exemplar()
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            labels = {"method": request.method, "route": route, "status": str(status)}
            HTTP_REQUESTS.labels(**labels).inc()
            HTTP_REQUEST_DURATION.labels(**labels).observe(time.perf_counter() - started, traced)

    return observe


class BadRequestLogFilter(logging.Filter):
    """Turns aiohttp's ERROR-with-traceback for a request its parser refused (a control
    character in a header, a line too long: answered 400 before any handler runs) into one
    WARNING line per interval with a count, so a client sending garbage cannot flood the logs."""

    def __init__(self, interval: float = 10.0) -> None:
        super().__init__()
        self._quiet = RateLimitedLog(logging.getLogger("nexus.runtime.http"), interval=interval)

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, BadHttpMessage):
            return True
        lines = [line.strip() for line in str(exc.message).splitlines() if line.strip()]
        reason = lines[0].rstrip(":") if lines else type(exc).__name__
        self._quiet.warning("bad-request", "refused a malformed HTTP request (400): %s", reason)
        return False


def quiet_bad_requests() -> None:
    """Install ``BadRequestLogFilter`` on aiohttp's server logger, once per process."""
    server_logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, BadRequestLogFilter) for f in server_logger.filters):
        server_logger.addFilter(BadRequestLogFilter())
