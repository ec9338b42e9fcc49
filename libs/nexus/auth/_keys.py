"""API keys and worker tokens: random, shown once, stored as sha256 hashes, carried as events."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import msgspec

from nexus.auth._delegation import (
    DELEGATED_SCOPE,
    DELEGATION_KEY_PUBLISHED,
    DELEGATION_KEY_REVOKED,
    DELEGATION_PREFIX,
    DelegationKeyRevoked,
    SignerRecord,
    signer_record,
    verify_delegated,
)
from nexus.eventlog import EventLog
from nexus.proto import PLATFORM_TENANT, CloudEvent, new_event
from nexus.proto.events.platform import KeyIssued, KeyRevoked

KEYS_STREAM = "keys"
"""The log stream holding every ``key.issued`` and ``key.revoked`` event."""
KEY_ISSUED = "nexus.platform.key.issued"
KEY_REVOKED = "nexus.platform.key.revoked"
KINDS = ("client", "worker")
ADMIN_SCOPE = "admin"
"""The scope of an operator's client key: every tenant's resources, each access audited."""

KeyKind = Literal["client", "worker"]

# A client name is a tenant: it appears in stream ids and Raw keys (``t/<tenant>/…``).
_TENANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")

# The prefix tells a reader (and a secret scanner) what leaked; the key id lets the check find
# the one record to compare against instead of hashing against every stored key.
_PREFIX = {"client": "nxk", "worker": "nxw"}


class KeyManagementError(LookupError):
    """Base for key management errors."""


class UnknownKeyError(KeyManagementError):
    """No key with this id was ever issued."""


@dataclass(frozen=True)
class KeyInfo:
    """What a valid key or token says about its holder (never the secret)."""

    key_id: str
    kind: KeyKind
    owner: str
    scopes: tuple[str, ...] = ()
    execution_id: str | None = None
    """For a delegated token (scope ``delegated``): the execution whose step presents it."""

    @property
    def tenant(self) -> str:
        """The tenant the holder acts for: a client key's owner; the platform for a worker token."""
        return self.owner if self.kind == "client" else PLATFORM_TENANT

    @property
    def is_admin(self) -> bool:
        """An operator's key (scope ``admin``): sees and changes every tenant's resources."""
        return ADMIN_SCOPE in self.scopes


@dataclass(frozen=True)
class IssuedKey:
    """A freshly issued key: ``secret`` exists only here and must be shown to the user once."""

    info: KeyInfo
    secret: str
    event: CloudEvent


def hash_secret(secret: str) -> str:
    """sha256 of a key or token, hex. Enough for 256-bit random secrets (no dictionary to attack)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_secret(secret: str) -> tuple[str, str] | None:
    """(kind prefix, key id) of a well-formed secret ``nxk_<id>.<random>``, else None."""
    prefix, sep, rest = secret.partition("_")
    if not sep or prefix not in _PREFIX.values():
        return None
    key_id, dot, random_part = rest.partition(".")
    if not dot or not key_id or not random_part:
        return None
    return prefix, key_id


def _kind(kind: str) -> KeyKind:
    if kind == "client":
        return "client"
    if kind == "worker":
        return "worker"
    raise ValueError(f"key kind {kind!r}: use 'client' or 'worker'")


def valid_tenant(name: str) -> bool:
    """Whether ``name`` can be a client's name (a tenant): 1-64 letters, digits, ``_-.``, not ``platform``."""
    return bool(_TENANT_NAME.fullmatch(name)) and name != PLATFORM_TENANT


async def issue_key(
    log: EventLog, kind: str, owner: str, *, scopes: tuple[str, ...] = (), source: str = "nexus/platform"
) -> IssuedKey:
    """Create a key (``kind="client"``) or worker token (``kind="worker"``) and record its hash.

    Appends ``nexus.platform.key.issued`` to stream ``keys``; every service's KeyView accepts the
    secret from then on.

    Raises:
        ValueError: unknown kind or empty owner.
    """
    if kind not in KINDS:
        raise ValueError(f"key kind {kind!r}: use 'client' or 'worker'")
    if not owner.strip():
        raise ValueError("a key needs the name of its owner")
    if kind == "client" and owner == PLATFORM_TENANT:
        raise ValueError(f"the client name {PLATFORM_TENANT!r} is reserved for the platform's own resources")
    if kind == "client" and not valid_tenant(owner):
        raise ValueError(
            f"client name {owner!r}: use 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit"
        )
    key_id = secrets.token_hex(8)
    secret = f"{_PREFIX[kind]}_{key_id}.{secrets.token_urlsafe(32)}"
    data = KeyIssued(key_id=key_id, kind=kind, owner=owner, hash=hash_secret(secret), scopes=list(scopes))
    [stored] = await log.append(KEYS_STREAM, [new_event(KEY_ISSUED, data, source=source, subject=key_id)])
    info = KeyInfo(key_id=key_id, kind=_kind(kind), owner=owner, scopes=tuple(scopes))
    return IssuedKey(info=info, secret=secret, event=stored)


