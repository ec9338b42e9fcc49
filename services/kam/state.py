"""KAM's state: one fold of its events (clients, users, sessions, templates, requests, deliverables, ledger).

Every replica builds it at start from the log and keeps it current by following the log
(``nexus.replay.tail``), so a login on one replica is a session on all of them, and a request
created on one is listed by the others a moment later. The fold never reads the log itself:
``apply`` takes one event, so ``nexus replay --verify`` can feed it the log in order and compare
(see ``nexus.services.kam.projections``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from nexus.auth import KAM_ACCOUNTS_STREAM as ACCOUNTS_STREAM_NAME
from nexus.auth import SESSIONS_STREAM as SESSIONS_STREAM_NAME
from nexus.proto import CloudEvent, type_of
from nexus.proto.events.kam import (
    KamClientCreated,
    KamCostRecorded,
    KamDeliverableRecorded,
    KamKeyIssued,
    KamRequestCompleted,
    KamRequestCreated,
    KamRequestExecuting,
    KamRequestFailed,
    KamRequestUpdated,
    KamSessionClosed,
    KamSessionOpened,
    KamTemplateAssigned,
    KamTemplateRegistered,
    KamUserCreated,
    KamUserPasswordChanged,
)
from nexus.replay import EventFold

__all__ = [
    "ACCOUNTS_STREAM",
    "AUDIT_STREAM",
    "KAM_TYPES",
    "LEDGER_STREAM",
    "SESSIONS_STREAM",
    "STATUSES",
    "TEMPLATES_STREAM",
    "Client",
    "Deliverable",
    "IssuedKey",
    "KamState",
    "LedgerEntry",
    "Request",
    "Session",
    "User",
    "request_stream",
]

ACCOUNTS_STREAM = ACCOUNTS_STREAM_NAME
SESSIONS_STREAM = SESSIONS_STREAM_NAME
TEMPLATES_STREAM = "kam-templates"
LEDGER_STREAM = "kam-ledger"
"""Costs not tied to a request; a run's costs are in its request's stream, with its outcome."""
AUDIT_STREAM = "kam-audit"

STATUSES = ("pending", "template_assigned", "executing", "completed", "failed")
"""A request's lifecycle: pending → template_assigned → executing → completed | failed."""


def request_stream(request_id: str) -> str:
    """The log stream holding one request's events."""
    return f"kam-request-{request_id}"


CLIENT_CREATED = type_of(KamClientCreated)
USER_CREATED = type_of(KamUserCreated)
PASSWORD_CHANGED = type_of(KamUserPasswordChanged)
SESSION_OPENED = type_of(KamSessionOpened)
SESSION_CLOSED = type_of(KamSessionClosed)
TEMPLATE_REGISTERED = type_of(KamTemplateRegistered)
REQUEST_CREATED = type_of(KamRequestCreated)
REQUEST_UPDATED = type_of(KamRequestUpdated)
TEMPLATE_ASSIGNED = type_of(KamTemplateAssigned)
REQUEST_EXECUTING = type_of(KamRequestExecuting)
REQUEST_COMPLETED = type_of(KamRequestCompleted)
REQUEST_FAILED = type_of(KamRequestFailed)
DELIVERABLE_RECORDED = type_of(KamDeliverableRecorded)
COST_RECORDED = type_of(KamCostRecorded)
KEY_ISSUED = type_of(KamKeyIssued)

KAM_TYPES = (
    CLIENT_CREATED,
    USER_CREATED,
    PASSWORD_CHANGED,
    SESSION_OPENED,
    SESSION_CLOSED,
    TEMPLATE_REGISTERED,
    REQUEST_CREATED,
    REQUEST_UPDATED,
    TEMPLATE_ASSIGNED,
    REQUEST_EXECUTING,
    REQUEST_COMPLETED,
    REQUEST_FAILED,
    DELIVERABLE_RECORDED,
    COST_RECORDED,
    KEY_ISSUED,
)
"""The event types the fold reads (audit records are read from their stream, not folded)."""


