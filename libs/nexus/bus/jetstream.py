"""The bus over NATS JetStream, on nats-py's public API, with an optional accelerator.

The public path: a publish is ``js.publish_async`` (at most ``window`` unacknowledged, nats-py's
``publish_async_max_pending``), whose futures are gathered per batch; a consumer creates its
durable with ``add_consumer(ConsumerConfig)``, pulls with ``pull_subscribe_bind().fetch()``,
reads ``msg.metadata`` and settles with ``ack``/``nak(delay)``/``term``. nats-py's management
API serves the rare calls (streams, key-value buckets, message lookups); its errors are told
apart by class and ``err_code``, never by their text, and never reach callers.

The accelerated path (``_wire``, ``NEXUS_BUS_ACCELERATOR``): publishes are written as one
buffer of ``HPUB`` commands per batch with the PubAcks collected by a raw inbox handler, and a
consumer keeps one pull request open and acks with one buffer of ``PUB`` commands. It touches
nats-py internals, checked at start-up; when the check fails the bus takes the public path.
Both paths pass the same contract suite (tests/bus/bus_contract.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import NoServersError
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    ConsumerInfo,
    DeliverPolicy,
    KeyValueConfig,
    RawStreamMsg,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
)
from nats.js.errors import (
    APIError,
    BucketNotFoundError,
    FetchTimeoutError,
    KeyDeletedError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoStreamResponseError,
    NotFoundError,
    ServiceUnavailableError,
)
from nats.js.kv import KeyValue
from opentelemetry import trace

from nexus.bus import _dispatch, _port, _wire
from nexus.bus._metrics import CONSUMER_LAG, CONSUMER_PROCESSED, PUBLISHED
from nexus.bus._port import (
    Bus,
    BusArgumentError,
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
    StreamConfigError,
    StreamState,
)
from nexus.bus._protocol import LazyHeaders, header_block, parse_headers
from nexus.bus._streams import DUPLICATE_WINDOW_SECONDS, NEXUS_STREAMS, StreamSpec
from nexus.bus._subjects import check_subject, clean_header_dict, clean_value, matches_any
from nexus.bus._wire import Wire, WireError
from nexus.obs import Backoff, RateLimitedLog
from nexus.proto import CloudEvent, encode_event, subject_for

__all__ = [
    "DUPLICATE_WINDOW_SECONDS",
    "NEXUS_STREAMS",
    "JetStreamAPIError",
    "JetStreamBus",
    "PendingAcks",
    "StreamSpec",
    "redact_url",
]

logger = logging.getLogger("nexus.bus")

QUIET_INTERVAL = 10.0
"""Seconds between two log lines of the same repeated error (the lines in between are counted)."""
_IDLE_PULL_S = 15.0
"""The longest an idle consumer's pull request lasts. How long it lasts delays nothing (a message
goes to an open request at once); it is how often an idle consumer asks again. Requests lost
with a connection are asked again on reconnecting; one lost otherwise is noticed within this
time plus two seconds."""

_quiet = RateLimitedLog(logger, interval=QUIET_INTERVAL)

# JetStream API error codes (``err_code`` of an API error response).
ERR_CONSUMER_NOT_FOUND = 10014
ERR_STREAM_NOT_FOUND = 10059
ERR_MESSAGE_NOT_FOUND = 10037
ERR_SEQUENCE_NOT_FOUND = 10043


class JetStreamAPIError(BusError):
    """The JetStream API answered a call with an error.

    Attributes:
        code: the HTTP-like status (404, 400, 503, …).
        err_code: JetStream's own error code (e.g. 10014, consumer not found).
        description: the server's text.
    """

    def __init__(self, subject: str, code: int, err_code: int, description: str) -> None:
        super().__init__(f"{subject}: {description} (code {err_code})")
        self.code = code
        self.err_code = err_code
        self.description = description

    @property
    def missing(self) -> bool:
        """The stream or the consumer the call named does not exist."""
        return self.err_code in (ERR_CONSUMER_NOT_FOUND, ERR_STREAM_NOT_FOUND)


class _NoStreamError(BusError):
    """A publish reached no stream (JetStream answered 503, no responders)."""


def redact_url(url: str) -> str:
    """``url`` without the password of its user part, for messages and logs."""
    redacted = []
    for part in url.split(","):
        try:
            pieces = urlsplit(part)
        except ValueError:
            redacted.append("<unparsable URL>")
            continue
        if pieces.password is not None:
            netloc = f"{pieces.username}:***@{pieces.hostname}" + (f":{pieces.port}" if pieces.port else "")
            part = urlunsplit(pieces._replace(netloc=netloc))
        redacted.append(part)
    return ",".join(redacted)


def _stream_config(spec: StreamSpec, replicas: int | None) -> StreamConfig:
    return StreamConfig(
        name=spec.name,
        subjects=list(spec.subjects),
        retention=RetentionPolicy(spec.retention),
        storage=StorageType(spec.storage),
        duplicate_window=spec.duplicate_window,
        num_replicas=replicas or 1,
    )


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    """nats-py's errors as the bus's: callers never see nats-py's exceptions."""
    try:
        yield
    except ServiceUnavailableError as exc:
        raise BusUnavailableError(f"{what}: JetStream is not available ({exc.description or 'no responders'})") from exc
    except APIError as exc:
        raise JetStreamAPIError(what, exc.code or 0, exc.err_code or 0, exc.description or type(exc).__name__) from exc
    except (NatsError, TimeoutError) as exc:
        raise BusUnavailableError(f"{what}: {_describe(exc)}") from exc


def _stored(stream: str, raw: RawStreamMsg) -> StoredMessage:
    headers = {str(key): str(value) for key, value in (raw.headers or {}).items()}
    return StoredMessage(stream, raw.seq or 0, raw.subject or "", raw.data or b"", headers)


class _Bucket(KeyValueBucket):
    """A JetStream key-value bucket through nats-py's KeyValue."""

    def __init__(self, kv: KeyValue, name: str) -> None:
        self._kv = kv
        self._name = name

    async def get(self, key: str) -> KeyValueEntry | None:
        with _translated(f"bucket {self._name}: get {key}"):
            try:
                entry = await self._kv.get(key)
            except (KeyNotFoundError, KeyDeletedError):
                return None
        return KeyValueEntry(key, entry.value or b"", entry.revision or 0)

    async def put(self, key: str, value: bytes) -> int:
        with _translated(f"bucket {self._name}: put {key}"):
            return await self._kv.put(key, value)

    async def create(self, key: str, value: bytes) -> int | None:
        with _translated(f"bucket {self._name}: create {key}"):
            try:
                return await self._kv.create(key, value)
            except KeyWrongLastSequenceError:
                return None

    async def update(self, key: str, value: bytes, *, last: int) -> int | None:
        with _translated(f"bucket {self._name}: update {key}"):
            try:
                return await self._kv.update(key, value, last=last)
            except (KeyWrongLastSequenceError, KeyNotFoundError, KeyDeletedError):
                return None

    async def purge(self, key: str) -> None:
        with _translated(f"bucket {self._name}: purge {key}"):
            await self._kv.purge(key)


_ACK = b"+ACK"
_TERM = b"+TERM"


