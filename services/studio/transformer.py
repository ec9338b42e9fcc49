"""Seed 004's delta transformer: a provider run's output becomes changes on its blob, exactly once.

When an execution the studio started for a provider (``state.runs``) completes, its output is
read for three fields (seed 004, "Delta Generation from Workflow Output"):

- ``delta_operations``: RFC 6902 operations; a path under ``/metadata`` changes the blob's
  metadata (``/metadata/status``), any other path its JSON content;
- ``transformed_content``: the blob's new content whole (a ``transform`` of ``/content``): a
  string for text blobs, any JSON value for JSON blobs;
- ``created_blobs``: each a new blob derived from this one (``create_derived``): an object
  ``{content, content_type?, metadata?}`` or a bare value (the content); its ``parent_id`` is
  the source blob and its ``origin`` the run.

The changes to the blob are one new version (reason ``delta``, origin = the run); then the
derived blobs are created; then ``DeltaApplied`` is appended to ``run_stream(execution_id)``.
An output with none of the three changes nothing (``DeltaApplied`` with no version records that
the run was looked at). Operations that do not apply change nothing either; the
``DeltaApplied`` says why (``error``).

Exactly once, whoever applies and however often: the completion may be delivered twice, two
replicas may apply at once, the studio may be killed half-way. So every step is found again
rather than redone: the blob's version made by the run is recognised by its ``origin`` (and
written with the version the applier read as ``expected_version``: of two appliers one wins,
the other catches up and finds it), the derived blobs have ids derived from the execution (a
second create answers the first blob), and ``DeltaApplied`` has a derived id and is appended at
the run stream's version. At start, every run not yet applied is looked at again (an execution
that completed while the studio was down, or an apply cut short).

``POST /providers/rollback`` undoes what a run did, by events (a version restoring the content
and metadata from before the run's first write, the blobs it created deleted, then
``StudioRunRolledBack``); ``POST /deltas/generate`` answers the changes outputs would make,
writing nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import msgspec
from aiohttp import web

from nexus.auth import AUTH, KeyInfo
from nexus.eventlog import ConcurrencyError, DuplicateEventError
from nexus.proto import CloudEvent, new_event
from nexus.proto.events.studio import BlobOrigin, DeltaApplied, StudioRunRolledBack
from nexus.runtime import HTTPError, KeyedWork, json_response, read_json
from nexus.services.studio.blobs import BlobConflict, BlobError, BlobGone, Blobs
from nexus.services.studio.content import ContentError, decode_json, kind_of
from nexus.services.studio.context import StudioContext
from nexus.services.studio.deltas import PatchError, apply_json_patch
from nexus.services.studio.state import (
    DELTA_APPLIED,
    RUN_ROLLED_BACK,
    RUN_STARTED,
    Blob,
    Run,
    run_stream,
)
from nexus.services.studio.triggers import WRITTEN_BY_EXECUTION, effective_origin, stable_id

__all__ = [
    "COMPLETED",
    "Changes",
    "Transformer",
    "changes_of",
    "install",
]

logger = logging.getLogger("nexus.studio.transformer")

COMPLETED = "nexus.workflow.execution.completed"
EXECUTION_STREAM = "execution-"
"""The workflow service's stream of one execution is ``execution-<id>``."""

GENERATE_WAIT_SECONDS = 20.0
"""How long ``POST /deltas/generate`` waits for the runs it is asked about to be applied."""

MAX_OPERATIONS = 1000
MAX_CREATED = 50
_WORKERS = 4
_ROUNDS = 5
_RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)


@dataclass
class Changes:
    """What an output asks of its blob (``changes_of``)."""

    content_operations: list[Any] = field(default_factory=list)
    metadata_operations: list[Any] = field(default_factory=list)
    transformed: bool = False
    transformed_content: Any = None
    created: list[dict[str, Any]] = field(default_factory=list)
    problem: str = ""

    @property
    def changes_blob(self) -> bool:
        return bool(self.content_operations or self.metadata_operations or self.transformed)

    @property
    def operations(self) -> int:
        return len(self.content_operations) + len(self.metadata_operations) + int(self.transformed) + len(self.created)


