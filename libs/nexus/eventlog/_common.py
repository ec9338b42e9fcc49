"""What the adapters share: the checks, so they agree on what is a bad argument and a conflict,
and the decisions their writers and subscriptions make alike (one place to get them right)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar, cast

import msgspec

from nexus.eventlog import chain
from nexus.eventlog._errors import ConcurrencyError, DuplicateEventError, EventLogArgumentError, EventTooLargeError
from nexus.eventlog._port import ANY, DEFAULT_MAX_EVENT_BYTES, GENESIS_HASH, NO_STREAM, STREAM_EXISTS, EventLog
from nexus.eventlog.chain import content_bytes, hex_digest, same_content
from nexus.proto import CloudEvent

_json = msgspec.json.Encoder()

GENESIS: Final = GENESIS_HASH.encode()
"""``GENESIS_HASH`` as the hex ``bytes`` a writer chains with (``chain.seal_content``)."""

MAX_EVENT_BYTES_VARIABLE: Final = "NEXUS_MAX_EVENT_BYTES"
_MIN_MAX_EVENT_BYTES: Final = 1024

# What sealing adds to an event's content (``chain.seal_content``): the placement attributes,
# with both hashes (64 hex digits) and position and version at their widest (20 digits).
_PLACEMENT_BYTES: Final = len(b',"hash":"","position":,"prevhash":"","streamid":,"streamversion":') + 2 * 64 + 2 * 20


def resolve_max_event_bytes(value: int | None = None, environ: Mapping[str, str] | None = None) -> int:
    """The per-event size limit an adapter enforces.

    ``value`` when given, else ``NEXUS_MAX_EVENT_BYTES`` from the environment, else
    ``DEFAULT_MAX_EVENT_BYTES`` (512 KiB).

    Raises:
        EventLogArgumentError: the value is not an integer of at least 1024 bytes.
    """
    if value is None:
        text = (os.environ if environ is None else environ).get(MAX_EVENT_BYTES_VARIABLE, "").strip()
        if not text:
            return DEFAULT_MAX_EVENT_BYTES
        if not text.isdigit():
            raise EventLogArgumentError(
                f"{MAX_EVENT_BYTES_VARIABLE}={text!r} is not a number of bytes (e.g. {DEFAULT_MAX_EVENT_BYTES})"
            )
        value, what = int(text), MAX_EVENT_BYTES_VARIABLE
    else:
        what = "max_event_bytes"
    if isinstance(value, bool) or not isinstance(value, int) or value < _MIN_MAX_EVENT_BYTES:
        raise EventLogArgumentError(
            f"{what} must be an integer of at least {_MIN_MAX_EVENT_BYTES} bytes, got {value!r}"
        )
    return value


def stored_size(content: bytes, stream_id: str) -> int:
    """An upper bound of the stored (and relayed) size of an event whose content is ``content``."""
    return len(content) + _PLACEMENT_BYTES + len(_json.encode(stream_id))


def check_append(stream_id: str, events: Sequence[CloudEvent], expected_version: int) -> None:
    """Raise EventLogArgumentError for arguments no adapter accepts.

    The events' data is checked by ``encode_contents``, which every adapter calls next.
    """
    if not isinstance(stream_id, str) or not stream_id.strip():
        raise EventLogArgumentError("stream_id must be a non-empty string")
    if len(stream_id) > 256:
        raise EventLogArgumentError(f"stream_id is {len(stream_id)} characters long; the limit is 256")
    if not events:
        raise EventLogArgumentError("an append needs at least one event")
    if not isinstance(expected_version, int) or (
        expected_version < 0 and expected_version not in (ANY, NO_STREAM, STREAM_EXISTS)
    ):
        raise EventLogArgumentError(
            f"expected_version {expected_version!r} is neither a version (>= 0) nor ANY, NO_STREAM or STREAM_EXISTS"
        )
    seen: set[str] = set()
    for index, event in enumerate(events):
        if not isinstance(event, CloudEvent):
            raise EventLogArgumentError(f"events[{index}] is a {type(event).__name__}, not a CloudEvent")
        if event.id in seen:
            raise EventLogArgumentError(f"events[{index}]: id {event.id!r} appears twice in the batch")
        seen.add(event.id)


def encode_contents(
    events: Sequence[CloudEvent], *, stream_id: str, limit: int, first_index: int = 0
) -> list[tuple[bytes, bytes]]:
    """Each event's ``chain.content_bytes`` and its ``chain.hex_digest``, computed by the caller.

    This is the one place every adapter checks an event's size: the content is encoded here
    anyway (for the hash and the stored body), so the check is one comparison per event.
    ``first_index`` is the index of ``events[0]`` in the append, for the error message.

    Raises:
        EventLogArgumentError: an event's data is not JSON-serialisable.
        EventTooLargeError: an event, once stored, could be larger than ``limit`` bytes.
    """
    room = limit - stored_size(b"", stream_id)
    out = []
    for index, event in enumerate(events, first_index):
        try:
            content = content_bytes(event)
        except (TypeError, ValueError, OverflowError) as exc:
            raise _not_json(index, event, exc) from None
        if len(content) > room:
            raise EventTooLargeError(
                size=stored_size(content, stream_id),
                limit=limit,
                event_type=event.type,
                stream_id=stream_id,
                event_id=event.id,
            )
        out.append((content, hex_digest(content)))
    return out


def _not_json(index: int, event: CloudEvent, exc: Exception) -> EventLogArgumentError:
    return EventLogArgumentError(f"events[{index}] ({event.id}): data is not JSON-serialisable: {exc}")


def check_expected(stream_id: str, expected_version: int, actual: int) -> None:
    """Raise ConcurrencyError unless a stream at ``actual`` satisfies ``expected_version``."""
    if expected_version == ANY:
        return
    if expected_version in (NO_STREAM, 0):
        ok = actual == 0
    elif expected_version == STREAM_EXISTS:
        ok = actual > 0
    else:
        ok = actual == expected_version
    if not ok:
        raise ConcurrencyError(stream_id, expected_version, actual)


def check_position(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 0:
        raise EventLogArgumentError(f"{name} must be an integer >= 0, got {value!r}")


def check_limit(limit: int | None) -> None:
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise EventLogArgumentError(f"limit must be None or an integer >= 0, got {limit!r}")


def match_stored(
    stream_id: str, events: Sequence[CloudEvent], found: Sequence[CloudEvent | None]
) -> list[CloudEvent] | None:
    """Decide what an append means given which of its ids are already stored.

    ``found[i]`` is the stored event with ``events[i].id``, or None. Returns None when none is
    stored (a new append), the stored records when the whole batch is a retry of one already
    stored in ``stream_id`` with the same content.

    Raises:
        DuplicateEventError: part of the batch is stored, an id is stored in another stream,
            or with other content.
    """
    if not any(found):
        return None
    first = next(f for f in found if f is not None)
    for event, stored in zip(events, found, strict=True):
        if stored is None:
            raise DuplicateEventError(first.id, "part of the batch is stored and part is not")
        if stored.streamid != stream_id:
            raise DuplicateEventError(event.id, f"it is stored in stream {stored.streamid!r}")
        difference = same_content(stored, event)
        if difference:
            raise DuplicateEventError(event.id, difference)
    return [stored for stored in found if stored is not None]  # every one is: checked above


def check_types(types: object) -> frozenset[str] | None:
    """The set of wanted types, or None for all; a lone string is refused (a common slip)."""
    if types is None:
        return None
    if isinstance(types, str | bytes):
        raise EventLogArgumentError("types must be a collection of type names, not one string")
    try:
        wanted = frozenset(cast("Iterable[str]", types))
    except TypeError:
        raise EventLogArgumentError(f"types must be a collection of type names, got {types!r}") from None
    if not all(isinstance(t, str) for t in wanted):
        raise EventLogArgumentError("types must contain only strings")
    return wanted


def check_batch_size(batch_size: int) -> None:
    """``iter_all``'s ``batch_size``: an integer of at least 1."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise EventLogArgumentError(f"batch_size must be an integer >= 1, got {batch_size!r}")


