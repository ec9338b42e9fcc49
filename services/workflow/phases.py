"""Seed 001's seven-phase pipeline, run by the platform instead of a bespoke orchestrator.

``POST /api/v1/workflow/phase/{n}`` (n = 1…7, with ``user_id`` and optional ``sync_id`` and any
other metadata) records ``nexus.workflow.phase.triggered`` in stream ``phases-<tenant>/<user_id>``.
The bundled triggers (``bundled/phases/triggers``, the platform's) turn that event into a start
of workflow ``phase_<n>``, and each ``phase_<n>``'s completion into a start of ``phase_<n+1>``,
each an execution of the caller's tenant.

Users are per tenant: user ``u`` of one client and user ``u`` of another are two users, with
their own phase streams, executions, audit trail and live updates; a client never reads another's
(``GET …/phases/{user_id}/audit`` answers 404 for a user the caller does not have).

Out of the box each phase's step does its work on the platform's own content service (``core``,
the granulator's ``/generate``, called with the replica's worker token), so the pipeline runs
with ``make run`` and nothing else. With ``NEXUS_SERVICE_INTEGRATIONS`` set, each phase gets a
second step that mirrors it to that external service (``POST /phases/<n>/<action>`` with the
phase, the user, the sync id, the metadata and the phase's report).

What seed 001 lists as future enhancements is what the platform does anyway:

- retries of phase transitions: each phase step has a retry policy (connection errors, 5xx, 429);
- a central phase audit log: ``GET /api/v1/workflow/phases/{user_id}/audit`` reads the log;
- mirroring to external integrations: ``NEXUS_SERVICE_INTEGRATIONS`` (above), and every event is
  published on ``nexus.evt.>`` by the relay;
- transition metrics: the service's ``/metrics`` (``live.py`` counts phase transitions).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Annotated, Any, Final

import msgspec
from aiohttp import web

from nexus.auth import AUTH
from nexus.proto import PLATFORM_TENANT, new_event
from nexus.proto.events.jobs import PhaseTriggered
from nexus.runtime import Service, json_response
from nexus.services.workflow.context import WorkflowContext
from nexus.services.workflow.definitions import load_document

__all__ = [
    "MIRROR_ACTIONS",
    "PHASES",
    "PHASES_DIR",
    "PHASE_TRIGGERED",
    "install",
    "parse_phase",
    "phase_of_workflow",
    "phase_workflows",
]

logger = logging.getLogger("nexus.workflow.phases")

PHASES_DIR: Final = Path(__file__).parent / "bundled" / "phases"
PHASE_TRIGGERED: Final = "nexus.workflow.phase.triggered"
PHASES: Final = {
    1: "Zero-Friction Onboarding",
    2: "Autonomous Money Discovery",
    3: "Intelligent Evidence Ecosystem",
    4: "Predictive Refund Orchestration",
    5: "Autonomous Recovery Pipeline",
    6: "Continuous Learning Brain",
    7: "Hyper-Transparency Layer",
}
"""Phase number → name, as seed 001 lists them."""
MIRROR_ACTIONS: Final = {
    1: "oauth-completion",
    2: "sync-completion",
    3: "detection-completion",
    4: "evidence-matching",
    5: "claim-submission",
    6: "claim-rejection",
    7: "payout-received",
}
"""Phase number → the action the integrations service is told of (``POST /phases/<n>/<action>``)."""
INTEGRATIONS_SERVICE: Final = "integrations"
_USER = re.compile(r"^[A-Za-z0-9_\-.@:]{1,200}$")


def phases_stream(tenant: str, user_id: str) -> str:
    """The stream of one tenant's user's phase triggers.

    A tenant name holds no ``/`` (and a user id none either), so no two (tenant, user) pairs
    share a stream; users of the platform keep the stream they had before tenancy.
    """
    if tenant == PLATFORM_TENANT:
        return f"phases-{user_id}"
    return f"phases-{tenant}/{user_id}"


def phase_of_workflow(workflow_id: str) -> int | None:
    """The phase a workflow id runs (``phase_4`` → 4), or None."""
    match = re.fullmatch(r"phase_([1-7])", workflow_id or "")
    return int(match.group(1)) if match else None


def parse_phase(text: str) -> int:
    """The phase number of a path segment.

    Raises:
        ValueError: naming the value, when it is not an integer from 1 to 7.
    """
    if not re.fullmatch(r"[1-7]", text or ""):
        raise ValueError(f"phaseNumber must be an integer from 1 to 7, got {text!r}")
    return int(text)


def phase_workflows(directory: Path = PHASES_DIR, *, mirror: bool = False) -> list[tuple[str, dict[str, Any]]]:
    """The phase workflows of ``directory/workflows`` as (file name, document), in file order.

    Args:
        directory: The phases directory (``schemas``, ``workflows``, ``triggers``).
        mirror: Add to each phase a step mirroring it to the integrations service.
    """
    documents = []
    for path in sorted((directory / "workflows").glob("*.y*ml")):
        document = dict(load_document(path.read_bytes(), "workflow"))
        phase = phase_of_workflow(str(document.get("id", "")))
        if mirror and phase is not None:
            document["steps"] = [*document.get("steps", []), _mirror_step(phase, document.get("steps", []))]
            document["output"] = {**(document.get("output") or {}), "integration": "$.steps.mirror.output"}
        documents.append((path.name, document))
    return documents


def _mirror_step(phase: int, steps: list[dict[str, Any]]) -> dict[str, Any]:
    work = steps[0] if steps else {}
    return {
        "id": "mirror",
        "name": f"Mirror phase {phase} to the integrations service",
        "type": "api_call",
        "service": INTEGRATIONS_SERVICE,
        "endpoint": f"/phases/{phase}/{MIRROR_ACTIONS[phase]}",
        "method": "POST",
        "input_map": {
            "phase": phase,
            "user_id": "$.input.user_id",
            "sync_id": "$.input.sync_id",
            "metadata": "$.input.metadata",
            "report": f"$.steps.{work.get('id', 'execute')}.output.text",
        },
        "timeout_seconds": 30,
        "on_failure": "fail",
        # The same policy as the phase's own work: seed 001's retried phase transitions.
        "retry": work.get("retry", {"max_attempts": 5, "backoff_ms": 100, "multiplier": 2, "max_backoff_ms": 5000}),
    }


class PhaseRequest(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /api/v1/workflow/phase/{n}``: the user, an optional sync id, and any other metadata
    (every other field is passed on to the phase as ``metadata``)."""

    user_id: Annotated[str, msgspec.Meta(pattern=_USER.pattern)]
    """The user the phase runs for, in the caller's namespace: another client's user of the same
    id is another user."""
    sync_id: str = ""
    """The sync or job the phase belongs to (the correlation id of its events)."""


