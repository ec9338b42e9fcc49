"""The bus in memory: the JetStream semantics Nexus relies on, in one process, for tests.

Streams keep their messages with sequence numbers, de-duplicate by ``Nats-Msg-Id`` within a
window, and NEXUS_CMD drops a message once it is acknowledged (work-queue retention).
Subjects and headers are checked, and messages measured against ``max_payload``, exactly as
the JetStream adapter does. Durable consumers are shared by name: every replica started with the same name takes the
next message not yet handed out, so replicas split the work as on JetStream. Handler
outcomes (ack, retry with back-off, dead letter) are decided by the same code as JetStream's.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from opentelemetry import trace

from nexus.bus import _dispatch
from nexus.bus._port import (
    Bus,
    BusError,
    BusTimeoutError,
    BusUnavailableError,
    Consumer,
    ConsumerSpec,
    ConsumerState,
    Delivery,
    Handler,
    KeyValueBucket,
    KeyValueEntry,
    OutboundMessage,
    PublishAck,
    StoredMessage,
    StreamState,
)
from nexus.bus._protocol import header_block
from nexus.bus._streams import NEXUS_STREAMS, StreamSpec
from nexus.bus._subjects import check_subject, clean_header_dict, matches_any, subject_matches
from nexus.proto import CloudEvent, encode_event, subject_for

__all__ = ["MemoryBus"]


@dataclass
class _Stored:
    seq: int
    subject: str
    data: bytes
    headers: dict[str, str]


@dataclass
class _Stream:
    spec: StreamSpec
    messages: dict[int, _Stored] = field(default_factory=dict)
    last_seq: int = 0
    seen_ids: dict[str, tuple[int, float]] = field(default_factory=dict)


@dataclass
class _Durable:
    spec: ConsumerSpec
    stream: _Stream
    cursor: int
    pending: dict[int, int] = field(default_factory=dict)
    """Sequence → deliveries so far, for messages handed out and not yet settled."""
    redeliver: list[tuple[float, int]] = field(default_factory=list)
    """Heap of (due time, sequence) of nak'd messages."""
    deliveries: dict[int, int] = field(default_factory=dict)