class _PubAck(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: dict[str, Any] | None = None


_pub_ack_decoder = msgspec.json.Decoder(_PubAck)


class _Batch:
    """The acks of one ``_Pipeline.send``: filled in by index as they arrive."""

    __slots__ = ("acks", "chunks", "future", "futures", "remaining")

    def __init__(self, size: int, future: asyncio.Future[list[PublishAck]]) -> None:
        self.acks: list[Any] = [None] * size
        self.remaining = size
        self.future = future
        self.chunks: list[tuple[int, int]] = []
        """(first token, count) of each part sent, to forget them on a timeout (accelerated path)."""
        self.futures: list[asyncio.Future[Any]] = []
        """nats-py's publish_async futures (public path)."""


class _Pipeline:
    """Publishes to stream subjects with a reply inbox per message and matches the PubAcks.

    At most ``window`` publishes are unacknowledged; a batch larger than the room left is
    sent in parts as acks come back. The acks of a batch resolve one future.
    """

    def __init__(self, wire: Wire, window: int) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window!r}")
        self._wire = wire
        self._prefix = wire.nc.new_inbox()
        self._reply_base = f"{self._prefix}.".encode()
        self._next_token = 1
        self._pending: dict[int, tuple[_Batch, int]] = {}
        self._window = window
        self._low = window // 2
        self._in_flight = 0
        self._room = asyncio.Event()
        self._room.set()
        self._subjects: dict[str, bytes] = {}
        self._sub: Any = None

    async def start(self) -> None:
        self._sub = await self._wire.subscribe(f"{self._prefix}.*", self._on_ack)

    def _subject(self, subject: str) -> bytes:
        encoded = self._subjects.get(subject)
        if encoded is None:
            check_subject(subject)
            if len(self._subjects) > 10_000:
                self._subjects.clear()
            encoded = self._subjects[subject] = subject.encode()
        return encoded

    @staticmethod
    def headers(headers: Mapping[str, str]) -> bytes:
        """Headers as this pipeline sends them: a header block."""
        return header_block(headers.items()) if headers else b""

    async def send(self, items: Sequence[tuple[str, Any, bytes]]) -> _Batch:
        """Send (subject, header block, payload) messages; the batch's future gets the acks in order."""
        max_payload = self._wire.max_payload
        for subject, header, payload in items:
            self._subject(subject)  # refused before anything of the batch is sent or awaited
            if len(header) + len(payload) > max_payload:
                raise BusError(f"message on {subject} is {len(header) + len(payload)} bytes; NATS allows {max_payload}")
        batch = _Batch(len(items), asyncio.get_running_loop().create_future())
        pending = self._pending
        reply_base = self._reply_base
        done = 0
        while done < len(items):
            while self._in_flight >= self._window:
                self._room.clear()
                await self._room.wait()
            count = min(len(items) - done, self._window - self._in_flight)
            first = token = self._next_token
            parts = []
            size = 0
            for index in range(done, done + count):
                subject, header, payload = items[index]
                hlen = len(header)
                total = hlen + len(payload)
                size += total
                parts.append(b"HPUB %s %s%d %d %d\r\n" % (self._subject(subject), reply_base, token, hlen, total))
                parts.append(header)
                parts.append(payload)
                parts.append(b"\r\n")
                pending[token] = (batch, index)
                token += 1
            self._next_token = token
            self._in_flight += count
            batch.chunks.append((first, count))
            try:
                await self._wire.send(b"".join(parts), count, size)
            except BaseException:
                self.abandon(batch)
                raise
            done += count
        return batch

    def abandon(self, batch: _Batch) -> None:
        """Forget the acks of ``batch`` still outstanding (timed out, or its send failed)."""
        for first, count in batch.chunks:
            for token in range(first, first + count):
                if self._pending.pop(token, None) is not None:
                    self._in_flight -= 1
        batch.chunks = []
        self._room.set()

    def _on_ack(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        entry = self._pending.pop(int(subject[subject.rfind(b".") + 1 :]), None)
        if entry is None:
            return
        self._in_flight -= 1
        if self._in_flight <= self._low:
            self._room.set()
        batch, index = entry
        future = batch.future
        if future.done():
            return
        if not data:
            status = parse_headers(headers).get("Status")
            if status == "503":
                future.set_exception(_NoStreamError("no JetStream stream accepts this subject (no responders)"))
            else:
                future.set_exception(BusError(f"unexpected empty publish acknowledgement (status {status})"))
            return
        try:
            ack = _pub_ack_decoder.decode(data)
        except msgspec.DecodeError:
            future.set_exception(BusError(f"unreadable publish acknowledgement: {data[:200]!r}"))
            return
        if ack.error:
            future.set_exception(BusError(f"JetStream refused the message: {ack.error.get('description', ack.error)}"))
            return
        batch.acks[index] = PublishAck(ack.stream, ack.seq, ack.duplicate)
        batch.remaining -= 1
        if not batch.remaining:
            future.set_result(batch.acks)

    def fail_all(self, error: Exception) -> None:
        pending, self._pending = self._pending, {}
        self._in_flight = 0
        self._room.set()
        for batch, _ in pending.values():
            if not batch.future.done():
                batch.future.set_exception(error)


class _PublicPipeline:
    """Publishes with nats-py's ``js.publish_async`` (at most ``window`` unacknowledged, its
    ``publish_async_max_pending``); the futures of a batch resolve one future, as ``_Pipeline``'s do."""

    def __init__(self, nc: NatsClient, js: JetStreamContext) -> None:
        self._nc = nc
        self._js = js
        self._batches: set[_Batch] = set()

    async def start(self) -> None:
        return None

    @staticmethod
    def headers(headers: Mapping[str, str]) -> dict[str, str]:
        """Headers as this pipeline sends them: a dict, checked and cleaned as the bus does."""
        return clean_header_dict(headers)

    async def send(self, items: Sequence[tuple[str, Any, bytes]]) -> _Batch:
        max_payload = self._nc.max_payload
        prepared = []
        for subject, header, payload in items:
            check_subject(subject)
            headers = parse_headers(header) if isinstance(header, bytes) else header
            size = (len(header_block(headers.items())) if headers else 0) + len(payload)
            if size > max_payload:
                raise BusError(f"message on {subject} is {size} bytes; NATS allows {max_payload}")
            prepared.append((subject, payload, headers or None))
        batch = _Batch(len(items), asyncio.get_running_loop().create_future())
        self._batches.add(batch)
        batch.future.add_done_callback(lambda _: self._batches.discard(batch))
        try:
            for index, (subject, payload, headers) in enumerate(prepared):
                future = await self._js.publish_async(subject, payload, headers=headers)
                batch.futures.append(future)
                future.add_done_callback(_PublicPipeline._on_ack(batch, index))
        except BaseException:
            self.abandon(batch)
            if not batch.future.done():
                batch.future.cancel()
            raise
        return batch

    @staticmethod
    def _on_ack(batch: _Batch, index: int) -> Callable[[asyncio.Future[Any]], None]:
        def done(future: asyncio.Future[Any]) -> None:
            if batch.future.done() or future.cancelled():
                return
            exc = future.exception()
            if exc is not None:
                batch.future.set_exception(_publish_error(exc))
                return
            ack = future.result()
            batch.acks[index] = PublishAck(ack.stream, ack.seq, bool(ack.duplicate))
            batch.remaining -= 1
            if not batch.remaining:
                batch.future.set_result(batch.acks)

        return done

    def abandon(self, batch: _Batch) -> None:
        for future in batch.futures:
            future.cancel()  # nats-py forgets it and frees its place in the window
        batch.futures = []

    def fail_all(self, error: Exception) -> None:
        for batch in list(self._batches):
            self.abandon(batch)
            if not batch.future.done():
                batch.future.set_exception(error)


def _publish_error(exc: BaseException) -> BusError:
    if isinstance(exc, NoStreamResponseError):
        return _NoStreamError("no JetStream stream accepts this subject (no responders)")
    if isinstance(exc, APIError):
        return BusError(f"JetStream refused the message: {exc.description or exc}")
    return BusUnavailableError(f"cannot publish: {_describe(exc)}")


class PendingAcks(_port.PendingAcks):
    """The acks of events sent by ``JetStreamBus.send_events``, not yet awaited."""

    def __init__(self, bus: JetStreamBus, batch: _Batch | None, spans: list[trace.Span]) -> None:
        self._bus = bus
        self._batch = batch
        self._spans = spans

    def __len__(self) -> int:
        return 0 if self._batch is None else len(self._batch.acks)

    def discard(self) -> None:
        """Stop waiting for these acks (the caller gave up on them, e.g. it lost its lease)."""
        if self._batch is not None:
            self._bus._pipeline.abandon(self._batch)
            if not self._batch.future.done():
                self._batch.future.cancel()
        for span in self._spans:
            span.end()
        self._spans = []

    async def acks(self) -> list[PublishAck]:
        """Wait for the acks, in order.

        Raises:
            BusTimeoutError: not all acknowledged within the bus's ``ack_timeout``.
            BusError: JetStream refused one of them.
        """
        try:
            return await self._bus._settle(self._batch)
        finally:
            for span in self._spans:
                span.end()
            self._spans = []


class JetStreamBus(Bus):
    """The bus over a NATS server with JetStream. Create it with ``JetStreamBus.connect``."""

    def __init__(
        self,
        nc: NatsClient,
        *,
        ack_timeout: float = 10.0,
        window: int = 8192,
        tracer_provider: trace.TracerProvider | None = None,
        owned: Sequence[Any] = (),
        accelerator: str = "auto",
        replicas: int | None = None,
    ) -> None:
        self.nc = nc
        self.ack_timeout = ack_timeout
        self.replicas = replicas
        """Copies of each Nexus stream and bucket in a JetStream cluster (None: one for new ones, others kept)."""
        self.accelerated = _wire.choose(accelerator, nc)
        """Whether the accelerator (``_wire``) runs under this connection; else nats-py's public API."""
        self._wire: Wire | None = None
        self._pipeline: _Pipeline | _PublicPipeline
        if self.accelerated:
            try:
                self._wire = Wire(nc)
            except WireError as exc:  # choose() checked the same: only a bug gets here
                raise BusError(str(exc)) from exc
            self.js: JetStreamContext = nc.jetstream()
            self._pipeline = _Pipeline(self._wire, window)
        else:
            self.js = nc.jetstream(publish_async_max_pending=window)
            self._pipeline = _PublicPipeline(nc, self.js)
        self._published: dict[str, Any] = {}
        self._event_subjects: dict[str, str] = {}
        self._tracer = trace.get_tracer("nexus.bus", tracer_provider=tracer_provider)
        self._consumers: list[_JetStreamConsumer | _PublicConsumer] = []
        self._replies: dict[str, asyncio.Future[bytes]] = {}
        self._reply_prefix = nc.new_inbox()
        self._reply_tokens = itertools.count(1)
        self._owned = list(owned)
        self._closed = False
        self._repairing: asyncio.Task[None] | None = None
        self._repaired_at = -1e9

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        name: str = "nexus",
        ack_timeout: float = 10.0,
        window: int = 8192,
        connect_timeout: float = 5.0,
        tracer_provider: trace.TracerProvider | None = None,
        ensure_streams: bool = True,
        user: str | None = None,
        password: str | None = None,
        reconnect: bool = True,
        accelerator: str = "auto",
        replicas: int | None = None,
    ) -> JetStreamBus:
        """Connect to ``url`` and (by default) create or update the Nexus streams.

        Args:
            url: ``nats://host:port`` (several, comma-separated, for a cluster); it may carry
                ``user:password@``, though ``user`` and ``password`` are the better way.
            name: client name the server shows in its connection list.
            ack_timeout: seconds to wait for a PubAck before BusTimeoutError.
            window: publishes in flight at most (pipelining bound).
            connect_timeout: seconds to wait for the first connection.
            tracer_provider: OpenTelemetry provider for the publish/consume spans (default: global).
            ensure_streams: call ``ensure_streams()`` once connected.
            user: NATS user (``NEXUS_NATS_USER``), with ``password``.
            password: that user's password (``NEXUS_NATS_PASSWORD``).
            reconnect: keep reconnecting, forever, when the connection is lost (services).
                False fails at once, with the reason, when the server cannot be reached or
                refuses the credentials, and never reconnects (one-shot commands).
            accelerator: ``NEXUS_BUS_ACCELERATOR``: ``auto`` runs the accelerator (``_wire``) on
                the nats-py versions it was tested with, ``on`` on any that passes its check,
                ``off`` never; without it the bus uses nats-py's public API only.
            replicas: ``NEXUS_NATS_REPLICAS``: copies of each Nexus stream and key-value bucket
                in a JetStream cluster (3 on a 3-node cluster: a stream survives the loss of a
                node); an existing stream with another count is changed to it. None creates
                single-copy streams and leaves existing ones as they are (the commands use it).

        Raises:
            BusUnavailableError: the server cannot be reached, or refused the credentials.
            StreamConfigError: a Nexus stream exists with settings that cannot be updated.
        """
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            # Every distinct reason, in order: a refused password is followed by a reset socket.
            # Not logged: the error raised below names them.
            if _describe(exc) not in errors:
                errors.append(_describe(exc))

        credentials: dict[str, Any] = {}
        if user is not None or password is not None:
            credentials = {"user": user, "password": password}
        nc = NatsClient()
        buses: list[JetStreamBus] = []

        async def on_reconnected() -> None:
            await _on_reconnected()
            for bus in buses:
                bus._ask_again()

        try:
            async with asyncio.timeout(None if reconnect else 2 * connect_timeout + 1):
                await nc.connect(
                    url.split(","),
                    name=name,
                    # nats-py annotates these as int, but takes (and documents) seconds as floats.
                    connect_timeout=connect_timeout,  # type: ignore[arg-type]
                    allow_reconnect=reconnect,
                    # nats-py tries a server max_reconnect_attempts + 1 times; 0 would mean forever.
                    max_reconnect_attempts=-1 if reconnect else 1,
                    reconnect_time_wait=0.5 if reconnect else 0.1,  # type: ignore[arg-type]
                    # The client's own flusher coalesces our fire-and-forget publishes into few writes.
                    pending_size=64 * 1024 * 1024,
                    error_cb=on_error if not reconnect else _log_error,
                    reconnected_cb=on_reconnected,
                    **credentials,
                )
        except (OSError, NatsError, TimeoutError) as exc:
            # A refused connection leaves nats-py's socket open: close it, or it leaks.
            with contextlib.suppress(NatsError, OSError, TimeoutError):
                await nc.close()
            reason = "; ".join(errors[:3]) if errors else _describe(exc)
            raise BusUnavailableError(f"cannot connect to NATS at {redact_url(url)}: {reason}") from exc
        try:
            bus = cls(
                nc,
                ack_timeout=ack_timeout,
                window=window,
                tracer_provider=tracer_provider,
                accelerator=accelerator,
                replicas=replicas,
            )
            buses.append(bus)
            await bus._pipeline.start()
            await nc.subscribe(f"{bus._reply_prefix}.*", cb=bus._on_reply)
            if ensure_streams:
                await bus.ensure_streams()
        except BaseException:
            await nc.close()
            raise
        return bus

    def own(self, resource: Any) -> None:
        """Stop ``resource`` (anything with an async ``stop()``) when the bus closes: the embedded server."""
        self._owned.append(resource)

    # -- streams ---------------------------------------------------------------------------

    async def ensure_streams(self, streams: Sequence[StreamSpec] = NEXUS_STREAMS) -> None:
        for spec in streams:
            await self._ensure_stream(spec)

    def _repair_streams_soon(self) -> None:
        """A publish reached no stream: recreate missing Nexus streams in the background (at most every 2 s)."""
        loop = asyncio.get_running_loop()
        if self._closed or (self._repairing and not self._repairing.done()) or loop.time() - self._repaired_at < 2.0:
            return
        self._repaired_at = loop.time()

        async def repair() -> None:
            try:
                await self.ensure_streams()
            except BusError as exc:
                _quiet.warning("repair-streams", "could not recreate the Nexus streams: %s", exc)
            else:
                _quiet.clear("repair-streams")

        self._repairing = asyncio.create_task(repair(), name="nexus-bus-repair-streams")

    async def _ensure_stream(self, spec: StreamSpec) -> None:
        try:
            info = await self.js.stream_info(spec.name)
        except NotFoundError:
            info = None
        except (NatsError, TimeoutError) as exc:
            raise BusUnavailableError(f"JetStream did not answer about stream {spec.name}: {exc!r}") from exc
        if info is None:
            try:
                await self.js.add_stream(_stream_config(spec, self.replicas))
                logger.info("created stream %s", spec.name)
                return
            except APIError as exc:
                raise StreamConfigError(f"cannot create stream {spec.name}: {exc.description}") from exc
        current = info.config
        wrong = _differences(spec, current, self.replicas)
        if not wrong:
            return
        if "retention" in wrong or "storage" in wrong:
            raise StreamConfigError(
                f"stream {spec.name} exists with {', '.join(wrong)} other than Nexus needs "
                f"(retention={spec.retention}, storage={spec.storage}), and JetStream cannot change them in place: "
                f"back up its messages and delete it (nats stream rm {spec.name}); Nexus recreates it at start-up"
            )
        updated = StreamConfig.from_response(current.as_dict())
        # Subjects ours cover are dropped: JetStream refuses overlapping subjects in one stream.
        kept = [s for s in current.subjects or [] if not matches_any(spec.subjects, s)]
        updated.subjects = sorted(set(kept) | set(spec.subjects))
        updated.duplicate_window = spec.duplicate_window
        if self.replicas is not None:
            # A clustered JetStream moves a stream to more (or fewer) copies in place.
            updated.num_replicas = self.replicas
        try:
            await self.js.update_stream(updated)
        except APIError as exc:
            raise StreamConfigError(
                f"stream {spec.name} has {', '.join(wrong)} other than Nexus needs and could not be updated: "
                f"{exc.description}"
            ) from exc
        logger.info("updated stream %s (%s)", spec.name, ", ".join(wrong))

    # -- publishing ------------------------------------------------------------------------

    async def publish(
        self, subject: str, payload: bytes, *, msg_id: str | None = None, headers: Mapping[str, str] | None = None
    ) -> PublishAck:
        (ack,) = await self.publish_many([OutboundMessage(subject, payload, msg_id, headers)])
        return ack

    async def publish_many(self, messages: Sequence[OutboundMessage]) -> list[PublishAck]:
        return await self._publish_many(messages, self.ack_timeout)

    async def _publish_many(self, messages: Sequence[OutboundMessage], ack_timeout: float) -> list[PublishAck]:
        self._check_open()
        recording = _dispatch.tracing_on(self._tracer)
        items = []
        spans = []
        try:
            for message in messages:
                headers = dict(message.headers) if message.headers else {}
                if message.msg_id:
                    headers[_dispatch.MSG_ID_HEADER] = message.msg_id
                if recording:
                    span = _dispatch.publish_span(self._tracer, message.subject, None)
                    _dispatch.inject(span, headers)
                    spans.append(span)
                else:
                    # Nothing records spans: the current context (if any) still travels on.
                    _dispatch.inject_current(headers)
                items.append((message.subject, self._pipeline.headers(headers), message.payload))
            return await self._settle(await self._send(items), ack_timeout)
        finally:
            for span in spans:
                span.end()

    async def publish_event(self, event: CloudEvent) -> PublishAck:
        (ack,) = await self.publish_events([event])
        return ack

    async def publish_events(self, events: Sequence[CloudEvent]) -> list[PublishAck]:
        return await (await self.send_events(events)).acks()

    async def send_events(self, events: Sequence[CloudEvent]) -> PendingAcks:
        """Publish ``events`` now and return their pending acks, for callers that pipeline batches.

        The relay sends batch k+1 while the acks of batch k are on their way; ``acks()`` on the
        result waits for them (in order) and raises as ``publish_events`` would.
        """
        self._check_open()
        items = []
        spans = []
        if _dispatch.tracing_on(self._tracer):
            for event in events:
                subject = subject_for(event)
                headers = {_dispatch.MSG_ID_HEADER: event.id}
                if event.position is not None:
                    headers["Nexus-Position"] = str(event.position)
                # The publish span continues the trace of the operation that appended the event.
                parent = {"traceparent": event.traceparent} if event.traceparent else None
                span = _dispatch.publish_span(self._tracer, subject, parent)
                _dispatch.inject(span, headers)
                spans.append(span)
                items.append((subject, self._pipeline.headers(headers), encode_event(event)))
        elif not self.accelerated:
            for event in events:
                headers = {_dispatch.MSG_ID_HEADER: event.id}
                if event.position is not None:
                    headers["Nexus-Position"] = str(event.position)
                if event.traceparent:
                    headers["traceparent"] = event.traceparent
                items.append((subject_for(event), clean_header_dict(headers), encode_event(event)))
        else:
            # Nothing records spans: the event's own traceparent travels as is, so a consumer
            # that does trace still joins the trace of the operation that appended it.
            subjects = self._event_subjects
            for event in events:
                # Platform events map to a subject from their type alone (ingested ones, from
                # their stream too): the mapping is cached per type.
                cached = subjects.get(event.type) if not (event.streamid or "").startswith("ext-") else None
                if cached is None:
                    subject = subject_for(event)
                    if not (event.streamid or "").startswith("ext-") and len(subjects) < 10_000:
                        subjects[event.type] = subject
                else:
                    subject = cached
                position = "" if event.position is None else f"Nexus-Position: {event.position}\r\n"
                trace_line = f"traceparent: {clean_value(event.traceparent)}\r\n" if event.traceparent else ""
                header = f"NATS/1.0\r\nNats-Msg-Id: {clean_value(event.id)}\r\n{position}{trace_line}\r\n".encode()
                items.append((subject, header, encode_event(event)))
        try:
            batch = await self._send(items)
        except BaseException:
            for span in spans:
                span.end()
            raise
        return PendingAcks(self, batch, spans)

    async def _send(self, items: Sequence[tuple[str, Any, bytes]]) -> _Batch | None:
        if not items:
            return None
        try:
            return await self._pipeline.send(items)
        except NatsError as exc:
            raise BusUnavailableError(f"cannot publish: {exc!r}") from exc

    async def _settle(self, batch: _Batch | None, timeout: float | None = None) -> list[PublishAck]:  # noqa: ASYNC109
        if batch is None:
            return []
        if timeout is None:
            timeout = self.ack_timeout
        try:
            done, _ = await asyncio.wait({batch.future}, timeout=timeout)
        except BaseException:
            # Cancelled while waiting: the acks would otherwise hold the window forever.
            self._pipeline.abandon(batch)
            batch.future.cancel()
            raise
        if not done:
            self._pipeline.abandon(batch)
            batch.future.cancel()
            raise BusTimeoutError(
                f"{batch.remaining} of {len(batch.acks)} publishes not acknowledged within {timeout:g} s"
                + ("" if self.nc.is_connected else " (not connected to NATS)")
            )
        try:
            acks: list[PublishAck] = batch.future.result()
        except _NoStreamError:
            # A Nexus stream was deleted under us: recreate it, so that the caller's retry succeeds.
            self._repair_streams_soon()
            raise
        stream = acks[0].stream
        counter = self._published.get(stream)
        if counter is None:
            counter = self._published[stream] = PUBLISHED.labels(stream)
        counter.inc(sum(1 for ack in acks if not ack.duplicate))
        return acks

    # -- request / reply -------------------------------------------------------------------

    async def request(
        self,
        subject: str,
        payload: bytes,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 - a deadline per call, part of the API
        headers: Mapping[str, str] | None = None,
    ) -> bytes:
        self._check_open()
        token = str(next(self._reply_tokens))
        inbox = f"{self._reply_prefix}.{token}"
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._replies[token] = future
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            merged = dict(headers or {})
            merged[_dispatch.REPLY_HEADER] = inbox
            # The deadline covers the publish too: with NATS down, the PubAck would otherwise be
            # awaited for the bus's whole ack_timeout, however short the caller's timeout.
            await self._publish_many(
                [OutboundMessage(subject, payload, headers=merged)], min(self.ack_timeout, timeout)
            )
            return await asyncio.wait_for(future, max(deadline - loop.time(), 0.001))
        except TimeoutError:
            raise BusTimeoutError(f"no reply to {subject} within {timeout:g} s") from None
        finally:
            self._replies.pop(token, None)

    async def _on_reply(self, msg: Msg) -> None:
        future = self._replies.get(msg.subject.rsplit(".", 1)[-1])
        if future is not None and not future.done():
            future.set_result(msg.data)

    # -- consuming -------------------------------------------------------------------------

    async def consume(
        self, spec: ConsumerSpec, handler: Handler, *, flush: Callable[[], Awaitable[None]] | None = None
    ) -> Consumer:
        self._check_open()
        consumer: _JetStreamConsumer | _PublicConsumer
        if self._wire is not None:
            consumer = _JetStreamConsumer(self, spec, handler, flush, self._wire)
        else:
            consumer = _PublicConsumer(self, spec, handler, flush)
        await consumer.start()
        self._consumers.append(consumer)
        return consumer

    async def api(self, subject: str, request: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """One JetStream API call (``$JS.API.…``) with a JSON body; errors become BusError."""
        try:
            msg = await self.nc.request(subject, json.dumps(request or {}).encode(), timeout=5.0)
        except (NatsError, TimeoutError) as exc:
            raise BusUnavailableError(f"JetStream did not answer {subject}: {exc!r}") from exc
        response: dict[str, Any] = json.loads(msg.data)
        if "error" in response:
            error = response["error"]
            code, err_code = int(error.get("code") or 0), int(error.get("err_code") or 0)
            raise JetStreamAPIError(subject, code, err_code, str(error.get("description", error)))
        return response

    # -- looking into streams --------------------------------------------------------------

    @property
    def max_payload(self) -> int:
        return self.nc.max_payload

    async def stream_state(self, stream: str) -> StreamState:
        with _translated(f"stream {stream}"):
            info = await self.js.stream_info(stream)
        return _stream_state(info)

    async def streams(self) -> list[StreamState]:
        with _translated("streams"):
            return [_stream_state(info) for info in await self.js.streams_info()]

    async def consumers(self, stream: str) -> list[ConsumerState]:
        with _translated(f"consumers of {stream}"):
            return [_consumer_state(stream, info) for info in await self.js.consumers_info(stream)]

    async def consumer_state(self, stream: str, name: str) -> ConsumerState | None:
        try:
            with _translated(f"consumer {name} of {stream}"):
                info = await self.js.consumer_info(stream, name)
        except JetStreamAPIError as exc:
            if exc.missing:
                return None
            raise
        return _consumer_state(stream, info)

    async def consumer_config(self, stream: str, name: str) -> ConsumerConfig | None:
        """A durable's configuration as the server holds it, or None when it does not exist."""
        try:
            with _translated(f"consumer {name} of {stream}"):
                info: ConsumerInfo = await self.js.consumer_info(stream, name)
        except JetStreamAPIError as exc:
            if exc.missing:
                return None
            raise
        config: ConsumerConfig = info.config
        return config

    async def get_message(self, stream: str, seq: int) -> StoredMessage | None:
        if seq < 1:
            return None
        return await self._get(stream, f"message {seq} of {stream}", seq=seq)

    async def next_message(self, stream: str, seq: int, subject: str) -> StoredMessage | None:
        check_subject(subject)
        return await self._get(
            stream, f"next message on {subject} of {stream}", seq=max(seq, 1), subject=subject, next=True
        )

    async def last_message(self, stream: str, subject: str) -> StoredMessage | None:
        check_subject(subject)
        return await self._get(stream, f"last message on {subject} of {stream}", subject=subject)

    async def _get(self, stream: str, what: str, **lookup: Any) -> StoredMessage | None:
        try:
            with _translated(what):
                raw = await self.js.get_msg(stream, **lookup)
        except JetStreamAPIError as exc:
            if exc.err_code == ERR_MESSAGE_NOT_FOUND:
                return None
            raise
        return _stored(stream, raw)

    async def delete_message(self, stream: str, seq: int) -> bool:
        try:
            with _translated(f"delete message {seq} of {stream}"):
                return bool(await self.js.delete_msg(stream, seq))
        except JetStreamAPIError as exc:
            if exc.err_code in (ERR_MESSAGE_NOT_FOUND, ERR_SEQUENCE_NOT_FOUND):
                return False
            raise

    async def key_value(self, bucket: str, *, ttl: float | None = None) -> KeyValueBucket:
        with _translated(f"bucket {bucket}"):
            try:
                kv = await self.js.key_value(bucket)
            except BucketNotFoundError:
                config = KeyValueConfig(
                    bucket=bucket, history=1, storage=StorageType.FILE, ttl=ttl, replicas=self.replicas or 1
                )
                kv = await self.js.create_key_value(config)
        return _Bucket(kv, bucket)

    # -- lifecycle -------------------------------------------------------------------------

    async def ping(self) -> None:
        if self._closed or not self.nc.is_connected:
            raise BusUnavailableError("not connected to NATS")
        try:
            await self.nc.flush(timeout=2)
        except (NatsError, TimeoutError) as exc:
            raise BusUnavailableError(f"NATS did not answer a ping: {exc!r}") from exc

    def _ask_again(self) -> None:
        """After a reconnect: the server forgot the open pull requests; every consumer asks again now."""
        for consumer in self._consumers:
            if isinstance(consumer, _JetStreamConsumer):
                consumer.ask_again()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.gather(*(consumer.stop() for consumer in self._consumers), return_exceptions=True)
        if self._repairing is not None:
            self._repairing.cancel()
            await asyncio.gather(self._repairing, return_exceptions=True)
        self._pipeline.fail_all(BusUnavailableError("the bus is closed"))
        try:
            with contextlib.suppress(NatsError, TimeoutError, OSError):
                await self.nc.drain()
            if not self.nc.is_closed:
                # With the server gone, closing fails on the dead socket: the connection is closed anyway.
                with contextlib.suppress(NatsError, TimeoutError, OSError):
                    await self.nc.close()
        finally:
            for resource in reversed(self._owned):
                await resource.stop()

    def _check_open(self) -> None:
        if self._closed:
            raise BusUnavailableError("the bus is closed")


def _stream_state(info: StreamInfo) -> StreamState:
    return StreamState(
        name=info.config.name or "",
        subjects=tuple(info.config.subjects or ()),
        messages=info.state.messages,
        bytes=info.state.bytes,
        first_seq=info.state.first_seq,
        last_seq=info.state.last_seq,
        consumer_count=info.state.consumer_count,
    )


def _consumer_state(stream: str, info: ConsumerInfo) -> ConsumerState:
    config = info.config
    filters = config.filter_subjects or ([config.filter_subject] if config.filter_subject else [])
    return ConsumerState(
        stream=stream,
        name=info.name,
        filter_subjects=tuple(filters),
        num_pending=info.num_pending or 0,
        num_ack_pending=info.num_ack_pending or 0,
        num_redelivered=info.num_redelivered or 0,
        ack_floor=(info.ack_floor.stream_seq if info.ack_floor is not None else 0) or 0,
    )


def _differences(spec: StreamSpec, current: StreamConfig, replicas: int | None) -> list[str]:
    wrong = []
    if replicas is not None and (current.num_replicas or 1) != replicas:
        wrong.append("replicas")
    if not set(spec.subjects) <= set(current.subjects or []):
        wrong.append("subjects")
    if _value(current.retention) != spec.retention:
        wrong.append("retention")
    if _value(current.storage) != spec.storage:
        wrong.append("storage")
    if (current.duplicate_window or 0) < spec.duplicate_window:
        wrong.append("duplicate_window")
    return wrong


def _value(setting: Any) -> Any:
    # nats-py leaves enums as plain strings in configs read back from the server.
    return getattr(setting, "value", setting)


async def _log_error(exc: Exception) -> None:
    # nats-py calls this on every failed reconnect attempt (twice a second while NATS is down).
    _quiet.warning(f"connection:{type(exc).__name__}", "NATS connection: %s", _describe(exc))


async def _on_reconnected() -> None:
    logger.info("NATS connection restored")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, NoServersError):
        return "no server could be reached"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _parse_ack_subject(reply: str) -> tuple[str, int, int, int]:
    """(stream, num_delivered, stream_seq, num_pending) from a ``$JS.ACK.…`` subject (v1 or v2 form)."""
    tokens = reply.split(".")
    if len(tokens) == 9:
        return tokens[2], int(tokens[4]), int(tokens[5]), int(tokens[8])
    if len(tokens) >= 11:
        return tokens[4], int(tokens[6]), int(tokens[7]), int(tokens[10])
    raise ValueError(f"not a JetStream ack subject: {reply!r}")


