"""OpenTelemetry tracing: one TracerProvider per process, chosen by ``NEXUS_OTEL_EXPORTER``."""

from __future__ import annotations

import re
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from nexus.config import ConfigError

EXPORTERS = ("none", "console", "otlp")
"""Accepted values of ``NEXUS_OTEL_EXPORTER``."""

_propagator = TraceContextTextMapPropagator()
_TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


def setup_tracing(
    service_name: str, exporter: str | SpanExporter = "none", *, set_global: bool = True
) -> TracerProvider:
    """Create the process's TracerProvider and (by default) install it as the global one.

    Args:
        service_name: Recorded as the ``service.name`` resource attribute (``nexus-kam``, …).
        exporter: ``none`` (nothing is exported; spans are sampled out unless the caller's
            ``traceparent`` says it is sampled, so they cost little and still carry trace
            ids into the logs and onward in ``traceparent``),
            ``console`` (JSON spans on stderr, for local debugging), ``otlp`` (OTLP over HTTP;
            the endpoint comes from the standard ``OTEL_EXPORTER_OTLP_*`` variables), or a
            SpanExporter instance (tests pass an in-memory one).
        set_global: Install it with ``trace.set_tracer_provider``. OpenTelemetry allows that
            once per process, so tests that build several providers pass False.

    Returns:
        The provider; call ``shutdown()`` on it at exit to flush pending spans.
    """
    resource = Resource.create({"service.name": service_name})
    if isinstance(exporter, str) and exporter.lower() == "none":
        # A recorded span that no processor exports is pure cost (about 0.1-0.3 ms per workflow
        # execution). Parent-based sampling keeps an upstream caller's decision to trace.
        provider = TracerProvider(resource=resource, sampler=ParentBased(ALWAYS_OFF))
    else:
        provider = TracerProvider(resource=resource)
    if isinstance(exporter, str):
        name = exporter.lower()
        if name not in EXPORTERS:
            raise ConfigError(f"NEXUS_OTEL_EXPORTER={exporter!r}: use 'none', 'console' or 'otlp'")
        span_exporter: SpanExporter | None
        if name == "console":
            span_exporter = ConsoleSpanExporter(service_name=service_name)
        elif name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            span_exporter = OTLPSpanExporter()
        else:
            span_exporter = None
    else:
        span_exporter = exporter
    if span_exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(span_exporter))
    if set_global:
        trace.set_tracer_provider(provider)
    return provider


def extract_context(headers: Mapping[str, str]) -> Context:
    """The trace context carried by W3C ``traceparent``/``tracestate`` headers (empty if none)."""
    return _propagator.extract(carrier=dict(headers.items()))


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span, to stamp on events and NATS headers."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent")


def parent_context(traceparent: str | None) -> Context | None:
    """The trace context a recorded W3C ``traceparent`` names, or None (absent or malformed).

    An event's ``traceparent`` (or an execution's recorded one) is turned back into a parent
    with this, so work done later, in another process or after a restart, joins the trace of
    what caused it. Every log tail calls it for every event it hands over, so the common form
    (``00-<32 hex>-<16 hex>-<2 hex>``) is parsed here directly; anything else goes through the
    W3C propagator.
    """
    if not traceparent:
        return None
    if _TRACEPARENT.fullmatch(traceparent):
        trace_id = int(traceparent[3:35], 16)
        span_id = int(traceparent[36:52], 16)
        flags = int(traceparent[53:55], 16)
        if not trace_id or not span_id:
            return None
        span = trace.NonRecordingSpan(trace.SpanContext(trace_id, span_id, True, trace.TraceFlags(flags)))
        return trace.set_span_in_context(span)
    context = _propagator.extract(carrier={"traceparent": traceparent})
    return context if trace.get_current_span(context).get_span_context().is_valid else None