def changes_of(output: Any) -> Changes:
    """The changes a workflow output asks for (see the module); ``problem`` says what is malformed."""
    changes = Changes()
    if not isinstance(output, Mapping):
        return changes
    operations = output.get("delta_operations")
    if operations is not None:
        if not isinstance(operations, list) or len(operations) > MAX_OPERATIONS:
            changes.problem = f"delta_operations must be a list of at most {MAX_OPERATIONS} RFC 6902 operations"
            return changes
        for index, operation in enumerate(operations):
            path = operation.get("path") if isinstance(operation, Mapping) else None
            if not isinstance(path, str):
                changes.problem = f"delta_operations[{index}] is not an operation with a string path"
                return changes
            if path == "/metadata" or path.startswith("/metadata/"):
                moved = dict(operation)
                moved["path"] = path.removeprefix("/metadata")
                source = moved.get("from")
                if isinstance(source, str) and source.startswith("/metadata"):
                    moved["from"] = source.removeprefix("/metadata")
                changes.metadata_operations.append(moved)
            else:
                changes.content_operations.append(dict(operation))
    if "transformed_content" in output and output["transformed_content"] is not None:
        changes.transformed = True
        changes.transformed_content = output["transformed_content"]
    created = output.get("created_blobs")
    if created is not None:
        if not isinstance(created, list) or len(created) > MAX_CREATED:
            changes.problem = f"created_blobs must be a list of at most {MAX_CREATED} blobs"
            return changes
        for item in created:
            if isinstance(item, Mapping) and "content" in item:
                changes.created.append(
                    {
                        "content": item["content"],
                        "content_type": item.get("content_type"),
                        "metadata": item.get("metadata") if isinstance(item.get("metadata"), Mapping) else {},
                    }
                )
            else:
                changes.created.append({"content": item, "content_type": None, "metadata": {}})
    return changes


def _content_type_for(value: Any, given: Any) -> str:
    if isinstance(given, str) and given:
        return given
    return "text/plain" if isinstance(value, str) else "application/json"


class _NotApplicable(Exception):
    """The output's changes do not apply to the blob (the message says why)."""


async def new_version(blobs: Blobs, blob: Blob, changes: Changes) -> tuple[Any, str, dict[str, Any], list[Any] | None]:
    """The content, content type and metadata the changes make of the blob's current version, and
    the operations to record as the delta (when they are the whole change to JSON content).

    Raises:
        _NotApplicable: an operation fails, or content operations meet content that is not JSON.
    """
    data, current = await blobs.read(blob.blob_id)
    content_type = current.content_type
    kind = kind_of(content_type)
    content: Any
    try:
        content = decode_json(data) if kind == "json" else data
    except ContentError as exc:
        raise _NotApplicable(str(exc)) from None
    recorded: list[Any] | None = None
    if changes.content_operations:
        if kind != "json":
            raise _NotApplicable(f"the blob holds {content_type}; operations on its content need JSON")
        try:
            content = apply_json_patch(content, changes.content_operations)
        except PatchError as exc:
            raise _NotApplicable(f"delta_operations: {exc}") from None
        recorded = changes.content_operations
    metadata = dict(current.metadata)
    if changes.metadata_operations:
        try:
            patched = apply_json_patch(metadata, changes.metadata_operations)
        except PatchError as exc:
            raise _NotApplicable(f"delta_operations on /metadata: {exc}") from None
        if not isinstance(patched, dict):
            raise _NotApplicable("delta_operations on /metadata must leave an object")
        metadata = patched
    if changes.transformed:
        value = changes.transformed_content
        recorded = None
        if kind == "json":
            content = value
        elif kind == "text" and isinstance(value, str):
            content = value
        elif isinstance(value, str):
            content, content_type = value, "text/plain"
        else:
            content, content_type = value, "application/json"
    if recorded is not None and kind == "json":
        return content, content_type, metadata, recorded if not changes.metadata_operations else None
    return content, content_type, metadata, None