async def revoke_key(log: EventLog, key_id: str, *, reason: str = "", source: str = "nexus/platform") -> CloudEvent:
    """Record that ``key_id`` is revoked; every service refuses it once its view has the event.

    Revoking an already revoked key records nothing new and returns the first revocation.

    Raises:
        UnknownKeyError: no key with this id was issued.
    """
    view = KeyView(log)
    await view.refresh()
    record = view.record(key_id)
    if record is None:
        raise UnknownKeyError(f"no key with id {key_id!r} was issued")
    if record.revoked_by is not None:
        return record.revoked_by
    event = new_event(KEY_REVOKED, KeyRevoked(key_id=key_id, reason=reason), source=source, subject=key_id)
    [stored] = await log.append(KEYS_STREAM, [event])
    return stored


@dataclass
class KeyRecord:
    """One issued key as the view knows it."""

    info: KeyInfo
    hash: str
    issued_by: CloudEvent
    revoked_by: CloudEvent | None = None


class KeyView:
    """The keys of the platform, folded from stream ``keys`` of the log.

    ``check`` answers from memory; ``refresh`` (or ``verify``, which refreshes first) reads the
    events appended since the last call, so a key issued or revoked by any process is seen by
    every service that shares the log.

    Delegated tokens (``nxd_…``, see ``nexus.auth._delegation``) are verified against the
    signers published in the same stream.

    Args:
        log: The event log (the view reads stream ``keys`` only).
        audience: The service this view guards; a delegated token minted for another service
            is refused. None accepts any audience.
        clock: Seconds since the epoch (when a delegated token expires).
    """

    def __init__(
        self, log: EventLog | None = None, *, audience: str | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self._log = log
        self._records: dict[str, KeyRecord] = {}
        self._signers: dict[str, SignerRecord] = {}
        self._version = 0
        self.audience = audience
        self._clock = clock

    @property
    def version(self) -> int:
        """The last version of stream ``keys`` folded in."""
        return self._version

    def apply(self, event: CloudEvent) -> None:
        """Fold one event of stream ``keys`` (other types are ignored)."""
        if event.type == KEY_ISSUED:
            issued = msgspec.convert(event.data, KeyIssued)
            info = KeyInfo(
                key_id=issued.key_id,
                kind=_kind(issued.kind),
                owner=issued.owner,
                scopes=tuple(issued.scopes),
            )
            self._records.setdefault(issued.key_id, KeyRecord(info=info, hash=issued.hash, issued_by=event))
        elif event.type == KEY_REVOKED:
            revoked = msgspec.convert(event.data, KeyRevoked)
            record = self._records.get(revoked.key_id)
            if record is not None and record.revoked_by is None:
                record.revoked_by = event
        elif event.type == DELEGATION_KEY_PUBLISHED:
            signer = signer_record(event)
            if signer is not None:
                self._signers.setdefault(signer.key_id, signer)
        elif event.type == DELEGATION_KEY_REVOKED:
            gone = self._signers.get(msgspec.convert(event.data, DelegationKeyRevoked).key_id)
            if gone is not None and gone.revoked_by is None:
                gone.revoked_by = event
        if event.streamversion:
            self._version = max(self._version, event.streamversion)

    async def refresh(self) -> None:
        """Fold the events appended to stream ``keys`` since the last refresh."""
        if self._log is None:
            return
        for event in await self._log.read_stream(KEYS_STREAM, self._version + 1):
            self.apply(event)

    def record(self, key_id: str) -> KeyRecord | None:
        """The record of ``key_id`` (revoked or not), or None."""
        return self._records.get(key_id)

    def records(self) -> list[KeyRecord]:
        """Every issued key, in issue order."""
        return list(self._records.values())

    def check(self, secret: str) -> KeyInfo | None:
        """The key's holder when ``secret`` is a valid, unrevoked key or token, else None.

        The hash comparison is constant-time; an ill-formed or unknown secret costs the same
        hash and comparison, so timing does not tell which part was wrong. A delegated token
        (``nxd_…``) answers a client KeyInfo for its tenant with scope ``delegated`` and its
        execution id; it holds no secret to compare, only a signature to verify.
        """
        if secret and secret.startswith(DELEGATION_PREFIX + "_"):
            return self._check_delegated(secret)
        parsed = parse_secret(secret) if secret else None
        record = self._records.get(parsed[1]) if parsed else None
        expected = record.hash if record is not None else "0" * 64
        matches = hmac.compare_digest(hash_secret(secret or "").encode(), expected.encode())
        if record is None or not matches or record.revoked_by is not None:
            return None
        if parsed is None or parsed[0] != _PREFIX[record.info.kind]:
            return None
        return record.info

    def signer(self, key_id: str) -> SignerRecord | None:
        """The delegation signer ``key_id`` (revoked or not), or None."""
        return self._signers.get(key_id)

    def signers(self) -> list[SignerRecord]:
        """Every published delegation signer, in publication order."""
        return list(self._signers.values())

    def _check_delegated(self, token: str) -> KeyInfo | None:
        claims = verify_delegated(token, self._signers.get, now=self._clock(), audience=self.audience)
        if claims is None:
            return None
        return KeyInfo(
            key_id=token.split(".", 1)[0].removeprefix(DELEGATION_PREFIX + "_"),
            kind="client",
            owner=claims.tenant,
            scopes=(DELEGATED_SCOPE,),
            execution_id=claims.execution_id,
        )

    async def verify(self, secret: str) -> KeyInfo | None:
        """``refresh`` then ``check``: sees keys issued or revoked a moment ago by any process."""
        await self.refresh()
        return self.check(secret)