# ---- what the subscriptions share ---------------------------------------------------------------


async def unfiltered_page(log: EventLog, position: int, limit: int) -> tuple[list[CloudEvent], int, bool]:
    """An unfiltered subscription's next page: the events from ``position``, where the next read
    starts, and whether to read again at once (something was there) or wait for a commit."""
    batch = await log.read_all(position, limit)
    following = (batch[-1].position or position) + 1 if batch else position
    return batch, following, bool(batch)


def after_scan(
    events: list[CloudEvent], *, full: bool, last: int, position: int, end: int, head: int
) -> tuple[list[CloudEvent], int, bool]:
    """A filtered subscription's next page from one scan of positions ``position`` up to ``end``
    (exclusive) in the snapshot whose head was ``head``: the matching ``events``, where the next
    read starts, and whether to read again at once.

    A full page (``last``: its last event's position) goes on after its last match at once. A
    page that is not full looked at every position of the window up to the head, so the next
    read starts past both, at once only when the window ended below the head.
    """
    if full:
        return events, last + 1, True
    following = max(position, min(end, head + 1))
    return events, following, following <= head


# ---- what the group-committing writers share (SQLite, PostgreSQL, MongoDB) ---------------------


class _LastHash(msgspec.Struct):
    hash: str


_last_hash = msgspec.json.Decoder(_LastHash)


