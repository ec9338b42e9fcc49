"""The event log's one error hierarchy: callers never see a driver's exceptions."""

from __future__ import annotations


class EventLogError(Exception):
    """Base of every error the event log raises."""


class EventLogArgumentError(EventLogError, ValueError):
    """A call's arguments are wrong (empty stream id, negative position, data that is not JSON)."""


class ConcurrencyError(EventLogError):
    """The stream's version is not the one the append expected; nothing was written."""

    def __init__(self, stream_id: str, expected: int, actual: int) -> None:
        super().__init__(f"stream {stream_id!r}: expected version {_describe(expected)}, but it is at {actual}")
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual


class DuplicateEventError(EventLogError):
    """An event id is already stored with different content (or in another stream)."""

    def __init__(self, event_id: str, reason: str) -> None:
        super().__init__(f"event {event_id!r} is already stored with different content: {reason}")
        self.event_id = event_id
        self.reason = reason


class EventTooLargeError(EventLogError):
    """An event's encoded size exceeds the log's limit (``NEXUS_MAX_EVENT_BYTES``); nothing was written.

    The limit keeps every stored event small enough for the bus to carry (NATS refuses a
    message above its ``max_payload``, 1 MiB by default); large values belong in Raw, referred
    to from the event.
    """

    def __init__(self, *, size: int, limit: int, event_type: str, stream_id: str, event_id: str = "") -> None:
        super().__init__(
            f"event {event_type!r} for stream {stream_id!r} is {size} bytes encoded; the event log accepts "
            f"at most {limit} bytes per event (NEXUS_MAX_EVENT_BYTES): store large values in Raw and refer to them"
        )
        self.size = size
        self.limit = limit
        self.event_type = event_type
        self.stream_id = stream_id
        self.event_id = event_id


class EventLogUnavailableError(EventLogError):
    """The backing store cannot be reached or failed; the operation may be retried."""


class AppendOutcomeUnknownError(EventLogUnavailableError):
    """An append's commit was sent but its outcome is unknown: it may or may not be stored.

    Raised when the store failed or the append's deadline passed after the commit had been
    sent (the connection dropped, the majority did not acknowledge in time). Retry the append
    with the same event ids (and the same expected version): the log answers a retry of a
    stored batch with the stored records, and writes the batch if it was not stored. Only an
    adapter whose commit is a message to a server raises it (MongoDB); the others always know
    their outcome. A subclass of EventLogUnavailableError, so a caller that retries an
    unavailable store with the same ids already does the right thing.
    """


class EventLogClosedError(EventLogError):
    """The log was closed."""


def _describe(expected: int) -> str:
    from nexus.eventlog._port import ANY, NO_STREAM, STREAM_EXISTS

    return {
        ANY: "ANY",
        NO_STREAM: "NO_STREAM (the stream must not exist)",
        STREAM_EXISTS: "STREAM_EXISTS",
    }.get(expected, str(expected))
