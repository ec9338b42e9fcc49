"""Log verification (hash chains, versions, positions, seals) and sealing a range of the log."""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from nexus.eventlog import GENESIS_HASH, EventLog, EventLogError, event_hash
from nexus.proof._merkle import leaf_hash, root_of_hashes
from nexus.proto import CloudEvent, new_event
from nexus.proto.events.platform import LogSealed

SEAL_STREAM = "platform-seals"
SEAL_TYPE = "nexus.platform.log.sealed"
SEAL_ALGORITHM = "sha256+rfc6962"


class LogProblem(msgspec.Struct, frozen=True):
    """One thing wrong in the log: where, in which stream, and why."""

    position: int
    stream: str
    reason: str

    def __str__(self) -> str:
        return f"position {self.position} stream {self.stream or '?'}: {self.reason}"


class LogReport(msgspec.Struct, frozen=True):
    """What ``verify_log`` found."""

    ok: bool
    from_position: int
    to_position: int
    events: int
    """Events checked."""
    streams: int
    seals_checked: int
    problems: list[LogProblem]


def seal_root(hashes: list[str]) -> str:
    """The Merkle root (hex) over event hashes (hex), in position order."""
    return root_of_hashes([leaf_hash(bytes.fromhex(h)) for h in hashes]).hex()


async def verify_log(
    log: EventLog,
    from_position: int = 1,
    to_position: int | None = None,
    *,
    batch_size: int = 5000,
    progress: Callable[[int], None] | None = None,
) -> LogReport:
    """Check positions ``from_position``..``to_position`` (default: to the head).

    Checks, for every event: its recomputed hash equals the stored ``hash``; ``prevhash`` is
    the stored hash of the stream's previous event (64 zeros for version 1); its version
    follows the previous one of its stream; positions follow each other without a gap or a
    repeat. Then every seal whose range lies inside the checked range is recomputed.
    A changed byte, a deleted, inserted or moved event each yield at least one problem.

    Args:
        progress: Called with the last position checked after each batch.
    """
    head = await log.head()
    last = head if to_position is None else min(to_position, head)
    first = max(from_position, 1)
    problems: list[LogProblem] = []
    tails: dict[str, tuple[int, str]] = {}
    hashes: dict[int, str] = {}
    seals: list[tuple[int, LogSealed]] = []
    expected = first
    checked = 0
    position = first
    while position <= last:
        try:
            batch = await log.read_all(position, min(batch_size, last - position + 1))
        except EventLogError as exc:
            batch = await _read_one_by_one(log, position, min(batch_size, last - position + 1), problems, exc)
        if not batch:
            break
        for event in batch:
            pos = event.position or 0
            if pos > last:
                break
            stream = event.streamid or ""
            checked += 1
            if pos != expected:
                if pos > expected:
                    problems.append(
                        LogProblem(pos, stream, f"positions {expected}..{pos - 1} are missing (events deleted?)")
                    )
                else:
                    problems.append(
                        LogProblem(pos, stream, f"position {pos} repeats or goes back (expected {expected})")
                    )
            expected = max(expected, pos + 1)
            hashes[pos] = event.hash or ""
            await _check_event(log, event, tails, problems)
            if event.type == SEAL_TYPE and stream == SEAL_STREAM:
                try:
                    seals.append((pos, msgspec.convert(event.data, LogSealed)))
                except msgspec.ValidationError as exc:
                    problems.append(LogProblem(pos, stream, f"seal data is malformed: {exc}"))
        position = max(expected, (batch[-1].position or 0) + 1)
        if progress is not None:
            progress(min(position - 1, last))
    if expected <= last:
        problems.append(LogProblem(expected, "", f"positions {expected}..{last} are missing at the end of the log"))
    seals_checked = 0
    for pos, seal in seals:
        if seal.from_position < first or seal.to_position > last:
            continue
        seals_checked += 1
        found = [hashes.get(p) for p in range(seal.from_position, seal.to_position + 1)]
        covered = [h for h in found if h is not None]
        if len(covered) != len(found):
            problems.append(
                LogProblem(pos, SEAL_STREAM, f"seal over {seal.from_position}..{seal.to_position}: events are missing")
            )
            continue
        root = seal_root(covered)
        if root != seal.merkle_root:
            problems.append(
                LogProblem(
                    pos,
                    SEAL_STREAM,
                    f"seal over {seal.from_position}..{seal.to_position} does not match: "
                    f"sealed root {seal.merkle_root[:16]}…, now {root[:16]}… (the range changed since it was sealed)",
                )
            )
    problems.sort(key=lambda p: p.position)
    return LogReport(not problems, first, last, checked, len(tails), seals_checked, problems)


