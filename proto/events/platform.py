"""Events of the platform itself: credentials, log seals."""

from __future__ import annotations

import msgspec

from nexus.proto._catalog import event_type


@event_type("nexus.platform.key.issued")
class KeyIssued(msgspec.Struct, frozen=True, kw_only=True):
    """An API key (for a client) or a worker token was issued. Only its hash is recorded."""

    key_id: str
    """Public identifier of the key (the part before the secret)."""
    kind: str
    """``client`` (API key) or ``worker`` (worker token)."""
    owner: str
    """Client or worker name the key belongs to."""
    hash: str
    """sha256 of the secret, hex; the secret itself is shown once and never stored."""
    scopes: list[str] = []
    """Optional scopes limiting what the key may do."""


@event_type("nexus.platform.key.revoked")
class KeyRevoked(msgspec.Struct, frozen=True, kw_only=True):
    """A key or token was revoked; from this event on it is refused everywhere."""

    key_id: str
    reason: str = ""


@event_type("nexus.platform.log.sealed")
class LogSealed(msgspec.Struct, frozen=True, kw_only=True):
    """A seal: the Merkle root over the event hashes of positions ``from_position``..``to_position``."""

    from_position: int
    to_position: int
    merkle_root: str
    algorithm: str = "sha256"
    count: int = 0


@event_type("nexus.platform.admin.password.set")
class AdminPasswordSet(msgspec.Struct, frozen=True, kw_only=True):
    """The bootstrap admin's password was set; only its Argon2id hash is recorded."""

    user: str
    """Login name of the admin (``NEXUS_ADMIN_USER``)."""
    password_hash: str
    """Argon2id hash in the PHC string format (``$argon2id$v=19$...``)."""
    generated: bool = False
    """True when Nexus generated the password (it was printed once at first start)."""


@event_type("nexus.platform.admin.accessed")
class AdminAccessed(msgspec.Struct, frozen=True, kw_only=True):
    """An admin key read or changed a resource of another tenant (stream ``audit-admin``)."""

    key_id: str
    """The admin key's public id."""
    admin: str
    """The client name the admin key was issued to."""
    service: str
    """The service that served the request."""
    method: str
    route: str
    """The route template (``/executions/{execution_id}``), never a raw path."""
    resource: str
    """What the route names (``execution 0192…``)."""
    tenant: str
    """The tenant that owns the resource."""
    status: int = 0
    """The HTTP status of the answer."""


@event_type("nexus.platform.producer.registered")
class ProducerRegistered(msgspec.Struct, frozen=True, kw_only=True):
    """An external producer's source was bound to a tenant (stream ``producers``).

    Its NATS credential publishes only on ``nexus.ext.<source>.>``, so every event arriving
    there is that tenant's: the ingest stamps it with the ``tenant`` extension (whatever the
    producer wrote there itself). A source bound to no tenant is the platform's.
    """

    source: str
    """The ``<source>`` token of ``nexus.ext.<source>.<event>``."""
    tenant: str | None = None
    """The client whose events these are; None for the platform."""


@event_type("nexus.platform.delegation.key.published")
class DelegationKeyPublished(msgspec.Struct, frozen=True, kw_only=True):
    """A workflow replica's public key for delegated tokens; the private key never leaves it."""

    key_id: str
    """The signer's id, named in every token it mints."""
    owner: str
    """The replica that holds the private key (``workflow/<replica id>``)."""
    public_key: str
    """The raw 32-byte Ed25519 public key, base64url without padding."""
    algorithm: str = "Ed25519"


@event_type("nexus.platform.delegation.key.revoked")
class DelegationKeyRevoked(msgspec.Struct, frozen=True, kw_only=True):
    """A signer was revoked: every token it minted is refused from this event on."""

    key_id: str
    reason: str = ""
