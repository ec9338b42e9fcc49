"""An EventLog decorator that counts and times appends, traces them, and stamps their trace."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable, Sequence

import msgspec
from opentelemetry import trace
from opentelemetry.trace import StatusCode

from nexus.eventlog import ANY, ConcurrencyError, DuplicateEventError, EventLog
from nexus.obs._metrics import EVENT_LOG_APPEND_DURATION, EVENT_LOG_APPENDS, EVENTS_APPENDED, exemplar
from nexus.proto import CloudEvent


class InstrumentedEventLog(EventLog):
    """Wraps any EventLog: every ``append`` opens an ``append`` span, is timed and counted.

    An event appended without a ``traceparent`` gets the ``append`` span's: the relay's publish
    and every consumer's handling of the event then continue the trace of the operation that
    appended it, in whatever process they run (an event that already names its cause, such as
    an execution's ``queued`` naming the request that started it, keeps its own).

    Reads pass straight through. Services get one from the runtime's composition root, so
    their handlers need nothing more than the EventLog port.

    Args:
        log: The adapter to wrap.
        tracer: Tracer for the ``append`` spans (default: the global provider's).
    """

    def __init__(self, log: EventLog, tracer: trace.Tracer | None = None) -> None:
        self.inner = log
        self.url = log.url
        self.max_event_bytes = log.max_event_bytes
        self._tracer = tracer or trace.get_tracer("nexus.eventlog")

    async def append(
        self, stream_id: str, events: Sequence[CloudEvent], expected_version: int = ANY
    ) -> list[CloudEvent]:
        with self._tracer.start_as_current_span(
            "append",
            kind=trace.SpanKind.CLIENT,
            attributes={"nexus.stream_id": stream_id, "nexus.event_count": len(events)},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            started = time.perf_counter()
            context = span.get_span_context()
            if context.is_valid and any(event.traceparent is None for event in events):
                traceparent = f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
                events = [
                    msgspec.structs.replace(event, traceparent=traceparent) if event.traceparent is None else event
                    for event in events
                ]
            outcome = "error"
            try:
                stored = await self.inner.append(stream_id, events, expected_version)
                outcome = "ok"
            except ConcurrencyError as exc:
                outcome = "conflict"
                span.set_status(StatusCode.ERROR, str(exc))
                raise
            except DuplicateEventError as exc:
                outcome = "duplicate"
                span.set_status(StatusCode.ERROR, str(exc))
                raise
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(StatusCode.ERROR, type(exc).__name__)
                raise
            finally:
                EVENT_LOG_APPEND_DURATION.observe(time.perf_counter() - started, exemplar())
                EVENT_LOG_APPENDS.labels(outcome=outcome).inc()
            EVENTS_APPENDED.inc(len(stored))
            if stored:
                span.set_attribute("nexus.position", stored[-1].position or 0)
            return stored

    async def read_stream(self, stream_id: str, from_version: int = 1, limit: int | None = None) -> list[CloudEvent]:
        return await self.inner.read_stream(stream_id, from_version, limit)

    async def read_all(
        self, from_position: int = 0, limit: int | None = None, types: Iterable[str] | None = None
    ) -> list[CloudEvent]:
        return await self.inner.read_all(from_position, limit, types)

    def iter_all(
        self, from_position: int = 0, *, types: Iterable[str] | None = None, batch_size: int = 5000
    ) -> AsyncIterator[list[CloudEvent]]:
        return self.inner.iter_all(from_position, types=types, batch_size=batch_size)

    async def head(self) -> int:
        return await self.inner.head()

    async def stream_version(self, stream_id: str) -> int:
        return await self.inner.stream_version(stream_id)

    async def get_event(self, event_id: str) -> CloudEvent | None:
        return await self.inner.get_event(event_id)

    def subscribe(self, from_position: int = 0, *, types: Iterable[str] | None = None) -> AsyncIterator[CloudEvent]:
        return self.inner.subscribe(from_position, types=types)

    async def ping(self) -> None:
        await self.inner.ping()

    async def close(self) -> None:
        await self.inner.close()
