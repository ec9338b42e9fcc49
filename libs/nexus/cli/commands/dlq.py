"""``nexus dlq list|redrive``: inspect dead letters and send them back to their original subject.

The reading and the redrive are ``nexus.bus.deadletters``'s, which KAM's admin routes (the
console's dead-letter page) use too; this command runs them as the operator, who may publish
on every subject.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable

from nexus.bus import Bus, BusError
from nexus.bus.deadletters import dead_letters, describe, redrive
from nexus.cli.commands.streams import connect
from nexus.config import PlatformSettings


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("dlq", help="list or redrive dead letters (stream NEXUS_DLQ)")
    sub = parser.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="show the dead letters with their consumer and reason")
    listing.add_argument("--consumer", metavar="NAME", help="only the dead letters of this consumer")
    listing.set_defaults(func=_list)
    redriving = sub.add_parser("redrive", help="republish dead letters to their original subject and remove them")
    redriving.add_argument("--consumer", metavar="NAME", help="only the dead letters of this consumer")
    redriving.set_defaults(func=_redrive)


def _list(args: argparse.Namespace) -> int:
    async def show(bus: Bus) -> int:
        rows = [("SEQ", "CONSUMER", "ORIGINAL SUBJECT", "DELIVERIES", "ERROR", "REASON")]
        async for message in dead_letters(bus, args.consumer):
            letter = describe(message)
            rows.append(
                (
                    str(letter.seq),
                    letter.consumer,
                    letter.original_subject or "?",
                    str(letter.deliveries) if letter.deliveries is not None else "?",
                    letter.error,
                    letter.reason,
                )
            )
        if len(rows) == 1:
            print("no dead letters" + (f" for consumer {args.consumer}" if args.consumer else ""))
            return 0
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
        for row in rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1])
        return 0

    return _with_bus(show)


def _redrive(args: argparse.Namespace) -> int:
    async def send(bus: Bus) -> int:
        count, problems = await redrive(bus, args.consumer)
        for line in problems:
            print(f"nexus dlq: {line}", file=sys.stderr)
        print(f"redrove {count} dead letter{'s' if count != 1 else ''}")
        return 1 if problems else 0

    return _with_bus(send)


def _with_bus(action: Callable[[Bus], Awaitable[int]]) -> int:
    platform = PlatformSettings.from_env()

    async def main() -> int:
        try:
            bus = await connect(platform)
        except BusError as exc:
            print(f"nexus dlq: {exc} (is Nexus running? start it with `nexus up`)", file=sys.stderr)
            return 1
        try:
            return await action(bus)
        finally:
            await bus.close()

    return asyncio.run(main())
