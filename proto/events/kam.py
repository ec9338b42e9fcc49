"""Events produced by the kam service, the AI factory's key-account manager (seed 002).

Streams: ``kam-accounts`` (clients and users), ``kam-sessions`` (logins and logouts, hashes
only), ``kam-templates`` (templates registered), ``kam-request-<request_id>`` (one request's
whole life: created, edited, assigned, executing, completed or failed, its deliverables and the
costs of its runs, each run's appended with its outcome), ``kam-ledger`` (costs not tied to a
request) and ``kam-audit`` (every call to KAM). The ledger of a client is every
``nexus.kam.cost.recorded`` of its tenant, wherever it is. Events about a
client's resources carry the client as their ``tenant``, so the request transitions reach the
client's NATS subscribers as ``nexus.evt.kam.…`` events.
"""

from __future__ import annotations

from typing import Any

import msgspec

from nexus.proto._catalog import event_type

# -- clients, users ---------------------------------------------------------------------------


@event_type("nexus.kam.client.created")
class KamClientCreated(msgspec.Struct, frozen=True, kw_only=True):
    """An admin created a client (a tenant of the platform)."""

    client_id: str
    """The client's name: a tenant, 1-64 letters, digits, ``_-.``."""
    name: str
    """How the client is shown."""
    contact_email: str = ""
    tier: str = "standard"
    """``basic``, ``standard`` or ``premium``: the templates the client is offered first."""
    monthly_budget: float | None = None
    """The client's budget per month in ``currency``, if agreed."""
    currency: str = "USD"
    created_by: str = ""


@event_type("nexus.kam.user.created")
class KamUserCreated(msgspec.Struct, frozen=True, kw_only=True):
    """A user account was created; only the password's Argon2id hash is recorded."""

    user_id: str
    username: str
    role: str
    """``admin`` or ``client``."""
    client_id: str | None = None
    """The client a ``client`` user belongs to; None for an admin."""
    password_hash: str
    display_name: str = ""
    created_by: str = ""


@event_type("nexus.kam.user.password.changed")
class KamUserPasswordChanged(msgspec.Struct, frozen=True, kw_only=True):
    """A user's password hash changed: the user changed it, or it was rehashed at login with
    newer Argon2 parameters (``reason: rehashed``; the password is the same)."""

    user_id: str
    password_hash: str
    reason: str = "changed"


# -- sessions ---------------------------------------------------------------------------------


@event_type("nexus.kam.session.opened")
class KamSessionOpened(msgspec.Struct, frozen=True, kw_only=True):
    """A login succeeded; the token (``sess_…``) was shown once, only its sha256 is kept."""

    session_id: str
    hash: str
    user_id: str
    """The user's id (``admin`` for the bootstrap admin)."""
    expires_at: float
    """Seconds since the epoch; the session is refused from then on."""
    address: str = ""
    owner: str | None = None
    """The tenant the session acts for: the user's client, or ``platform`` for an admin (every
    service accepts the session from this and ``scopes`` alone, see ``nexus.auth.SessionView``);
    None in sessions recorded before it was added, which only KAM accepts."""
    scopes: list[str] = []
    """What the session may do: ``["admin"]`` or the client scopes."""
    csrf_hash: str = ""
    """sha256 of the CSRF token the login set in the ``nexus_csrf`` cookie ("" before CSRF
    tokens existed: such a session's cookie changes nothing)."""


@event_type("nexus.kam.session.closed")
class KamSessionClosed(msgspec.Struct, frozen=True, kw_only=True):
    """A session ended before its expiry: ``logout`` or ``password_changed``."""

    session_id: str
    reason: str = "logout"


# -- templates --------------------------------------------------------------------------------


@event_type("nexus.kam.template.registered")
class KamTemplateRegistered(msgspec.Struct, frozen=True, kw_only=True):
    """A template was registered (bundled at start, or by an admin); a later one replaces it."""

    template: dict[str, Any]
    """The template document (name, tier, description, workflow, parameters, cost model)."""
    registered_by: str = ""


# -- requests ---------------------------------------------------------------------------------


@event_type("nexus.kam.request.created")
class KamRequestCreated(msgspec.Struct, frozen=True, kw_only=True):
    """A client asked for work (seed 002, phase 2). Status ``pending``."""

    request_id: str
    client_id: str
    created_by: str
    """The user id (or key id) that created it."""
    title: str
    description: str = ""
    urgency: str = "normal"
    category: str = ""


