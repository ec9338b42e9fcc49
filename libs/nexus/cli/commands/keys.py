"""``nexus keys create|revoke``: issue and revoke API keys and worker tokens (recorded in the log)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from nexus.auth import UnknownKeyError, issue_key, revoke_key, valid_tenant
from nexus.bus.embedded import EmbeddedNatsError, add_producer, producer_inbox_prefix
from nexus.config import PlatformSettings
from nexus.eventlog import open_event_log
from nexus.ingest import register_producer


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("keys", help="issue and revoke API keys and worker tokens")
    sub = parser.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    create = sub.add_parser("create", help="issue a client API key or a worker token (printed once)")
    who = create.add_mutually_exclusive_group(required=True)
    who.add_argument("--client", metavar="NAME", help="issue an API key for client NAME")
    who.add_argument("--worker", metavar="NAME", help="issue a worker token for worker NAME")
    who.add_argument(
        "--producer",
        metavar="SOURCE",
        help="issue a NATS credential that may publish only on nexus.ext.SOURCE.> (embedded nats-server)",
    )
    create.add_argument(
        "--scope",
        action="append",
        default=[],
        metavar="SCOPE",
        help="a scope of the key (repeatable); 'admin' makes an operator's key that sees every client's resources",
    )
    create.add_argument(
        "--tenant",
        metavar="CLIENT",
        help="with --producer: the client whose events the source's are (default: the platform's)",
    )
    create.set_defaults(func=_create)
    revoke = sub.add_parser("revoke", help="revoke a key or token by its id; every service refuses it from then on")
    revoke.add_argument("key_id", metavar="KEY_ID")
    revoke.add_argument("--reason", default="", help="recorded with the revocation")
    revoke.set_defaults(func=_revoke)


def _create(args: argparse.Namespace) -> int:
    if args.producer:
        return _create_producer(args.producer, args.tenant)
    if args.tenant:
        print("nexus keys: --tenant goes with --producer", file=sys.stderr)
        return 2
    kind, owner = ("client", args.client) if args.client else ("worker", args.worker)

    async def create() -> int:
        log = await open_event_log(PlatformSettings.from_env().event_log_url)
        try:
            issued = await issue_key(log, kind, owner, scopes=tuple(args.scope), source="nexus/cli")
        except ValueError as exc:
            print(f"nexus keys: {exc}", file=sys.stderr)
            return 2
        finally:
            await log.close()
        what = "API key" if kind == "client" else "worker token"
        print(f"{what} for {owner!r} (key id {issued.info.key_id}):")
        print(issued.secret)
        print("It is shown once and only its hash is kept: store it now.", file=sys.stderr)
        return 0

    return asyncio.run(create())


def _create_producer(source: str, tenant: str | None) -> int:
    settings = PlatformSettings.from_env()
    if tenant is not None and not valid_tenant(tenant):
        print(f"nexus keys: --tenant {tenant!r} is not a client name", file=sys.stderr)
        return 2
    try:
        user, password, reloaded = add_producer(settings.data_dir / "nats", source)
    except (ValueError, EmbeddedNatsError, OSError) as exc:
        print(f"nexus keys: {exc}", file=sys.stderr)
        return 2

    async def bind() -> None:
        # The ingest stamps every event of this source with the tenant bound here.
        log = await open_event_log(settings.event_log_url)
        try:
            await register_producer(log, source, tenant)
        finally:
            await log.close()

    asyncio.run(bind())
    owner = f"client {tenant!r}" if tenant else "the platform"
    print(f"NATS credential for producer {source!r}: publishes on nexus.ext.{source}.> only; its events are {owner}'s")
    print(f"user: {user}")
    print(f"password: {password}")
    print(f"inbox prefix: {producer_inbox_prefix(source)}")
    print(
        "It is shown once (kept only in the data directory's NATS credentials file, mode 0600): store it now. "
        + (
            "The running nats-server has reloaded it."
            if reloaded
            else "The embedded nats-server takes it up at its next start."
        ),
        file=sys.stderr,
    )
    return 0


def _revoke(args: argparse.Namespace) -> int:
    async def revoke() -> int:
        log = await open_event_log(PlatformSettings.from_env().event_log_url)
        try:
            await revoke_key(log, args.key_id, reason=args.reason, source="nexus/cli")
        except UnknownKeyError as exc:
            print(f"nexus keys: {exc}", file=sys.stderr)
            return 1
        finally:
            await log.close()
        print(f"revoked key {args.key_id}")
        return 0

    return asyncio.run(revoke())
