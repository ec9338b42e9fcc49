"""``nexus backup create|restore DIR``: the log and Raw blobs, with a proof manifest.

The two ends need not be the same backends: a backup of a SQLite log and file Raw restores onto
PostgreSQL (``NEXUS_EVENT_LOG_URL`` / ``NEXUS_RAW_URL``) and back, with the same positions and
hashes, so ``nexus log verify`` and ``nexus replay --verify`` give the same results after it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

from nexus.backup import BackupError, create_backup, restore_backup
from nexus.eventlog import EventLogError
from nexus.raw import RawError
from nexus.replay._platform import ProgressLine, open_platform


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("backup", help="back up or restore the event log and Raw blobs")
    sub = parser.add_subparsers(dest="backup_command", metavar="SUBCOMMAND", required=True)
    create = sub.add_parser("create", help="write the log, the blobs and a manifest into a new directory")
    create.add_argument("directory")
    create.set_defaults(func=_create)
    restore = sub.add_parser("restore", help="verify a backup's manifest, then restore it into an empty log/Raw")
    restore.add_argument("directory")
    restore.add_argument("--force", action="store_true", help="merge into a log or Raw store that is not empty")
    restore.set_defaults(func=_restore)


def _create(args: argparse.Namespace) -> int:
    async def run() -> int:
        async with open_platform() as (log, raw):
            summary = await create_backup(log, raw, args.directory)
        print(f"backup written to {summary.directory}: {summary.events} events, {summary.blobs} blobs")
        print(f"manifest root {summary.manifest_root}")
        return 0

    return _guard(run)


def _restore(args: argparse.Namespace) -> int:
    async def run() -> int:
        bar = ProgressLine("restore")
        started = time.monotonic()

        def report(done: int, total: int) -> None:
            elapsed = time.monotonic() - started
            rate = done / elapsed if elapsed > 0 else 0.0
            bar.update(done, total, rate, (total - done) / rate if rate else None, force=done == total)

        try:
            async with open_platform() as (log, raw):
                summary = await restore_backup(args.directory, log, raw, force=args.force, progress=report)
        finally:
            bar.close()
        print(f"restored {summary.events} events and {summary.blobs} blobs from {summary.directory}")
        print(f"manifest root {summary.manifest_root} verified")
        return 0

    return _guard(run)


def _guard(run: Callable[[], Coroutine[Any, Any, int]]) -> int:
    try:
        return asyncio.run(run())
    except (BackupError, EventLogError, RawError) as exc:
        # A store that cannot be reached (or refuses an append) is said in one line, not a traceback.
        print(f"nexus backup: {exc}", file=sys.stderr)
        return 1