class PhaseAccepted(msgspec.Struct, frozen=True, kw_only=True):
    """The phase trigger is recorded; the phase's workflow starts from it."""

    success: bool
    phase: int
    name: str
    eventId: str


class PhaseExecution(msgspec.Struct, frozen=True, kw_only=True):
    phase: int
    execution_id: str
    status: str


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    time: str
    type: str
    stream: str | None
    position: int | None
    data: Any


class PhaseAudit(msgspec.Struct, frozen=True, kw_only=True):
    """Every phase trigger and phase execution event of one user of the caller, in log order."""

    user_id: str
    executions: list[PhaseExecution]
    auditTrail: list[AuditEntry]


def _error(status: int, message: str) -> web.Response:
    # Seed 001's {"success": false, "error"} and the platform's {"error", "message"} in one body.
    return json_response({"success": False, "error": message, "message": message}, status=status)


def _tenant_of(request: web.Request) -> str:
    """The caller's tenant; an admin may name another with ``?tenant=``."""
    info = request[AUTH]
    return (request.query.get("tenant") or info.tenant) if info.is_admin else info.tenant


async def user_has_phases(ctx: WorkflowContext, tenant: str, user_id: str) -> bool:
    """Whether ``tenant`` has a user ``user_id`` (a phase was triggered for it)."""
    return bool(await ctx.log.stream_version(phases_stream(tenant, user_id)))


