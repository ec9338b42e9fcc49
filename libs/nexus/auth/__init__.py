"""Authentication: API keys, worker tokens and the bootstrap admin, all recorded in the log.

Keys and tokens are random, shown once and stored only as hashes. Issuing or revoking one
appends an event to stream ``keys``; each service folds that stream into its own KeyView and
checks secrets against it, so no service asks another whether a key is valid::

    keys = KeyView(log)
    issued = await issue_key(log, "client", "acme")      # issued.secret: show it once
    assert (await keys.verify(issued.secret)).owner == "acme"
    await revoke_key(log, issued.info.key_id)
    assert await keys.verify(issued.secret) is None

Routes are guarded with ``require_api_key(keys)`` and ``require_worker(keys)``.
"""

# Delegated credentials: a workflow step acts with its execution's tenant, not the replica's token.
from nexus.auth._delegation import (
    DEFAULT_DELEGATION_TTL_SECONDS,
    DELEGATED_SCOPE,
    DELEGATION_KEY_PUBLISHED,
    DELEGATION_KEY_REVOKED,
    DELEGATION_PREFIX,
    DelegationClaims,
    DelegationSigner,
    SignerRecord,
)
from nexus.auth._keys import (
    ADMIN_SCOPE,
    KEY_ISSUED,
    KEY_REVOKED,
    KEYS_STREAM,
    KINDS,
    IssuedKey,
    KeyInfo,
    KeyKind,
    KeyManagementError,
    KeyRecord,
    KeyView,
    UnknownKeyError,
    hash_secret,
    issue_key,
    parse_secret,
    revoke_key,
    valid_tenant,
)
from nexus.auth._middleware import (
    API_KEY_HEADERS,
    AUTH,
    WORKER_ID,
    Authenticator,
    CredentialRefused,
    ErrorShape,
    can_see,
    has_scope,
    nexus_error,
    require_api_key,
    require_client_or_worker,
    require_scope,
    require_worker,
)
from nexus.auth._passwords import (
    ADMIN_PASSWORD_SET,
    ADMIN_STREAM,
    AdminCredentials,
    ensure_admin,
    hash_password,
    load_admin,
    verify_password,
)
from nexus.auth._ratelimit import SlidingWindowLimiter

# Login sessions (opened by KAM) as every service checks them, with the CSRF rule for cookies.
from nexus.auth._sessions import ACCOUNTS_STREAM as KAM_ACCOUNTS_STREAM
from nexus.auth._sessions import (
    CSRF_COOKIE,
    CSRF_HEADER,
    SAFE_METHODS,
    SESSION_COOKIE,
    SESSION_HEADERS,
    SESSION_KEY_PREFIX,
    SESSION_TOKEN_PREFIX,
    SESSIONS_STREAM,
    SessionRecord,
    SessionView,
    check_csrf,
    new_csrf_token,
    new_session_token,
    parse_session_token,
    presented_session,
    refuse_unless_open,
    session_id_or_refuse,
    session_key_info,
)
from nexus.proto import PLATFORM_TENANT
from nexus.proto.events.platform import AdminPasswordSet

__all__ = [
    "ADMIN_PASSWORD_SET",
    "ADMIN_SCOPE",
    "ADMIN_STREAM",
    "API_KEY_HEADERS",
    "AUTH",
    "CSRF_COOKIE",
    "CSRF_HEADER",
    "KAM_ACCOUNTS_STREAM",
    "KEYS_STREAM",
    "KEY_ISSUED",
    "KEY_REVOKED",
    "KINDS",
    "PLATFORM_TENANT",
    "SAFE_METHODS",
    "SESSIONS_STREAM",
    "SESSION_COOKIE",
    "SESSION_HEADERS",
    "SESSION_KEY_PREFIX",
    "SESSION_TOKEN_PREFIX",
    "WORKER_ID",
    "AdminCredentials",
    "AdminPasswordSet",
    "Authenticator",
    "CredentialRefused",
    "ErrorShape",
    "IssuedKey",
    "KeyInfo",
    "KeyKind",
    "KeyManagementError",
    "KeyRecord",
    "KeyView",
    "SessionRecord",
    "SessionView",
    "SlidingWindowLimiter",
    "UnknownKeyError",
    "can_see",
    "check_csrf",
    "ensure_admin",
    "has_scope",
    "hash_password",
    "hash_secret",
    "issue_key",
    "load_admin",
    "new_csrf_token",
    "new_session_token",
    "nexus_error",
    "parse_secret",
    "parse_session_token",
    "presented_session",
    "refuse_unless_open",
    "require_api_key",
    "require_client_or_worker",
    "require_scope",
    "require_worker",
    "revoke_key",
    "session_id_or_refuse",
    "session_key_info",
    "valid_tenant",
    "verify_password",
]
__all__ += [
    "DEFAULT_DELEGATION_TTL_SECONDS",
    "DELEGATED_SCOPE",
    "DELEGATION_KEY_PUBLISHED",
    "DELEGATION_KEY_REVOKED",
    "DELEGATION_PREFIX",
    "DelegationClaims",
    "DelegationSigner",
    "SignerRecord",
]