class MemoryBus(Bus):
    """An in-process bus with the JetStream adapter's semantics (see the module docstring)."""

    def __init__(self, *, tracer_provider: trace.TracerProvider | None = None, max_payload: int = 1024 * 1024) -> None:
        self._max_payload = max_payload
        self._buckets: dict[str, _MemoryBucket] = {}
        self._streams: dict[str, _Stream] = {}
        self._durables: dict[tuple[str, str], _Durable] = {}
        self._consumers: list[_MemoryConsumer] = []
        self._replies: dict[str, asyncio.Future[bytes]] = {}
        self._reply_tokens = itertools.count(1)
        self._changed = asyncio.Event()
        self._tracer = trace.get_tracer("nexus.bus", tracer_provider=tracer_provider)
        self._closed = False

    async def ensure_streams(self, streams: Sequence[StreamSpec] = NEXUS_STREAMS) -> None:
        for spec in streams:
            self._streams.setdefault(spec.name, _Stream(spec))

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _stream_for(self, subject: str) -> _Stream:
        for stream in self._streams.values():
            if matches_any(stream.spec.subjects, subject):
                return stream
        raise BusError(f"no stream accepts subject {subject!r}: call ensure_streams() first")

    def _checked(self, subject: str, payload: bytes, headers: Mapping[str, str]) -> dict[str, str]:
        """The headers as JetStream would carry them; refuses what JetStream's adapter refuses."""
        check_subject(subject)
        cleaned = clean_header_dict(headers)
        size = (len(header_block(cleaned.items())) if cleaned else 0) + len(payload)
        if size > self._max_payload:
            raise BusError(f"message on {subject} is {size} bytes; NATS allows {self._max_payload}")
        return cleaned

    def _store(self, subject: str, payload: bytes, headers: dict[str, str]) -> PublishAck:
        stream = self._stream_for(subject)
        msg_id = headers.get(_dispatch.MSG_ID_HEADER)
        now = time.monotonic()
        if msg_id:
            seen = stream.seen_ids.get(msg_id)
            if seen is not None and now - seen[1] < stream.spec.duplicate_window:
                return PublishAck(stream.spec.name, seen[0], duplicate=True)
        stream.last_seq += 1
        stream.messages[stream.last_seq] = _Stored(stream.last_seq, subject, payload, headers)
        if msg_id:
            stream.seen_ids[msg_id] = (stream.last_seq, now)
        self._notify()
        return PublishAck(stream.spec.name, stream.last_seq)

    async def publish(
        self, subject: str, payload: bytes, *, msg_id: str | None = None, headers: Mapping[str, str] | None = None
    ) -> PublishAck:
        (ack,) = await self.publish_many([OutboundMessage(subject, payload, msg_id, headers)])
        return ack

    async def publish_many(self, messages: Sequence[OutboundMessage]) -> list[PublishAck]:
        self._check_open()
        checked = []
        for message in messages:
            headers = dict(message.headers) if message.headers else {}
            if message.msg_id:
                headers[_dispatch.MSG_ID_HEADER] = message.msg_id
            checked.append((message, self._checked(message.subject, message.payload, headers)))
        acks = []
        for message, headers in checked:
            span = _dispatch.publish_span(self._tracer, message.subject, None)
            _dispatch.inject(span, headers)
            try:
                acks.append(self._store(message.subject, message.payload, headers))
            finally:
                span.end()
        return acks

    async def publish_event(self, event: CloudEvent) -> PublishAck:
        (ack,) = await self.publish_events([event])
        return ack

    async def publish_events(self, events: Sequence[CloudEvent]) -> list[PublishAck]:
        self._check_open()
        checked = []
        for event in events:
            subject = subject_for(event)
            headers = {_dispatch.MSG_ID_HEADER: event.id}
            if event.position is not None:
                headers["Nexus-Position"] = str(event.position)
            payload = encode_event(event)
            checked.append((event, subject, payload, self._checked(subject, payload, headers)))
        acks = []
        for event, subject, payload, headers in checked:
            parent = {"traceparent": event.traceparent} if event.traceparent else None
            span = _dispatch.publish_span(self._tracer, subject, parent)
            _dispatch.inject(span, headers)
            try:
                acks.append(self._store(subject, payload, headers))
            finally:
                span.end()
        return acks

    async def request(
        self,
        subject: str,
        payload: bytes,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 - a deadline per call, part of the API
        headers: Mapping[str, str] | None = None,
    ) -> bytes:
        self._check_open()
        token = f"_INBOX.memory.{next(self._reply_tokens)}"
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._replies[token] = future
        try:
            await self.publish(subject, payload, headers={**(headers or {}), _dispatch.REPLY_HEADER: token})
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise BusTimeoutError(f"no reply to {subject} within {timeout:g} s") from None
        finally:
            self._replies.pop(token, None)

    def _reply(self, inbox: str, payload: bytes) -> None:
        future = self._replies.get(inbox)
        if future is not None and not future.done():
            future.set_result(payload)

    async def consume(
        self, spec: ConsumerSpec, handler: Handler, *, flush: Callable[[], Awaitable[None]] | None = None
    ) -> Consumer:
        self._check_open()
        stream = self._streams.get(spec.stream)
        if stream is None:
            raise BusError(f"stream {spec.stream} does not exist: call ensure_streams() first")
        durable = self._durables.get((spec.stream, spec.name))
        if durable is None:
            durable = _Durable(spec, stream, cursor=max(spec.deliver_from_seq or 1, 1))
            self._durables[(spec.stream, spec.name)] = durable
        consumer = _MemoryConsumer(self, durable, spec, handler, flush)
        consumer.start()
        self._consumers.append(consumer)
        return consumer

    # -- looking into streams --------------------------------------------------------------

    @property
    def max_payload(self) -> int:
        return self._max_payload

    def _stream(self, name: str) -> _Stream:
        stream = self._streams.get(name)
        if stream is None:
            raise BusError(f"stream {name}: stream not found")
        return stream

    async def stream_state(self, stream: str) -> StreamState:
        return self._state(self._stream(stream))

    def _state(self, stream: _Stream) -> StreamState:
        seqs = stream.messages.keys()
        return StreamState(
            name=stream.spec.name,
            subjects=stream.spec.subjects,
            messages=len(stream.messages),
            bytes=sum(len(m.data) for m in stream.messages.values()),
            first_seq=min(seqs) if seqs else stream.last_seq + 1,
            last_seq=stream.last_seq,
            consumer_count=sum(1 for (name, _) in self._durables if name == stream.spec.name),
        )

    async def streams(self) -> list[StreamState]:
        return [self._state(stream) for stream in self._streams.values()]

    async def consumers(self, stream: str) -> list[ConsumerState]:
        self._stream(stream)
        return [self._consumer_state(d) for (name, _), d in self._durables.items() if name == stream]

    async def consumer_state(self, stream: str, name: str) -> ConsumerState | None:
        durable = self._durables.get((stream, name))
        return None if durable is None else self._consumer_state(durable)

    @staticmethod
    def _consumer_state(durable: _Durable) -> ConsumerState:
        spec = durable.spec
        stream = durable.stream
        waiting = [
            seq
            for seq, m in stream.messages.items()
            if seq >= durable.cursor and matches_any(spec.filter_subjects, m.subject)
        ]
        unsettled = [*durable.pending, *(seq for _, seq in durable.redeliver)]
        return ConsumerState(
            stream=spec.stream,
            name=spec.name,
            filter_subjects=spec.filter_subjects,
            num_pending=len(waiting),
            num_ack_pending=len(durable.pending),
            num_redelivered=sum(1 for count in durable.deliveries.values() if count > 1),
            ack_floor=min([*unsettled, durable.cursor]) - 1,
        )

    async def get_message(self, stream: str, seq: int) -> StoredMessage | None:
        stored = self._stream(stream).messages.get(seq)
        return None if stored is None else self._message(stream, stored)

    async def next_message(self, stream: str, seq: int, subject: str) -> StoredMessage | None:
        check_subject(subject)
        for stored in self._stream(stream).messages.values():
            if stored.seq >= seq and subject_matches(subject, stored.subject):
                return self._message(stream, stored)
        return None

    async def last_message(self, stream: str, subject: str) -> StoredMessage | None:
        check_subject(subject)
        for stored in reversed(self._stream(stream).messages.values()):
            if stored.subject == subject:
                return self._message(stream, stored)
        return None

    @staticmethod
    def _message(stream: str, stored: _Stored) -> StoredMessage:
        return StoredMessage(stream, stored.seq, stored.subject, stored.data, dict(stored.headers))

    async def delete_message(self, stream: str, seq: int) -> bool:
        return self._stream(stream).messages.pop(seq, None) is not None

    async def key_value(self, bucket: str, *, ttl: float | None = None) -> KeyValueBucket:
        self._check_open()
        found = self._buckets.get(bucket)
        if found is None:
            found = self._buckets[bucket] = _MemoryBucket(ttl)
        return found

    async def ping(self) -> None:
        if self._closed:
            raise BusUnavailableError("the bus is closed")

    async def close(self) -> None:
        if self._closed:
            return
        await asyncio.gather(*(consumer.stop() for consumer in self._consumers), return_exceptions=True)
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise BusUnavailableError("the bus is closed")

    # -- the durable's bookkeeping, the JetStream server's job on the real bus -------------

    def _next(self, durable: _Durable) -> tuple[_Stored, int] | float | None:
        """The next message to hand out with its delivery count, else the time of the next redelivery."""
        now = time.monotonic()
        while durable.redeliver and durable.redeliver[0][0] <= now:
            _, seq = heapq.heappop(durable.redeliver)
            stored = durable.stream.messages.get(seq)
            if stored is not None:
                return self._hand_out(durable, stored)
        if len(durable.pending) < durable.spec.max_ack_pending:
            while durable.cursor <= durable.stream.last_seq:
                seq = durable.cursor
                durable.cursor += 1
                stored = durable.stream.messages.get(seq)
                if stored is not None and matches_any(durable.spec.filter_subjects, stored.subject):
                    return self._hand_out(durable, stored)
        return durable.redeliver[0][0] if durable.redeliver else None

    @staticmethod
    def _hand_out(durable: _Durable, stored: _Stored) -> tuple[_Stored, int]:
        count = durable.deliveries.get(stored.seq, 0) + 1
        durable.deliveries[stored.seq] = count
        durable.pending[stored.seq] = count
        return stored, count

    def _settle(self, durable: _Durable, seq: int, kind: str, delay: float = 0.0) -> None:
        durable.pending.pop(seq, None)
        if kind == "retry" and durable.deliveries.get(seq, 0) <= durable.spec.max_deliver:
            heapq.heappush(durable.redeliver, (time.monotonic() + delay, seq))
        else:
            durable.deliveries.pop(seq, None)
            if durable.stream.spec.retention == "workqueue":
                durable.stream.messages.pop(seq, None)
        self._notify()


