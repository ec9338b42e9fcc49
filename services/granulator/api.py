"""HTTP routes and NATS commands of the granulator: decode, call the worker, encode.

HTTP: ``POST /api/handshake``, ``POST /api/process``, ``POST /api/acknowledge``,
``POST /generate`` and ``GET /api/handshakes/{handshake_id}``, each with either

- a worker token (``Authorization: Bearer nxw_…``; ``X-Worker-ID``, when sent, must be the
  token's owner): an external worker, acting for the platform tenant, on its own handshakes; or
- a client credential (``X-API-Key``: a client key, or the delegated ``nxd_…`` token a workflow
  step carries for its execution's tenant): that tenant's handshakes.

NATS (``nexus.cmd.granulator.<verb>``, a CloudEvent whose data are the call's body, answered
through ``Bus.request``): ``handshake``, ``process``, ``acknowledge``, ``granulate`` (all three
in one call) and ``generate``. NATS is the trust boundary for commands: who may publish on
``nexus.cmd.granulator.>`` is the NATS account's permissions (platform identities only); the
worker id is the command's ``source`` and the tenant its envelope's ``tenant`` (``platform``
when absent).

Another tenant's or another worker's handshake, and a ``raw://`` input in another tenant's
namespace, are answered 404 exactly as missing ones.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from nexus.auth import AUTH, WORKER_ID
from nexus.bus import ConsumerSpec
from nexus.eventlog import ANY
from nexus.ingest import CommandRejected, CommandRouter
from nexus.proto import PLATFORM_TENANT, STREAM_CMD, CloudEvent, cmd_subject, new_event
from nexus.proto.events.workflow import TaskCompleted, TaskFailed
from nexus.runtime import Service, json_response
from nexus.services.granulator.handlers import Caller
from nexus.services.granulator.model import (
    AcknowledgeRequest,
    ExpandRequest,
    ExpandResult,
    GranulatorError,
    HandshakeRequest,
    InvalidRequestError,
    ProcessRequest,
    WorkerMismatchError,
)
from nexus.services.granulator.worker import SOURCE, Granulator

__all__ = ["COMMAND_VERBS", "install"]

COMMAND_VERBS = ("handshake", "process", "acknowledge", "granulate", "generate")

_ERRORS = {
    400: "Malformed body (the message names the field)",
    401: "Missing, unknown or revoked credential (worker token or client key)",
    403: "X-Worker-ID names another worker than the token's owner",
}
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
"""What a command's tenant may look like (a client name, or ``platform``)."""


def caller_of(request: web.Request) -> Caller:
    """The caller of an HTTP route: a worker bound to its token, or a client bound to its tenant.

    Raises:
        WorkerMismatchError: ``X-Worker-ID`` names another worker than the token's owner.
    """
    info = request[AUTH]
    if info.kind == "worker":
        claimed = request.get(WORKER_ID) or info.owner
        if claimed != info.owner:
            raise WorkerMismatchError(
                f"X-Worker-ID {claimed!r} is not the worker this token was issued to; send {info.owner!r} or omit it"
            )
        return Caller(tenant=info.tenant, worker_id=info.owner, is_admin=info.is_admin)
    return Caller(tenant=info.tenant, is_admin=info.is_admin)


def command_caller(event: CloudEvent) -> Caller:
    """The caller of a NATS command: its ``source`` as the worker, its envelope's ``tenant``.

    Raises:
        CommandRejected: the tenant cannot be a tenant's name.
    """
    tenant = event.tenant or PLATFORM_TENANT
    if not _TENANT.fullmatch(tenant):
        raise CommandRejected(f"tenant {tenant[:80]!r} is not a tenant's name", "invalid_request")
    return Caller(tenant=tenant, worker_id=event.source)


class ErrorAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """The body of a granulator error."""

    error: str
    message: str
    retryable: bool = False


