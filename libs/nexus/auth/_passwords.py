"""Passwords hashed with Argon2id; the bootstrap admin recorded in the log as a hash only."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from nexus.eventlog import NO_STREAM, ConcurrencyError, EventLog
from nexus.proto import CloudEvent, new_event
from nexus.proto.events.platform import AdminPasswordSet

logger = logging.getLogger(__name__)

ADMIN_STREAM = "admin"
"""The log stream holding the bootstrap admin's credentials (hashes only)."""
ADMIN_PASSWORD_SET = "nexus.platform.admin.password.set"

# Argon2id with argon2-cffi's defaults (RFC 9106's second recommended profile).
_hasher = PasswordHasher(type=Type.ID)


def hash_password(password: str) -> str:
    """An Argon2id hash of ``password`` (PHC string, salt included)."""
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """True when ``password`` matches ``password_hash``; False for a mismatch or a malformed hash."""
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


@dataclass(frozen=True)
class AdminCredentials:
    """The admin as the log knows it."""

    user: str
    password_hash: str


async def load_admin(log: EventLog) -> AdminCredentials | None:
    """The latest admin credentials recorded in the log, or None before the first start."""
    events = await log.read_stream(ADMIN_STREAM)
    latest = next((e for e in reversed(events) if e.type == ADMIN_PASSWORD_SET), None)
    if latest is None:
        return None
    data = msgspec.convert(latest.data, AdminPasswordSet)
    return AdminCredentials(user=data.user, password_hash=data.password_hash)


async def ensure_admin(
    log: EventLog,
    user: str,
    password: str | None,
    *,
    announce: Callable[[str], None] = print,
    source: str = "nexus/platform",
) -> CloudEvent | None:
    """Record the bootstrap admin at first start; return the event written, if any.

    * No admin in the log and ``password`` unset: generate a random password, record its hash,
      and pass a message with the password to ``announce`` (printed once; never logged).
    * ``password`` given and not the recorded one (or no admin yet): record its hash.
    * Otherwise nothing is written.

    Concurrent first starts (replicas) race on the stream's version; the loser keeps the winner's.
    """
    if not user.strip():
        raise ValueError("NEXUS_ADMIN_USER is empty")
    current = await load_admin(log)
    if current is not None and current.user == user:
        if password is None or verify_password(current.password_hash, password):
            return None
    generated = password is None
    if generated:
        password = secrets.token_urlsafe(18)
    assert password is not None
    data = AdminPasswordSet(user=user, password_hash=hash_password(password), generated=generated)
    event = new_event(ADMIN_PASSWORD_SET, data, source=source, subject=user)
    expected = await log.stream_version(ADMIN_STREAM) if current is not None else NO_STREAM
    try:
        [stored] = await log.append(ADMIN_STREAM, [event], expected)
    except ConcurrencyError:
        logger.info("another process recorded the admin first; keeping its credentials")
        return None
    if generated:
        announce(
            f"Nexus admin user {user!r} created with the generated password: {password}\n"
            "It is shown once and only its hash is kept; set NEXUS_ADMIN_PASSWORD to choose one."
        )
    logger.info("admin credentials recorded", extra={"event_id": stored.id, "user": user})
    return stored