def install(service: Service, ctx: WorkflowContext, *, directory: Path = PHASES_DIR) -> None:
    """Add the phase routes; register the phase workflows and triggers at start-up.

    The phase workflows run on the platform's ``core`` service; with ``NEXUS_SERVICE_INTEGRATIONS``
    set each one also mirrors its phase to that service.
    """
    app = service.app
    ready: dict[str, Any] = {"registered": False, "reason": "the phase workflows are not registered yet"}

    @service.route(
        "POST",
        "/api/v1/workflow/phase/{n}",
        summary="Trigger phase n (1-7) of the seven-phase pipeline for one of the caller's users",
        request=PhaseRequest,
        response=PhaseAccepted,
        status=202,
        responses={400: "n is not 1-7, or the body has no valid user_id", 503: "The phase workflows are not ready"},
        tags=["phases"],
        auth="client",
    )
    async def trigger_phase(request: web.Request) -> web.Response:
        try:
            phase = parse_phase(request.match_info["n"])
        except ValueError as exc:
            return _error(400, str(exc))
        try:
            body = msgspec.json.decode(await request.read())
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            return _error(400, "the body must be a JSON object with user_id")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object with user_id")
        user_id = body.get("user_id")
        if not isinstance(user_id, str) or not _USER.match(user_id):
            return _error(400, "user_id is required: 1-200 letters, digits or _ - . @ :")
        sync_id = body.get("sync_id", "")
        if not isinstance(sync_id, str):
            return _error(400, "sync_id must be a string")
        if not ready["registered"]:
            return _error(503, ready["reason"])
        tenant = request[AUTH].tenant
        metadata = {k: v for k, v in body.items() if k not in ("user_id", "sync_id")}
        data = PhaseTriggered(phase=phase, user_id=user_id, sync_id=sync_id, metadata=metadata)
        event = new_event(
            PHASE_TRIGGERED,
            data,
            source="nexus/workflow",
            subject=user_id,
            correlationid=sync_id or None,
            tenant=tenant,
        )
        [stored] = await ctx.log.append(phases_stream(tenant, user_id), [event])
        return json_response(
            PhaseAccepted(success=True, phase=phase, name=PHASES[phase], eventId=stored.id), status=202
        )

    @service.route(
        "GET",
        "/api/v1/workflow/phases/{user_id}/audit",
        summary="The phase audit trail of one of the caller's users",
        response=PhaseAudit,
        responses={404: "The caller has no such user (no phase was triggered for it)"},
        tags=["phases"],
        auth="client",
        query={"tenant": "admins only: the tenant whose user to read (default: their own)"},
    )
    async def audit(request: web.Request) -> web.Response:
        user_id = request.match_info["user_id"]
        tenant = _tenant_of(request)
        events = list(await ctx.log.read_stream(phases_stream(tenant, user_id)))
        executions: list[PhaseExecution] = []
        for n in PHASES:
            for state in ctx.engine.list(workflow_id=f"phase_{n}", limit=10_000, tenant=tenant):
                if isinstance(state.input, dict) and state.input.get("user_id") == user_id:
                    events.extend(await ctx.engine.history(state.execution_id))
                    executions.append(PhaseExecution(phase=n, execution_id=state.execution_id, status=state.status))
        if not events:
            return _error(404, f"no user {user_id!r}")
        info = request[AUTH]
        if tenant != info.tenant:
            await service.audit_admin(info, "GET", "/api/v1/workflow/phases/{user_id}/audit", f"user {user_id}", tenant)
        events.sort(key=lambda e: e.position or 0)
        trail = [
            AuditEntry(id=e.id, time=e.time, type=e.type, stream=e.streamid, position=e.position, data=e.data)
            for e in events
        ]
        return json_response(PhaseAudit(user_id=user_id, executions=executions, auditTrail=trail))

    async def register(app: web.Application) -> Any:
        from nexus.services.workflow.triggers import TRIGGER_ENGINE

        services = getattr(ctx.settings, "services", {}) or {}
        mirror = INTEGRATIONS_SERVICE in services
        for path in sorted((directory / "schemas").glob("*.y*ml")):
            await ctx.registry.register_schema(path.read_bytes(), source=f"bundled:{path.name}", only_if_changed=True)
        for name, document in phase_workflows(directory, mirror=mirror):
            await ctx.registry.register_workflow(document, source=f"bundled:{name}", only_if_changed=True)
        logger.info(
            "phase workflows registered%s",
            " (mirrored to the integrations service)" if mirror else " (on the core service)",
        )
        if TRIGGER_ENGINE in app:
            await app[TRIGGER_ENGINE].load_directory(directory / "triggers")
            ready["registered"] = True
        else:
            ready["reason"] = "the phase pipeline needs the trigger module"
        yield

    # Runs after the trigger module's start-up (install order: triggers, then phases).
    app.cleanup_ctx.append(register)
