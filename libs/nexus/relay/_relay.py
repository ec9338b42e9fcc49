"""The outbox relay: every event of the log is published on ``nexus.evt.>``, exactly once by id."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections import deque
from collections.abc import Mapping

import msgspec

from nexus.bus import Bus, BusError, KeyValueBucket, PendingAcks
from nexus.bus._dispatch import header_value
from nexus.bus._metrics import RELAY_DUPLICATES, RELAY_LAG, RELAY_LEADER, RELAY_POSITION, RELAY_PUBLISHED
from nexus.bus._subjects import check_subject
from nexus.eventlog import EventLog, EventLogError
from nexus.obs._metrics import RELAY_DEAD_LETTERED, RELAY_FAILURES, RELAY_FORGED_POSITIONS, RELAY_HEALTHY
from nexus.proto import STREAM_EVT, CloudEvent, dlq_subject, encode_event, subject_for
from nexus.proto.deadletters import (
    CONSUMER_HEADER,
    ERROR_HEADER,
    EVENT_ID_HEADER,
    EVENT_POSITION_HEADER,
    EVENT_SIZE_HEADER,
    EVENT_STREAM_HEADER,
    EVENT_TYPE_HEADER,
    MSG_ID_HEADER,
    ORIGINAL_SUBJECT_HEADER,
    REASON_HEADER,
    RELAY_CONSUMER,
    TRUNCATED_HEADER,
)

logger = logging.getLogger("nexus.relay")

RELAY_BUCKET = "nexus_relay"
"""KV bucket holding the relay's checkpoint (key ``checkpoint``: the last relayed position)."""
LEASE_BUCKET = "nexus_relay_lease"
"""KV bucket holding the relay lease (key ``leader``); its TTL makes a dead leader's lease lapse."""

DLQ_CONSUMER = RELAY_CONSUMER
"""The relay's dead letters (placeholders of events it cannot publish) go to ``nexus.dlq.relay``."""

# How far back from the end of NEXUS_EVT to look for the last relayed event, past messages
# that did not come from the relay or do not match the log (anything can be published on
# nexus.evt.> by whoever may publish there).
_SCAN_BACK = 256
_CATCH_UP_PAGE = 2000
"""Events per page read while catching up with the log."""
_LAG_INTERVAL = 0.25
"""Seconds between refreshes of the relay lag gauge."""
_CHECKPOINT_INTERVAL = 0.1
"""Seconds at least between two checkpoint writes (stop() writes the last one)."""
_BACKOFF_FIRST = 0.5
_BACKOFF_MAX = 30.0
"""Seconds between attempts after a failure: doubling from the first to the most."""
_HEADER_ROOM = 1024
"""Bytes kept for a relayed message's headers when judging whether an event fits the server's max payload."""
_MAX_POSITION_DIGITS = 19


class _Relayed(msgspec.Struct):
    """What the relay checks of a relayed message's body against the log (other fields skipped)."""

    id: str | None = None
    hash: str | None = None
    position: int | None = None


_relayed_decoder = msgspec.json.Decoder(_Relayed)


async def last_relayed_position(bus: Bus, log: EventLog | None = None) -> int:
    """The log position of the last relayed event NEXUS_EVT holds (0 when it holds none).

    With ``log``, a message counts only when it matches the log's event at its
    ``Nexus-Position`` (same id in ``Nats-Msg-Id`` and in the body, same hash and position in
    the body): a message anyone else published with a forged position (far ahead, beyond the
    log's head, or naming another event) is ignored, counted in
    ``nexus_relay_forged_positions_total`` and logged, and the search goes on further back
    (at most 256 messages).
    """
    state = await bus.stream_state(STREAM_EVT)
    last, first = state.last_seq, state.first_seq
    head = await log.head() if log is not None else 0
    for seq in range(last, max(first, last - _SCAN_BACK) - 1, -1):
        if seq <= 0:
            break
        msg = await bus.get_message(STREAM_EVT, seq)
        if msg is None:
            continue  # deleted
        headers = msg.headers
        claimed = headers.get("Nexus-Position")
        if not claimed or not claimed.isdigit():
            continue  # not from the relay
        if log is None:
            return int(claimed)
        problem = await _mismatch(log, head, claimed, headers, msg.data)
        if problem is None:
            return int(claimed)
        kind, detail = problem
        RELAY_FORGED_POSITIONS.labels(kind).inc()
        logger.warning(
            "relay: NEXUS_EVT message %d claims Nexus-Position %s but %s; not resuming after it",
            seq,
            claimed[:40],
            detail,
        )
    return 0


