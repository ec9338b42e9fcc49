"""The bus over NATS JetStream: pipelined publishing and batched pull consumers.

nats-py's JetStream helpers await one round trip per publish and per fetch, which caps a
Python process near 10,000 messages/s. This adapter speaks the JetStream wire protocol over
the core connection instead: a publish is a core publish to the stream subject with a reply
inbox, and the PubAcks are collected asynchronously (a bounded window keeps the pipeline
full); a consumer keeps one pull request open for a batch and acks with core publishes to
the messages' ack subjects, without waiting. nats-py's management API is used for the rare
calls (streams, key-value buckets, message lookups).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import msgspec
import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import APIError, NotFoundError
from opentelemetry import trace

from nexus.bus import _dispatch
from nexus.bus._metrics import CONSUMER_LAG, PUBLISHED
from nexus.bus._port import (
    Bus,
    BusError,
    BusTimeoutError,
    BusUnavailableError,
    Consumer,
    ConsumerSpec,
    Delivery,
    Handler,
    OutboundMessage,
    PublishAck,
    StreamConfigError,
)
from nexus.bus._subjects import matches_any
from nexus.proto import STREAM_CMD, STREAM_DLQ, STREAM_EVT, STREAM_EXT, CloudEvent, encode_event, subject_for

__all__ = ["NEXUS_STREAMS", "JetStreamBus", "StreamSpec"]

logger = logging.getLogger("nexus.bus")

DUPLICATE_WINDOW_SECONDS = 120.0
"""De-duplication window of every Nexus stream: a re-published event id within it is stored once."""


class StreamSpec(msgspec.Struct, frozen=True):
    """The settings Nexus requires of one of its streams."""

    name: str
    subjects: tuple[str, ...]
    retention: str = "limits"
    storage: str = "file"
    duplicate_window: float = DUPLICATE_WINDOW_SECONDS

    def config(self) -> StreamConfig:
        return StreamConfig(
            name=self.name,
            subjects=list(self.subjects),
            retention=RetentionPolicy(self.retention),
            storage=StorageType(self.storage),
            duplicate_window=self.duplicate_window,
        )


NEXUS_STREAMS: tuple[StreamSpec, ...] = (
    StreamSpec(STREAM_EVT, ("nexus.evt.>",)),
    StreamSpec(STREAM_CMD, ("nexus.cmd.>",), retention="workqueue"),
    StreamSpec(STREAM_EXT, ("nexus.ext.>",)),
    StreamSpec(STREAM_DLQ, ("nexus.dlq.>",)),
)
"""The streams of ARCHITECTURE.md, "Subjects"."""

_ACK = b"+ACK"
_TERM = b"+TERM"


class _PubAck(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: dict[str, Any] | None = None


_pub_ack_decoder = msgspec.json.Decoder(_PubAck)


class _Pipeline:
    """Publishes to stream subjects with a reply inbox and matches the PubAcks to futures."""

    def __init__(self, nc: NatsClient, window: int) -> None:
        self._nc = nc
        self._prefix = nc.new_inbox()
        self._tokens = itertools.count(1)
        self._pending: dict[str, asyncio.Future[PublishAck]] = {}
        self._window = asyncio.Semaphore(window)
        self._sub: Any = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(f"{self._prefix}.*", cb=self._on_ack)

    async def send(self, subject: str, payload: bytes, headers: dict[str, str] | None) -> asyncio.Future[PublishAck]:
        await self._window.acquire()
        token = str(next(self._tokens))
        future: asyncio.Future[PublishAck] = asyncio.get_running_loop().create_future()
        self._pending[token] = future
        try:
            await self._nc.publish(subject, payload, reply=f"{self._prefix}.{token}", headers=headers)
        except BaseException:
            self._forget(token)
            raise
        return future

    def _forget(self, token: str) -> None:
        if self._pending.pop(token, None) is not None:
            self._window.release()

    def abandon(self, future: asyncio.Future[PublishAck]) -> None:
        """Release the window slot of a future whose ack will never be awaited (timed out)."""
        for token, pending in list(self._pending.items()):
            if pending is future:
                self._forget(token)
                return

    async def _on_ack(self, msg: Msg) -> None:
        token = msg.subject.rsplit(".", 1)[-1]
        future = self._pending.pop(token, None)
        if future is None:
            return
        self._window.release()
        if future.done():
            return
        if not msg.data and msg.headers and msg.headers.get("Status") == "503":
            future.set_exception(BusError("no JetStream stream accepts this subject (no responders)"))
            return
        try:
            ack = _pub_ack_decoder.decode(msg.data)
        except msgspec.DecodeError:
            future.set_exception(BusError(f"unreadable publish acknowledgement: {msg.data[:200]!r}"))
            return
        if ack.error:
            future.set_exception(BusError(f"JetStream refused the message: {ack.error.get('description', ack.error)}"))
            return
        future.set_result(PublishAck(ack.stream, ack.seq, ack.duplicate))

    def fail_all(self, error: Exception) -> None:
        for token, future in list(self._pending.items()):
            self._forget(token)
            if not future.done():
                future.set_exception(error)


class JetStreamBus(Bus):
    """The bus over a NATS server with JetStream. Create it with ``JetStreamBus.connect``."""

    def __init__(
        self,
        nc: NatsClient,
        *,
        ack_timeout: float = 10.0,
        window: int = 1024,
        tracer_provider: trace.TracerProvider | None = None,
        owned: Sequence[Any] = (),
    ) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.ack_timeout = ack_timeout
        self._pipeline = _Pipeline(nc, window)
        self._tracer = trace.get_tracer("nexus.bus", tracer_provider=tracer_provider)
        self._consumers: list[_JetStreamConsumer] = []
        self._replies: dict[str, asyncio.Future[bytes]] = {}
        self._reply_prefix = nc.new_inbox()
        self._reply_tokens = itertools.count(1)
        self._owned = list(owned)
        self._closed = False

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        name: str = "nexus",
        ack_timeout: float = 10.0,
        window: int = 1024,
        connect_timeout: float = 5.0,
        tracer_provider: trace.TracerProvider | None = None,
        ensure_streams: bool = True,
    ) -> JetStreamBus:
        """Connect to ``url`` and (by default) create or update the Nexus streams.

        Args:
            url: ``nats://host:port`` (several, comma-separated, for a cluster).
            name: client name the server shows in its connection list.
            ack_timeout: seconds to wait for a PubAck before BusTimeoutError.
            window: publishes in flight at most (pipelining bound).
            connect_timeout: seconds to wait for the first connection.
            tracer_provider: OpenTelemetry provider for the publish/consume spans (default: global).
            ensure_streams: call ``ensure_streams()`` once connected.

        Raises:
            BusUnavailableError: the server cannot be reached.
            StreamConfigError: a Nexus stream exists with settings that cannot be updated.
        """
        try:
            nc = await nats.connect(
                url.split(","),
                name=name,
                connect_timeout=connect_timeout,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                # The client's own flusher coalesces our fire-and-forget publishes into few writes.
                pending_size=64 * 1024 * 1024,
                error_cb=_log_error,
            )
        except (OSError, NatsError, TimeoutError) as exc:
            raise BusUnavailableError(f"cannot connect to NATS at {url}: {exc!r}") from exc
        bus = cls(nc, ack_timeout=ack_timeout, window=window, tracer_provider=tracer_provider)
        try:
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

    async def _ensure_stream(self, spec: StreamSpec) -> None:
        try:
            info = await self.js.stream_info(spec.name)
        except NotFoundError:
            info = None
        except (NatsError, TimeoutError) as exc:
            raise BusUnavailableError(f"JetStream did not answer about stream {spec.name}: {exc!r}") from exc
        if info is None:
            try:
                await self.js.add_stream(spec.config())
                return
            except APIError as exc:
                raise StreamConfigError(f"cannot create stream {spec.name}: {exc.description}") from exc
        current = info.config
        wrong = _differences(spec, current)
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
        self._check_open()
        futures = []
        spans = []
        try:
            for message in messages:
                headers = dict(message.headers) if message.headers else {}
                if message.msg_id:
                    headers[_dispatch.MSG_ID_HEADER] = message.msg_id
                span = _dispatch.publish_span(self._tracer, message.subject, None)
                _dispatch.inject(span, headers)
                spans.append(span)
                futures.append(await self._pipeline.send(message.subject, message.payload, headers or None))
            return await self._collect(futures)
        finally:
            for span in spans:
                span.end()

    async def publish_event(self, event: CloudEvent) -> PublishAck:
        (ack,) = await self.publish_events([event])
        return ack

    async def publish_events(self, events: Sequence[CloudEvent]) -> list[PublishAck]:
        self._check_open()
        futures = []
        spans = []
        try:
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
                futures.append(await self._pipeline.send(subject, encode_event(event), headers))
            return await self._collect(futures)
        finally:
            for span in spans:
                span.end()

    async def _collect(self, futures: list[asyncio.Future[PublishAck]]) -> list[PublishAck]:
        if not futures:
            return []
        _, pending = await asyncio.wait(futures, timeout=self.ack_timeout)
        if pending:
            for future in pending:
                self._pipeline.abandon(future)
                future.cancel()
            raise BusTimeoutError(
                f"{len(pending)} of {len(futures)} publishes not acknowledged within {self.ack_timeout:g} s"
            )
        acks = [future.result() for future in futures]
        PUBLISHED.labels(acks[0].stream).inc(sum(1 for ack in acks if not ack.duplicate))
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
        try:
            merged = dict(headers or {})
            merged[_dispatch.REPLY_HEADER] = inbox
            await self.publish(subject, payload, headers=merged)
            return await asyncio.wait_for(future, timeout)
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
        consumer = _JetStreamConsumer(self, spec, handler, flush)
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
            raise BusError(f"{subject}: {error.get('description', error)} (code {error.get('err_code')})")
        return response

    # -- lifecycle -------------------------------------------------------------------------

    async def ping(self) -> None:
        if self._closed or not self.nc.is_connected:
            raise BusUnavailableError("not connected to NATS")
        try:
            await self.nc.flush(timeout=2)
        except (NatsError, TimeoutError) as exc:
            raise BusUnavailableError(f"NATS did not answer a ping: {exc!r}") from exc

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.gather(*(consumer.stop() for consumer in self._consumers), return_exceptions=True)
        self._pipeline.fail_all(BusUnavailableError("the bus is closed"))
        with contextlib.suppress(NatsError, TimeoutError, OSError):
            await self.nc.drain()
        if not self.nc.is_closed:
            await self.nc.close()
        for resource in reversed(self._owned):
            await resource.stop()

    def _check_open(self) -> None:
        if self._closed:
            raise BusUnavailableError("the bus is closed")


def _differences(spec: StreamSpec, current: StreamConfig) -> list[str]:
    wrong = []
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
    logger.warning("NATS connection: %r", exc)


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
        self, bus: JetStreamBus, spec: ConsumerSpec, handler: Handler, flush: Callable[[], Awaitable[None]] | None
    ) -> None:
        self.spec = spec
        self._bus = bus
        self._nc = bus.nc
        self._handler = handler
        self._flush = flush
        self._queue: deque[Msg] = deque()
        self._wake = asyncio.Event()
        self._inbox = bus.nc.new_inbox()
        self._pull_open = False
        self._pull_deadline = 0.0
        self._requested = 0
        self._received = 0
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._sub: Any = None
        self._held_acks: list[str] = []
        # Open pull requests expire quickly so that a stopping replica is not handed messages
        # after it has stopped asking (they would wait out ack_wait before anyone got them).
        self._expires = float(spec.extra.get("pull_expires_seconds", 0.5))  # type: ignore[arg-type]
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{spec.stream}.{spec.name}"

    async def start(self) -> None:
        await self._bus.api(f"$JS.API.CONSUMER.CREATE.{self.spec.stream}.{self.spec.name}", await self._config())
        self._sub = await self._nc.subscribe(self._inbox, cb=self._on_msg)
        self._task = asyncio.create_task(self._run(), name=f"nexus-consumer-{self.spec.name}")

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
        except BusError as exc:
            if "not found" not in str(exc):
                raise
        else:
            existing = info["config"]
            config["deliver_policy"] = existing.get("deliver_policy", "all")
            config.pop("opt_start_seq", None)
            if "opt_start_seq" in existing:
                config["opt_start_seq"] = existing["opt_start_seq"]
        return {"stream_name": spec.stream, "config": config}

    async def _on_msg(self, msg: Msg) -> None:
        if not msg.reply:
            # Status messages end a pull request: 404/408 (nothing more), 409 (limits, deleted).
            status = msg.headers.get("Status") if msg.headers else None
            if status and status not in ("100", "404", "408"):
                logger.warning(
                    "consumer %s: JetStream status %s %s",
                    self.spec.name,
                    status,
                    msg.headers.get("Description", "") if msg.headers else "",
                )
            if status != "100":
                self._pull_open = False
                self._wake.set()
            return
        self._queue.append(msg)
        self._received += 1
        if self._received >= self._requested:
            self._pull_open = False
        self._wake.set()

    async def _pull(self) -> None:
        self._requested = self.spec.batch
        self._received = 0
        self._pull_open = True
        self._pull_deadline = asyncio.get_running_loop().time() + self._expires + 2.0
        request = {"batch": self.spec.batch, "expires": int(self._expires * 1e9)}
        await self._nc.publish(self._next_subject, json.dumps(request).encode(), reply=self._inbox)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        handled = 0
        while True:
            if self._pull_open and loop.time() > self._pull_deadline:
                # The request was lost (a reconnect drops open pulls on the server): ask again.
                self._pull_open = False
            if not self._pull_open and not self._stopping and len(self._queue) < self.spec.batch:
                try:
                    await self._pull()
                except NatsError as exc:
                    logger.warning("consumer %s: pull request failed: %r", self.spec.name, exc)
            if not self._queue:
                await self._flush_acks()
                handled = 0
                if self._stopping and not self._pull_open:
                    return
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._expires + 2.5)
                continue
            msg = self._queue.popleft()
            try:
                await self._process(msg)
            except Exception as exc:
                # No ack was sent: JetStream redelivers after ack_wait. The replica keeps going.
                logger.warning("consumer %s: could not settle a message: %r", self.spec.name, exc)
            handled += 1
            if handled >= self.spec.batch:
                await self._flush_acks()
                handled = 0

    async def _process(self, msg: Msg) -> None:
        stream, num_delivered, stream_seq, pending = _parse_ack_subject(msg.reply)
        headers = msg.headers or {}
        delivery = Delivery(
            subject=msg.subject,
            data=msg.data,
            headers=headers,
            num_delivered=num_delivered,
            stream_seq=stream_seq,
            reply=headers.get(_dispatch.REPLY_HEADER),
        )
        outcome = await _dispatch.run_handler(self.spec, self._handler, delivery, self._bus._tracer)
        CONSUMER_LAG.labels(self.spec.name).set(pending)
        if outcome.kind == "ack":
            if outcome.reply is not None and delivery.reply:
                await self._nc.publish(delivery.reply, outcome.reply)
            if self._flush is None:
                await self._nc.publish(msg.reply, _ACK)
            else:
                self._held_acks.append(msg.reply)
        elif outcome.kind == "retry":
            body = b"-NAK " + json.dumps({"delay": int(outcome.delay * 1e9)}).encode()
            await self._nc.publish(msg.reply, body)
        else:
            dead_headers = _dispatch.dead_letter_headers(self.spec, delivery, stream, outcome)
            # The dead letter must be stored before the original is terminated, or it is lost.
            await self._bus.publish(_dispatch.dlq_subject_for(self.spec), msg.data, headers=dead_headers)
            if delivery.reply:
                error = {"accepted": False, "error": outcome.error, "reason": outcome.reason}
                await self._nc.publish(delivery.reply, json.dumps(error).encode())
            await self._nc.publish(msg.reply, _TERM)
        _dispatch.count(self.spec, outcome)

    async def _flush_acks(self) -> None:
        if not self._held_acks:
            return
        acks, self._held_acks = self._held_acks, []
        if self._flush is not None:
            try:
                await self._flush()
            except Exception as exc:
                # Nothing of the batch is acknowledged: it is delivered again at once.
                logger.warning("consumer %s: flush failed, the batch will be redelivered: %r", self.spec.name, exc)
                for reply in acks:
                    await self._nc.publish(reply, b"-NAK")
                return
        for reply in acks:
            await self._nc.publish(reply, _ACK)

    async def stop(self) -> None:
        if self._stopping:
            if self._task is not None:
                await asyncio.shield(self._task)
            return
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            try:
                await self._task
            except Exception as exc:
                logger.warning("consumer %s stopped with an error: %r", self.spec.name, exc)
        if self._sub is not None:
            with contextlib.suppress(NatsError):
                await self._sub.unsubscribe()
        with contextlib.suppress(NatsError, TimeoutError):
            await self._nc.flush(timeout=2)