class _MemoryBucket(KeyValueBucket):
    """A key-value bucket: revisions count every write to the bucket; entries expire after ``ttl``."""

    def __init__(self, ttl: float | None) -> None:
        self._ttl = ttl
        self._entries: dict[str, tuple[bytes, int, float]] = {}
        self._revision = 0

    def _current(self, key: str) -> tuple[bytes, int, float] | None:
        entry = self._entries.get(key)
        if entry is not None and self._ttl and time.monotonic() - entry[2] >= self._ttl:
            del self._entries[key]
            return None
        return entry

    def _write(self, key: str, value: bytes) -> int:
        self._revision += 1
        self._entries[key] = (bytes(value), self._revision, time.monotonic())
        return self._revision

    async def get(self, key: str) -> KeyValueEntry | None:
        entry = self._current(key)
        return None if entry is None else KeyValueEntry(key, entry[0], entry[1])

    async def put(self, key: str, value: bytes) -> int:
        return self._write(key, value)

    async def create(self, key: str, value: bytes) -> int | None:
        return None if self._current(key) is not None else self._write(key, value)

    async def update(self, key: str, value: bytes, *, last: int) -> int | None:
        entry = self._current(key)
        return self._write(key, value) if entry is not None and entry[1] == last else None

    async def purge(self, key: str) -> None:
        self._entries.pop(key, None)


