"""``nexus log tail|stats|verify|seal``: read, count, verify and seal the event log."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter

from nexus.proof import seal_log, verify_log
from nexus.proto import CloudEvent, encode_event
from nexus.replay._platform import ProgressLine, open_platform


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("log", help="read, count, verify and seal the event log")
    sub = parser.add_subparsers(dest="log_command", metavar="SUBCOMMAND", required=True)

    tail = sub.add_parser("tail", help="print the last events (or from a position), optionally following")
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new events until Ctrl-C")
    tail.add_argument("--from", dest="from_position", type=int, default=None, help="start at this position")
    tail.add_argument("-n", "--lines", type=int, default=10, help="how many of the last events (default 10)")
    tail.add_argument("--json", action="store_true", help="print each stored envelope as JSON")
    tail.set_defaults(func=_tail)

    stats = sub.add_parser("stats", help="head position, number of streams, events per type")
    stats.set_defaults(func=_stats)

    verify = sub.add_parser("verify", help="check hash chains, versions, positions and seals")
    verify.add_argument("--from", dest="from_position", type=int, default=1)
    verify.add_argument("--to", dest="to_position", type=int, default=None)
    verify.set_defaults(func=_verify)

    seal = sub.add_parser("seal", help="append a seal (Merkle root of event hashes) over a range")
    seal.add_argument("--from", dest="from_position", type=int, default=None, help="default: after the last seal")
    seal.add_argument("--to", dest="to_position", type=int, default=None, help="default: the head")
    seal.set_defaults(func=_seal)


def _line(event: CloudEvent, as_json: bool) -> str:
    if as_json:
        return encode_event(event).decode()
    return f"{event.position:>8} {event.time} {event.streamid}@{event.streamversion} {event.type} {event.id}"


def _tail(args: argparse.Namespace) -> int:
    async def run() -> int:
        async with open_platform() as (log, _):
            head = await log.head()
            start = args.from_position if args.from_position is not None else max(head - args.lines + 1, 1)
            if not args.follow:
                async for batch in log.iter_all(start):
                    for event in batch:
                        if (event.position or 0) > head:
                            return 0
                        print(_line(event, args.json), flush=False)
                sys.stdout.flush()
                return 0
            async for event in log.subscribe(start):
                print(_line(event, args.json), flush=True)
        return 0

    return asyncio.run(run())


def _stats(args: argparse.Namespace) -> int:
    async def run() -> int:
        async with open_platform() as (log, _):
            head = await log.head()
            types: Counter[str] = Counter()
            streams: set[str] = set()
            async for batch in log.iter_all(1):
                for event in batch:
                    if (event.position or 0) > head:
                        break
                    types[event.type] += 1
                    streams.add(event.streamid or "")
            print(f"log:     {log.url}")
            print(f"head:    {head}")
            print(f"streams: {len(streams)}")
            print(f"events:  {sum(types.values())}")
            if types:
                width = max(len(t) for t in types)
                print("events per type:")
                for type_, count in sorted(types.items()):
                    print(f"  {type_:<{width}}  {count:>10,}")
        return 0

    return asyncio.run(run())


def _verify(args: argparse.Namespace) -> int:
    async def run() -> int:
        async with open_platform() as (log, _):
            head = await log.head()
            last = head if args.to_position is None else min(args.to_position, head)
            bar = ProgressLine("verify")
            first = max(args.from_position, 1)
            try:
                report = await verify_log(
                    log,
                    args.from_position,
                    args.to_position,
                    progress=lambda pos: bar.update(pos - first + 1, last - first + 1, 0.0, None),
                )
            finally:
                bar.close()
            for problem in report.problems:
                print(f"TAMPERED {problem}")
            verdict = "OK" if report.ok else f"FAILED ({len(report.problems)} problem(s))"
            print(
                f"{verdict}: positions {report.from_position}..{report.to_position}, {report.events} events, "
                f"{report.streams} streams, {report.seals_checked} seal(s) checked"
            )
            return 0 if report.ok else 1

    return asyncio.run(run())


def _seal(args: argparse.Namespace) -> int:
    async def run() -> int:
        async with open_platform() as (log, _):
            stored = await seal_log(log, args.from_position, args.to_position)
            if stored is None:
                print("nothing to seal: the range is empty (every event is already sealed?)")
                return 0
            data = stored.data
            print(
                f"sealed positions {data['from_position']}..{data['to_position']} ({data['count']} events): "
                f"merkle root {data['merkle_root']} (seal at position {stored.position})"
            )
            return 0

    return asyncio.run(run())