class Transformer:
    """Applies the outputs of the studio's runs to their blobs, once each; see the module."""

    def __init__(self, ctx: StudioContext) -> None:
        self.ctx = ctx
        self.blobs = Blobs(ctx)
        self._work = KeyedWork(
            self.settle,
            name="studio-transformer",
            what="applying the output of execution",
            workers=_WORKERS,
            retry_seconds=_RETRY_SECONDS,
        )

    def observe(self, event: CloudEvent) -> None:
        """Follower of the fold: a run's execution completed, or a run was recorded (its execution
        may have completed before the run's start was folded)."""
        if event.type == COMPLETED:
            data = event.data if isinstance(event.data, Mapping) else {}
            execution_id = str(data.get("execution_id") or (event.streamid or "").removeprefix(EXECUTION_STREAM))
        elif event.type == RUN_STARTED:
            data = event.data if isinstance(event.data, Mapping) else {}
            execution_id = str(data.get("execution_id") or "")
        else:
            return
        run = self.ctx.state.runs.get(execution_id)
        if run is not None and not run.applied:
            self.check(execution_id)

    def check(self, execution_id: str) -> None:
        """Queue ``execution_id`` to be applied (once, however often it is asked)."""
        self._work.check(execution_id)

    async def run(self) -> None:
        """Look at every run not yet applied, then apply queued runs until cancelled."""
        for run in list(self.ctx.state.runs.values()):
            if not run.applied and not run.rolled_back:
                self.check(run.execution_id)
        await self._work.run()

    async def settle(self, execution_id: str) -> bool:
        """Apply the output of run ``execution_id`` if its execution completed and nobody applied
        it yet; True when this call recorded it."""
        ctx = self.ctx
        for _ in range(_ROUNDS):
            run = ctx.state.runs.get(execution_id)
            if run is None or run.applied or run.rolled_back:
                return False
            events = await ctx.service.log.read_stream(EXECUTION_STREAM + execution_id)
            end = next((e for e in reversed(events) if e.type == COMPLETED), None)
            if end is None:
                return False
            if events and events[0].tenant not in (None, ctx.state.tenant_of_blob(run.blob_id)):
                logger.error(
                    "execution %s is not owned by the owner of blob %s; not applied", execution_id, run.blob_id
                )
                return False
            output = end.data.get("output") if isinstance(end.data, Mapping) else None
            try:
                return await self._apply(run, changes_of(output))
            except BlobConflict:
                # Another writer changed the blob meanwhile (another replica applying this very
                # run, perhaps): catch up and look again; every step is found, not redone.
                await ctx.fold.caught_up(await ctx.service.log.head())
        raise RuntimeError(f"the blob of run {execution_id} is written too often to apply its output")

    async def _apply(self, run: Run, changes: Changes) -> bool:
        ctx = self.ctx
        blob = ctx.state.blobs.get(run.blob_id)
        if blob is None:
            return False
        origin = BlobOrigin(provider_id=run.provider_id, workflow_id=run.workflow_id, execution_id=run.execution_id)
        by = f"run:{run.execution_id}"
        version: int | None = None
        problem = changes.problem
        if not problem and changes.changes_blob:
            made = next(
                (
                    v
                    for v in blob.versions
                    if v.origin is not None and v.origin.execution_id == run.execution_id and v.reason == "delta"
                ),
                None,
            )
            if made is not None:
                version = made.version
            elif blob.deleted:
                problem = f"blob {blob.blob_id} was deleted before the output could be applied"
            else:
                try:
                    content, content_type, metadata, recorded = await new_version(self.blobs, blob, changes)
                    step = "transformed_content" if changes.transformed else "delta_operations"
                    written = await self.blobs.update(
                        blob.blob_id,
                        by,
                        content,
                        content_type,
                        metadata,
                        expected_version=blob.version,
                        origin=msgspec.structs.replace(origin, step=step),
                        reason="delta",
                        operations=recorded,
                    )
                    version = written.version
                except _NotApplicable as exc:
                    problem = str(exc)
                except BlobGone:
                    problem = f"blob {blob.blob_id} was deleted before the output could be applied"
                except BlobConflict:
                    raise
                except BlobError as exc:
                    if exc.status >= 500:
                        raise
                    problem = exc.message
        created: list[str] = []
        if not changes.problem:
            for index, spec in enumerate(changes.created):
                blob_id = stable_id(run.execution_id, "created", str(index))
                try:
                    await self.blobs.create(
                        blob.owner,
                        by,
                        spec["content"],
                        _content_type_for(spec["content"], spec["content_type"]),
                        spec["metadata"],
                        parent_id=blob.blob_id,
                        origin=msgspec.structs.replace(origin, step=f"created_blobs[{index}]"),
                        blob_id=blob_id,
                    )
                    created.append(blob_id)
                except BlobError as exc:
                    if exc.status >= 500:
                        raise
                    problem = problem or f"created_blobs[{index}]: {exc.message}"
        applied = new_event(
            DELTA_APPLIED,
            DeltaApplied(
                blob_id=blob.blob_id,
                execution_id=run.execution_id,
                provider_id=run.provider_id,
                workflow_id=run.workflow_id,
                version=version,
                created_blobs=created,
                operations=changes.operations,
                error=problem,
            ),
            source=ctx.source,
            id=stable_id(run.execution_id, "applied"),
            subject=blob.blob_id,
            correlationid=blob.blob_id,
            tenant=blob.owner,
        )
        stream = run_stream(run.execution_id)
        recorded = await ctx.service.log.read_stream(stream)
        if any(e.type in (DELTA_APPLIED, RUN_ROLLED_BACK) for e in recorded):
            await ctx.fold.caught_up(max((e.position or 0) for e in recorded))
            return False
        try:
            await ctx.fold.append(stream, [applied], expected_version=len(recorded))
        except (ConcurrencyError, DuplicateEventError):
            await ctx.fold.caught_up(await ctx.service.log.head())
            return False
        return True

    # -- rollback ---------------------------------------------------------------------------------

    async def rollback(self, blob: Blob, execution_id: str, info: KeyInfo) -> StudioRunRolledBack:
        """Undo what ``execution_id`` did to ``blob``: the writes of that run (or of the runs that
        execution asked for, and its own writes through its steps), by events."""
        ctx = self.ctx
        state = ctx.state
        related = {execution_id} | {r.execution_id for r in state.runs.values() if r.requested_by == execution_id}
        by = ctx.actor(info)

        def made_by_related(origin: BlobOrigin | None, by: str) -> bool:
            found = effective_origin(state, origin, by)
            if found is not None:
                return found.execution_id in related
            return by.startswith(WRITTEN_BY_EXECUTION) and by.removeprefix(WRITTEN_BY_EXECUTION) in related

        first = next((v for v in blob.versions[1:] if made_by_related(v.origin, v.by)), None)
        restored: int | None = None
        if first is not None and not blob.deleted:
            already = (
                blob.current.reason == "rollback"
                and blob.current.origin is not None
                and blob.current.origin.execution_id == execution_id
            )
            if already:
                restored = first.version - 1
            else:
                data, before = await self.blobs.read(blob.blob_id, first.version - 1)
                await self.blobs.update(
                    blob.blob_id,
                    by,
                    data,
                    before.content_type,
                    before.metadata,
                    origin=BlobOrigin(
                        provider_id=first.origin.provider_id if first.origin else "",
                        workflow_id=first.origin.workflow_id if first.origin else "",
                        execution_id=execution_id,
                        step="rollback",
                    ),
                    reason="rollback",
                )
                restored = first.version - 1
        deleted = []
        for other in list(state.blobs.values()):
            made_here = made_by_related(other.origin, other.created_by)
            if made_here and other.owner == blob.owner and not other.deleted:
                await self.blobs.delete(other.blob_id, by)
                deleted.append(other.blob_id)
        for run_id in sorted(related):
            run = state.runs.get(run_id)
            for created in run.created_blobs if run is not None else []:
                if created not in deleted and created in state.blobs and not state.blobs[created].deleted:
                    await self.blobs.delete(created, by)
                    deleted.append(created)
        record = StudioRunRolledBack(
            execution_id=execution_id, blob_id=blob.blob_id, restored_version=restored, deleted_blobs=deleted
        )
        for run_id in sorted(related):
            event = new_event(
                RUN_ROLLED_BACK,
                msgspec.structs.replace(record, execution_id=run_id),
                source=ctx.source,
                id=stable_id(run_id, "rolled_back", execution_id),
                subject=blob.blob_id,
                tenant=blob.owner,
            )
            try:
                await ctx.fold.append(run_stream(run_id), [event])
            except DuplicateEventError:
                pass
        return record