async def _read_one_by_one(
    log: EventLog, position: int, count: int, problems: list[LogProblem], error: Exception
) -> list[CloudEvent]:
    """A page that cannot be read whole: take it event by event and report the unreadable ones."""
    out: list[CloudEvent] = []
    for pos in range(position, position + count):
        try:
            found = await log.read_all(pos, 1)
        except EventLogError as exc:
            problems.append(LogProblem(pos, "", f"the stored event cannot be read: {exc}"))
            continue
        if found and (found[0].position or 0) == pos:
            out.append(found[0])
    if not out and not problems:
        problems.append(LogProblem(position, "", f"the log cannot be read: {error}"))
    return out


async def _check_event(
    log: EventLog, event: CloudEvent, tails: dict[str, tuple[int, str]], problems: list[LogProblem]
) -> None:
    pos = event.position or 0
    stream = event.streamid or ""
    version = event.streamversion or 0
    if not stream or not version or not event.hash or not event.prevhash:
        problems.append(LogProblem(pos, stream, "stream id, version or hashes are missing"))
        return
    recomputed = event_hash(event)
    if recomputed != event.hash:
        problems.append(
            LogProblem(
                pos, stream, f"content changed: hash recomputes to {recomputed[:16]}…, stored {event.hash[:16]}…"
            )
        )
    tail = tails.get(stream)
    if tail is None:
        tail = await _tail_before(log, stream, version)
    prev_version, prev_hash = tail
    if version != prev_version + 1:
        problems.append(
            LogProblem(pos, stream, f"version {version} follows version {prev_version} (expected {prev_version + 1})")
        )
    if prev_hash and event.prevhash != prev_hash:
        problems.append(
            LogProblem(
                pos, stream, f"prevhash {event.prevhash[:16]}… is not the previous event's hash {prev_hash[:16]}…"
            )
        )
    tails[stream] = (version, event.hash)


async def _tail_before(log: EventLog, stream: str, version: int) -> tuple[int, str]:
    """The (version, hash) before ``version`` in ``stream``, for a range that starts mid-stream."""
    if version <= 1:
        return 0, GENESIS_HASH
    try:
        found = await log.read_stream(stream, version - 1, 1)
    except EventLogError:
        found = []
    if found and found[0].streamversion == version - 1:
        return version - 1, found[0].hash or ""
    # The previous event is gone: report the gap against what the stream actually holds.
    earlier = [e for e in await log.read_stream(stream, 1) if (e.streamversion or 0) < version]
    if earlier:
        return earlier[-1].streamversion or 0, earlier[-1].hash or ""
    return 0, GENESIS_HASH


async def seal_log(
    log: EventLog, from_position: int | None = None, to_position: int | None = None, *, source: str = "nexus/cli"
) -> CloudEvent | None:
    """Append a seal over ``from_position``..``to_position`` to the stream ``platform-seals``.

    By default the range starts after the last seal (or at 1) and ends at the head, so seals
    cover the log without gaps. Returns the stored seal, or None when there is nothing to seal.

    The seal records the Merkle root of the stored event hashes; a later ``verify_log`` over a
    range containing it recomputes the root, so any change to a sealed event is detected even
    if the attacker rebuilt the hash chains.
    """
    last_seal = await _last_seal(log)
    if from_position is None:
        from_position = last_seal.to_position + 1 if last_seal is not None else 1
    head = await log.head()
    to_position = head if to_position is None else min(to_position, head)
    if from_position < 1 or to_position < from_position:
        return None
    hashes: list[str] = []
    async for batch in log.iter_all(from_position):
        for event in batch:
            if (event.position or 0) > to_position:
                break
            hashes.append(event.hash or "")
        if batch and (batch[-1].position or 0) >= to_position:
            break
    data = LogSealed(
        from_position=from_position,
        to_position=to_position,
        merkle_root=seal_root(hashes),
        algorithm=SEAL_ALGORITHM,
        count=len(hashes),
    )
    stored = await log.append(SEAL_STREAM, [new_event(SEAL_TYPE, data, source=source)])
    return stored[0]


async def _last_seal(log: EventLog) -> LogSealed | None:
    version = await log.stream_version(SEAL_STREAM)
    if version == 0:
        return None
    found = await log.read_stream(SEAL_STREAM, version, 1)
    return msgspec.convert(found[0].data, LogSealed) if found else None
