"""Projections: how event types change views. The same code runs live and in replay."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, TypeVar

from nexus.atlas import Atlas
from nexus.proto import CloudEvent

ALL_EVENTS = "*"
"""``@handles("*")``: the handler sees every event (after the type-specific ones)."""

Handler = Callable[[CloudEvent, Atlas], None]
P = TypeVar("P", bound="type[Projection]")


class ProjectionError(Exception):
    """A handler failed; the message names the projection, the event and its position."""

    def __init__(self, projection: str, event: CloudEvent, cause: BaseException) -> None:
        super().__init__(
            f"projection {projection!r} failed on event {event.id} ({event.type}) at position {event.position} "
            f"of stream {event.streamid!r}: {type(cause).__name__}: {cause}"
        )
        self.projection = projection
        self.event = event


def handles(*types: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Mark a ``Projection`` method as the handler of these event types (or ``"*"``)."""
    if not types or not all(isinstance(t, str) and t for t in types):
        raise TypeError("handles() takes one or more event type names")

    def mark(method: Callable[..., None]) -> Callable[..., None]:
        # The types ride on the function itself (a decorator mark), which no type can declare.
        method.__nexus_handles__ = (*getattr(method, "__nexus_handles__", ()), *types)  # type: ignore[attr-defined]
        return method

    return mark


class Projection:
    """Subclass it; give it a ``name`` and methods ``def on_x(self, event, atlas)`` marked ``@handles(type)``.

    Handlers must be deterministic functions of the event and the views: no wall clock, no
    randomness, no I/O. Take times from ``event.time``. That is what makes replay rebuild the
    same views a live run built. ``setup`` may create indexes; it runs once per Atlas.

    ::

        class Executions(Projection):
            name = "executions"

            def setup(self, atlas):
                atlas.collection("executions").create_index("status")

            @handles("nexus.workflow.execution.started")
            def started(self, event, atlas):
                atlas.collection("executions").upsert(event.streamid, {"status": "RUNNING"})
    """

    name: ClassVar[str] = ""
    version: ClassVar[int] = 1
    """Bump when handlers change meaning: checkpoints of another version are not reused."""
    resumable: ClassVar[bool] = True
    """Whether a replay may start from a checkpoint's snapshot (False: always from position 0)."""
    _handler_names: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        found: dict[str, list[str]] = {}
        for klass in reversed(cls.__mro__):
            for attr, value in vars(klass).items():
                for type_ in getattr(value, "__nexus_handles__", ()):
                    names = found.setdefault(type_, [])
                    if attr not in names:
                        names.append(attr)
        cls._handler_names = {t: tuple(n) for t, n in found.items()}

    def setup(self, atlas: Atlas) -> None:
        """Prepare the Atlas (indexes); called once before the first event."""

    def sync(self, atlas: Atlas) -> None:
        """Bring the views up to date before a digest or a checkpoint (for state kept outside them)."""

    def handlers(self) -> dict[str, Handler]:
        """Event type → one callable running every handler of that type (and the ``*`` ones)."""
        wildcard = [getattr(self, n) for n in self._handler_names.get(ALL_EVENTS, ())]
        out: dict[str, Handler] = {}
        for type_, names in self._handler_names.items():
            if type_ == ALL_EVENTS:
                continue
            out[type_] = _combine([getattr(self, n) for n in names] + wildcard)
        if wildcard:
            out[ALL_EVENTS] = _combine(wildcard)
        return out

    @property
    def event_types(self) -> frozenset[str] | None:
        """The types this projection reads (None: every type, it has a ``*`` handler)."""
        if ALL_EVENTS in self._handler_names:
            return None
        return frozenset(self._handler_names)

    def describe(self) -> str:
        return f"{self.name} v{self.version}"


def _combine(calls: list[Handler]) -> Handler:
    if len(calls) == 1:
        return calls[0]

    def all_of(event: CloudEvent, atlas: Atlas) -> None:
        for call in calls:
            call(event, atlas)

    return all_of


PROJECTIONS: dict[str, type[Projection]] = {}
"""Projections known by name to ``nexus replay`` (a service registers its own on import)."""


def register_projection(cls: P) -> P:
    """Class decorator: make a projection known to ``nexus replay --projection NAME``."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no name")
    known = PROJECTIONS.get(cls.name)
    if known is not None and known is not cls:
        raise ValueError(f"projection name {cls.name!r} is already registered by {known.__qualname__}")
    PROJECTIONS[cls.name] = cls
    return cls


def load_projection(spec: str) -> Projection:
    """A projection by registered name, or by ``package.module:ClassName``.

    Raises:
        LookupError: nothing answers to ``spec``.
    """
    if spec in PROJECTIONS:
        return PROJECTIONS[spec]()
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise LookupError(f"projection {spec!r} cannot be imported: {exc}") from None
        if not (isinstance(cls, type) and issubclass(cls, Projection)):
            raise LookupError(f"{spec!r} is not a Projection subclass")
        return cls()
    raise LookupError(f"no projection named {spec!r}; known: {', '.join(sorted(PROJECTIONS)) or 'none'}")


def registered(names: Iterable[str] | None = None) -> list[Projection]:
    """Instances of the named projections (default: every registered one), by name."""
    chosen = sorted(PROJECTIONS) if names is None else list(names)
    return [load_projection(n) for n in chosen]


@register_projection
class StreamCatalog(Projection):
    """Built in: one view per stream (version, last type and position, event count) and counts per type."""

    name = "nexus.streams"

    def setup(self, atlas: Atlas) -> None:
        atlas.collection("streams").create_index("last_type")

    @handles(ALL_EVENTS)
    def on_event(self, event: CloudEvent, atlas: Atlas) -> None:
        streams = atlas.collection("streams")
        stream = event.streamid or ""
        current = streams.get(stream)
        count = current.data["events"] + 1 if current is not None else 1
        streams.upsert(
            stream,
            {
                "version": event.streamversion,
                "last_type": event.type,
                "last_position": event.position,
                "last_time": event.time,
                "events": count,
            },
        )
        types = atlas.collection("event_types")
        seen = types.get(event.type)
        types.upsert(event.type, {"events": seen.data["events"] + 1 if seen is not None else 1})
