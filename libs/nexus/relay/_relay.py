"""The outbox relay: every event of the log is published on ``nexus.evt.>``, exactly once by id."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections import deque

from nats.errors import Error as NatsError
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from nexus.bus._metrics import RELAY_DUPLICATES, RELAY_LAG, RELAY_LEADER, RELAY_POSITION, RELAY_PUBLISHED
from nexus.bus._port import BusError
from nexus.bus.jetstream import JetStreamBus, PendingAcks
from nexus.eventlog import EventLog, EventLogError
from nexus.proto import STREAM_EVT, CloudEvent

logger = logging.getLogger("nexus.relay")

RELAY_BUCKET = "nexus_relay"
"""KV bucket holding the relay's checkpoint (key ``checkpoint``: the last relayed position)."""
LEASE_BUCKET = "nexus_relay_lease"
"""KV bucket holding the relay lease (key ``leader``); its TTL makes a dead leader's lease lapse."""

# How far back from the end of NEXUS_EVT to look for the last relayed event, past messages
# that did not come from the relay (anything can be published on nexus.evt.>).
_SCAN_BACK = 256
_CATCH_UP_PAGE = 2000
"""Events per page read while catching up with the log."""
_LAG_INTERVAL = 0.25
"""Seconds between refreshes of the relay lag gauge."""
_CHECKPOINT_INTERVAL = 0.1
"""Seconds at least between two checkpoint writes (stop() writes the last one)."""


async def _bucket(bus: JetStreamBus, name: str, ttl: float | None = None) -> KeyValue:
    try:
        return await bus.js.key_value(name)
    except BucketNotFoundError:
        config = KeyValueConfig(bucket=name, history=1, storage=StorageType.FILE, ttl=ttl)
        return await bus.js.create_key_value(config)


async def last_relayed_position(bus: JetStreamBus) -> int:
    """The log position of the last relayed event NEXUS_EVT holds (0 when it holds none)."""
    info = await bus.js.stream_info(STREAM_EVT)
    last, first = info.state.last_seq, info.state.first_seq
    for seq in range(last, max(first, last - _SCAN_BACK) - 1, -1):
        if seq <= 0:
            break
        try:
            msg = await bus.js.get_msg(STREAM_EVT, seq)
        except NotFoundError:
            continue  # deleted
        position = (msg.headers or {}).get("Nexus-Position")
        if position and position.isdigit():
            return int(position)
    return 0


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

    def __init__(self, kv: KeyValue, owner: str, ttl: float) -> None:
        self.kv = kv
        self.owner = owner.encode()
        self.ttl = ttl
        self._revision: int | None = None

    @classmethod
    async def open(cls, bus: JetStreamBus, owner: str, ttl: float = 3.0) -> Lease:
        return cls(await _bucket(bus, LEASE_BUCKET, ttl=ttl), owner, ttl)

    @property
    def held(self) -> bool:
        return self._revision is not None

    async def try_acquire(self) -> bool:
        try:
            self._revision = await self.kv.create("leader", self.owner)
        except KeyWrongLastSequenceError:
            self._revision = None
        return self.held

    async def renew(self) -> bool:
        if self._revision is None:
            return False
        try:
            self._revision = await self.kv.update("leader", self.owner, last=self._revision)
        except (KeyWrongLastSequenceError, KeyNotFoundError):
            self._revision = None
        return self.held

    async def release(self) -> None:
        if self._revision is not None:
            with contextlib.suppress(NatsError, BusError, KeyWrongLastSequenceError):
                await self.kv.purge("leader")
            self._revision = None


class Relay:
    """Tails the log and publishes each event on ``subject_for(event)`` with Nats-Msg-Id = event id.

    It resumes after the last event NEXUS_EVT actually holds, so a tail JetStream lost in an
    OS crash (it fsyncs lazily) is published again; when the stream holds no relayed event it
    resumes from its checkpoint in the ``nexus_relay`` KV bucket. The checkpoint moves only
    after JetStream acknowledged the events before it.

    With ``lease=True`` replicas elect one leader through a KV lease; the others stand by and
    take over within the lease TTL when the leader dies.

    Args:
        log: the event log (the outbox).
        bus: a connected JetStreamBus.
        batch: events published per pipelined batch (at most).
        window: batches in flight at most (sent, acks not yet settled).
        lease: elect a leader among replicas (default True).
        lease_ttl: seconds after which a dead leader's lease lapses.
        owner: this replica's name in the lease (default host:pid).
    """

    def __init__(
        self,
        log: EventLog,
        bus: JetStreamBus,
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
        self._kv: KeyValue | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._progress = asyncio.Condition()
        self._dirty = asyncio.Event()
        self._saved: int | None = None
        self._moved = False
        self._resume_cap: int | None = None
        self._lag_due = 0.0
        self.leading = asyncio.Event()
        """Set while this replica holds the lease and relays."""

    @property
    def is_leader(self) -> bool:
        return not self.use_lease or (self._lease is not None and self._lease.held)

    async def start(self) -> None:
        """Start relaying (or standing by) in a background task."""
        self._kv = await _bucket(self.bus, RELAY_BUCKET)
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
            except (NatsError, BusError, TimeoutError) as exc:
                logger.warning("relay %s: cannot write the last checkpoint: %r", self.owner, exc)
        if self._lease is not None:
            await self._lease.release()
        RELAY_LEADER.set(0)

    async def wait_relayed(self, position: int) -> None:
        """Return once every event up to ``position`` is relayed (for tests and start-up ordering)."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.position >= position)

    async def run(self) -> None:
        while not self._stop.is_set():
            if self._lease is not None and not await self._lease.try_acquire():
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
            if relaying.done() and not relaying.cancelled() and relaying.exception() is not None:
                logger.warning("relay %s: stopped relaying: %r", self.owner, relaying.exception())
                await self._pause(0.5)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _hold_lease(self, relaying: asyncio.Task[None]) -> None:
        """Renew the lease while relaying; return when it is lost, relaying ended, or stop()."""
        while not self._stop.is_set() and not relaying.done():
            stopped = asyncio.ensure_future(self._stop.wait())
            done, _ = await asyncio.wait({relaying, stopped}, timeout=self.lease_ttl / 3)
            stopped.cancel()
            if done:
                return
            if self._lease is not None:
                try:
                    renewed = await self._lease.renew()
                except (NatsError, TimeoutError) as exc:
                    logger.warning("relay %s: cannot renew the lease: %r", self.owner, exc)
                    renewed = False
                if not renewed:
                    logger.warning("relay %s: lost the lease", self.owner)
                    return

    async def resume_position(self) -> int:
        """Where relaying resumes: the last relayed event JetStream holds, else the checkpoint."""
        held = await last_relayed_position(self.bus)
        if held:
            return held
        assert self._kv is not None
        try:
            entry = await self._kv.get("checkpoint")
        except KeyNotFoundError:
            return 0
        return int(entry.value or b"0")

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
                        await tail.wait()
                    continue
                in_flight.append((events[-1].position or self.position, await self.bus.send_events(events)))
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
        await self._set_position(position)
        self._moved = True
        self._dirty.set()

    async def _checkpoints(self) -> None:
        """Write the position to the KV checkpoint as it moves, without holding up publishing."""
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self._save_checkpoint()
            except (NatsError, BusError, TimeoutError) as exc:
                logger.warning("relay %s: cannot write the checkpoint: %r", self.owner, exc)
                await asyncio.sleep(0.5)
                self._dirty.set()
                continue
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
