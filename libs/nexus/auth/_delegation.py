"""Delegated credentials: short-lived tokens a workflow replica mints for the execution's tenant.

A workflow step that calls a platform service must act with the permissions of the execution's
owner, never with the replica's own (the confused deputy). Each workflow replica generates an
Ed25519 key pair at start and publishes the public key in the log (stream ``keys``,
``nexus.platform.delegation.key.published``); the private key lives in its memory only. For
each step it mints::

    nxd_<signer key id>.<base64url payload>.<base64url signature>

whose payload names the tenant, the execution, the audience service, the issue time and the
expiry (a few minutes). The signature covers ``nxd_<signer key id>.<base64url payload>``.
Every service's ``KeyView`` folds the published keys and verifies a token without asking
anyone: signer known and not revoked, signature valid, not expired, audience its own. The
callee then sees a client ``KeyInfo`` for the tenant with scope ``delegated``.

A graceful stop revokes the signer (``nexus.platform.delegation.key.revoked``); a replica
killed without a stop has its earlier signers revoked when it starts again under the same
owner, like its worker token::

    signer = await DelegationSigner.publish(log, "workflow/replica-a")
    token = signer.mint("acme", execution_id="ex-1", audience="granulator")
    assert (await KeyView(log).verify(token)).owner == "acme"
    await signer.revoke(log)
"""

from __future__ import annotations

import base64
import binascii
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from nexus.eventlog import EventLog
from nexus.proto import CloudEvent, new_event
from nexus.proto.events.platform import DelegationKeyPublished, DelegationKeyRevoked

__all__ = [
    "DEFAULT_DELEGATION_TTL_SECONDS",
    "DELEGATED_SCOPE",
    "DELEGATION_KEY_PUBLISHED",
    "DELEGATION_KEY_REVOKED",
    "DELEGATION_PREFIX",
    "MAX_DELEGATION_TTL_SECONDS",
    "DelegationClaims",
    "DelegationKeyPublished",
    "DelegationKeyRevoked",
    "DelegationSigner",
    "SignerRecord",
    "verify_delegated",
]

logger = logging.getLogger("nexus.auth.delegation")

DELEGATION_PREFIX = "nxd"
"""The prefix of a delegated token (``nxd_…``): tells a reader and a secret scanner what it is."""
DELEGATION_KEY_PUBLISHED = "nexus.platform.delegation.key.published"
DELEGATION_KEY_REVOKED = "nexus.platform.delegation.key.revoked"
DELEGATED_SCOPE = "delegated"
"""The only scope of a delegated token's KeyInfo: never ``admin``, whoever owns the execution."""
DEFAULT_DELEGATION_TTL_SECONDS = 300.0
"""Lifetime of a delegated token unless the signer is told otherwise."""
MAX_DELEGATION_TTL_SECONDS = 3600
"""A token claiming a longer lifetime is refused, whoever signed it."""
CLOCK_SKEW_SECONDS = 30
"""How far in the future a token's issue time may lie (clocks of replicas differ a little)."""
MAX_TOKEN_LENGTH = 4096
"""Longer strings are refused before any decoding."""

_STREAM = "keys"
_ALGORITHM = "Ed25519"


