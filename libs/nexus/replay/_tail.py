"""The one way a service reads the platform's events: the log's own subscription.

Every fold a service keeps in memory (the executions view, the live updates, the triggers) is
fed by ``tail``: events in position order, each once, from a given position, waiting for new
ones. It needs no NATS, so a service behaves the same with or without a bus, and a fold never
sees a gap it would have to fill. The bus's durable consumers (``nexus.bus``) are for commands
and external ingest, whose work is shared between replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable

from opentelemetry import context as otel_context

from nexus.eventlog import EventLog, EventLogClosedError
from nexus.obs import parent_context
from nexus.proto import CloudEvent

__all__ = ["tail"]

_log = logging.getLogger("nexus.replay.tail")

Apply = Callable[[CloudEvent], Awaitable[None] | None]
Types = Iterable[str] | None
"""Event types to follow; None follows every event."""


async def tail(
    log: EventLog,
    apply: Apply,
    *,
    start: int | Callable[[], int] = 1,
    name: str = "tail",
    retry_delay: float = 1.0,
    types: Types | Callable[[], Types] = None,
) -> None:
    """Call ``apply(event)`` for every event of the log from ``start`` on, in position order, until cancelled.

    ``apply`` may be a function or a coroutine function. An exception it raises is logged with
    the event and the tail goes on with the next event (a fold that wants retries makes them
    itself). When reading the log fails, the tail subscribes again ``retry_delay`` seconds later,
    after the last event it handed over, so no event is skipped or repeated. When the log is
    closed under it (its owner is stopping), the tail ends quietly.

    Args:
        log: The event log.
        apply: What to do with each event.
        start: The first position (or a function giving it when the tail starts, and again after
            a failure: a fold that also folds events by other means says where it stands).
        name: Names the tail in log lines.
        retry_delay: Seconds before subscribing again after the log failed.
        types: Only events of these types (None: every event). The log filters them where it
            is cheap, so a fold that needs a few types of a busy log does not decode the rest.
            A function is asked again after each event handed over: when its answer changes,
            the tail subscribes again right after that event with the new set, so a fold whose
            needs change with an event it follows (a trigger registered for a new type) gets
            every event of the new types after it.
    """
    last: int | None = None
    while True:
        first = start() if callable(start) else start
        if last is not None:
            first = max(first, last + 1)
        wanted = _types(types() if callable(types) else types)
        changed = False
        subscription = log.subscribe(first, types=wanted)
        try:
            async for event in subscription:
                if event.position is not None:
                    last = event.position
                # What the handler does (an append, a call, a log line) continues the trace of
                # the operation that appended the event.
                parent = parent_context(event.traceparent)
                token = otel_context.attach(parent) if parent is not None else None
                try:
                    result = apply(event)
                    if inspect.isawaitable(result):
                        await result
                except asyncio.CancelledError:
                    raise
                except Exception:
                    _log.exception("%s: handling event %s at position %s failed", name, event.id, event.position)
                finally:
                    if token is not None:
                        otel_context.detach(token)
                if callable(types):
                    now = _types(types())
                    if now is not wanted and now != wanted:
                        changed = True
                        break
            if not changed:
                return
            _log.info("%s: the followed types changed; subscribing again after position %s", name, last)
        except asyncio.CancelledError:
            raise
        except EventLogClosedError:
            # The log was closed under the tail (its owner is stopping): nothing more will come.
            _log.debug("%s: the log was closed; the tail ends", name)
            return
        except Exception:
            _log.exception("%s: following the log failed; resuming in %.1f s", name, retry_delay)
            await asyncio.sleep(retry_delay)
        finally:
            aclose = getattr(subscription, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()


def _types(types: Types) -> frozenset[str] | None:
    """A set, so two answers compare equal whatever collection each came in."""
    if types is None or isinstance(types, frozenset):
        return types
    if isinstance(types, str | bytes):
        raise TypeError("types must be a collection of event types, not one string")
    return frozenset(types)
