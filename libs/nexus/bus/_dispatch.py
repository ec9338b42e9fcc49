"""What a consumer does with one delivery: run the handler, decide ack / retry / dead letter.

Shared by every adapter, so the JetStream and in-memory buses cannot disagree on semantics.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode, TraceFlags

from nexus.bus._metrics import CONSUMER_PROCESSED, DEAD_LETTERS
from nexus.bus._port import ConsumerSpec, Delivery, Handler, PoisonMessageError, RetryableError
from nexus.proto import EnvelopeError, deadletters, dlq_subject
from nexus.proto.deadletters import (
    CONSUMER_HEADER,
    DELIVERIES_HEADER,
    ERROR_HEADER,
    ORIGINAL_MSG_ID_HEADER,
    ORIGINAL_SEQ_HEADER,
    ORIGINAL_STREAM_HEADER,
    ORIGINAL_SUBJECT_HEADER,
    REASON_HEADER,
)

# Named here too for the bus's modules and the dlq command, which read them from the bus.
from nexus.proto.deadletters import MSG_ID_HEADER as MSG_ID_HEADER
from nexus.proto.deadletters import TRUNCATED_HEADER as TRUNCATED_HEADER

logger = logging.getLogger("nexus.bus")

REPLY_HEADER = "Nexus-Reply-To"
"""JetStream messages carry no core reply subject; a command's reply inbox travels in this header."""

# Exceptions that can never succeed on a retry: dead-letter at once.
_POISON = (PoisonMessageError, EnvelopeError, msgspec.MsgspecError)
_MAX_REASON = 1000


@dataclass(frozen=True)
class Outcome:
    """The decision for one delivery."""

    kind: str
    """``ack``, ``retry`` or ``dead_letter``."""
    reply: bytes | None = None
    delay: float = 0.0
    error: str = ""
    reason: str = ""


_ACKED = Outcome("ack")
_random = random.Random()


NO_TRACING = 0
"""No provider: the no-op tracer."""
IDS_ONLY = 1
"""An SDK provider with no span processor: spans would be built and dropped unseen; only their
ids matter (they reach the logs and the propagated traceparent)."""
RECORDING = 2
"""Spans reach a processor (an exporter, a test's in-memory one)."""


def tracing_mode(tracer: trace.Tracer) -> int:
    """How much of a span anyone can observe, decided at each call (providers and processors may
    be installed after the bus connects).

    A proxy tracer (``trace.get_tracer`` before a provider is set) is resolved to the current
    one. An SDK tracer whose provider has no span processor (``NEXUS_OTEL_EXPORTER=none``)
    records spans nobody receives: the bus then builds only their ids, not the spans, which
    cost several times the rest of a message's handling.
    """
    if isinstance(tracer, trace.ProxyTracer):
        tracer = tracer._tracer
    if isinstance(tracer, trace.NoOpTracer):
        return NO_TRACING
    processors = getattr(getattr(tracer, "span_processor", None), "_span_processors", None)
    if processors is not None and not processors:
        return IDS_ONLY
    return RECORDING


def tracing_on(tracer: trace.Tracer) -> bool:
    """Whether spans built with ``tracer`` reach anyone (see ``tracing_mode``)."""
    return tracing_mode(tracer) == RECORDING


def _ids_only_span(parent: Context | None) -> trace.Span:
    """A span that records nothing but has its own id in the parent's trace (or a new one).

    It stands for the consume span when nothing would receive it: log lines and events
    written by the handler still carry a trace id, and a downstream call continues the trace.
    """
    parent_context = trace.get_current_span(parent).get_span_context() if parent is not None else None
    if parent_context is not None and parent_context.is_valid:
        trace_id, flags, state = parent_context.trace_id, parent_context.trace_flags, parent_context.trace_state
    else:
        # As the SDK's default sampler would: a new trace, sampled, so that downstream
        # services that do export keep recording it.
        trace_id, flags, state = _random.getrandbits(128) or 1, TraceFlags(TraceFlags.SAMPLED), None
    span_id = _random.getrandbits(64) or 1
    return trace.NonRecordingSpan(
        trace.SpanContext(trace_id, span_id, is_remote=False, trace_flags=flags, trace_state=state)
    )