@dataclass
class Client:
    """A client of the AI factory (a tenant)."""

    client_id: str
    name: str
    contact_email: str = ""
    tier: str = "standard"
    monthly_budget: float | None = None
    currency: str = "USD"
    created_at: str = ""
    created_by: str = ""


@dataclass
class User:
    """A user account: an admin, or a client's user."""

    user_id: str
    username: str
    role: str
    client_id: str | None
    password_hash: str
    display_name: str = ""
    created_at: str = ""
    password_changed_at: str = ""


@dataclass
class Session:
    """A login session; the token itself is never kept, only its sha256."""

    session_id: str
    hash: str
    user_id: str
    expires_at: float
    opened_at: str = ""
    closed: str | None = None
    """Why it ended before its expiry (``logout``, ``password_changed``), or None."""
    csrf_hash: str = ""
    """sha256 of the session's CSRF token ("" for a session opened before they existed)."""


@dataclass
class Deliverable:
    """A result of a request's execution, stored in Raw."""

    deliverable_id: str
    request_id: str
    client_id: str
    execution_id: str
    type: str
    storage_ref: str
    size_bytes: int
    content_type: str = "application/json"
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""


@dataclass
class Request:
    """A client's request, as its events tell it."""

    request_id: str
    client_id: str
    created_by: str
    title: str
    description: str = ""
    urgency: str = "normal"
    category: str = ""
    status: str = "pending"
    template_id: str | None = None
    template_name: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    execution_id: str | None = None
    workflow_id: str | None = None
    attempts: int = 0
    error: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    deliverable_ids: list[str] = field(default_factory=list)
    created_at: str = ""
    updated_at: str = ""
    version: int = 0
    """The version of the request's stream last folded (the ``ETag`` of the request)."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """Each transition: ``{status, at, event_id}``."""


@dataclass
class IssuedKey:
    """What KAM recorded of an API key it issued (the key itself is in stream ``keys``)."""

    key_id: str
    client_id: str
    name: str
    scopes: list[str]
    issued_by: str
    issued_at: str = ""


@dataclass
class LedgerEntry:
    """One cost of a client."""

    entry_id: str
    client_id: str
    amount: float
    currency: str
    kind: str
    quantity: float
    request_id: str | None
    execution_id: str | None
    template_id: str | None
    at: str


class KamState(EventFold):
    """Everything KAM knows, folded from its events in log order."""

    def __init__(self) -> None:
        super().__init__()
        self.clients: dict[str, Client] = {}
        self.users: dict[str, User] = {}
        self.users_by_name: dict[str, str] = {}
        """username (case-folded) → user id."""
        self.sessions: dict[str, Session] = {}
        self.templates: dict[str, dict[str, Any]] = {}
        """template id → the template document, latest registration wins."""
        self.requests: dict[str, Request] = {}
        self.by_execution: dict[str, str] = {}
        """execution id → request id, for every execution KAM started."""
        self.deliverables: dict[str, Deliverable] = {}
        self.ledger: list[LedgerEntry] = []
        self.ledger_ids: set[str] = set()
        self.keys: dict[str, IssuedKey] = {}
        """key id → the API keys KAM issued (names, who issued them)."""

    # -- folding ----------------------------------------------------------------------------

    def _client_created(self, event: CloudEvent) -> None:
        data = msgspec.convert(event.data, KamClientCreated)
        self.clients.setdefault(
            data.client_id,
            Client(
                client_id=data.client_id,
                name=data.name,
                contact_email=data.contact_email,
                tier=data.tier,
                monthly_budget=data.monthly_budget,
                currency=data.currency,
                created_at=event.time or "",
                created_by=data.created_by,
            ),
        )

    def _user_created(self, event: CloudEvent) -> None:
        data = msgspec.convert(event.data, KamUserCreated)
        name = data.username.casefold()
        if data.user_id in self.users or name in self.users_by_name:
            return
        self.users[data.user_id] = User(
            user_id=data.user_id,
            username=data.username,
            role=data.role,
            client_id=data.client_id,
            password_hash=data.password_hash,
            display_name=data.display_name,
            created_at=event.time or "",
        )
        self.users_by_name[name] = data.user_id

    def _password_changed(self, event: CloudEvent) -> None:
        data = msgspec.convert(event.data, KamUserPasswordChanged)
        user = self.users.get(data.user_id)
        if user is not None:
            user.password_hash = data.password_hash
            if data.reason != "rehashed":
                user.password_changed_at = event.time or ""

    def _session_opened(self, event: CloudEvent) -> None:
        data = msgspec.convert(event.data, KamSessionOpened)
        self.sessions.setdefault(
            data.session_id,
            Session(
                session_id=data.session_id,
                hash=data.hash,
                user_id=data.user_id,
                expires_at=data.expires_at,
                opened_at=event.time or "",
                csrf_hash=data.csrf_hash,
            ),
        )

    def _session_closed(self, event: CloudEvent) -> None:
        data = msgspec.convert(event.data, KamSessionClosed)
        session = self.sessions.get(data.session_id)
        if session is not None and session.closed is None:
            session.closed = data.reason

    def _template_registered(self, event: CloudEvent) -> None:
        data = msgspec.convert(event.data, KamTemplateRegistered)
        template_id = str(data.template.get("id") or data.template.get("name") or "")
        if template_id:
            self.templates[template_id] = dict(data.template)

    def _request(self, event: CloudEvent, request_id: str) -> Request | None:
        request = self.requests.get(request_id)
        if request is not None:
            request.updated_at = event.time or request.updated_at
            request.version = max(request.version, event.streamversion or 0)
        return request

    def _transition(self, request: Request, status: str, event: CloudEvent) -> None:
        request.status = status
        request.history.append({"status": status, "at": event.time or "", "event_id": event.id})

    def _request_created(self, event: CloudEvent) -> None:
        data = msgspec.convert(event.data, KamRequestCreated)
        if data.request_id in self.requests:
            return
        request = Request(
            request_id=data.request_id,
            client_id=data.client_id,
            created_by=data.created_by,
            title=data.title,
            description=data.description,
            urgency=data.urgency,
            category=data.category,
            created_at=event.time or "",
            updated_at=event.time or "",
            version=event.streamversion or 1,
        )
        self.requests[data.request_id] = request
        self._transition(request, "pending", event)

    def _request_updated(self, event: CloudEvent) -> None:
        data = msgspec.convert(event.data, KamRequestUpdated)
        request = self._request(event, data.request_id)
        if request is None:
            return
        for name in ("title", "description", "urgency", "category"):
            if name in data.changes:
                setattr(request, name, str(data.changes[name]))

    def _template_assigned(self, event: CloudEvent) -> None:
        data = msgspec.convert(event.data, KamTemplateAssigned)
        request = self._request(event, data.request_id)
        if request is None:
            return
        request.template_id = data.template_id
        request.template_name = data.template_name
        request.parameters = dict(data.parameters)
        self._transition(request, "template_assigned", event)

    def _request_executing(self, event: CloudEvent) -> None:
        data = msgspec.convert(event.data, KamRequestExecuting)
        request = self._request(event, data.request_id)
        if request is None:
            return
        request.execution_id = data.execution_id
        request.workflow_id = data.workflow_id
        request.attempts = data.attempt
        request.error = None
        self.by_execution[data.execution_id] = data.request_id
        self._transition(request, "executing", event)

    def _request_completed(self, event: CloudEvent) -> None:
        data = msgspec.convert(event.data, KamRequestCompleted)
        request = self._request(event, data.request_id)
        if request is None:
            return
        request.metrics = dict(data.metrics)
        self._transition(request, "completed", event)

    def _request_failed(self, event: CloudEvent) -> None:
        data = msgspec.convert(event.data, KamRequestFailed)
        request = self._request(event, data.request_id)
        if request is None:
            return
        request.error = data.error
        request.metrics = dict(data.metrics)
        self._transition(request, "failed", event)

    def _deliverable_recorded(self, event: CloudEvent) -> None:
        data = msgspec.convert(event.data, KamDeliverableRecorded)
        if data.deliverable_id in self.deliverables:
            return
        self.deliverables[data.deliverable_id] = Deliverable(
            deliverable_id=data.deliverable_id,
            request_id=data.request_id,
            client_id=data.client_id,
            execution_id=data.execution_id,
            type=data.type,
            storage_ref=data.storage_ref,
            size_bytes=data.size_bytes,
            content_type=data.content_type,
            metadata=dict(data.metadata),
            created_at=event.time or "",
        )
        request = self._request(event, data.request_id)
        if request is not None and data.deliverable_id not in request.deliverable_ids:
            request.deliverable_ids.append(data.deliverable_id)

    def _cost_recorded(self, event: CloudEvent) -> None:
        data = msgspec.convert(event.data, KamCostRecorded)
        if data.entry_id in self.ledger_ids:
            return
        self.ledger_ids.add(data.entry_id)
        self.ledger.append(
            LedgerEntry(
                entry_id=data.entry_id,
                client_id=data.client_id,
                amount=data.amount,
                currency=data.currency,
                kind=data.kind,
                quantity=data.quantity,
                request_id=data.request_id,
                execution_id=data.execution_id,
                template_id=data.template_id,
                at=data.at or event.time or "",
            )
        )

    def _key_issued(self, event: CloudEvent) -> None:
        data = msgspec.convert(event.data, KamKeyIssued)
        self.keys.setdefault(
            data.key_id,
            IssuedKey(
                key_id=data.key_id,
                client_id=data.client_id,
                name=data.name,
                scopes=list(data.scopes),
                issued_by=data.issued_by,
                issued_at=event.time or "",
            ),
        )

    # -- questions --------------------------------------------------------------------------

    def user_named(self, username: str) -> User | None:
        """The user with this login name (case-insensitive), or None."""
        user_id = self.users_by_name.get(username.casefold())
        return self.users.get(user_id) if user_id else None

    def tenant_of_request(self, request_id: str) -> str | None:
        """The client owning request ``request_id``, or None when there is no such request."""
        request = self.requests.get(request_id)
        return request.client_id if request else None

    def tenant_of_deliverable(self, deliverable_id: str) -> str | None:
        """The client owning deliverable ``deliverable_id``, or None."""
        deliverable = self.deliverables.get(deliverable_id)
        return deliverable.client_id if deliverable else None

    def tenant_of_client(self, client_id: str) -> str | None:
        """``client_id`` itself when such a client exists (a client owns its own record), else None."""
        return client_id if client_id in self.clients else None

    def snapshot(self) -> dict[str, Any]:
        """The whole state as plain documents, entity id → document (what replay compares)."""
        out: dict[str, Any] = {}
        for key, value in (
            *((f"client/{k}", v) for k, v in self.clients.items()),
            *((f"user/{k}", v) for k, v in self.users.items()),
            *((f"session/{k}", v) for k, v in self.sessions.items()),
            *((f"request/{k}", v) for k, v in self.requests.items()),
            *((f"deliverable/{k}", v) for k, v in self.deliverables.items()),
            *((f"cost/{e.entry_id}", e) for e in self.ledger),
            *((f"key/{k}", v) for k, v in self.keys.items()),
        ):
            out[key] = msgspec.to_builtins(value, order="sorted")
        for key, template in self.templates.items():
            out[f"template/{key}"] = template
        return out


KamState.handlers = {
    CLIENT_CREATED: KamState._client_created,
    USER_CREATED: KamState._user_created,
    PASSWORD_CHANGED: KamState._password_changed,
    SESSION_OPENED: KamState._session_opened,
    SESSION_CLOSED: KamState._session_closed,
    TEMPLATE_REGISTERED: KamState._template_registered,
    REQUEST_CREATED: KamState._request_created,
    REQUEST_UPDATED: KamState._request_updated,
    TEMPLATE_ASSIGNED: KamState._template_assigned,
    REQUEST_EXECUTING: KamState._request_executing,
    REQUEST_COMPLETED: KamState._request_completed,
    REQUEST_FAILED: KamState._request_failed,
    DELIVERABLE_RECORDED: KamState._deliverable_recorded,
    COST_RECORDED: KamState._cost_recorded,
    KEY_ISSUED: KamState._key_issued,
}