# -- the routes ---------------------------------------------------------------------------------


class RollbackBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /providers/rollback``: undo what execution ``execution_id`` did to blob ``blob_id``."""

    blob_id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    execution_id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class GenerateBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /deltas/generate``: the changes ``provider_outputs`` would make to blob ``blob_id``.

    ``provider_outputs``: one workflow output, a list of them, or what ``POST /providers/trigger``
    answered (``{executions: [...]}``: the changes those runs made once applied, waiting up to
    ``GENERATE_WAIT_SECONDS`` for them, and the blobs their steps created); null: none."""

    blob_id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    provider_outputs: Any = None


class GeneratedDelta(msgspec.Struct, frozen=True, kw_only=True):
    """One change: ``json-patch`` of ``/content`` or ``/metadata``, a ``transform`` of ``/content``,
    or a ``create_derived``; ``execution_id`` when a run made it."""

    type: str
    path: str
    operations: list[Any] = []
    value: Any = None
    execution_id: str | None = None
    version: int | None = None


class Generated(msgspec.Struct, frozen=True, kw_only=True):
    """The deltas and the blobs created (ids once a run created them; else what would be created)."""

    blob_id: str
    deltas: list[GeneratedDelta]
    created_blobs: list[Any]
    pending: list[str] = []
    """Runs named whose output is not applied yet."""
    problems: list[str] = []