class _MemoryConsumer(Consumer):
    def __init__(
        self,
        bus: MemoryBus,
        durable: _Durable,
        spec: ConsumerSpec,
        handler: Handler,
        flush: Callable[[], Awaitable[None]] | None,
    ) -> None:
        self.spec = spec
        self._bus = bus
        self._durable = durable
        self._handler = handler
        self._flush = flush
        self._held: list[int] = []
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"nexus-memory-consumer-{self.spec.name}")

    async def _run(self) -> None:
        handled = 0
        while not self._stopping:
            changed = self._bus._changed
            item = self._bus._next(self._durable)
            if not isinstance(item, tuple):
                await self._flush_acks()
                handled = 0
                timeout = None if item is None else max(item - time.monotonic(), 0.0)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), timeout)
                continue
            stored, count = item
            await self._process(stored, count)
            handled += 1
            if handled >= self.spec.batch:
                await self._flush_acks()
                handled = 0
        await self._flush_acks()

    async def _process(self, stored: _Stored, count: int) -> None:
        delivery = Delivery(
            subject=stored.subject,
            data=stored.data,
            headers=dict(stored.headers),
            num_delivered=count,
            stream_seq=stored.seq,
            reply=stored.headers.get(_dispatch.REPLY_HEADER),
        )
        outcome = await _dispatch.run_handler(self.spec, self._handler, delivery, self._bus._tracer)
        if outcome.kind == "ack":
            if outcome.reply is not None and delivery.reply:
                self._bus._reply(delivery.reply, outcome.reply)
            if self._flush is None:
                self._bus._settle(self._durable, stored.seq, "ack")
            else:
                self._held.append(stored.seq)
        elif outcome.kind == "retry":
            self._bus._settle(self._durable, stored.seq, "retry", outcome.delay)
        else:
            headers, data = _dispatch.fit_dead_letter(
                _dispatch.dead_letter_headers(self.spec, delivery, self.spec.stream, outcome),
                stored.data,
                self._bus.max_payload,
                lambda headers: len(header_block(headers.items())),
            )
            self._bus._store(_dispatch.dlq_subject_for(self.spec), data, headers)
            if delivery.reply:
                error = {"accepted": False, "error": outcome.error, "reason": outcome.reason}
                self._bus._reply(delivery.reply, json.dumps(error).encode())
            self._bus._settle(self._durable, stored.seq, "dead_letter")
        _dispatch.count(self.spec, outcome)

    async def _flush_acks(self) -> None:
        if not self._held:
            return
        held, self._held = self._held, []
        if self._flush is not None:
            try:
                await self._flush()
            except Exception as exc:
                _dispatch.logger.warning("consumer %s: flush failed, redelivering: %r", self.spec.name, exc)
                for seq in held:
                    self._bus._settle(self._durable, seq, "retry")
                return
        for seq in held:
            self._bus._settle(self._durable, seq, "ack")

    async def stop(self) -> None:
        self._stopping = True
        self._bus._notify()
        if self._task is not None:
            await asyncio.shield(self._task)
