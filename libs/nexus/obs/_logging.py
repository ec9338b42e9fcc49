"""Structured logs: one JSON object per line on stdout, with trace ids and no secrets."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace

from nexus.proto._correlation import current_correlation_id

SECRET_FIELDS = frozenset(
    {"authorization", "x-api-key", "x-service-key", "x-session-token", "password", "token", "secret"}
)
"""Field and header names (compared case-insensitively) whose values are never logged."""

REDACTED = "[redacted]"

# "Authorization: Bearer abc", "password=hunter2", "X-API-Key: k" inside free text.
_SECRET_IN_TEXT = re.compile(
    r"(?i)\b(authorization|x-api-key|x-service-key|x-session-token|password|token|secret)"
    r"(\"?\s*[:=]\s*\"?)(bearer\s+)?[^\s\"',;}]+"
)

# Attributes every LogRecord has; anything else came from ``extra=`` and is logged as a field.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def redact(value: Any) -> Any:
    """A copy of ``value`` with the values of secret-named keys replaced, recursively.

    Strings have ``name: value`` / ``name=value`` pairs of secret names masked too.
    """
    if isinstance(value, Mapping):
        return {k: (REDACTED if str(k).lower() in SECRET_FIELDS else redact(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact(v) for v in value)
    if isinstance(value, str):
        return _SECRET_IN_TEXT.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", value)
    return value


class RedactSecretsFilter(logging.Filter):
    """Masks secrets in a record's message, arguments and extra fields before any handler sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        for key in list(vars(record)):
            if key in _STANDARD_ATTRS:
                continue
            if key.lower() in SECRET_FIELDS:
                setattr(record, key, REDACTED)
            else:
                setattr(record, key, redact(getattr(record, key)))
        return True


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line.

    Fields: ``time`` (RFC 3339, UTC), ``service``, ``level``, ``logger``, ``message``,
    ``trace_id`` and ``span_id`` of the current span when there is one, ``correlation_id``
    when one is set (``nexus.obs.correlation``; an ``extra={"correlation_id": …}`` wins),
    ``event_id`` and any other ``extra=`` field, and ``error`` with the traceback for exceptions.
    """

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "service": self.service,
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            line["trace_id"] = format(context.trace_id, "032x")
            line["span_id"] = format(context.span_id, "016x")
        correlation_id = current_correlation_id()
        if correlation_id is not None:
            line["correlation_id"] = correlation_id
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and (key not in line or key == "correlation_id"):
                line[key] = value
        if record.exc_info:
            line["error"] = redact(self.formatException(record.exc_info))
        return json.dumps(line, default=str, ensure_ascii=False)


def setup_logging(service: str, level: str = "info", *, stream: Any = None) -> logging.Handler:
    """Send every log record of the process to ``stream`` (stdout) as JSON lines, secrets masked.

    Replaces the root logger's handlers, so calling it twice does not duplicate lines.

    Args:
        service: The ``service`` field of every line.
        level: ``debug``, ``info``, ``warning`` or ``error`` (``NEXUS_LOG_LEVEL``).
        stream: Where to write (default ``sys.stdout``).

    Returns:
        The installed handler.
    """
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    handler.addFilter(RedactSecretsFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp's access log repeats what the request metrics and spans already record.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return handler