def _preview(changes: Changes) -> tuple[list[GeneratedDelta], list[Any]]:
    deltas = []
    if changes.content_operations:
        deltas.append(GeneratedDelta(type="json-patch", path="/content", operations=changes.content_operations))
    if changes.metadata_operations:
        deltas.append(GeneratedDelta(type="json-patch", path="/metadata", operations=changes.metadata_operations))
    if changes.transformed:
        deltas.append(GeneratedDelta(type="transform", path="/content", value=changes.transformed_content))
    created = []
    for spec in changes.created:
        deltas.append(GeneratedDelta(type="create_derived", path="/derived", value=spec))
        created.append(spec)
    return deltas, created


def generate(ctx: StudioContext, blob: Blob, outputs: Any) -> Generated:
    """``POST /deltas/generate``: see ``GenerateBody``."""
    items: Sequence[Any]
    if outputs is None:
        items = []
    elif isinstance(outputs, list):
        items = outputs[:MAX_CREATED]
    else:
        items = [outputs]
    deltas: list[GeneratedDelta] = []
    created: list[Any] = []
    pending: list[str] = []
    problems: list[str] = []
    for item in items:
        executions = item.get("executions") if isinstance(item, Mapping) else None
        if isinstance(executions, list):
            for entry in executions[:MAX_CREATED]:
                execution_id = str(entry.get("execution_id") or "") if isinstance(entry, Mapping) else ""
                run = ctx.state.runs.get(execution_id)
                if run is None or run.blob_id != blob.blob_id:
                    problems.append(f"execution {execution_id!r} is no run of blob {blob.blob_id}")
                elif not run.applied:
                    pending.append(execution_id)
                else:
                    if run.applied_version is not None:
                        made = blob.versions[run.applied_version - 1]
                        for delta in made.deltas:
                            deltas.append(
                                GeneratedDelta(
                                    type=delta.kind,
                                    path="/content",
                                    operations=list(delta.operations),
                                    execution_id=execution_id,
                                    version=made.version,
                                )
                            )
                    by_steps = [
                        b.blob_id
                        for b in ctx.state.blobs.values()
                        if b.created_by == WRITTEN_BY_EXECUTION + execution_id and b.blob_id not in run.created_blobs
                    ]
                    for child in [*run.created_blobs, *by_steps]:
                        deltas.append(
                            GeneratedDelta(
                                type="create_derived",
                                path="/derived",
                                value={"blob_id": child},
                                execution_id=execution_id,
                            )
                        )
                        created.append(child)
            continue
        changes = changes_of(item)
        if changes.problem:
            problems.append(changes.problem)
            continue
        found, made_blobs = _preview(changes)
        deltas.extend(found)
        created.extend(made_blobs)
    return Generated(blob_id=blob.blob_id, deltas=deltas, created_blobs=created, pending=pending, problems=problems)