def backoff_for(spec: ConsumerSpec, num_delivered: int) -> float:
    if not spec.backoff_seconds:
        return 0.0
    return spec.backoff_seconds[min(max(num_delivered, 1), len(spec.backoff_seconds)) - 1]


async def run_handler(spec: ConsumerSpec, handler: Handler, delivery: Delivery, tracer: trace.Tracer) -> Outcome:
    """Run ``handler`` once inside a "consume" span that continues the producer's trace."""
    if delivery.num_delivered > spec.max_deliver:
        # The server allows one delivery more than max_deliver so that a message whose last
        # attempt died with the process is still dead-lettered instead of silently dropped.
        return Outcome(
            "dead_letter",
            error="MaxDeliveriesExceeded",
            reason=f"delivered {delivery.num_delivered} times; max_deliver is {spec.max_deliver}",
        )
    traced = "traceparent" in delivery.headers
    mode = tracing_mode(tracer)
    if not traced and mode == NO_TRACING:
        # Nothing records spans and there is no trace to continue: no span at all.
        return await _outcome(spec, handler, delivery)
    parent = propagate.extract(delivery.headers) if traced else None
    if mode == IDS_ONLY:
        # The stand-in span is only made current (no use_span: nothing to end or record).
        token = otel_context.attach(trace.set_span_in_context(_ids_only_span(parent)))
        try:
            return await _outcome(spec, handler, delivery)
        finally:
            otel_context.detach(token)
    span = tracer.start_span(
        "consume",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes={
            "messaging.system": "nats",
            "messaging.destination.name": delivery.subject,
            "messaging.consumer.group.name": spec.name,
        },
    )
    with trace.use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False):
        try:
            result = await handler(delivery)
        except RetryableError as exc:
            return _failed(spec, delivery, span, exc, retryable=True)
        except _POISON as exc:
            span.set_status(Status(StatusCode.ERROR, str(exc)[:200]))
            return Outcome("dead_letter", error=type(exc).__name__, reason=str(exc) or type(exc).__name__)
        except Exception as exc:
            _log_failure(spec, delivery, exc)
            return _failed(spec, delivery, span, exc, retryable=False)
    return Outcome("ack", reply=result) if result is not None else _ACKED


async def _outcome(spec: ConsumerSpec, handler: Handler, delivery: Delivery) -> Outcome:
    """Run ``handler`` without a span of its own."""
    try:
        result = await handler(delivery)
    except RetryableError as exc:
        return _failed(spec, delivery, None, exc, retryable=True)
    except _POISON as exc:
        return Outcome("dead_letter", error=type(exc).__name__, reason=str(exc) or type(exc).__name__)
    except Exception as exc:
        _log_failure(spec, delivery, exc)
        return _failed(spec, delivery, None, exc, retryable=False)
    return Outcome("ack", reply=result) if result is not None else _ACKED


def _log_failure(spec: ConsumerSpec, delivery: Delivery, exc: Exception) -> None:
    logger.warning(
        "consumer %s: handler failed on %s (delivery %d): %r",
        spec.name,
        delivery.subject,
        delivery.num_delivered,
        exc,
    )


def _failed(
    spec: ConsumerSpec, delivery: Delivery, span: trace.Span | None, exc: Exception, *, retryable: bool
) -> Outcome:
    if span is not None:
        span.set_status(Status(StatusCode.ERROR, str(exc)[:200]))
    reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if delivery.num_delivered >= spec.max_deliver:
        return Outcome(
            "dead_letter",
            error="MaxDeliveriesExceeded",
            reason=f"failed {delivery.num_delivered} times (max_deliver {spec.max_deliver}); last error {reason}",
        )
    return Outcome("retry", delay=backoff_for(spec, delivery.num_delivered), error=type(exc).__name__, reason=reason)


def header_value(text: str) -> str:
    """A single-line header value: NATS headers cannot hold CR or LF."""
    value = " ".join(text.split())
    return value[:_MAX_REASON]


