"""``nexus replay [--verify]``: rebuild projections' views from the log; check determinism."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from collections.abc import Callable

from nexus.eventlog import EventLog
from nexus.replay import (
    CheckpointStore,
    FoldProjection,
    Projection,
    ProjectionRunner,
    ReplayProgress,
    ReplayResult,
    load_projection,
    registered,
    replay,
)
from nexus.replay._platform import ProgressLine, open_platform

SERVICE_PROJECTIONS = (
    "nexus.services.workflow.projections",
    "nexus.services.granulator.projections",
    "nexus.services.kam.projections",
    "nexus.services.studio.projections",
)
"""Modules registering the folds the services keep in memory. Named, not imported at the top: a
library does not depend on the services; the command loads those installed beside it."""


def load_service_projections() -> list[str]:
    """Import every service's projections module; the names of those that could not be imported."""
    missing = []
    for module in SERVICE_PROJECTIONS:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    return missing


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "replay",
        help="rebuild views from the event log (resuming from checkpoints in Raw); --verify checks determinism",
    )
    parser.add_argument(
        "--projection",
        "-p",
        action="append",
        dest="projections",
        metavar="NAME",
        help="a registered projection or package.module:Class (repeatable; default: every registered one)",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="rebuild from position 0 and compare the digest with the live one: a service's fold as the "
        "service builds it from the log, else the latest checkpoint in Raw",
    )
    parser.add_argument("--from-scratch", action="store_true", help="ignore checkpoints and start at position 0")
    parser.add_argument("--to", dest="to_position", type=int, default=None, help="stop at this position")
    parser.add_argument("--checkpoint-every", type=int, default=100_000, help="events between checkpoints")
    parser.add_argument("--expect-digest", default=None, help="with --verify: the digest a live projection reports")
    parser.add_argument("--at", dest="at_position", type=int, default=None, help="with --expect-digest: its position")
    parser.set_defaults(func=_run)


def _progress(label: str) -> tuple[ProgressLine, Callable[[ReplayProgress], None]]:
    bar = ProgressLine(label)

    def report(p: ReplayProgress) -> None:
        bar.update(p.position, p.target, p.rate, p.remaining_seconds)

    return bar, report


def _run(args: argparse.Namespace) -> int:
    for module in load_service_projections():
        print(f"nexus replay: {module} is not installed; its projections are not checked", file=sys.stderr)
    try:
        projections = [load_projection(s) for s in args.projections] if args.projections else registered()
    except LookupError as exc:
        print(f"nexus replay: {exc}", file=sys.stderr)
        return 2
    if args.expect_digest and (args.at_position is None or len(projections) != 1):
        print("nexus replay: --expect-digest needs --at POSITION and exactly one --projection", file=sys.stderr)
        return 2
    return asyncio.run(_verify(args, projections) if args.verify else _rebuild(args, projections))


async def _rebuild(args: argparse.Namespace, projections: list[Projection]) -> int:
    async with open_platform() as (log, raw):
        for projection in projections:
            bar, report = _progress(f"replay {projection.name}")
            try:
                _, result = await replay(
                    log,
                    projection,
                    checkpoints=CheckpointStore(raw, projection.name),
                    resume=not args.from_scratch,
                    to_position=args.to_position,
                    checkpoint_every=args.checkpoint_every,
                    progress=report,
                )
            finally:
                bar.close()
            start = f"checkpoint {result.resumed_from}" if result.resumed_from else "position 0"
            print(
                f"{result.projection}: {result.events_read:,} events from {start} to {result.position} "
                f"in {result.elapsed:.2f}s ({result.events_per_second:,.0f} events/s), digest {result.digest}"
            )
    return 0


async def _verify(args: argparse.Namespace, projections: list[Projection]) -> int:
    failures = 0
    async with open_platform() as (log, raw):
        for projection in projections:
            if isinstance(projection, FoldProjection) and not args.expect_digest:
                failures += not await _verify_fold(log, projection, args.to_position)
                continue
            store = CheckpointStore(raw, projection.name)
            if args.expect_digest:
                live_digest, live_position, origin = args.expect_digest, args.at_position, "the given digest"
            else:
                live = await store.latest()
                if live is not None and live.projection_version == projection.version:
                    live_digest, live_position = live.digest, live.position
                    origin = f"the live checkpoint at position {live.position}"
                else:
                    live_digest, live_position, origin = None, args.to_position, "a second independent replay"
            _, rebuilt = await _rebuild_fresh(log, projection, live_position)
            if live_digest is None:
                _, again = await replay(log, ProjectionRunner(type(projection)()), to_position=rebuilt.position)
                live_digest = again.digest
            same = rebuilt.digest == live_digest
            failures += not same
            verdict = "OK" if same else "MISMATCH"
            print(
                f"{verdict} {projection.name}: rebuilt {rebuilt.events_read:,} events to position {rebuilt.position} "
                f"({rebuilt.events_per_second:,.0f} events/s), digest {rebuilt.digest}; compared with {origin}"
                + ("" if same else f" whose digest is {live_digest}")
            )
    return 1 if failures else 0


async def _rebuild_fresh(
    log: EventLog, projection: Projection, to_position: int | None
) -> tuple[ProjectionRunner, ReplayResult]:
    """Replay ``projection`` from the start into a fresh instance, showing progress."""
    bar, report = _progress(f"verify {projection.name}")
    try:
        return await replay(
            log, ProjectionRunner(type(projection)()), resume=False, to_position=to_position, progress=report
        )
    finally:
        bar.close()


async def _verify_fold(log: EventLog, projection: FoldProjection, to_position: int | None) -> bool:
    """Rebuild a service's fold by replay and compare it with the fold the service builds from the log."""
    runner, rebuilt = await _rebuild_fresh(log, projection, to_position)
    fold = runner.projection
    assert isinstance(fold, FoldProjection)
    mine = fold.check(fold.fold)
    live = await fold.check_running(log)
    same = mine.digest == live.digest == rebuilt.digest and mine.entities == live.entities
    print(
        f"{'OK' if same else 'MISMATCH'} {projection.name}: {mine.entities:,} entities, rebuilt "
        f"{rebuilt.events_read:,} events to position {rebuilt.position} "
        f"({rebuilt.events_per_second:,.0f} events/s), digest {rebuilt.digest}; compared with the service's fold"
        + ("" if same else f", which holds {live.entities:,} entities with digest {live.digest}")
    )
    return same