async def _mismatch(
    log: EventLog, head: int, claimed: str, headers: Mapping[str, str], body: bytes
) -> tuple[str, str] | None:
    """Why a message claiming log position ``claimed`` is not the relayed event at that position (None: it is)."""
    if len(claimed) > _MAX_POSITION_DIGITS or not 1 <= int(claimed) <= head:
        return "out_of_range", f"the log's positions run from 1 to {head}"
    position = int(claimed)
    found = await log.read_all(position, 1)
    if not found or found[0].position != position:
        return "out_of_range", f"the log holds no event at position {position}"
    event = found[0]
    if headers.get(MSG_ID_HEADER) != event.id:
        return "mismatch", f"its Nats-Msg-Id is not the id of the log's event there ({event.id})"
    try:
        relayed = _relayed_decoder.decode(body)
    except msgspec.DecodeError:
        return "unreadable", "its body is not an event"
    if (relayed.id, relayed.position, relayed.hash) != (event.id, position, event.hash):
        return "mismatch", "its body's id, position or hash differ from the log's event there"
    return None


def undeliverable(event: CloudEvent, max_payload: int) -> tuple[str, str, str | None] | None:
    """Why ``event`` can never be published on ``nexus.evt.>``, or None when it can.

    Returns ``(reason, explanation, subject)``: reason ``bad_subject`` (its type or stream
    gives no valid subject; subject None) or ``too_large`` (its encoding, with room for the
    relay's headers, exceeds the server's ``max_payload``). Both depend on the event alone, so
    retrying would never help.
    """
    try:
        subject = subject_for(event)
        check_subject(subject)
    except ValueError as exc:  # BusArgumentError included: whitespace in it
        detail = str(exc)
        return "bad_subject", f"the event has no valid nexus.evt subject: {detail}", None
    size = len(encode_event(event))
    if size + _HEADER_ROOM > max_payload:
        return (
            "too_large",
            f"the event is {size} bytes encoded; the NATS server accepts at most {max_payload} bytes per message "
            "(headers included)",
            subject,
        )
    return None


async def _cancel(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait for it to end.

    nats-py swallows a CancelledError that arrives while it flushes a publish, so one
    cancel() can be lost; it is repeated until the task has really ended.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)
    if not task.cancelled() and task.exception() is not None:
        logger.warning("relay: %s ended with %r", task.get_name(), task.exception())


class Lease:
    """Leadership among relay replicas: a key in a KV bucket whose entries expire after ``ttl``.

    The holder renews it every ``ttl / 3``; a replica that cannot renew (another one took it
    over after a pause longer than the TTL) stops relaying at once.
    """

    def __init__(self, kv: KeyValueBucket, owner: str, ttl: float) -> None:
        self.kv = kv
        self.owner = owner.encode()
        self.ttl = ttl
        self._revision: int | None = None

    @classmethod
    async def open(cls, bus: Bus, owner: str, ttl: float = 3.0) -> Lease:
        return cls(await bus.key_value(LEASE_BUCKET, ttl=ttl), owner, ttl)

    @property
    def held(self) -> bool:
        return self._revision is not None

    async def try_acquire(self) -> bool:
        self._revision = await self.kv.create("leader", self.owner)
        return self.held

    async def renew(self) -> bool:
        if self._revision is None:
            return False
        self._revision = await self.kv.update("leader", self.owner, last=self._revision)
        return self.held

    async def release(self) -> None:
        if self._revision is not None:
            with contextlib.suppress(BusError, TimeoutError):
                await self.kv.purge("leader")
            self._revision = None


