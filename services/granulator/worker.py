"""The granulator worker: handshake, process, acknowledge, with every state change in the log.

Each handshake is one stream, ``granulation-<handshake_id>``, and belongs to the tenant and the
worker that made it (the envelope's ``tenant``, the accepted event's ``worker_id``): any other
caller is answered as if it did not exist, and so is a ``raw://`` input outside the tenant's
namespace; a ``kv://`` or ``r2://`` input (seed 002's tiers) is read in the caller's own
namespace. Outputs go to Raw under ``t/<tenant>/granulator/`` as ``raw://`` references, or, with
``output_refs="tiered"``, as ``kv://granulator/<handshake>.json`` (``r2://`` above the kv limit).

Any replica can answer any call: it folds the stream (``handlers.fold``) and appends with the
stream's version as ``expected_version``, so two replicas racing on one handshake cannot both
process it. Capacity is per replica: the accepted event names the replica whose capacity it
holds, and that replica counts its open handshakes (rebuilt from the log at start, when its
replica id is stable).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec

from nexus.eventlog import ConcurrencyError, EventLog
from nexus.proto import new_event, new_event_id
from nexus.proto.events import granulator as ev
from nexus.raw import (
    RawBackend,
    RawError,
    RawKeyError,
    RawNotFoundError,
    RefPolicy,
    default_policy,
    is_ref,
    is_tier_ref,
    put_ref,
    put_value,
    ref_key,
    ref_tenant,
    resolve,
    tenant_key,
)
from nexus.services.granulator import handlers
from nexus.services.granulator import metrics as m
from nexus.services.granulator.generators import Generator, OutlineRequest
from nexus.services.granulator.handlers import Caller, HandshakeState, Limits
from nexus.services.granulator.model import (
    AcknowledgeRequest,
    ExpandRequest,
    GeneratorOutputError,
    GeneratorUnavailableError,
    GranulationInput,
    GranulatorError,
    HandshakeConflictError,
    InputUnavailableError,
    InvalidRequestError,
    JobTimeoutError,
    ProcessRequest,
    StorageUnavailableError,
    Structure,
    UnknownHandshakeError,
    UnknownReferenceError,
    ValidationConfig,
    ValidationResult,
    decode_request,
    normalise_input,
)
from nexus.services.granulator.validation import BuiltinValidator, Validator, normalise_result, run_with_validation

__all__ = ["SOURCE", "Granulator"]

logger = logging.getLogger("nexus.granulator")

SOURCE = "nexus/granulator"
ACK_STATUSES = ("completed", "failed", "cancelled")

_ERRORS: dict[str, type[GranulatorError]] = {
    cls.code: cls
    for cls in (
        GeneratorOutputError,
        GeneratorUnavailableError,
        InputUnavailableError,
        InvalidRequestError,
        JobTimeoutError,
        StorageUnavailableError,
    )
}
_json = msgspec.json.Encoder()


class Granulator:
    """One replica of the granulator.

    Args:
        log: The event log (the record of every handshake).
        raw: Where outputs over ``inline_limit`` go, and where ``raw://`` inputs are read.
        generator: The structure generator.
        limits: Capacity and requirement bounds of this replica.
        replica_id: This replica's name in the log.
        inline_limit: Outputs whose JSON is shorter stay inline.
        default_validation: Used when a handshake does not configure validation.
        clock: Seconds since the epoch (tests move it to expire leases).
        validator: Scores structures in the validation loop (default: the builtin one).
        output_refs: ``raw`` (``raw://`` references) or ``tiered`` (seed 002's ``kv://``/``r2://``).
        ref_policy: The tiers' limits and placement (default: ``NEXUS_REF_*``).
    """

    def __init__(
        self,
        *,
        log: EventLog,
        raw: RawBackend,
        generator: Generator,
        limits: Limits,
        replica_id: str,
        inline_limit: int = 1024,
        default_validation: ValidationConfig | None = None,
        clock: Callable[[], float] = time.time,
        validator: Validator | None = None,
        output_refs: str = "raw",
        ref_policy: RefPolicy | None = None,
    ) -> None:
        if output_refs not in ("raw", "tiered"):
            raise ValueError(f"output_refs must be raw or tiered, not {output_refs!r}")
        self.validator = validator or BuiltinValidator()
        self.output_refs = output_refs
        self.ref_policy = ref_policy or default_policy()
        self.log = log
        self.raw = raw
        self.generator = generator
        self.limits = limits
        self.replica_id = replica_id
        self.inline_limit = inline_limit
        self.default_validation = default_validation or ValidationConfig()
        self.clock = clock
        self._open: dict[str, tuple[str, float]] = {}
        """Handshakes holding this replica's capacity: id → (execution id, lease deadline)."""
        self._inflight: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._reserve = asyncio.Lock()
        m.CAPACITY.labels(replica_id).set(limits.capacity)
        self._publish_gauge()

    # -- capacity -----------------------------------------------------------------------------

    def _publish_gauge(self) -> None:
        m.JOBS_IN_PROGRESS.labels(self.replica_id).set(len(self._open))

    @property
    def open_jobs(self) -> int:
        """Handshakes currently holding this replica's capacity."""
        return len(self._open)

    async def rebuild(self) -> int:
        """Find, in the log, the handshakes this replica accepted and that are still open."""
        states: dict[str, list[Any]] = {}
        async for batch in self.log.iter_all(types=handlers.EVENT_TYPES):
            for event in batch:
                if event.streamid and event.streamid.startswith("granulation-"):
                    states.setdefault(event.streamid, []).append(event)
        self._open.clear()
        for events in states.values():
            state = handlers.fold(events)
            if state is not None and state.replica_id == self.replica_id and state.holds_capacity:
                self._open[state.handshake_id] = (state.execution_id, state.lease_deadline())
        self._publish_gauge()
        return len(self._open)

    async def _refresh_capacity(self) -> None:
        """Drop handshakes closed elsewhere (acknowledged on another replica) or past their lease."""
        now = self.clock()
        for handshake_id, (execution_id, deadline) in list(self._open.items()):
            state = await self._load(handshake_id)
            if state is None or not state.holds_capacity:
                self._open.pop(handshake_id, None)
            elif deadline <= now and handshake_id not in self._inflight:
                expired = ev.GranulatorExpired(
                    handshake_id=handshake_id, execution_id=execution_id, replica_id=self.replica_id
                )
                try:
                    await self._append(state, [(handlers.EXPIRED, expired)])
                except ConcurrencyError:
                    continue
                self._open.pop(handshake_id, None)
                logger.info("handshake %s expired without an acknowledgement", handshake_id)
        self._publish_gauge()

    # -- log helpers --------------------------------------------------------------------------

    async def _load(self, handshake_id: str) -> HandshakeState | None:
        return handlers.fold(await self.log.read_stream(handlers.stream_id(handshake_id)))

    async def _append(
        self,
        state: HandshakeState | None,
        items: list[tuple[str, msgspec.Struct]],
        *,
        handshake_id: str = "",
        execution_id: str = "",
        tenant: str = "",
    ) -> None:
        hs = state.handshake_id if state else handshake_id
        correlation = state.execution_id if state else execution_id
        owner = state.tenant if state else tenant
        events = [
            new_event(t, data, source=SOURCE, correlationid=correlation or None, tenant=owner or None)
            for t, data in items
        ]
        expected = state.version if state else 0
        stored = await self.log.append(handlers.stream_id(hs), events, expected_version=expected)
        if state is not None:
            state.version = stored[-1].streamversion or state.version + len(stored)

    # -- handshake ----------------------------------------------------------------------------

    async def handshake(
        self, body: Any, *, caller: Caller, execution_id: str = "", idempotency_key: str = ""
    ) -> dict[str, Any]:
        """Accept or reject a handshake for ``caller``'s tenant; the outcome is recorded either way.

        With an ``idempotency_key`` (an orchestrator's ``Idempotency-Key``: a workflow step sends
        the same one when it calls again after a crash), the handshake id is derived from the
        caller and the key, and a repeated call answers the recorded outcome instead of reserving
        capacity a second time.

        Raises:
            InvalidRequestError: the body is not a handshake, or the key is too long (nothing recorded).
        """
        if not isinstance(body, dict):
            raise InvalidRequestError("$: the handshake body must be a JSON object")
        if idempotency_key:
            if len(idempotency_key) > 256:
                raise InvalidRequestError("Idempotency-Key: at most 256 characters")
            scope = f"{caller.tenant}\x00{caller.label}\x00{idempotency_key}".encode()
            handshake_id = "hs_" + hashlib.sha256(scope).hexdigest()[:32]
            recorded = await self._load(handshake_id)
            if recorded is not None:
                return self._handshake_answer(recorded)
        else:
            handshake_id = "hs_" + new_event_id().replace("-", "")
        try:
            return await self._new_handshake(body, caller, execution_id, handshake_id)
        except ConcurrencyError:
            # The same key on another replica a moment ago: answer what it recorded.
            recorded = await self._load(handshake_id)
            if recorded is None:
                raise
            return self._handshake_answer(recorded)

    def _handshake_answer(self, state: HandshakeState) -> dict[str, Any]:
        """The answer a recorded handshake was given (for a repeated call with the same key)."""
        if state.rejected is not None:
            return {
                "accepted": False,
                "handshake_id": state.handshake_id,
                "execution_id": state.execution_id,
                "code": state.rejected.code,
                "reason": state.rejected.reason,
                "replica_id": state.rejected.replica_id,
            }
        accepted = state.accepted
        assert accepted is not None
        return {
            "accepted": True,
            "handshake_id": state.handshake_id,
            "execution_id": state.execution_id,
            "estimate": msgspec.to_builtins(accepted.estimate),
            "replica_id": accepted.replica_id,
            "lease_ms": accepted.lease_ms,
        }

    async def _new_handshake(
        self, body: dict[str, Any], caller: Caller, execution_id: str, handshake_id: str
    ) -> dict[str, Any]:
        async with self._reserve:
            # Reservation and its record happen under one lock, so concurrent handshakes on this
            # replica never overshoot its capacity.
            if len(self._open) >= self.limits.capacity:
                await self._refresh_capacity()
            decision = handlers.decide_handshake(
                body,
                execution_id=execution_id,
                handshake_id=handshake_id,
                worker_id=caller.label,
                replica_id=self.replica_id,
                limits=self.limits,
                open_jobs=len(self._open),
                default_validation=self.default_validation,
            )
            kind = handlers.ACCEPTED if isinstance(decision, ev.GranulatorHandshakeAccepted) else handlers.REJECTED
            await self._append(
                None,
                [(kind, decision)],
                handshake_id=handshake_id,
                execution_id=decision.execution_id,
                tenant=caller.tenant,
            )
            if isinstance(decision, ev.GranulatorHandshakeAccepted):
                self._open[handshake_id] = (decision.execution_id, self.clock() + decision.lease_ms / 1000)
                self._publish_gauge()
        if isinstance(decision, ev.GranulatorHandshakeRejected):
            m.HANDSHAKES.labels(decision.code).inc()
            return {
                "accepted": False,
                "handshake_id": handshake_id,
                "execution_id": decision.execution_id,
                "code": decision.code,
                "reason": decision.reason,
                "replica_id": self.replica_id,
            }
        m.HANDSHAKES.labels("accepted").inc()
        return {
            "accepted": True,
            "handshake_id": handshake_id,
            "execution_id": decision.execution_id,
            "estimate": msgspec.to_builtins(decision.estimate),
            "replica_id": self.replica_id,
            "lease_ms": decision.lease_ms,
        }

    # -- process ------------------------------------------------------------------------------

    async def process(self, body: Any, *, caller: Caller) -> dict[str, Any]:
        """Generate the structure of an accepted handshake, once; a repeated call returns the first result.

        Raises:
            UnknownHandshakeError: no such handshake for this execution and caller.
            UnknownReferenceError: ``data_ref`` lies outside the caller's tenant (nothing recorded).
            HandshakeConflictError: rejected, closed without a result, or being processed elsewhere.
            GranulatorError: the job failed (its code says how; ``retryable`` whether to try again).
        """
        request: ProcessRequest = (
            decode_request(body, ProcessRequest)
            if isinstance(body, dict)
            else decode_request(body or b"", ProcessRequest)
        )
        state = await self._state_for(request.handshake_id, request.execution_id, caller)
        previous = self._settled(state)
        if previous is not None:
            return previous
        await self._check_reference(request.data_ref, caller)
        running = self._inflight.get(state.handshake_id)
        if running is not None:
            return await asyncio.shield(running)
        if state.status == "processing":
            raise HandshakeConflictError(
                f"handshake {state.handshake_id} is being processed by another replica; ask again later",
                retryable=True,
            )
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._inflight[state.handshake_id] = future
        try:
            started = ev.GranulatorProgressed(
                handshake_id=state.handshake_id,
                execution_id=state.execution_id,
                replica_id=self.replica_id,
                step="started",
                percent=5,
                message=f"processing on {self.replica_id}",
            )
            try:
                await self._append(state, [(handlers.PROGRESSED, started)])
            except ConcurrencyError:
                # Another replica claimed it a moment ago: answer from what it recorded.
                state = await self._state_for(request.handshake_id, request.execution_id, caller)
                previous = self._settled(state)
                if previous is not None:
                    future.set_result(previous)
                    return previous
                raise HandshakeConflictError(
                    f"handshake {state.handshake_id} is being processed by another replica; ask again later",
                    retryable=True,
                ) from None
            result = await self._run(state, request)
            future.set_result(result)
            return result
        except BaseException as exc:
            if not future.done():
                future.set_exception(exc)
                # Nobody else may be waiting; retrieve the exception so asyncio does not warn.
                future.exception()
            raise
        finally:
            self._inflight.pop(state.handshake_id, None)

    async def _state_for(self, handshake_id: str, execution_id: str, caller: Caller) -> HandshakeState:
        state = await self._load(handshake_id)
        # Another tenant's or another worker's handshake is answered exactly as a missing one.
        if state is None or not caller.may_use(state):
            raise UnknownHandshakeError(f"no handshake {handshake_id!r}")
        if state.execution_id != execution_id:
            raise UnknownHandshakeError(f"handshake {handshake_id!r} does not belong to execution {execution_id!r}")
        return state

    def _settled(self, state: HandshakeState) -> dict[str, Any] | None:
        """The recorded outcome of a handshake that needs no (new) processing, else None."""
        if state.status == "rejected":
            assert state.rejected is not None
            raise HandshakeConflictError(
                f"handshake {state.handshake_id} was rejected ({state.rejected.code}): {state.rejected.reason}"
            )
        if state.completed is not None:
            return _result(state.completed, state)
        if state.status in ("acknowledged", "expired"):
            raise HandshakeConflictError(f"handshake {state.handshake_id} is {state.status}; start a new handshake")
        if state.status == "failed" and state.failed is not None and not state.failed.retryable:
            error = _ERRORS.get(state.failed.code, GranulatorError)(state.failed.message)
            raise error
        return None

    async def _run(self, state: HandshakeState, request: ProcessRequest) -> dict[str, Any]:
        accepted = state.accepted
        assert accepted is not None
        began = time.perf_counter()
        try:
            result = await asyncio.wait_for(
                self._generate_and_store(state, request), accepted.requirements.timeout_ms / 1000
            )
        except TimeoutError:
            await self._fail(
                state,
                JobTimeoutError(f"the job took longer than the granted {accepted.requirements.timeout_ms} ms"),
            )
            raise JobTimeoutError(
                f"the job took longer than the granted {accepted.requirements.timeout_ms} ms"
            ) from None
        except GranulatorError as exc:
            await self._fail(state, exc)
            raise
        finally:
            m.PROCESS_DURATION.observe(time.perf_counter() - began)
        return result

    async def _fail(self, state: HandshakeState, exc: GranulatorError) -> None:
        if isinstance(exc, GeneratorUnavailableError):
            m.GENERATOR_ERRORS.labels(self.generator.name, "unavailable").inc()
        elif isinstance(exc, GeneratorOutputError):
            m.GENERATOR_ERRORS.labels(self.generator.name, "invalid_output").inc()
        failed = ev.GranulatorFailed(
            handshake_id=state.handshake_id,
            execution_id=state.execution_id,
            replica_id=self.replica_id,
            code=exc.code,
            message=exc.message,
            retryable=exc.retryable,
        )
        try:
            await self._append(state, [(handlers.FAILED, failed)])
        except Exception:
            logger.exception("could not record the failure of handshake %s", state.handshake_id)

    async def describe(self, handshake_id: str, *, caller: Caller) -> dict[str, Any]:
        """``GET /api/handshakes/{id}``: the handshake's state and events, to its tenant and worker only.

        Raises:
            UnknownHandshakeError: no such handshake, or not the caller's.
        """
        events = await self.log.read_stream(handlers.stream_id(handshake_id))
        state = handlers.fold(events)
        if state is None or not caller.may_use(state):
            raise UnknownHandshakeError(f"no handshake {handshake_id!r}")
        return {
            "handshake_id": state.handshake_id,
            "execution_id": state.execution_id,
            "tenant": state.tenant,
            "worker_id": state.worker_id,
            "status": state.status,
            "replica_id": state.replica_id,
            "progress": state.progress,
            "validations": msgspec.to_builtins([normalise_result(v) for v in state.validations]),
            "events": [{"type": e.type, "time": e.time, "data": e.data} for e in events],
        }

    async def _check_reference(self, data_ref: Any, caller: Caller, field: str = "data_ref") -> None:
        """A ``raw://`` reference must lie in the caller's tenant namespace (an admin reads any); a
        ``kv://``/``r2://`` one names a key in the caller's namespace and must be stored there:
        another tenant's reference names nothing in it, and is answered as a missing one.

        Raises:
            InvalidRequestError: the reference names a key that is not acceptable.
            UnknownReferenceError: the key belongs to another tenant, or (a tier reference)
                nothing is stored in the caller's namespace under it.
            StorageUnavailableError: Raw could not be asked.
        """
        if is_tier_ref(data_ref):
            try:
                key = ref_key(data_ref, tenant=caller.tenant, policy=self.ref_policy)
                stored = await self.raw.exists(key)
            except RawKeyError as exc:
                raise InvalidRequestError(f"$.{field}: {exc}") from None
            except RawError as exc:
                raise StorageUnavailableError(f"$.{field}: Raw could not look up {data_ref}: {exc}") from None
            if not stored:
                raise UnknownReferenceError(f"$.{field}: no such reference {data_ref}")
            return
        if not is_ref(data_ref) or caller.is_admin:
            return
        try:
            owner = ref_tenant(data_ref)
        except RawKeyError as exc:
            raise InvalidRequestError(f"$.{field}: {exc}") from None
        if owner != caller.tenant:
            raise UnknownReferenceError(f"$.{field}: no such reference {data_ref}")

    async def _resolve_input(self, state: HandshakeState, data_ref: Any) -> GranulationInput:
        accepted = state.accepted
        assert accepted is not None
        fields = dict(accepted.input)
        if data_ref is None:
            pass
        elif isinstance(data_ref, dict):
            fields.update(data_ref)
        elif is_ref(data_ref):
            try:
                # A tier reference is read in the handshake's tenant namespace; a raw:// one was
                # checked against the caller already (an admin may name any key).
                tenant = state.tenant if is_tier_ref(data_ref) else None
                value = await resolve(self.raw, data_ref, tenant=tenant, policy=self.ref_policy)
            except RawKeyError as exc:
                raise InvalidRequestError(f"$.data_ref: {exc}") from None
            except RawNotFoundError:
                raise InputUnavailableError(f"$.data_ref: nothing is stored at {data_ref}") from None
            except RawError as exc:
                raise StorageUnavailableError(f"$.data_ref: Raw could not read {data_ref}: {exc}") from None
            except msgspec.DecodeError:
                raise InputUnavailableError(f"$.data_ref: {data_ref} does not hold JSON") from None
            if not isinstance(value, dict):
                raise InputUnavailableError(f"$.data_ref: {data_ref} holds a {type(value).__name__}, not a JSON object")
            fields.update(value)
        else:
            raise InvalidRequestError(
                f"$.data_ref: {data_ref!r} is neither a raw://, kv:// or r2:// reference nor an inline object"
            )
        fields.pop("validation", None)
        return normalise_input(decode_request(fields, GranulationInput))

    async def _generate_and_store(self, state: HandshakeState, request: ProcessRequest) -> dict[str, Any]:
        accepted = state.accepted
        assert accepted is not None
        began = time.perf_counter()
        inp = await self._resolve_input(state, request.data_ref)
        budget = accepted.estimate.attempts

        async def on_attempt(structure: Structure, validation: ValidationResult | None) -> None:
            attempt = validation.attempt if validation else 1
            progressed = ev.GranulatorProgressed(
                handshake_id=state.handshake_id,
                execution_id=state.execution_id,
                replica_id=self.replica_id,
                step="generated",
                percent=min(90, 10 + int(80 * attempt / budget)),
                message=f"attempt {attempt} ({structure.strategy}): {len(structure.sections)} sections",
            )
            items: list[tuple[str, msgspec.Struct]] = [(handlers.PROGRESSED, progressed)]
            if validation is not None:
                m.VALIDATION_ACCURACY.observe(validation.accuracy_percentage)
                if not validation.passed and attempt < budget:
                    m.VALIDATION_RETRIES.inc()
                items.append(
                    (
                        handlers.VALIDATED,
                        ev.GranulatorValidated(
                            handshake_id=state.handshake_id, execution_id=state.execution_id, result=validation
                        ),
                    )
                )
            await self._append(state, items)

        structure, validation, attempts = await run_with_validation(
            self.generator.outline,
            OutlineRequest(inp),
            accepted.validation,
            on_attempt=on_attempt,
            validator=self.validator,
        )
        encoded = _json.encode(structure)
        digest = hashlib.sha256(encoded).hexdigest()
        output: dict[str, Any] | None = None
        output_ref: str | None = None
        if len(encoded) < self.inline_limit:
            output = msgspec.json.decode(encoded)
            m.OUTPUTS.labels("inline").inc()
            m.OUTPUT_BYTES.labels("inline").inc(len(encoded))
        else:
            # In the tenant's namespace: only the tenant (or an admin) can read it back.
            try:
                if self.output_refs == "tiered":
                    # Past the inline limit already: kv:// up to the policy's kv limit, r2:// above.
                    stored = await put_ref(
                        self.raw,
                        msgspec.json.decode(encoded),
                        namespace="granulator",
                        name=f"{state.handshake_id}.json",
                        tenant=state.tenant,
                        policy=dataclasses.replace(self.ref_policy, inline_max=0),
                    )
                    output_ref = str(stored)
                else:
                    key = tenant_key(state.tenant, "granulator", f"{state.handshake_id}.json")
                    output_ref = await put_value(
                        self.raw, msgspec.json.decode(encoded), key=key, threshold=0, tenant=state.tenant
                    )
            except RawError as exc:
                raise StorageUnavailableError(f"Raw could not store the output: {exc}") from None
            m.OUTPUTS.labels("reference").inc()
            m.OUTPUT_BYTES.labels("reference").inc(len(encoded))
        completed = ev.GranulatorCompleted(
            handshake_id=state.handshake_id,
            execution_id=state.execution_id,
            replica_id=self.replica_id,
            output=output,
            output_ref=output_ref,
            size_bytes=len(encoded),
            sha256=digest,
            title=structure.title,
            sections=len(structure.sections),
            estimated_words=structure.estimated_words,
            attempts=attempts,
            generator=self.generator.name,
            validation=validation,
            duration_ms=round((time.perf_counter() - began) * 1000, 3),
        )
        await self._append(state, [(handlers.COMPLETED, completed)])
        return _result(completed, state)

    # -- acknowledge --------------------------------------------------------------------------

    async def acknowledge(self, body: Any, *, caller: Caller) -> dict[str, Any]:
        """Close a handshake and release its capacity; a repeated acknowledgement changes nothing."""
        request: AcknowledgeRequest = decode_request(body if body is not None else b"", AcknowledgeRequest)
        if request.status not in ACK_STATUSES:
            raise InvalidRequestError(f"$.status: use one of {', '.join(ACK_STATUSES)}, not {request.status!r}")
        await self._check_reference(request.output_ref, caller, "output_ref")
        for _ in range(5):
            state = await self._state_for(request.handshake_id, request.execution_id, caller)
            if state.status == "rejected":
                raise HandshakeConflictError(
                    f"handshake {state.handshake_id} was rejected; there is nothing to acknowledge"
                )
            if state.status == "acknowledged":
                self._release(state.handshake_id)
                assert state.acknowledged is not None
                return _ack_result(state, state.acknowledged, duplicate=True)
            acknowledged = ev.GranulatorAcknowledged(
                handshake_id=state.handshake_id,
                execution_id=state.execution_id,
                worker_id=caller.label,
                status=request.status,
                output_ref=request.output_ref,
            )
            try:
                await self._append(state, [(handlers.ACKNOWLEDGED, acknowledged)])
            except ConcurrencyError:
                continue  # a progress event or another acknowledgement landed first: look again
            self._release(state.handshake_id)
            return _ack_result(state, acknowledged, duplicate=False)
        raise HandshakeConflictError(
            f"handshake {request.handshake_id} keeps changing; acknowledge again", retryable=True
        )

    def _release(self, handshake_id: str) -> None:
        if self._open.pop(handshake_id, None) is not None:
            self._publish_gauge()

    # -- one-call granulation and text expansion -------------------------------------------

    async def granulate(self, body: Any, *, caller: Caller, execution_id: str = "") -> dict[str, Any]:
        """Handshake, process and acknowledge in one call (for a workflow ``task`` step).

        The body is a handshake's (``stage`` and ``requirements`` may be left out) plus an
        optional ``data_ref``. A rejection is returned as the handshake's answer.
        """
        if not isinstance(body, dict):
            raise InvalidRequestError("$: the granulate body must be a JSON object")
        handshake_body = {
            "stage": body.get("stage", "content_granulation"),
            "requirements": body.get("requirements", {"memory_mb": 256, "timeout_ms": 60_000}),
            **{k: v for k, v in body.items() if k not in ("stage", "requirements", "data_ref")},
        }
        if "input" not in handshake_body:
            handshake_body["input"] = {
                k: v for k, v in body.items() if k in ("topic", "structure_type", "depth", "sources", "audience")
            }
        await self._check_reference(body.get("data_ref"), caller)
        answer = await self.handshake(handshake_body, caller=caller, execution_id=execution_id)
        if not answer["accepted"]:
            return answer
        process = {
            "execution_id": answer["execution_id"],
            "handshake_id": answer["handshake_id"],
            "data_ref": body.get("data_ref"),
        }
        try:
            result = await self.process(process, caller=caller)
        except GranulatorError as exc:
            await self.acknowledge(
                {"execution_id": answer["execution_id"], "handshake_id": answer["handshake_id"], "status": "failed"},
                caller=caller,
            )
            raise exc from None
        await self.acknowledge(
            {
                "execution_id": answer["execution_id"],
                "handshake_id": answer["handshake_id"],
                "status": "completed",
                "output_ref": result.get("output_ref"),
            },
            caller=caller,
        )
        return {"accepted": True, **result}

    async def expand(self, body: Any) -> dict[str, Any]:
        """``POST /generate``: expand a text with the configured generator."""
        request: ExpandRequest = decode_request(body if body is not None else b"", ExpandRequest)
        try:
            result = await self.generator.expand(request)
        except GeneratorUnavailableError:
            m.GENERATOR_ERRORS.labels(self.generator.name, "unavailable").inc()
            raise
        except GeneratorOutputError:
            m.GENERATOR_ERRORS.labels(self.generator.name, "invalid_output").inc()
            raise
        answer: dict[str, Any] = msgspec.to_builtins(result)
        return answer


def _result(completed: ev.GranulatorCompleted, state: HandshakeState) -> dict[str, Any]:
    return {
        "execution_id": completed.execution_id,
        "handshake_id": completed.handshake_id,
        "status": "completed",
        "output": completed.output,
        "output_ref": completed.output_ref,
        "size_bytes": completed.size_bytes,
        "sha256": completed.sha256,
        "title": completed.title,
        "sections": completed.sections,
        "estimated_words": completed.estimated_words,
        "attempts": completed.attempts,
        "generator": completed.generator,
        "validation": msgspec.to_builtins(normalise_result(completed.validation)) if completed.validation else None,
        "duration_ms": completed.duration_ms,
        "replica_id": completed.replica_id,
    }


def _ack_result(state: HandshakeState, ack: ev.GranulatorAcknowledged, *, duplicate: bool) -> dict[str, Any]:
    return {
        "execution_id": state.execution_id,
        "handshake_id": state.handshake_id,
        "status": "acknowledged",
        "reported_status": ack.status,
        "already_acknowledged": duplicate,
    }
