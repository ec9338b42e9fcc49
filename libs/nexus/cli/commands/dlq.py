"""``nexus dlq list|redrive``: inspect dead letters and send them back to their original subject."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable

from nexus.bus import DEAD_LETTER_HEADERS, Bus, BusError, StoredMessage
from nexus.bus._dispatch import TRUNCATED_HEADER
from nexus.cli.commands.streams import connect
from nexus.config import PlatformSettings
from nexus.proto import DLQ_PREFIX, STREAM_DLQ, dlq_subject


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("dlq", help="list or redrive dead letters (stream NEXUS_DLQ)")
    sub = parser.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="show the dead letters with their consumer and reason")
    listing.add_argument("--consumer", metavar="NAME", help="only the dead letters of this consumer")
    listing.set_defaults(func=_list)
    redrive = sub.add_parser("redrive", help="republish dead letters to their original subject and remove them")
    redrive.add_argument("--consumer", metavar="NAME", help="only the dead letters of this consumer")
    redrive.set_defaults(func=_redrive)


async def dead_letters(bus: Bus, consumer: str | None = None) -> AsyncIterator[StoredMessage]:
    """Every message in NEXUS_DLQ (of one consumer's subject when given), in stream order."""
    subject = dlq_subject(consumer) if consumer else f"{DLQ_PREFIX}.>"
    seq = 1
    while True:
        message = await bus.next_message(STREAM_DLQ, seq, subject)
        if message is None:
            return
        yield message
        seq = message.seq + 1


async def redrive(bus: Bus, consumer: str | None = None) -> tuple[int, list[str]]:
    """Republish dead letters to their original subject, then delete them from NEXUS_DLQ.

    Returns:
        How many were redriven, and a line per message that could not be (kept in the DLQ).
    """
    count = 0
    problems: list[str] = []
    async for message in dead_letters(bus, consumer):
        headers = dict(message.headers)
        original = headers.get("Nexus-Original-Subject")
        if not original:
            problems.append(f"seq {message.seq}: no Nexus-Original-Subject header; left in {STREAM_DLQ}")
            continue
        if TRUNCATED_HEADER in headers:
            # Too large to dead-letter whole: republishing the cut payload would be a new, wrong message.
            problems.append(
                f"seq {message.seq}: payload truncated from {headers[TRUNCATED_HEADER]} bytes "
                f"when it was dead-lettered; left in {STREAM_DLQ}"
            )
            continue
        outgoing = {k: v for k, v in headers.items() if k not in DEAD_LETTER_HEADERS}
        # A fresh id per dead letter: redriving again after an interruption is de-duplicated,
        # while the original id (still inside JetStream's window) would be dropped as a duplicate.
        await bus.publish(original, message.data, msg_id=f"redrive:{message.seq}", headers=outgoing)
        await bus.delete_message(STREAM_DLQ, message.seq)
        count += 1
    return count, problems


def _list(args: argparse.Namespace) -> int:
    async def show(bus: Bus) -> int:
        rows = [("SEQ", "CONSUMER", "ORIGINAL SUBJECT", "DELIVERIES", "ERROR", "REASON")]
        async for message in dead_letters(bus, args.consumer):
            headers = message.headers
            rows.append(
                (
                    str(message.seq),
                    headers.get("Nexus-Consumer", message.subject.removeprefix(f"{DLQ_PREFIX}.")),
                    headers.get("Nexus-Original-Subject", "?"),
                    headers.get("Nexus-Deliveries", "?"),
                    headers.get("Nexus-Error", ""),
                    headers.get("Nexus-Error-Reason", ""),
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