class _JetStreamConsumer(Consumer):
    """One replica of a durable pull consumer.

    A single task pulls and processes, so a replica handles its messages one at a time, in
    order; replicas of a service share the durable and JetStream splits the messages.
    """

    def __init__(
        self,
        bus: JetStreamBus,
        spec: ConsumerSpec,
        handler: Handler,
        flush: Callable[[], Awaitable[None]] | None,
        wire: Wire,
    ) -> None:
        self.spec = spec
        self._bus = bus
        self._wire = wire
        self._nc = bus.nc
        self._handler = handler
        self._flush = flush
        self._queue: deque[tuple[bytes, bytes, bytes, bytes | None]] = deque()
        self._wake = asyncio.Event()
        self._inbox = bus.nc.new_inbox()
        self._pull_open = False
        self._pull_deadline = 0.0
        self._requested = 0
        self._received = 0
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._sub: Any = None
        self._held_acks: list[bytes] = []
        self._lag = CONSUMER_LAG.labels(spec.name)
        self._pending_reported: int | None = None
        self._acked = CONSUMER_PROCESSED.labels(spec.name, "ack")
        # A pull request lasts ``_expires`` while messages come; each one that ends empty lasts
        # twice as long as the last, up to _IDLE_PULL_S, so an idle consumer asks a few times
        # a minute instead of twice a second (every ask costs the server and this process).
        # A stopping replica withdraws its open request by unsubscribing its inbox: the server
        # hands messages only to requests whose reply subject still has interest.
        self._expires = _seconds(spec.extra.get("pull_expires_seconds"), 0.5)
        self._pull_expires = self._expires
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{spec.stream}.{spec.name}"
        # A pull that ended in an error status (503: no consumer answers; 409: deleted, limits…)
        # makes the loop check the consumer, recreate it (and its stream) if it is gone, and
        # wait a growing delay before it asks again, instead of asking again at once, forever.
        self._check = False
        self._backoff = Backoff(0.1, 5.0)
        self._failing = False
        self._quiet = RateLimitedLog(logger, interval=QUIET_INTERVAL)

    async def start(self) -> None:
        await self._create()
        self._sub = await self._wire.subscribe(self._inbox, self._on_msg)
        self._task = asyncio.create_task(self._run(), name=f"nexus-consumer-{self.spec.name}")

    async def _create(self) -> None:
        await self._bus.api(f"$JS.API.CONSUMER.CREATE.{self.spec.stream}.{self.spec.name}", await self._config())

    async def _repair(self) -> None:
        """Recreate the consumer, and first its stream if it is a Nexus stream, when either is gone."""
        try:
            await self._bus.api(f"$JS.API.CONSUMER.INFO.{self.spec.stream}.{self.spec.name}")
            return
        except JetStreamAPIError as exc:
            if not exc.missing:
                raise
            stream_missing = exc.err_code == ERR_STREAM_NOT_FOUND
        if stream_missing:
            for stream in NEXUS_STREAMS:
                if stream.name == self.spec.stream:
                    await self._bus._ensure_stream(stream)
        await self._create()
        logger.warning(
            "consumer %s: %s was missing and has been recreated",
            self.spec.name,
            f"stream {self.spec.stream}" if stream_missing else "the durable consumer",
        )

    async def _config(self) -> dict[str, Any]:
        spec = self.spec
        config: dict[str, Any] = {
            "durable_name": spec.name,
            "name": spec.name,
            "ack_policy": "explicit",
            "ack_wait": int(spec.ack_wait_seconds * 1e9),
            # One delivery more than the handler gets: see _dispatch.run_handler.
            "max_deliver": spec.max_deliver + 1,
            "max_ack_pending": spec.max_ack_pending,
            "max_waiting": 512,
            "deliver_policy": "all",
        }
        if len(spec.filter_subjects) == 1:
            config["filter_subject"] = spec.filter_subjects[0]
        else:
            config["filter_subjects"] = list(spec.filter_subjects)
        if spec.deliver_from_seq:
            config["deliver_policy"] = "by_start_sequence"
            config["opt_start_seq"] = spec.deliver_from_seq
        # An existing durable keeps where it started: the start position cannot be updated.
        try:
            info = await self._bus.api(f"$JS.API.CONSUMER.INFO.{spec.stream}.{spec.name}")
        except JetStreamAPIError as exc:
            if not exc.missing:
                raise
        else:
            existing = info["config"]
            config["deliver_policy"] = existing.get("deliver_policy", "all")
            config.pop("opt_start_seq", None)
            if "opt_start_seq" in existing:
                config["opt_start_seq"] = existing["opt_start_seq"]
        return {"stream_name": spec.stream, "config": config}

    def _on_msg(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        if not reply:
            # Status messages end a pull request: 404/408 (nothing more), 409 (limits, deleted).
            parsed = parse_headers(headers)
            status = parsed.get("Status")
            if status and status not in ("100", "404", "408"):
                self._quiet.warning(
                    f"status:{status}",
                    "consumer %s: JetStream status %s %s",
                    self.spec.name,
                    status,
                    parsed.get("Description", ""),
                )
                self._check = True
            elif status in ("404", "408"):
                self._failing = False
                # Ended empty: the next request waits longer; one that delivered starts short.
                self._pull_expires = (
                    min(max(self._pull_expires * 2, self._expires), _IDLE_PULL_S)
                    if self._received == 0
                    else self._expires
                )
            if status != "100":
                self._pull_open = False
                self._wake.set()
            return
        self._queue.append((subject, reply, data, headers))
        self._failing = False
        self._received += 1
        if self._received >= self._requested:
            self._pull_open = False
        self._wake.set()

    async def _pull(self) -> None:
        self._requested = self.spec.batch
        self._received = 0
        self._pull_open = True
        expires = self._pull_expires
        self._pull_deadline = asyncio.get_running_loop().time() + expires + 2.0
        request = {"batch": self.spec.batch, "expires": int(expires * 1e9)}
        await self._nc.publish(self._next_subject, json.dumps(request).encode(), reply=self._inbox)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        handled = 0
        while True:
            if self._pull_open and loop.time() > self._pull_deadline:
                # The request was lost (a reconnect drops open pulls on the server): ask again.
                self._pull_open = False
            if self._check and not self._stopping and not self._queue:
                self._check = False
                if not await self._recover():
                    continue
            if not self._pull_open and not self._stopping and len(self._queue) < self.spec.batch:
                try:
                    await self._pull()
                except NatsError as exc:
                    self._quiet.warning("pull", "consumer %s: pull request failed: %s", self.spec.name, _describe(exc))
                    await self._pause()
            if not self._queue:
                await self._flush_acks()
                handled = 0
                if self._stopping and not self._pull_open:
                    return
                self._wake.clear()
                # asyncio.timeout, not wait_for: no task per wait, and this loop waits often.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._pull_expires + 2.5):
                        await self._wake.wait()
                continue
            item = self._queue.popleft()
            try:
                await self._process(item)
            except Exception as exc:
                # No ack was sent: JetStream redelivers after ack_wait. The replica keeps going.
                self._quiet.warning("settle", "consumer %s: could not settle a message: %r", self.spec.name, exc)
            handled += 1
            if handled >= self.spec.batch:
                await self._flush_acks()
                handled = 0

    async def _recover(self) -> bool:
        """After an error status: repair the consumer if it is gone, then wait before pulling again.

        Returns False when the repair failed (the loop comes back here after the pause).
        """
        repaired = True
        try:
            await self._repair()
        except BusError as exc:
            self._quiet.warning("repair", "consumer %s: could not check or recreate it: %s", self.spec.name, exc)
            self._check = True
            repaired = False
        # Pulls that keep failing are spaced out; one that delivers (or ends normally) resets it.
        if self._failing:
            await self._pause()
        else:
            self._backoff.reset()
        self._failing = True
        return repaired

    async def _pause(self) -> None:
        """Wait the next back-off delay, or less if the consumer is stopped meanwhile."""
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._backoff.next()):
                while not self._stopping:
                    await self._wake.wait()
                    self._wake.clear()

    async def _process(self, item: tuple[bytes, bytes, bytes, bytes | None]) -> None:
        subject, ack_subject, data, raw_headers = item
        reply_to = ack_subject.decode()
        stream, num_delivered, stream_seq, pending = _parse_ack_subject(reply_to)
        headers = LazyHeaders(raw_headers)
        delivery = Delivery(
            subject=subject.decode(),
            data=data,
            headers=headers,
            num_delivered=num_delivered,
            stream_seq=stream_seq,
            reply=headers.get(_dispatch.REPLY_HEADER),
        )
        outcome = await _dispatch.run_handler(self.spec, self._handler, delivery, self._bus._tracer)
        self._pending_reported = pending
        if outcome.kind == "ack":
            if outcome.reply is not None and delivery.reply:
                await self._nc.publish(delivery.reply, outcome.reply)
            # Acks go out together (one write) when the batch is done or nothing more is at
            # hand; with a flush callback, only once it has persisted the owner's state. They
            # are counted then too (one metric update per batch).
            self._held_acks.append(ack_subject)
            return
        if outcome.kind == "retry":
            body = b"-NAK " + json.dumps({"delay": int(outcome.delay * 1e9)}).encode()
            await self._nc.publish(reply_to, body)
        else:
            dead_headers, dead_data = _dispatch.fit_dead_letter(
                _dispatch.dead_letter_headers(self.spec, delivery, stream, outcome),
                data,
                self._wire.max_payload,
                lambda headers: len(header_block(headers.items())),
            )
            # The dead letter must be stored before the original is terminated, or it is lost.
            await self._bus.publish(_dispatch.dlq_subject_for(self.spec), dead_data, headers=dead_headers)
            if delivery.reply:
                error = {"accepted": False, "error": outcome.error, "reason": outcome.reason}
                await self._nc.publish(delivery.reply, json.dumps(error).encode())
            await self._nc.publish(reply_to, _TERM)
        _dispatch.count(self.spec, outcome)

    async def _flush_acks(self) -> None:
        if self._pending_reported is not None:
            self._lag.set(self._pending_reported)
            self._pending_reported = None
        if not self._held_acks:
            return
        acks, self._held_acks = self._held_acks, []
        if self._flush is not None:
            try:
                await self._flush()
            except Exception as exc:
                # Nothing of the batch is acknowledged: it is delivered again at once.
                logger.warning("consumer %s: flush failed, the batch will be redelivered: %r", self.spec.name, exc)
                await self._send_all(acks, b"-NAK")
                return
        await self._send_all(acks, _ACK)
        self._acked.inc(len(acks))

    async def _send_all(self, subjects: list[bytes], body: bytes) -> None:
        """One body to many ack subjects, written as one buffer."""
        line = b" %d\r\n" % len(body) + body + b"\r\n"
        data = b"".join([b"PUB " + subject + line for subject in subjects])
        try:
            await self._wire.send(data, len(subjects), len(body) * len(subjects))
        except NatsError as exc:
            # Unacknowledged messages are redelivered after ack_wait: nothing is lost.
            logger.warning("consumer %s: could not send %d acks: %r", self.spec.name, len(subjects), exc)

    async def stop(self) -> None:
        if self._stopping:
            if self._task is not None:
                await asyncio.shield(self._task)
            return
        self._stopping = True
        # No interest in the inbox any more: the server drops the open pull request and hands
        # its messages to the other replicas (the loop does not wait for it to expire).
        await self._withdraw()
        self._pull_open = False
        self._wake.set()
        await _wait_for_loop(self.spec.name, self._task)
        with contextlib.suppress(NatsError, TimeoutError):
            await self._nc.flush(timeout=2)

    def ask_again(self) -> None:
        """Send a new pull request now (the open one was lost with the connection)."""
        self._pull_open = False
        self._pull_expires = self._expires
        self._wake.set()

    async def _withdraw(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            self._wire.forget(sub)
            with contextlib.suppress(NatsError):
                await sub.unsubscribe()
            with contextlib.suppress(NatsError, TimeoutError):
                await self._nc.flush(timeout=2)


class _PublicConsumer(Consumer):
    """One replica of a durable pull consumer on nats-py's public API.

    ``add_consumer(ConsumerConfig)`` creates the durable, ``pull_subscribe_bind().fetch()``
    pulls batches, ``msg.metadata`` gives the delivery count and stream sequence, and the
    outcome is settled with ``msg.ack()``, ``msg.nak(delay)`` or ``msg.term()``. Same
    semantics as the accelerated consumer: one message at a time, in order; acks held back
    until ``flush`` persisted the batch; a missing consumer or stream recreated.
    """

    def __init__(
        self, bus: JetStreamBus, spec: ConsumerSpec, handler: Handler, flush: Callable[[], Awaitable[None]] | None
    ) -> None:
        self.spec = spec
        self._bus = bus
        self._handler = handler
        self._flush = flush
        self._sub: Any = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._held: list[Msg] = []
        self._stopped = asyncio.Event()
        self._lag = CONSUMER_LAG.labels(spec.name)
        self._acked = CONSUMER_PROCESSED.labels(spec.name, "ack")
        self._expires = _seconds(spec.extra.get("pull_expires_seconds"), 0.5)
        self._backoff = Backoff(0.1, 5.0)
        self._quiet = RateLimitedLog(logger, interval=QUIET_INTERVAL)

    async def start(self) -> None:
        await self._create()
        await self._bind()
        self._task = asyncio.create_task(self._run(), name=f"nexus-consumer-{self.spec.name}")

    async def _bind(self) -> None:
        with _translated(f"consumer {self.spec.name}"):
            self._sub = await self._bus.js.pull_subscribe_bind(durable=self.spec.name, stream=self.spec.stream)

    async def _create(self) -> None:
        spec = self.spec
        config = ConsumerConfig(
            name=spec.name,
            durable_name=spec.name,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=spec.ack_wait_seconds,
            # One delivery more than the handler gets: see _dispatch.run_handler.
            max_deliver=spec.max_deliver + 1,
            max_ack_pending=spec.max_ack_pending,
            max_waiting=512,
            deliver_policy=DeliverPolicy.ALL,
        )
        if len(spec.filter_subjects) == 1:
            config.filter_subject = spec.filter_subjects[0]
        else:
            config.filter_subjects = list(spec.filter_subjects)
        if spec.deliver_from_seq:
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = spec.deliver_from_seq
        # An existing durable keeps where it started: the start position cannot be updated.
        existing = await self._bus.consumer_config(spec.stream, spec.name)
        if existing is not None:
            config.deliver_policy = existing.deliver_policy
            config.opt_start_seq = existing.opt_start_seq
        with _translated(f"create consumer {spec.name} on {spec.stream}"):
            await self._bus.js.add_consumer(spec.stream, config)

    async def _repair(self) -> None:
        """Recreate the consumer, and first its stream if it is a Nexus stream, when either is gone."""
        state = await self._bus.consumer_state(self.spec.stream, self.spec.name)
        if state is not None:
            return
        stream_missing = False
        try:
            await self._bus.stream_state(self.spec.stream)
        except JetStreamAPIError as exc:
            if exc.err_code != ERR_STREAM_NOT_FOUND:
                raise
            stream_missing = True
            for stream in NEXUS_STREAMS:
                if stream.name == self.spec.stream:
                    await self._bus._ensure_stream(stream)
        await self._create()
        logger.warning(
            "consumer %s: %s was missing and has been recreated",
            self.spec.name,
            f"stream {self.spec.stream}" if stream_missing else "the durable consumer",
        )

    async def _run(self) -> None:
        while not self._stopping:
            try:
                messages = await self._sub.fetch(self.spec.batch, timeout=self._expires)
            except (FetchTimeoutError, TimeoutError):
                await self._flush_acks()
                self._backoff.reset()
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._flush_acks()
                if self._stopping:
                    break
                self._quiet.warning(
                    f"fetch:{type(exc).__name__}", "consumer %s: fetch failed: %s", self.spec.name, _describe(exc)
                )
                await self._recover()
                continue
            for msg in messages:
                try:
                    await self._process(msg)
                except Exception as exc:
                    # No ack was sent: JetStream redelivers after ack_wait. The replica keeps going.
                    self._quiet.warning("settle", "consumer %s: could not settle a message: %r", self.spec.name, exc)
            await self._flush_acks()
        await self._flush_acks()

    async def _recover(self) -> None:
        try:
            await self._repair()
            await self._bind()
        except BusError as exc:
            self._quiet.warning("repair", "consumer %s: could not check or recreate it: %s", self.spec.name, exc)
        # The next back-off delay, or less if the consumer is stopped meanwhile.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._backoff.next()):
                await self._stopped.wait()

    async def _process(self, msg: Msg) -> None:
        metadata = msg.metadata
        headers = msg.headers or {}
        delivery = Delivery(
            subject=msg.subject,
            data=msg.data,
            headers=headers,
            num_delivered=metadata.num_delivered or 1,
            stream_seq=metadata.sequence.stream,
            reply=headers.get(_dispatch.REPLY_HEADER),
        )
        outcome = await _dispatch.run_handler(self.spec, self._handler, delivery, self._bus._tracer)
        self._lag.set(metadata.num_pending or 0)
        if outcome.kind == "ack":
            if outcome.reply is not None and delivery.reply:
                await self._bus.nc.publish(delivery.reply, outcome.reply)
            self._held.append(msg)
            return
        if outcome.kind == "retry":
            await msg.nak(delay=outcome.delay)
        else:
            dead_headers, dead_data = _dispatch.fit_dead_letter(
                _dispatch.dead_letter_headers(self.spec, delivery, metadata.stream, outcome),
                msg.data,
                self._bus.max_payload,
                lambda headers: len(header_block(headers.items())),
            )
            # The dead letter must be stored before the original is terminated, or it is lost.
            await self._bus.publish(_dispatch.dlq_subject_for(self.spec), dead_data, headers=dead_headers)
            if delivery.reply:
                error = {"accepted": False, "error": outcome.error, "reason": outcome.reason}
                await self._bus.nc.publish(delivery.reply, json.dumps(error).encode())
            await msg.term()
        _dispatch.count(self.spec, outcome)

    async def _flush_acks(self) -> None:
        if not self._held:
            return
        held, self._held = self._held, []
        try:
            if self._flush is not None:
                try:
                    await self._flush()
                except Exception as exc:
                    # Nothing of the batch is acknowledged: it is delivered again at once.
                    logger.warning("consumer %s: flush failed, the batch will be redelivered: %r", self.spec.name, exc)
                    for msg in held:
                        await msg.nak()
                    return
            for msg in held:
                await msg.ack()
            self._acked.inc(len(held))
        except NatsError as exc:
            # Unacknowledged messages are redelivered after ack_wait: nothing is lost.
            logger.warning("consumer %s: could not send %d acks: %r", self.spec.name, len(held), exc)

    async def stop(self) -> None:
        if self._stopping:
            if self._task is not None:
                await asyncio.shield(self._task)
            return
        self._stopping = True
        self._stopped.set()
        await _wait_for_loop(self.spec.name, self._task)
        if self._sub is not None:
            with contextlib.suppress(NatsError):
                await self._sub.unsubscribe()
        with contextlib.suppress(NatsError, TimeoutError):
            await self._bus.nc.flush(timeout=2)


async def _wait_for_loop(name: str, task: asyncio.Task[None] | None) -> None:
    """Wait for a consumer's pull loop to end; an error it ended with is logged, not raised."""
    if task is None:
        return
    try:
        await task
    except Exception as exc:
        logger.warning("consumer %s stopped with an error: %r", name, exc)


def _seconds(value: object, default: float) -> float:
    """A duration from a consumer spec's ``extra`` (seconds), or ``default`` when unset."""
    if value is None:
        return default
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    raise BusArgumentError(f"pull_expires_seconds must be a positive number of seconds, got {value!r}")