@event_type("nexus.kam.request.updated")
class KamRequestUpdated(msgspec.Struct, frozen=True, kw_only=True):
    """The client edited its pending request; ``changes`` holds only the fields that changed."""

    request_id: str
    changes: dict[str, Any]
    updated_by: str = ""


@event_type("nexus.kam.request.template_assigned")
class KamTemplateAssigned(msgspec.Struct, frozen=True, kw_only=True):
    """An admin chose the template and its parameters (seed 002, phase 3). Status ``template_assigned``."""

    request_id: str
    template_id: str
    template_name: str
    parameters: dict[str, Any] = {}
    assigned_by: str = ""


@event_type("nexus.kam.request.executing")
class KamRequestExecuting(msgspec.Struct, frozen=True, kw_only=True):
    """The template's workflow was started for the request (seed 002, phase 4). Status ``executing``."""

    request_id: str
    execution_id: str
    workflow_id: str
    attempt: int = 1
    started_by: str = ""


@event_type("nexus.kam.request.completed")
class KamRequestCompleted(msgspec.Struct, frozen=True, kw_only=True):
    """The execution completed (seed 002, phase 8). Status ``completed``."""

    request_id: str
    execution_id: str
    metrics: dict[str, Any] = {}
    """``total_time_ms``, ``stages_completed``, ``tokens_used``, ``estimated_cost``."""
    deliverable_ids: list[str] = []


@event_type("nexus.kam.request.failed")
class KamRequestFailed(msgspec.Struct, frozen=True, kw_only=True):
    """The execution failed, was compensated or cancelled. Status ``failed``; it may be executed again."""

    request_id: str
    execution_id: str
    error: str = ""
    metrics: dict[str, Any] = {}


@event_type("nexus.kam.deliverable.recorded")
class KamDeliverableRecorded(msgspec.Struct, frozen=True, kw_only=True):
    """A result of a request's execution, stored in Raw."""

    deliverable_id: str
    request_id: str
    client_id: str
    execution_id: str
    type: str
    """``report``, ``structure``, ``text``, ``json`` …"""
    storage_ref: str
    """``raw://<key>``."""
    size_bytes: int
    content_type: str = "application/json"
    metadata: dict[str, Any] = {}


# -- costs, audit -----------------------------------------------------------------------------


@event_type("nexus.kam.cost.recorded")
class KamCostRecorded(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of a client's cost ledger (in the request's stream, appended atomically with the
    outcome it prices; ``kam-ledger`` for costs not tied to a request)."""

    entry_id: str
    client_id: str
    amount: float
    currency: str = "USD"
    kind: str = "run"
    """``run`` (per execution), ``tokens`` (per 1,000 tokens) or ``stage`` (per stage completed)."""
    quantity: float = 1.0
    request_id: str | None = None
    execution_id: str | None = None
    template_id: str | None = None
    at: str = ""
    """RFC 3339 time the cost was incurred (the execution's end)."""


@event_type("nexus.kam.audit.recorded")
class KamAuditRecorded(msgspec.Struct, frozen=True, kw_only=True):
    """One call to KAM: who, what, when, the outcome. Never a password, token or body."""

    actor: str
    """``user:<id>``, ``key:<id>``, ``worker:<name>`` or ``anonymous``."""
    client_id: str | None = None
    """The tenant the call acted for (the caller's; None when unknown)."""
    method: str
    route: str
    """The route template (``/api/requests/{request_id}``), never the query string."""
    resource: str | None = None
    """The id the path named, if any."""
    status: int
    address: str = ""
    duration_ms: float = 0.0


# -- keys issued through KAM ------------------------------------------------------------------


@event_type("nexus.kam.key.issued")
class KamKeyIssued(msgspec.Struct, frozen=True, kw_only=True):
    """An admin issued an API key to a client through KAM (``POST /api/clients/{id}/keys``).

    The key itself is ``nexus.platform.key.issued`` in stream ``keys`` (hash only), which every
    service checks; this records what KAM adds: the name the admin gave it and who issued it.
    Stream ``kam-accounts``."""

    key_id: str
    client_id: str
    name: str = ""
    scopes: list[str] = []
    issued_by: str = ""