class Relay:
    """Tails the log and publishes each event on ``subject_for(event)`` with Nats-Msg-Id = event id.

    It resumes after the last event NEXUS_EVT actually holds, so a tail JetStream lost in an
    OS crash (it fsyncs lazily) is published again; when the stream holds no relayed event it
    resumes from its checkpoint in the ``nexus_relay`` KV bucket. The checkpoint moves only
    after JetStream acknowledged the events before it. A message on NEXUS_EVT counts as relayed
    only when it matches the log's event at its ``Nexus-Position`` (``last_relayed_position``).

    No event can stop it: one that can never be published (larger than the server's max
    payload, or without a valid subject) is dead-lettered as a small placeholder on
    ``nexus.dlq.relay`` naming it, counted in ``nexus_relay_events_dead_lettered_total``, and
    skipped; it stays in the log. Any other failure is retried with a doubling back-off (0.5 s
    up to 30 s), and ``healthy`` is False until an attempt makes progress again.

    With ``lease=True`` replicas elect one leader through a KV lease; the others stand by and
    take over within the lease TTL when the leader dies.

    Args:
        log: the event log (the outbox).
        bus: a connected bus (JetStream in production).
        batch: events published per pipelined batch (at most).
        window: batches in flight at most (sent, acks not yet settled).
        lease: elect a leader among replicas (default True).
        lease_ttl: seconds after which a dead leader's lease lapses.
        owner: this replica's name in the lease (default host:pid).
    """

    def __init__(
        self,
        log: EventLog,
        bus: Bus,
        *,
        batch: int = 1000,
        window: int = 4,
        lease: bool = True,
        lease_ttl: float = 3.0,
        owner: str | None = None,
    ) -> None:
        self.log = log
        self.bus = bus
        if batch < 1 or window < 1:
            raise ValueError(f"batch and window must be >= 1, got batch={batch!r}, window={window!r}")
        self.batch = batch
        self.window = window
        self.use_lease = lease
        self.lease_ttl = lease_ttl
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}"
        self.position = 0
        """The last log position relayed and acknowledged."""
        self._lease: Lease | None = None
        self._kv: KeyValueBucket | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._progress = asyncio.Condition()
        self._dirty = asyncio.Event()
        self._saved: int | None = None
        self._moved = False
        self._resume_cap: int | None = None
        self._lag_due = 0.0
        self._failures = 0
        self.last_error: str | None = None
        """The error that ended the last failed attempt, until one makes progress."""
        self.leading = asyncio.Event()
        """Set while this replica holds the lease and relays."""

    @property
    def is_leader(self) -> bool:
        return not self.use_lease or (self._lease is not None and self._lease.held)

    @property
    def healthy(self) -> bool:
        """False from a failed attempt (to relay, or to take the lease) until one makes progress.

        A readiness check of the process running the relay should answer from this: a relay
        that keeps failing is not ready, though the process is alive.
        """
        return self._failures == 0

    @property
    def consecutive_failures(self) -> int:
        """Failed attempts since the last one that made progress."""
        return self._failures

    async def start(self) -> None:
        """Start relaying (or standing by) in a background task."""
        self._kv = await self.bus.key_value(RELAY_BUCKET)
        if self.use_lease:
            self._lease = await Lease.open(self.bus, self.owner, self.lease_ttl)
        self._task = asyncio.create_task(self.run(), name="nexus-relay")

    async def stop(self) -> None:
        """Stop relaying; events already acknowledged are checkpointed, the lease is released."""
        self._stop.set()
        if self._task is not None:
            await _cancel(self._task)
        if self._moved and (self._lease is None or self._lease.held):
            # The checkpoint trails the position by at most the write in flight: catch it up,
            # while this replica still holds the lease (a new leader's checkpoint must win).
            try:
                await self._save_checkpoint()
            except (BusError, TimeoutError) as exc:
                logger.warning("relay %s: cannot write the last checkpoint: %r", self.owner, exc)
        if self._lease is not None:
            await self._lease.release()
        RELAY_LEADER.set(0)

    async def wait_relayed(self, position: int) -> None:
        """Return once every event up to ``position`` is relayed (for tests and start-up ordering)."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.position >= position)

    async def run(self) -> None:
        RELAY_HEALTHY.set(1)
        while not self._stop.is_set():
            if self._lease is not None:
                try:
                    acquired = await self._lease.try_acquire()
                except (BusError, TimeoutError) as exc:
                    await self._failed(exc, "cannot take the lease")
                    continue
                if not acquired:
                    # The lease answered (another replica holds it): standing by is progress,
                    # so a failed attempt before it no longer keeps this replica unready.
                    self._progressed()
                    await self._pause(self.lease_ttl / 3)
                    continue
            RELAY_LEADER.set(1)
            self.leading.set()
            logger.info("relay %s: leading", self.owner)
            relaying = asyncio.create_task(self._relay())
            try:
                await self._hold_lease(relaying)
            finally:
                await _cancel(relaying)
                RELAY_LEADER.set(0)
                self.leading.clear()
            failure = relaying.exception() if relaying.done() and not relaying.cancelled() else None
            if isinstance(failure, Exception):
                await self._failed(failure, "stopped relaying")

    async def _failed(self, error: BaseException, what: str) -> None:
        """Count a failed attempt and wait before the next one, longer after each in a row."""
        self._failures += 1
        self.last_error = repr(error)
        RELAY_FAILURES.inc()
        RELAY_HEALTHY.set(0)
        delay = min(_BACKOFF_FIRST * 2 ** min(self._failures - 1, 16), _BACKOFF_MAX)
        # One line per attempt: the back-off bounds them to one per 30 s while it lasts.
        logger.warning(
            "relay %s: %s (%d failed attempt%s in a row; next in %.1f s): %r",
            self.owner,
            what,
            self._failures,
            "" if self._failures == 1 else "s",
            delay,
            error,
        )
        await self._pause(delay)

    def _progressed(self) -> None:
        if self._failures:
            logger.info("relay %s: relaying again after %d failed attempts", self.owner, self._failures)
            self._failures = 0
            self.last_error = None
            RELAY_HEALTHY.set(1)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _hold_lease(self, relaying: asyncio.Task[None]) -> None:
        """Renew the lease while relaying; return when it is lost, relaying ended, or stop()."""
        while not self._stop.is_set() and not relaying.done():
            stopped = asyncio.ensure_future(self._stop.wait())
            done, _ = await asyncio.wait(
                {relaying, stopped}, timeout=self.lease_ttl / 3, return_when=asyncio.FIRST_COMPLETED
            )
            stopped.cancel()
            if done:
                return
            if self._lease is not None:
                try:
                    renewed = await self._lease.renew()
                except (BusError, TimeoutError) as exc:
                    logger.warning("relay %s: cannot renew the lease: %r", self.owner, exc)
                    renewed = False
                if not renewed:
                    logger.warning("relay %s: lost the lease", self.owner)
                    return

    async def resume_position(self) -> int:
        """Where relaying resumes: the last relayed event JetStream holds, else the checkpoint.

        Both are checked against the log: a message whose position, id or hash do not match
        the log's event is not taken as relayed, and a checkpoint beyond the log's head (or not
        a number) is not believed either.
        """
        held = await last_relayed_position(self.bus, self.log)
        if held:
            return held
        assert self._kv is not None
        entry = await self._kv.get("checkpoint")
        if entry is None:
            return 0
        text = (entry.value or b"0").decode("utf-8", "replace")
        if not text.isdigit() or len(text) > _MAX_POSITION_DIGITS or int(text) > await self.log.head():
            RELAY_FORGED_POSITIONS.labels("checkpoint").inc()
            logger.warning(
                "relay %s: the checkpoint %r is not a position of the log; resuming from the start "
                "(events JetStream already holds are de-duplicated by id)",
                self.owner,
                text[:40],
            )
            return 0
        return int(text)

    async def _relay(self) -> None:
        position = await self.resume_position()
        if self._resume_cap is not None:
            # After a failed batch, later batches may be stored while it is not: resume after
            # the last contiguous acknowledged event instead (the rest is de-duplicated).
            position = min(position, self._resume_cap)
            self._resume_cap = None
        self.position = position
        logger.info("relay %s: resuming after position %d", self.owner, self.position)
        await self._set_position(self.position)
        # A reader task tails the log into a bounded buffer; this loop publishes whatever is at
        # hand as one pipelined batch, so batches grow with the load and latency stays low.
        # Up to ``window`` batches are in flight: batch k+1 goes out while the acks of batch k
        # are on their way, and the position (and checkpoint) moves as each batch is settled,
        # in order, so it is always the highest contiguous acknowledged position.
        tail = _Tail(self.log, self.position + 1, limit=self.batch * (self.window + 2))
        reader = asyncio.create_task(tail.run(), name="nexus-relay-tail")
        checkpointer = asyncio.create_task(self._checkpoints(), name="nexus-relay-checkpoint")
        in_flight: deque[tuple[int, PendingAcks]] = deque()
        try:
            while True:
                events = tail.take(self.batch)
                if not events:
                    if in_flight:
                        await self._settle(*in_flight.popleft())
                    else:
                        if self._failures and self.position >= await self.log.head():
                            self._progressed()  # caught up after a failure: nothing is stuck
                        await tail.wait()
                    continue
                try:
                    pending = await self.bus.send_events(events)
                except Exception as exc:
                    # Nothing of this batch was sent (or what was is de-duplicated when sent
                    # again). If an event in it can never be published, set it aside;
                    # otherwise the error is the bus's, and the attempt fails.
                    await self._send_sorting_out(events, in_flight, exc)
                    continue
                in_flight.append((events[-1].position or self.position, pending))
                while len(in_flight) > self.window:
                    await self._settle(*in_flight.popleft())
        except Exception:
            self._resume_cap = self.position
            raise
        finally:
            for _, pending in in_flight:
                pending.discard()
            await _cancel(reader)
            await _cancel(checkpointer)

    async def _settle(self, position: int, pending: PendingAcks) -> None:
        acks = await pending.acks()
        duplicates = sum(1 for ack in acks if ack.duplicate)
        RELAY_PUBLISHED.inc(len(acks) - duplicates)
        RELAY_DUPLICATES.inc(duplicates)
        await self._advance(position)

    async def _advance(self, position: int) -> None:
        await self._set_position(position)
        self._moved = True
        self._dirty.set()
        self._progressed()

    async def _send_sorting_out(
        self, events: list[CloudEvent], in_flight: deque[tuple[int, PendingAcks]], error: Exception
    ) -> None:
        """Publish ``events`` around those that can never be published, which are dead-lettered.

        Re-raises ``error`` when every event could be published (the failure is not theirs).
        Rare, so it settles each part before the next: the position moves in log order.
        """
        max_payload = self.bus.max_payload
        verdicts = [undeliverable(event, max_payload) for event in events]
        if not any(verdicts):
            raise error
        while in_flight:
            await self._settle(*in_flight.popleft())
        run: list[CloudEvent] = []
        for event, verdict in zip(events, verdicts, strict=True):
            if verdict is None:
                run.append(event)
                continue
            if run:
                await self._settle(run[-1].position or self.position, await self.bus.send_events(run))
                run = []
            await self._dead_letter(event, *verdict)
            await self._advance(event.position or self.position)
        if run:
            in_flight.append((run[-1].position or self.position, await self.bus.send_events(run)))

    async def _dead_letter(self, event: CloudEvent, reason: str, explanation: str, subject: str | None) -> None:
        """Put a placeholder naming ``event`` on ``nexus.dlq.relay``; the event stays in the log."""
        size = len(encode_event(event))
        error = {"too_large": "EventTooLarge", "bad_subject": "UndeliverableSubject"}.get(reason, "Undeliverable")
        headers = {
            ERROR_HEADER: error,
            REASON_HEADER: header_value(explanation),
            CONSUMER_HEADER: DLQ_CONSUMER,
            EVENT_ID_HEADER: header_value(event.id),
            EVENT_STREAM_HEADER: header_value(event.streamid or ""),
            EVENT_POSITION_HEADER: str(event.position),
            EVENT_TYPE_HEADER: header_value(event.type),
            EVENT_SIZE_HEADER: str(size),
            # The event itself is not in the dead letter: `nexus dlq redrive` leaves it alone.
            TRUNCATED_HEADER: str(size),
        }
        if subject is not None:
            headers[ORIGINAL_SUBJECT_HEADER] = subject
        placeholder = msgspec.json.encode(
            {
                "id": header_value(event.id),
                "streamid": header_value(event.streamid or ""),
                "position": event.position,
                "type": header_value(event.type),
                "size": size,
                "error": error,
                "reason": header_value(explanation),
            }
        )
        ack = await self.bus.publish(
            dlq_subject(DLQ_CONSUMER), placeholder, msg_id=f"dlq:{DLQ_CONSUMER}:{event.id}", headers=headers
        )
        if not ack.duplicate:
            RELAY_DEAD_LETTERED.labels(reason).inc()
        logger.error(
            "relay %s: event %s (stream %s, position %s, type %s) cannot be published: %s; "
            "dead-lettered a placeholder on %s and went on (the event stays in the log)",
            self.owner,
            event.id,
            event.streamid,
            event.position,
            event.type[:200],
            explanation,
            dlq_subject(DLQ_CONSUMER),
        )

    async def _checkpoints(self) -> None:
        """Write the position to the KV checkpoint as it moves, without holding up publishing."""
        failures = 0
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self._save_checkpoint()
            except (BusError, TimeoutError) as exc:
                failures += 1
                delay = min(_BACKOFF_FIRST * 2 ** min(failures - 1, 16), _BACKOFF_MAX)
                logger.warning(
                    "relay %s: cannot write the checkpoint (%d in a row; next in %.1f s): %r",
                    self.owner,
                    failures,
                    delay,
                    exc,
                )
                await asyncio.sleep(delay)
                self._dirty.set()
                continue
            failures = 0
            # The checkpoint is the fallback (resumption reads the stream first): a few writes
            # a second are enough, and each is a JetStream round trip.
            await asyncio.sleep(_CHECKPOINT_INTERVAL)

    async def _save_checkpoint(self) -> None:
        position = self.position
        if self._kv is None or position == self._saved:
            return
        await self._kv.put("checkpoint", str(position).encode())
        self._saved = position

    async def _set_position(self, position: int) -> None:
        async with self._progress:
            self.position = position
            self._progress.notify_all()
        RELAY_POSITION.set(position)
        now = asyncio.get_running_loop().time()
        if now >= self._lag_due:
            # Reading the head is a query: the lag gauge is refreshed a few times a second.
            self._lag_due = now + _LAG_INTERVAL
            with contextlib.suppress(EventLogError):
                RELAY_LAG.set(max(await self.log.head() - position, 0))


class _Tail:
    """Reads the log ahead of the publisher into a bounded buffer.

    It catches up in pages (``iter_all``, which reads the next page while one is decoded),
    then follows ``subscribe`` for new events.
    """

    def __init__(self, log: EventLog, from_position: int, *, limit: int) -> None:
        self.log = log
        self.from_position = from_position
        self.limit = limit
        self.events: deque[CloudEvent] = deque()
        self.error: BaseException | None = None
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    async def run(self) -> None:
        try:
            position = self.from_position
            async for page in self.log.iter_all(position, batch_size=_CATCH_UP_PAGE):
                self.events.extend(page)
                self._ready.set()
                position = (page[-1].position or position) + 1
                await self._wait_room()
            async for event in self.log.subscribe(position):
                self.events.append(event)
                self._ready.set()
                if len(self.events) >= self.limit:
                    await self._wait_room()
        except Exception as exc:
            self.error = exc
            self._ready.set()

    async def _wait_room(self) -> None:
        while len(self.events) >= self.limit:
            self._room.clear()
            await self._room.wait()

    def take(self, count: int) -> list[CloudEvent]:
        """Up to ``count`` events at hand (none when the buffer is empty); raises the reader's error."""
        events = self.events
        if not events:
            if self.error is not None:
                raise self.error
            return []
        if len(events) <= count:
            batch = list(events)
            events.clear()
        else:
            batch = [events.popleft() for _ in range(count)]
        if len(events) < self.limit:
            self._room.set()
        return batch

    async def wait(self) -> None:
        """Return once events (or the reader's error) are at hand."""
        while not self.events and self.error is None:
            self._ready.clear()
            await self._ready.wait()