def _error(exc: GranulatorError) -> web.Response:
    headers = {"Retry-After": "1"} if exc.retryable else None
    return json_response(
        ErrorAnswer(error=exc.code, message=exc.message, retryable=exc.retryable), status=exc.status, headers=headers
    )


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw.strip():
        raise InvalidRequestError("$: the request body is empty; send a JSON object")
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise InvalidRequestError(f"$: the body is not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise InvalidRequestError(f"$: expected a JSON object, got {type(body).__name__}")
    return body


TASK_COMPLETED = "nexus.workflow.task.completed"
TASK_FAILED = "nexus.workflow.task.failed"


async def _task(
    worker: Granulator,
    event: CloudEvent,
    data: dict[str, Any],
    call: Callable[[dict[str, Any], CloudEvent], Awaitable[dict[str, Any]]],
) -> dict[str, Any]:
    """Run a workflow ``task`` step's command and record its result for the engine.

    The workflow engine publishes ``nexus.granulator.task.<verb>`` with ``execution_id``,
    ``step_id``, ``idempotency_key`` and ``input``, and waits for ``nexus.workflow.task.completed``
    or ``.failed`` carrying the same key. A key already completed gets its first output again
    (a redelivered or retried command does not granulate twice).
    """
    key = data.get("idempotency_key")
    if not isinstance(key, str) or not key:
        raise CommandRejected("a task command needs a non-empty idempotency_key", "invalid_request")
    stream = f"granulator-task-{key}"
    prior = await worker.log.read_stream(stream)
    done = next((e for e in reversed(prior) if e.type == TASK_COMPLETED), None)
    if done is not None:
        output = done.data.get("output") if isinstance(done.data, dict) else None
        outcome: TaskCompleted | TaskFailed = TaskCompleted(idempotency_key=key, output=output)
    else:
        body = data.get("input")
        body = dict(body) if isinstance(body, dict) else {}
        body.setdefault("execution_id", data.get("execution_id") or event.correlationid or key)
        try:
            result = await call(body, event)
        except GranulatorError as exc:
            outcome = TaskFailed(idempotency_key=key, error=f"{exc.code}: {exc.message}", retryable=exc.retryable)
        else:
            if result.get("accepted") is False:
                # A refused handshake: over capacity may pass; anything else will be refused again.
                code = str(result.get("code", "rejected"))
                outcome = TaskFailed(
                    idempotency_key=key, error=f"{code}: {result.get('reason', '')}", retryable=code == "over_capacity"
                )
            else:
                outcome = TaskCompleted(
                    idempotency_key=key, output={k: v for k, v in result.items() if k != "accepted"}
                )
    kind = TASK_COMPLETED if isinstance(outcome, TaskCompleted) else TASK_FAILED
    recorded = new_event(kind, outcome, source=SOURCE, correlationid=event.correlationid, causationid=event.id)
    await worker.log.append(stream, [recorded], expected_version=ANY)
    answer: dict[str, Any] = msgspec.to_builtins(outcome)
    return answer


def install(service: Service, worker: Granulator) -> None:
    """Declare the granulator's routes and command consumers on ``service``."""

    def guarded(call: Callable[[web.Request], Awaitable[Any]]) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            try:
                return json_response(await call(request))
            except GranulatorError as exc:
                return _error(exc)

        handler.__doc__ = call.__doc__
        return handler

    @service.route(
        "POST",
        "/api/handshake",
        summary="Offer a job: accepted with a handshake id and an estimate, or rejected with a reason",
        request=HandshakeRequest,
        responses=_ERRORS,
        auth="any",
        tags=["protocol"],
    )
    @guarded
    async def handshake(request: web.Request) -> Any:
        """Validates stage, input and requirements (memory_mb, timeout_ms); the execution id comes in the body or
        ``X-Execution-ID``. A rejection (over capacity, requirement out of bounds, unknown structure type) is a
        200 answer with ``accepted: false``, ``code`` and ``reason``. A repeated call with the same
        ``Idempotency-Key`` answers the recorded outcome (one handshake, one reservation)."""
        return await worker.handshake(
            await _body(request),
            caller=caller_of(request),
            execution_id=request.headers.get("X-Execution-ID", "").strip(),
            idempotency_key=request.headers.get("Idempotency-Key", "").strip(),
        )

    @service.route(
        "POST",
        "/api/process",
        summary="Generate the structure of an accepted handshake (idempotent)",
        request=ProcessRequest,
        responses={
            **_ERRORS,
            404: "No such handshake for this execution and caller, or a data_ref outside the caller's tenant",
            409: "Rejected, closed, or being processed by another replica",
            502: "The generator answered with something that is not a structure (not retryable)",
            503: "The generator or Raw is unavailable (retryable)",
            504: "The job exceeded the handshake's timeout_ms (retryable)",
        },
        auth="any",
        tags=["protocol"],
    )
    @guarded
    async def process(request: web.Request) -> Any:
        """``data_ref`` is a ``raw://``, ``kv://`` or ``r2://`` reference to a JSON object, an inline object, or
        absent (the handshake's input). The output is inline under 1 KB, otherwise ``output_ref`` is a reference
        (``raw://``, or ``kv://``/``r2://`` with ``NEXUS_GRANULATOR_OUTPUT_REFS=tiered``)."""
        return await worker.process(await _body(request), caller=caller_of(request))

    @service.route(
        "POST",
        "/api/acknowledge",
        summary="Close a handshake and release its capacity (idempotent)",
        request=AcknowledgeRequest,
        responses={
            **_ERRORS,
            404: "No such handshake for this execution and caller",
            409: "The handshake was rejected",
        },
        auth="any",
        tags=["protocol"],
    )
    @guarded
    async def acknowledge(request: web.Request) -> Any:
        return await worker.acknowledge(await _body(request), caller=caller_of(request))

    @service.route(
        "GET",
        "/api/handshakes/{handshake_id}",
        summary="A handshake's state folded from the log",
        responses={**_ERRORS, 404: "No such handshake, or not the caller's"},
        auth="any",
        tags=["protocol"],
    )
    @guarded
    async def get_handshake(request: web.Request) -> Any:
        return await worker.describe(request.match_info["handshake_id"], caller=caller_of(request))

    @service.route(
        "POST",
        "/generate",
        summary="Expand a text with the configured generator (the `core` service of seed 004)",
        request=ExpandRequest,
        response=ExpandResult,
        responses={**_ERRORS, 502: "Malformed generator output", 503: "Generator unavailable (retryable)"},
        auth=None if getattr(service.settings, "generate_auth", "worker") == "none" else "any",
        tags=["generation"],
    )
    @guarded
    async def generate(request: web.Request) -> Any:
        """Body: ``prompt`` (required), ``model``, ``temperature``, ``max_tokens``. Answer: ``text``,
        ``word_count``, ``model``, ``generator``, ``finish_reason``."""
        if AUTH in request:
            caller_of(request)  # a worker token must still match its X-Worker-ID
        return await worker.expand(await _body(request))

    # -- NATS commands --------------------------------------------------------------------

    router = CommandRouter(service.bus, service.name)

    def command(
        verb: str, call: Callable[[dict[str, Any], CloudEvent], Awaitable[dict[str, Any]]]
    ) -> Callable[[CloudEvent], Awaitable[dict[str, Any]]]:
        async def handle(event: CloudEvent) -> dict[str, Any]:
            if not isinstance(event.data, dict):
                raise CommandRejected("the command's data must be a JSON object", "invalid_request")
            if event.type == f"nexus.{service.name}.task.{verb}":
                return await _task(worker, event, event.data, call)
            try:
                return await call(event.data, event)
            except GranulatorError as exc:
                suffix = " (retryable)" if exc.retryable else ""
                raise CommandRejected(exc.message + suffix, exc.code) from None

        return handle

    def execution(data: dict[str, Any], event: CloudEvent) -> str:
        return str(data.get("execution_id") or event.correlationid or "")

    router.route(
        "handshake",
        command("handshake", lambda d, e: worker.handshake(d, caller=command_caller(e), execution_id=execution(d, e))),
    )
    router.route("process", command("process", lambda d, e: worker.process(d, caller=command_caller(e))))
    router.route("acknowledge", command("acknowledge", lambda d, e: worker.acknowledge(d, caller=command_caller(e))))
    router.route(
        "granulate",
        command("granulate", lambda d, e: worker.granulate(d, caller=command_caller(e), execution_id=execution(d, e))),
    )
    router.route("generate", command("generate", lambda d, e: worker.expand(d)))

    for verb in COMMAND_VERBS:
        spec = ConsumerSpec(
            name=f"{service.name}-cmd-{verb}",
            stream=STREAM_CMD,
            filter_subjects=(cmd_subject(service.name, verb),),
            ack_wait_seconds=120.0,
        )
        # A pull loop handles one message at a time; jobs run concurrently up to the capacity by
        # running as many loops on the shared durable consumer.
        copies = worker.limits.capacity if verb in ("process", "granulate", "generate") else 1
        for _ in range(min(copies, 16)):
            service.consumer(spec)(router.handle)
