"""``nexus streams``: the state of the JetStream streams and their consumers."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from nexus.bus import BusError, nats_credentials
from nexus.bus.jetstream import JetStreamBus
from nexus.config import PlatformSettings


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "streams",
        help="JetStream state: streams, messages, bytes, consumers",
        description=(
            "Connects to NEXUS_NATS_URL, else to the embedded server on NEXUS_NATS_PORT (nexus up), as "
            "NEXUS_NATS_USER, else as the operator identity kept in the data directory; fails within a few "
            "seconds, with the reason, when NATS cannot be reached."
        ),
    )
    parser.set_defaults(func=_streams)


def nats_url(platform: PlatformSettings) -> str:
    """The NATS server to inspect: ``NEXUS_NATS_URL``, else the embedded one ``nexus up`` runs."""
    return platform.nats_url or f"nats://127.0.0.1:{platform.nats_port}"


CONNECT_TIMEOUT = 3.0
"""Seconds a command waits for NATS before it gives up (it never waits for a reconnect)."""


async def connect(platform: PlatformSettings) -> JetStreamBus:
    """A bus on the running platform's NATS, without touching its stream configuration.

    As ``NEXUS_NATS_USER`` when set, else as the operator identity from the data directory.
    A command fails fast: no reconnect loop, and BusUnavailableError with the reason when the
    server is down or refuses the credentials.
    """
    user, password = nats_credentials(platform) or (None, None)
    return await JetStreamBus.connect(
        nats_url(platform),
        name="nexus-cli",
        connect_timeout=CONNECT_TIMEOUT,
        ensure_streams=False,
        user=user,
        password=password,
        reconnect=False,
    )


def human_bytes(size: int) -> str:
    """``1536`` → ``1.5 KiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _streams(args: argparse.Namespace) -> int:
    platform = PlatformSettings.from_env()

    async def show() -> int:
        try:
            bus = await connect(platform)
        except BusError as exc:
            print(f"nexus streams: {exc} (is Nexus running? start it with `nexus up`)", file=sys.stderr)
            return 1
        try:
            streams = sorted(await bus.streams(), key=lambda s: s.name)
            rows = [("STREAM", "MESSAGES", "BYTES", "CONSUMERS", "SUBJECTS")]
            for info in streams:
                rows.append(
                    (
                        info.name,
                        str(info.messages),
                        human_bytes(info.bytes),
                        str(info.consumer_count),
                        " ".join(info.subjects),
                    )
                )
            _print_table(rows)
            consumer_rows = [("STREAM", "CONSUMER", "PENDING", "ACK PENDING", "REDELIVERED", "FILTER")]
            for info in streams:
                for consumer in sorted(await bus.consumers(info.name), key=lambda c: c.name):
                    consumer_rows.append(
                        (
                            info.name,
                            consumer.name,
                            str(consumer.num_pending),
                            str(consumer.num_ack_pending),
                            str(consumer.num_redelivered),
                            " ".join(consumer.filter_subjects),
                        )
                    )
            if len(consumer_rows) > 1:
                print()
                _print_table(consumer_rows)
        finally:
            await bus.close()
        return 0

    return asyncio.run(show())


def _print_table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