def last_hash(body: bytes) -> bytes:
    """The ``hash`` of a stored event, from its JSON body, as hex ``bytes``.

    A writer needs only this of a stream's last event to chain the next one: decoding the one
    attribute is cheaper than decoding the event.
    """
    return _last_hash.decode(body).hash.encode()


def seal_run(
    contents: Sequence[tuple[bytes, bytes]], *, stream_key: bytes, version: int, position: int, prevhash: bytes
) -> list[tuple[bytes, bytes]]:
    """Each event's ``hash`` and stored body (``chain.seal_content``) for events placed one after
    another from ``version`` and ``position``, the first chained to ``prevhash``.

    ``contents`` are ``encode_contents``'s; ``stream_key`` is the stream id as a JSON string.
    ``chain.seal_content`` is looked up on each call, so a test can make sealing fail.
    """
    seal = chain.seal_content
    out = []
    for offset, (content, digest) in enumerate(contents):
        prevhash, body = seal(
            content,
            digest,
            stream_key=stream_key,
            version=version + offset,
            position=position + offset,
            prevhash=prevhash,
        )
        out.append((prevhash, body))
    return out


def placed_records(
    events: Sequence[CloudEvent],
    *,
    stream_id: str,
    version: int,
    position: int,
    prevhash: bytes,
    hashes: Sequence[bytes],
) -> list[CloudEvent]:
    """The stored records of ``events`` placed from ``version`` and ``position`` after ``prevhash``,
    each with the hash it was sealed with (``hashes``, as ``seal_run`` returns them)."""
    out = []
    previous = prevhash.decode()
    for offset, (event, raw) in enumerate(zip(events, hashes, strict=True)):
        hash_ = raw.decode()
        out.append(
            msgspec.structs.replace(
                event,
                streamid=stream_id,
                streamversion=version + offset,
                position=position + offset,
                prevhash=previous,
                hash=hash_,
            )
        )
        previous = hash_
    return out


_State = TypeVar("_State")


def remember_streams(cache: dict[str, _State], written: Mapping[str, _State], size: int) -> None:
    """Record each written stream's last version and hash in a writer's cache of at most ``size`` streams.

    A written stream moves to the young end of the (insertion-ordered) dict, so the streams
    dropped when it is full are those written longest ago.
    """
    for stream_id, last in written.items():
        cache.pop(stream_id, None)
        cache[stream_id] = last
    while len(cache) > size:
        del cache[next(iter(cache))]


@dataclass
class QueuedAppend:
    """One caller's append, queued for an adapter's writer task (PostgreSQL, MongoDB)."""

    stream_id: str
    events: list[CloudEvent]
    contents: list[tuple[bytes, bytes]]
    """Each event's ``chain.content_bytes`` and its hex digest, computed by the caller."""
    expected_version: int
    future: asyncio.Future[list[CloudEvent]]


class GroupCommitStats:
    """The counters of an adapter whose writer commits the queued appends in groups (SQLite,
    PostgreSQL, MongoDB); the writer counts, and ``bench/`` reports the group size beside the
    throughput."""

    _transactions: int
    _appends: int

    @property
    def transactions(self) -> int:
        """Write transactions committed by this log since open."""
        return self._transactions

    @property
    def appends(self) -> int:
        """Appends settled by those transactions; ``appends / transactions`` is the group size."""
        return self._appends


def settle(outcomes: Iterable[tuple[QueuedAppend, list[CloudEvent] | None, BaseException | None]]) -> None:
    """Answer each queued append (its stored records, or its error) unless its caller stopped waiting."""
    for request, stored, error in outcomes:
        if request.future.done():
            continue
        if error is not None:
            request.future.set_exception(error)
        else:
            assert stored is not None
            request.future.set_result(stored)
