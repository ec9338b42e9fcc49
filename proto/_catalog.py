"""The registry from CloudEvents ``type`` to the Struct of its ``data``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import msgspec

from nexus.proto._envelope import CloudEvent, EnvelopeError

S = TypeVar("S", bound=type[msgspec.Struct])


class EventCatalog:
    """Maps event types to data Structs; decodes and validates the data of known types.

    Unknown types are not an error: their data stays a plain JSON value.
    """

    def __init__(self) -> None:
        self._types: dict[str, type[msgspec.Struct]] = {}
        self._descriptions: dict[str, str] = {}

    def register(self, type_: str, struct: type[msgspec.Struct], description: str = "") -> None:
        """Declare ``struct`` as the data of events of ``type_`` (once per type)."""
        known = self._types.get(type_)
        if known is not None and known is not struct:
            raise ValueError(f"event type {type_!r} is already declared as {known.__name__}")
        self._types[type_] = struct
        self._descriptions[type_] = description or (struct.__doc__ or "").strip()

    def __contains__(self, type_: object) -> bool:
        return type_ in self._types

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._types))

    def struct_for(self, type_: str) -> type[msgspec.Struct] | None:
        """The data Struct of ``type_``, or None when the type is not declared."""
        return self._types.get(type_)

    def description(self, type_: str) -> str:
        return self._descriptions.get(type_, "")

    def decode_data(self, event: CloudEvent) -> Any:
        """The event's data as its declared Struct, or unchanged when the type is unknown.

        Raises:
            EnvelopeError: the data does not match the Struct (field ``$.data...``).
        """
        struct = self._types.get(event.type)
        if struct is None:
            return event.data
        try:
            return msgspec.convert(event.data, struct)
        except msgspec.ValidationError as exc:
            raise EnvelopeError.from_msgspec(exc, prefix="$.data") from None

    def validate(self, event: CloudEvent) -> None:
        """Raise EnvelopeError when a known type's data does not match its Struct."""
        self.decode_data(event)


CATALOG = EventCatalog()
"""The process-wide catalogue; ``nexus.proto.events`` fills it on import."""


def event_type(type_: str, description: str = "") -> Callable[[S], S]:
    """Class decorator: register a data Struct under ``type_`` in CATALOG."""

    def register(struct: S) -> S:
        CATALOG.register(type_, struct, description)
        struct.__event_type__ = type_  # type: ignore[attr-defined]  # a class attribute msgspec does not declare
        return struct

    return register


def type_of(struct: type) -> str:
    """The event type a data Struct was registered under (``@event_type``)."""
    registered = getattr(struct, "__event_type__", None)
    if not isinstance(registered, str):
        raise TypeError(f"{struct.__name__} is not registered with @event_type")
    return registered