def dead_letter_headers(spec: ConsumerSpec, delivery: Delivery, stream: str, outcome: Outcome) -> dict[str, str]:
    """The original headers plus the reason; a fresh Nats-Msg-Id so the DLQ stream keeps one per consumer."""
    headers = {k: v for k, v in delivery.headers.items() if k != MSG_ID_HEADER}
    original_id = delivery.headers.get(MSG_ID_HEADER)
    if original_id:
        headers[ORIGINAL_MSG_ID_HEADER] = original_id
    headers.update(
        {
            MSG_ID_HEADER: f"dlq:{spec.name}:{stream}:{delivery.stream_seq}",
            ERROR_HEADER: outcome.error,
            REASON_HEADER: header_value(outcome.reason),
            CONSUMER_HEADER: spec.name,
            DELIVERIES_HEADER: str(delivery.num_delivered),
            ORIGINAL_SUBJECT_HEADER: delivery.subject,
            ORIGINAL_STREAM_HEADER: stream,
            ORIGINAL_SEQ_HEADER: str(delivery.stream_seq),
        }
    )
    return headers


DEAD_LETTER_HEADERS: tuple[str, ...] = tuple(deadletters.DEAD_LETTER_HEADERS)
"""The headers the bus adds when it dead-letters a message (``dead_letter_headers``), named once
in ``nexus.proto.deadletters``: kept first when a dead letter must be cut to fit, and left out
when ``nexus dlq redrive`` republishes it."""
# Room kept free for the trace context the publish may add, and the block's own framing.
_HEADER_SLACK = 128


def fit_dead_letter(
    headers: dict[str, str], data: bytes, max_payload: int, block_size: Callable[[dict[str, str]], int]
) -> tuple[dict[str, str], bytes]:
    """Headers and payload of a dead letter that NATS accepts (at most ``max_payload`` bytes).

    A message close to the limit no longer fits once the reason headers are added, and a dead
    letter that cannot be stored leaves its message unsettled, redelivered until max_deliver and
    then never delivered again. So the original's own headers go first (the reason and where the
    message came from stay), then the reason is shortened, and only then is the payload cut, with
    ``Nexus-Payload-Truncated`` giving its original size (the original stays in a limits stream at
    ``Nexus-Original-Seq``).

    Args:
        block_size: the encoded size of a header block holding these headers.
    """
    room = max_payload - _HEADER_SLACK
    if block_size(headers) + len(data) <= room:
        return headers, data
    kept = {key: headers[key] for key in DEAD_LETTER_HEADERS if key in headers}
    if block_size(kept) + len(data) <= room:
        return kept, data
    reason = kept.get(REASON_HEADER, "")
    spare = room - len(data) - (block_size(kept) - len(reason))
    if spare >= 80:
        kept[REASON_HEADER] = reason[: spare - 3] + "..."
        return kept, data
    kept[REASON_HEADER] = reason[:200]
    kept[TRUNCATED_HEADER] = str(len(data))
    return kept, data[: max(room - block_size(kept), 0)]


_processed: dict[tuple[str, str], Any] = {}


def count(spec: ConsumerSpec, outcome: Outcome) -> None:
    # The labelled child is cached: ``labels()`` costs more than the increment itself.
    key = (spec.name, outcome.kind)
    counter = _processed.get(key)
    if counter is None:
        counter = _processed[key] = CONSUMER_PROCESSED.labels(spec.name, outcome.kind)
    counter.inc()
    if outcome.kind == "dead_letter":
        DEAD_LETTERS.labels(spec.name).inc()
        logger.warning("consumer %s: dead-lettered a message: %s: %s", spec.name, outcome.error, outcome.reason)


def dlq_subject_for(spec: ConsumerSpec) -> str:
    return dlq_subject(spec.name)


def publish_span(tracer: trace.Tracer, subject: str, parent: Mapping[str, str] | None) -> trace.Span:
    """A "publish" span, child of ``parent`` (a header dict holding a traceparent) or of the current span."""
    context = propagate.extract(parent) if parent else None
    return tracer.start_span(
        "publish",
        context=context,
        kind=SpanKind.PRODUCER,
        attributes={"messaging.system": "nats", "messaging.destination.name": subject},
    )


def inject(span: trace.Span, headers: dict[str, str]) -> None:
    """Write the span's W3C trace context into ``headers`` (nothing when there is no valid context)."""
    propagate.inject(headers, context=trace.set_span_in_context(span))


def inject_current(headers: dict[str, str]) -> None:
    """Write the current span's trace context into ``headers``, if there is a valid one."""
    if trace.get_current_span().get_span_context().is_valid:
        propagate.inject(headers)