def _owned_blob(ctx: StudioContext, info: KeyInfo, blob_id: str) -> Blob:
    blob = ctx.state.blobs.get(blob_id)
    if blob is None or not (info.is_admin or blob.owner == info.tenant):
        raise HTTPError(404, f"no blob {blob_id!r}")
    return blob


def install(ctx: StudioContext) -> Transformer:
    """Follow the runs' completions; add ``/providers/rollback`` and ``/deltas/generate``."""
    transformer = Transformer(ctx)
    ctx.fold.on_event(transformer.observe, types=[COMPLETED])
    ctx.service.app[TRANSFORMER] = transformer

    @ctx.service.background
    async def apply_outputs(service: Any) -> None:
        await transformer.run()

    @ctx.service.route(
        "POST",
        "/providers/rollback",
        summary="Undo what an execution did to a blob: restore the version before it, delete the blobs it created",
        request=RollbackBody,
        response=StudioRunRolledBack,
        responses={
            400: "The body is not understood",
            404: "No such blob of the caller's",
            409: "The blob changed meanwhile",
        },
        tags=["providers"],
        auth="client",
    )
    async def rollback(request: web.Request) -> web.Response:
        info: KeyInfo = request[AUTH]
        body = await read_json(request, RollbackBody)
        blob = _owned_blob(ctx, info, body.blob_id)
        return json_response(await transformer.rollback(blob, body.execution_id, info))

    @ctx.service.route(
        "POST",
        "/deltas/generate",
        summary="The deltas workflow outputs would make of a blob, and the blobs they create (nothing is written)",
        request=GenerateBody,
        response=Generated,
        responses={400: "The body is not understood", 404: "No such blob of the caller's"},
        tags=["providers"],
        auth="client",
    )
    async def generate_deltas(request: web.Request) -> web.Response:
        info: KeyInfo = request[AUTH]
        body = await read_json(request, GenerateBody)
        blob = _owned_blob(ctx, info, body.blob_id)
        answer = generate(ctx, blob, body.provider_outputs)
        # Runs just triggered (the seed pipeline's previous step) are given a moment to end and be
        # applied, so the answer holds what they did; those still running are listed as pending.
        deadline = asyncio.get_running_loop().time() + GENERATE_WAIT_SECONDS
        while answer.pending and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
            if all(ctx.state.runs[e].applied or ctx.state.runs[e].rolled_back for e in answer.pending):
                answer = generate(ctx, blob, body.provider_outputs)
        return json_response(answer)

    return transformer


TRANSFORMER: web.AppKey[Transformer] = web.AppKey("studio_transformer", Transformer)
"""The studio's ``Transformer`` on its application (tests reach it)."""
