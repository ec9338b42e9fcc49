"""Applying events to a projection idempotently, checkpoints in Raw, replay and live following."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec

from nexus.atlas import Atlas, AtlasSnapshotError
from nexus.eventlog import EventLog
from nexus.proto import CloudEvent
from nexus.raw import RawBackend, RawError, RawNotFoundError
from nexus.replay._projection import ALL_EVENTS, Projection, ProjectionError

CHECKPOINT_PREFIX = "checkpoints/"
CHECKPOINT_FORMAT = "nexus.replay.checkpoint/1"

_log = logging.getLogger("nexus.replay")


class Checkpoint(msgspec.Struct, frozen=True, kw_only=True):
    """Where a projection stood: the log position, its views, and their digest."""

    format: str = CHECKPOINT_FORMAT
    projection: str
    projection_version: int
    position: int
    """Every event at or below this position has been seen."""
    digest: str
    """``Atlas.digest()`` of the views at ``position``."""
    events_applied: int
    created: str
    stream_versions: dict[str, int]
    """Last applied version per stream (the idempotency key for live delivery)."""
    snapshot: msgspec.Raw
    """``Atlas.snapshot()`` (JSON, embedded as is)."""


class ProjectionRunner:
    """Feeds events to one projection over one Atlas, applying each event at most once.

    An event is skipped when its stream version is at or below the last one applied for its
    stream (a redelivery), or, without stream information, when its position is at or below
    the runner's position. Fed in log order (a subscription, or ``EventLog.iter_all`` in
    replay), the same projection code yields the same views.
    """

    def __init__(self, projection: Projection, atlas: Atlas | None = None) -> None:
        self.projection = projection
        self.atlas = atlas if atlas is not None else Atlas()
        self.position = 0
        self.events_applied = 0
        self.stream_versions: dict[str, int] = {}
        self._handlers = projection.handlers()
        self._wildcard = self._handlers.get(ALL_EVENTS)
        projection.setup(self.atlas)

    def apply(self, event: CloudEvent) -> bool:
        """Apply one event; False when it was already applied.

        Raises:
            ProjectionError: a handler failed (the runner's position stays before the event).
        """
        return self.apply_batch((event,)) == 1

    def apply_batch(self, events: Any) -> int:
        """Apply events in order; returns how many were new. This is replay's hot loop."""
        handlers = self._handlers
        wildcard = self._wildcard
        versions = self.stream_versions
        atlas = self.atlas
        position = self.position
        applied = 0
        try:
            for event in events:
                stream = event.streamid
                version = event.streamversion
                pos = event.position
                if stream is not None and version is not None:
                    if version <= versions.get(stream, 0):
                        continue
                elif pos is not None and pos <= position:
                    continue
                handler = handlers.get(event.type, wildcard)
                if handler is not None:
                    try:
                        handler(event, atlas)
                    except Exception as exc:
                        raise ProjectionError(self.projection.name, event, exc) from exc
                if stream is not None and version is not None:
                    versions[stream] = version
                if pos is not None and pos > position:
                    position = pos
                applied += 1
        finally:
            self.position = position
            self.events_applied += applied
        return applied

    def digest(self) -> str:
        """The views' content digest (independent of insertion order and wall-clock times)."""
        self.projection.sync(self.atlas)
        return self.atlas.digest()

    def checkpoint(self) -> Checkpoint:
        return Checkpoint(
            projection=self.projection.name,
            projection_version=self.projection.version,
            position=self.position,
            digest=self.digest(),
            events_applied=self.events_applied,
            created=datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            stream_versions=dict(self.stream_versions),
            snapshot=msgspec.Raw(self.atlas.snapshot()),
        )

    def restore(self, checkpoint: Checkpoint) -> None:
        """Take up the state a checkpoint recorded.

        Raises:
            AtlasSnapshotError: the checkpoint is for another projection or its content does
                not match its digest.
        """
        if (checkpoint.projection, checkpoint.projection_version) != (self.projection.name, self.projection.version):
            raise AtlasSnapshotError(
                f"checkpoint is for {checkpoint.projection} v{checkpoint.projection_version}, "
                f"not {self.projection.describe()}"
            )
        self.atlas.restore(bytes(checkpoint.snapshot))
        if self.atlas.digest() != checkpoint.digest:
            raise AtlasSnapshotError(f"checkpoint at position {checkpoint.position}: views do not match its digest")
        self.projection.setup(self.atlas)
        self.position = checkpoint.position
        self.events_applied = checkpoint.events_applied
        self.stream_versions = dict(checkpoint.stream_versions)


class CheckpointStore:
    """A projection's checkpoints in Raw, under ``checkpoints/<name>/<position>.json``.

    Writes go through the Raw backend (the file backend renames atomically), and the newest
    ``keep`` checkpoints are kept, so a crash during a save leaves the previous one usable.
    """

    def __init__(self, raw: RawBackend, projection: str, *, keep: int = 3) -> None:
        self.raw = raw
        self.projection = projection
        self.keep = max(1, keep)
        self.prefix = f"{CHECKPOINT_PREFIX}{projection}/"

    def _key(self, position: int) -> str:
        return f"{self.prefix}{position:015d}.json"

    async def save(self, checkpoint: Checkpoint) -> str:
        """Store the checkpoint and prune older ones; returns its key."""
        key = self._key(checkpoint.position)
        await self.raw.store(key, msgspec.json.encode(checkpoint), "application/json")
        keys = await self.raw.list_all(self.prefix)
        for old in keys[: -self.keep]:
            with contextlib.suppress(RawNotFoundError):
                await self.raw.delete(old)
        return key

    async def positions(self) -> list[int]:
        keys = await self.raw.list_all(self.prefix)
        return [int(k[len(self.prefix) : -len(".json")]) for k in keys if k.endswith(".json")]

    async def load(self, position: int) -> Checkpoint:
        data = await self.raw.retrieve(self._key(position))
        try:
            return msgspec.json.decode(data, type=Checkpoint)
        except msgspec.DecodeError as exc:
            raise AtlasSnapshotError(f"checkpoint {self._key(position)} is unreadable: {exc}") from None

    async def latest(self, *, at_most: int | None = None) -> Checkpoint | None:
        """The newest readable checkpoint (at or below ``at_most``), or None."""
        for position in reversed(await self.positions()):
            if at_most is not None and position > at_most:
                continue
            try:
                return await self.load(position)
            except (AtlasSnapshotError, RawError) as exc:
                _log.warning("skipping checkpoint %s of %s: %s", position, self.projection, exc)
        return None


class ReplayProgress(msgspec.Struct, frozen=True):
    """Reported after every batch of a replay."""

    position: int
    target: int
    events: int
    """Events read so far in this run."""
    elapsed: float

    @property
    def rate(self) -> float:
        return self.events / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def remaining_seconds(self) -> float | None:
        """Estimated seconds left, assuming the remaining positions go at the current rate."""
        if self.rate <= 0:
            return None
        return max(self.target - self.position, 0) / self.rate


class ReplayResult(msgspec.Struct, frozen=True):
    projection: str
    position: int
    """The log position the views now reflect."""
    events_read: int
    events_applied: int
    resumed_from: int
    """Position of the checkpoint the replay started from (0: from the beginning)."""
    elapsed: float
    digest: str

    @property
    def events_per_second(self) -> float:
        return self.events_read / self.elapsed if self.elapsed > 0 else 0.0


async def replay(
    log: EventLog,
    projection: Projection | ProjectionRunner,
    *,
    checkpoints: CheckpointStore | None = None,
    resume: bool = True,
    to_position: int | None = None,
    checkpoint_every: int | None = None,
    save_final: bool = True,
    batch_size: int = 5000,
    progress: Callable[[ReplayProgress], None] | None = None,
) -> tuple[ProjectionRunner, ReplayResult]:
    """Rebuild a projection's views from the log (from position 0, or from its last checkpoint).

    Args:
        log: The event log.
        projection: What to rebuild (a runner to continue one that holds state).
        checkpoints: Where checkpoints are read and written (None: none).
        resume: Start from the newest checkpoint at or below ``to_position`` when there is one.
        to_position: Stop there (default: the head when the replay starts).
        checkpoint_every: Save a checkpoint after this many events read.
        save_final: Save a checkpoint at the end (when ``checkpoints`` is given).
        progress: Called after every batch.

    Returns:
        The runner (holding the Atlas) and a summary.
    """
    runner = projection if isinstance(projection, ProjectionRunner) else ProjectionRunner(projection)
    if resume and checkpoints is not None and runner.position == 0 and runner.projection.resumable:
        found = await checkpoints.latest(at_most=to_position)
        if found is not None and found.projection_version == runner.projection.version:
            runner.restore(found)
    resumed_from = runner.position
    target = await log.head() if to_position is None else to_position
    types = runner.projection.event_types
    started = time.perf_counter()
    read = 0
    since_checkpoint = 0
    if runner.position < target:
        async for batch in log.iter_all(runner.position + 1, types=types, batch_size=batch_size):
            if (batch[-1].position or 0) > target:
                batch = [e for e in batch if (e.position or 0) <= target]
            runner.apply_batch(batch)
            read += len(batch)
            since_checkpoint += len(batch)
            if progress is not None:
                progress(ReplayProgress(runner.position, target, read, time.perf_counter() - started))
            if checkpoints is not None and checkpoint_every and since_checkpoint >= checkpoint_every:
                await checkpoints.save(runner.checkpoint())
                since_checkpoint = 0
            if not batch or (batch[-1].position or 0) >= target:
                break
        # Events of other types up to the target were seen too (and skipped by the filter).
        runner.position = max(runner.position, target)
    elapsed = time.perf_counter() - started
    if checkpoints is not None and save_final and runner.position > resumed_from:
        await checkpoints.save(runner.checkpoint())
    result = ReplayResult(
        runner.projection.name, runner.position, read, runner.events_applied, resumed_from, elapsed, runner.digest()
    )
    return runner, result


async def follow(
    log: EventLog,
    runner: ProjectionRunner,
    *,
    checkpoints: CheckpointStore | None = None,
    checkpoint_every: int = 10_000,
    checkpoint_interval: float = 30.0,
    stop: asyncio.Event | None = None,
    on_applied: Callable[[ProjectionRunner], None] | None = None,
) -> None:
    """Run a projection live: follow the log from the runner's position, checkpointing.

    A checkpoint is saved after ``checkpoint_every`` events or ``checkpoint_interval`` seconds
    with new events, and when ``stop`` is set. Cancel the task or set ``stop`` to end it.
    """
    stop = stop or asyncio.Event()
    pending = 0
    last_save = time.monotonic()
    subscription = log.subscribe(runner.position + 1)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        while not stop.is_set():
            nxt = asyncio.ensure_future(anext(subscription))
            done, _ = await asyncio.wait({nxt, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if nxt not in done:
                nxt.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await nxt
                break
            event = nxt.result()
            if runner.apply(event):
                pending += 1
                if on_applied is not None:
                    on_applied(runner)
            due = pending >= checkpoint_every or (pending and time.monotonic() - last_save >= checkpoint_interval)
            if checkpoints is not None and due:
                await checkpoints.save(runner.checkpoint())
                pending, last_save = 0, time.monotonic()
    except StopAsyncIteration:
        pass
    finally:
        stopper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stopper
        close = getattr(subscription, "aclose", None)  # an async generator's, when it is one
        if close is not None:
            await close()
        if checkpoints is not None and pending:
            await checkpoints.save(runner.checkpoint())