class DelegationClaims(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The payload of a delegated token."""

    tenant: str
    """The tenant the bearer acts for (the execution's owner; ``platform`` for the platform's own)."""
    execution_id: str
    """The execution whose step carries the token."""
    audience: str
    """The platform service the token is for (``granulator``, ``kam``, ``studio``, ``workflow``)."""
    issued_at: int
    """Seconds since the epoch."""
    expires_at: int
    """Seconds since the epoch; refused from this instant on."""
    nonce: str = ""
    """Random: two tokens minted in the same second differ."""


@dataclass
class SignerRecord:
    """One published signer as a KeyView knows it."""

    key_id: str
    owner: str
    public_key: Ed25519PublicKey
    published_by: CloudEvent
    revoked_by: CloudEvent | None = None


_claims_decoder = msgspec.json.Decoder(DelegationClaims)
_encode = msgspec.json.Encoder().encode


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    # Strict alphabet: the standard decoder would skip characters it does not know.
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


def signer_record(event: CloudEvent) -> SignerRecord | None:
    """The signer a ``delegation.key.published`` event declares (None if its key is unusable)."""
    published = msgspec.convert(event.data, DelegationKeyPublished)
    if published.algorithm != _ALGORITHM:
        return None
    try:
        public_key = Ed25519PublicKey.from_public_bytes(_unb64(published.public_key))
    except (ValueError, binascii.Error):
        return None
    return SignerRecord(key_id=published.key_id, owner=published.owner, public_key=public_key, published_by=event)


def verify_delegated(
    token: str,
    signers: Callable[[str], SignerRecord | None],
    *,
    now: float,
    audience: str | None = None,
) -> DelegationClaims | None:
    """The claims of a valid delegated token, else None (never says which check failed).

    Args:
        token: ``nxd_<key id>.<payload>.<signature>``.
        signers: Looks a signer up by key id.
        now: Seconds since the epoch.
        audience: The verifying service; when given, the token must name it.
    """
    if len(token) > MAX_TOKEN_LENGTH:
        return None
    prefix, sep, rest = token.partition("_")
    if prefix != DELEGATION_PREFIX or not sep:
        return None
    parts = rest.split(".")
    if len(parts) != 3 or not all(parts):
        return None
    key_id, payload_b64, signature_b64 = parts
    record = signers(key_id)
    if record is None or record.revoked_by is not None:
        return None
    try:
        signature = _unb64(signature_b64)
        payload = _unb64(payload_b64)
    except (ValueError, binascii.Error):
        return None
    signed = f"{DELEGATION_PREFIX}_{key_id}.{payload_b64}".encode("ascii")
    try:
        # Ed25519 verification in OpenSSL does not depend on where a forged signature differs.
        record.public_key.verify(signature, signed)
    except InvalidSignature:
        return None
    try:
        claims = _claims_decoder.decode(payload)
    except msgspec.DecodeError:
        return None
    if not claims.tenant or not claims.execution_id:
        return None
    if claims.expires_at <= now or claims.issued_at > now + CLOCK_SKEW_SECONDS:
        return None
    if claims.expires_at - claims.issued_at > MAX_DELEGATION_TTL_SECONDS:
        return None
    if audience is not None and claims.audience != audience:
        return None
    return claims


@dataclass
class DelegationSigner:
    """One replica's Ed25519 key for delegated tokens (the private key is never printed or recorded).

    Args:
        key_id: The signer's id in the log.
        owner: The replica holding it (``workflow/<replica id>``).
        ttl_seconds: Lifetime of the tokens it mints.
        clock: Seconds since the epoch (tests move it).
    """

    key_id: str
    owner: str
    _private_key: Ed25519PrivateKey | None = field(repr=False)
    ttl_seconds: float = DEFAULT_DELEGATION_TTL_SECONDS
    clock: Callable[[], float] = field(default=time.time, repr=False)
    revoked: bool = False

    @classmethod
    async def publish(
        cls,
        log: EventLog,
        owner: str,
        *,
        ttl_seconds: float = DEFAULT_DELEGATION_TTL_SECONDS,
        source: str = "nexus/platform",
        clock: Callable[[], float] = time.time,
    ) -> DelegationSigner:
        """Generate a key pair, publish its public key, revoke the signers an earlier run of ``owner`` left.

        Raises:
            ValueError: empty owner, or a lifetime outside 1 s .. ``MAX_DELEGATION_TTL_SECONDS``.
        """
        if not owner.strip():
            raise ValueError("a delegation signer needs the name of its owner")
        if not 1 <= ttl_seconds <= MAX_DELEGATION_TTL_SECONDS:
            raise ValueError(f"delegated token lifetime {ttl_seconds} s: use 1..{MAX_DELEGATION_TTL_SECONDS}")
        private_key = Ed25519PrivateKey.generate()
        raw_public = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        key_id = secrets.token_hex(8)
        data = DelegationKeyPublished(key_id=key_id, owner=owner, public_key=_b64(raw_public))
        await log.append(_STREAM, [new_event(DELEGATION_KEY_PUBLISHED, data, source=source, subject=key_id)])
        # An earlier run killed without a stop could not revoke its signer; its private key died
        # with it, but its tokens would stay acceptable until they expire. Revoke it now.
        for stale in await _live_signers(log, owner):
            if stale != key_id:
                await _append_revocation(log, stale, "replaced at start", source)
        logger.info("delegation signer %s of %s published", key_id, owner)
        return cls(key_id=key_id, owner=owner, _private_key=private_key, ttl_seconds=ttl_seconds, clock=clock)

    def mint(self, tenant: str, *, execution_id: str, audience: str) -> str:
        """A token for ``tenant`` on ``execution_id``'s behalf towards ``audience``.

        Raises:
            RuntimeError: the signer was revoked.
            ValueError: empty tenant, execution id or audience.
        """
        if self._private_key is None or self.revoked:
            raise RuntimeError(f"delegation signer {self.key_id} is revoked")
        if not tenant or not execution_id or not audience:
            raise ValueError("a delegated token names a tenant, an execution and an audience")
        now = int(self.clock())
        claims = DelegationClaims(
            tenant=tenant,
            execution_id=execution_id,
            audience=audience,
            issued_at=now,
            expires_at=now + int(self.ttl_seconds),
            nonce=secrets.token_hex(6),
        )
        head = f"{DELEGATION_PREFIX}_{self.key_id}.{_b64(_encode(claims))}"
        return f"{head}.{_b64(self._private_key.sign(head.encode('ascii')))}"

    async def revoke(self, log: EventLog, *, reason: str = "replica stopped", source: str = "nexus/platform") -> None:
        """Revoke the signer (graceful stop): every token it minted is refused; the private key is forgotten."""
        if self.revoked:
            return
        self.revoked = True
        self._private_key = None
        await _append_revocation(log, self.key_id, reason, source)
        logger.info("delegation signer %s of %s revoked", self.key_id, self.owner)


async def _live_signers(log: EventLog, owner: str) -> list[str]:
    live: dict[str, bool] = {}
    for event in await log.read_stream(_STREAM):
        if event.type == DELEGATION_KEY_PUBLISHED:
            published = msgspec.convert(event.data, DelegationKeyPublished)
            if published.owner == owner:
                live.setdefault(published.key_id, True)
        elif event.type == DELEGATION_KEY_REVOKED:
            revoked = msgspec.convert(event.data, DelegationKeyRevoked)
            if revoked.key_id in live:
                live[revoked.key_id] = False
    return [key_id for key_id, alive in live.items() if alive]


async def _append_revocation(log: EventLog, key_id: str, reason: str, source: str) -> None:
    data = DelegationKeyRevoked(key_id=key_id, reason=reason)
    event = new_event(DELEGATION_KEY_REVOKED, data, source=source, subject=key_id)
    await log.append(_STREAM, [event])
