"""Anomalies become jobs (seed 000): by API, by upload, or in real time from an external event.

Seed 000's flow starts with "Anomaly Detected (Upload/Real-time/API)" and ends with a job of its
API. Each of the three ways in runs the seed's steps 1-6 on the platform's side and answers (or
records) a ``jobExecutionId`` that ``/job/{id}/status|results|audit|monitor`` serve like any job:

- **API**: ``POST /anomalies`` with a JSON body ``{"anomaly": {...}, "workflowId"?, "mapping"?}``
  (or the anomaly's own fields at the top level). Its ``files`` are upload ids or file URLs from
  ``POST /job/file/upload`` (the presigned path, seed 000's steps 3-4; the caller's own uploads
  only) or other http(s) URLs, passed as they are.
- **Upload**: the same route with ``multipart/form-data``: a part ``anomaly`` (the JSON above),
  and one part per file; each file goes through the presigned upload's records (``upload-<id>``,
  the tenant's Raw namespace, a signed file URL) before the job runs.
- **Real time**: an external CloudEvent published on ``nexus.ext.<source>.anomaly_detected``
  (``NEXUS_ANOMALY_EVENTS`` names the event tokens), its data the same JSON as the API's body.
  The service follows the log as the triggers do, so an anomaly published while it was down
  becomes a job when it is back; the job id is derived from the event's, so a redelivered or
  replayed event makes one job.

Which workflow: the anomaly's ``workflowId``, else ``NEXUS_ANOMALY_WORKFLOW``; neither is a 400
(by API) or a logged, counted refusal (real time). Whose: the caller's tenant (API key or
session), or for an external event the tenant its source is bound to (``nexus keys create
--producer``); an unbound source's anomalies are the platform's.

The payload is built by ``map_anomaly`` (seed 000's step 5), a pure and deterministic function
documented below. Every anomaly is counted in ``nexus_workflow_anomalies_total{via, outcome}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import math
import re
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import msgspec
from aiohttp import BodyPartReader, web
from prometheus_client import Counter

from nexus.auth import AUTH, KeyInfo
from nexus.client import PayloadError, PayloadField, check_instance, is_date
from nexus.proto import PLATFORM_TENANT, CloudEvent
from nexus.replay import tail
from nexus.runtime import Service
from nexus.services.workflow.context import WorkflowContext
from nexus.services.workflow.jobapi import JOB_API, JobApi, SeedError, fail, load_job, read_body, seed_error
from nexus.services.workflow.uploads import UPLOADS, UploadError, Uploads

__all__ = [
    "ANOMALIES",
    "FILE_LIMIT",
    "SEVERITY_SCALE",
    "SOURCES",
    "AnomalyIntake",
    "Submission",
    "install",
    "job_id_for_event",
    "map_anomaly",
    "submission",
]

logger = logging.getLogger("nexus.workflow.anomalies")

ANOMALIES = Counter(
    "nexus_workflow_anomalies",
    "Anomalies received, by way in (api, upload, realtime) and outcome (job, refused).",
    ["via", "outcome"],
)

SEVERITY_SCALE: Final[Mapping[str, float]] = {"low": 0.25, "medium": 0.5, "high": 0.75, "critical": 1.0}
"""How a severity word becomes a float field's value (case and surrounding blanks ignored)."""

SOURCES: Final[Mapping[str, tuple[str, ...]]] = {
    "str": ("title", "description"),
    "float": ("confidence", "severity"),
    "bool": ("verified",),
    "date": ("timestamp",),
    "array": ("modalities", "tags"),
}
"""Seed 000's step 5: the anomaly's keys each job type draws from, in order."""

FILE_LIMIT = 20
"""The most files one anomaly may carry."""

_FILES = "files"
_NAMESPACE = uuid.UUID("0f2a6d1e-7c4b-4e59-9a3d-5b8e1c7f2a90")
_UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")
_FILE_URL = re.compile(r"/job/file/([0-9a-f]{32})\.[A-Za-z0-9]{1,16}$")


# --- step 5: the mapping -----------------------------------------------------------------------


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:37] + "...")
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return "a number too large" if isinstance(value, int) and abs(value) > 10**30 else repr(value)
    return "an object" if isinstance(value, dict) else "an array" if isinstance(value, list) else type(value).__name__


def _float(value: Any) -> float | str:
    """A finite float from a number, a numeric string or a severity word; else why not."""
    if isinstance(value, str):
        word = value.strip().lower()
        if word in SEVERITY_SCALE:
            return SEVERITY_SCALE[word]
        try:
            number = float(word)
        except ValueError:
            return f"{_describe(value)} is not a number or a severity ({', '.join(SEVERITY_SCALE)})"
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            return f"{_describe(value)} does not fit a float"
    else:
        return f"{_describe(value)} is not a number"
    return number if math.isfinite(number) else f"{_describe(value)} is not a finite number"


def _date(value: Any) -> str | None:
    """An RFC 3339 date-time from a date string or Unix seconds; None when it is neither."""
    if isinstance(value, str):
        return value if is_date(value) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            moment = dt.datetime.fromtimestamp(float(value), tz=dt.UTC)
        except (OverflowError, OSError, ValueError):
            return None
        return moment.isoformat().replace("+00:00", "Z")
    return None


def convert(kind: str, value: Any) -> tuple[Any, str | None]:
    """(value of job type ``kind``, None) or (None, why the anomaly's ``value`` cannot be one).

    ``str`` takes strings and numbers; ``float`` numbers, numeric strings and severity words
    (``SEVERITY_SCALE``); ``bool`` booleans and ``"true"``/``"false"``; ``date`` RFC 3339 strings
    and Unix seconds; ``object`` objects; ``array`` arrays (a string is a one-item array).
    """
    if kind == "str":
        if isinstance(value, str):
            return value, None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not isinstance(_float(value), str):
            return str(value), None
        return None, f"{_describe(value)} is not a string"
    if kind == "float":
        number = _float(value)
        return (None, number) if isinstance(number, str) else (number, None)
    if kind == "bool":
        if isinstance(value, bool):
            return value, None
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true", None
        return None, f"{_describe(value)} is not true or false"
    if kind == "date":
        date = _date(value)
        if date is None:
            return None, f"{_describe(value)} is not a date (RFC 3339 or Unix seconds)"
        return date, None
    if kind == "object":
        return (value, None) if isinstance(value, dict) else (None, f"{_describe(value)} is not an object")
    if kind == "array":
        if isinstance(value, list):
            return value, None
        return ([value], None) if isinstance(value, str) else (None, f"{_describe(value)} is not an array")
    return None, f"{kind} fields take the anomaly's files, not its other values"


def map_anomaly(
    anomaly: Any,
    schema: Mapping[str, PayloadField],
    *,
    files: Sequence[str] = (),
    mapping: Any = None,
) -> dict[str, dict[str, Any]]:
    """Build a workflow's ``jobPayloadSchemaInstance`` from an anomaly (seed 000's step 5).

    Deterministic: the same anomaly, schema, files and mapping give the same instance. Each
    field of ``schema`` (in its order) takes the first of:

    1. ``mapping[field]``: the anomaly's key the caller named for it;
    2. the anomaly's key of the same name (not for file fields, nor the key ``files``);
    3. by its type, seed 000's step 5: ``str`` takes ``title`` then ``description``; ``float``
       ``confidence`` then ``severity`` (``low`` 0.25, ``medium`` 0.5, ``high`` 0.75,
       ``critical`` 1.0); ``bool`` ``verified``; ``date`` ``timestamp``; ``array``
       ``modalities`` then ``tags``; each key used once, by the first field that can take it.
       ``object`` fields take the full metadata (the anomaly without its files); ``file``
       fields the uploaded file URLs one by one, in order; ``array_files`` fields all of them.

    A field nothing fills is left out, unless it is required. Values are converted to the
    field's type (``convert``); a value that cannot be is a problem, never silently dropped.

    Args:
        anomaly: The anomaly (a JSON object).
        schema: The workflow's jobPayloadSchema.
        files: The anomaly's file URLs (uploaded through the presigned path).
        mapping: Payload field → the anomaly's key, for what the rules above do not guess.

    Returns:
        An instance that ``check_instance(schema, …)`` accepts.

    Raises:
        PayloadError: every problem, each naming the payload field (or ``anomaly`` / ``mapping``);
            answered as a 400. Nothing else is raised, whatever the input.
    """
    if not isinstance(anomaly, Mapping):
        raise PayloadError([("anomaly", f"expected a JSON object, got {_describe(anomaly)}")])
    problems: list[tuple[str, str]] = []
    named: dict[str, str] = {}
    if mapping is not None and not isinstance(mapping, Mapping):
        problems.append(("mapping", "expected an object of payload field → the anomaly's key"))
    for field_name, key in (mapping or {}).items() if isinstance(mapping, Mapping) else ():
        field = schema.get(field_name)
        if field is None:
            problems.append(("mapping", f"{field_name!r} is not a field of the jobPayloadSchema ({', '.join(schema)})"))
        elif field.type in ("file", "array_files"):
            problems.append((field_name, f"a {field.type} field takes the anomaly's files; it cannot be mapped"))
        elif not isinstance(key, str):
            problems.append((field_name, f"mapped to {_describe(key)}: name one of the anomaly's keys"))
        else:
            named[field_name] = key
    instance: dict[str, dict[str, Any]] = {}
    used: set[str] = set()
    pending: list[PayloadField] = []
    for field in schema.values():
        key = named.get(field.name)
        if key is None and field.type not in ("file", "array_files") and field.name != _FILES:
            key = field.name if field.name in anomaly else None
        if key is None:
            pending.append(field)
            continue
        used.add(key)
        if anomaly.get(key) is None:
            if field.required:
                problems.append((field.name, f"required {field.type} field: the anomaly's {key!r} is missing"))
            continue
        converted, why = convert(field.type, anomaly[key])
        if why is not None:
            problems.append((field.name, f"{field.type} from the anomaly's {key!r}: {why}"))
        else:
            instance[field.name] = {"value": converted, "type": field.type}
    metadata = {k: v for k, v in anomaly.items() if k != _FILES}
    queues = {kind: [k for k in keys if k not in used and anomaly.get(k) is not None] for kind, keys in SOURCES.items()}
    unused_files = list(files)
    for field in pending:
        value: Any = None
        if field.type == "object":
            value = metadata
        elif field.type == "array_files":
            value = list(files) if files else None
        elif field.type == "file":
            value = unused_files.pop(0) if unused_files else None
        elif queues.get(field.type):
            key = queues[field.type].pop(0)
            value, why = convert(field.type, anomaly[key])
            if why is not None:
                problems.append((field.name, f"{field.type} from the anomaly's {key!r}: {why}"))
                continue
        if value is None:
            if field.required:
                takes = {"file": "a file", "array_files": "files"}.get(field.type) or " or ".join(
                    repr(k) for k in SOURCES.get(field.type, ())
                )
                problems.append((field.name, f"required {field.type} field: the anomaly has no {takes} for it"))
            continue
        instance[field.name] = {"value": value, "type": field.type}
    if problems:
        raise PayloadError(problems)
    check_instance(schema, instance)  # the contract: an instance the job API accepts, or a PayloadError
    return instance


# --- what arrives ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Submission:
    """An anomaly as it arrives, whatever the way in."""

    anomaly: dict[str, Any]
    workflow_id: str | None
    mapping: Any


def submission(body: Any) -> Submission:
    """Read ``{"anomaly": {...}, "workflowId"?, "mapping"?}``, or an anomaly whose own fields are
    at the top level (``workflowId`` and ``mapping`` taken out of it).

    Raises:
        PayloadError: the body is not an object, or ``anomaly`` or ``workflowId`` has a wrong type.
    """
    if not isinstance(body, Mapping):
        raise PayloadError([("anomaly", f"expected a JSON object, got {_describe(body)}")])
    workflow_id = body.get("workflowId")
    if workflow_id is not None and (not isinstance(workflow_id, str) or not workflow_id.strip()):
        raise PayloadError([("workflowId", "must be a non-empty string naming the workflow to run")])
    if "anomaly" in body:
        anomaly = body["anomaly"]
        if not isinstance(anomaly, dict):
            raise PayloadError([("anomaly", f"expected a JSON object, got {_describe(anomaly)}")])
    else:
        anomaly = {k: v for k, v in body.items() if k not in ("workflowId", "mapping")}
    return Submission(anomaly=dict(anomaly), workflow_id=workflow_id, mapping=body.get("mapping"))


def job_id_for_event(event_id: str) -> str:
    """The job an external event's anomaly becomes: one per stored event, whatever the replica."""
    return str(uuid.uuid5(_NAMESPACE, event_id))


def _title(anomaly: Mapping[str, Any]) -> tuple[str, str]:
    title, description = anomaly.get("title"), anomaly.get("description")
    if not isinstance(title, str) or not title.strip():
        ident = anomaly.get("id")
        title = f"anomaly {ident}" if isinstance(ident, (str, int)) and not isinstance(ident, bool) else "anomaly"
    return title[:200], (description if isinstance(description, str) else "")[:2000]


# --- the intake --------------------------------------------------------------------------------


class AnomalyIntake:
    """Turns anomalies into jobs of the seed-000 API.

    Args:
        ctx: The workflow service's context.
        jobs: The job API (initiates and executes the jobs).
        uploads: The upload routes (files of an anomaly), or None when uploads are not installed.
    """

    def __init__(self, ctx: WorkflowContext, jobs: JobApi, uploads: Uploads | None) -> None:
        self.ctx = ctx
        self.jobs = jobs
        self.uploads = uploads
        self.events = frozenset(ctx.settings.anomaly_events)

    def _workflow(self, given: str | None) -> str:
        workflow_id = given or self.ctx.settings.anomaly_workflow
        if not workflow_id:
            raise fail(400, "workflowId is required: this platform sets no default workflow (NEXUS_ANOMALY_WORKFLOW)")
        return workflow_id

    async def _file_urls(self, refs: Any, tenant: str) -> list[str]:
        """The file URLs of the anomaly's ``files``: uploads of ``tenant`` (ids or file URLs of
        this service) become their signed file URLs; other http(s) URLs stay as they are.

        Raises:
            web.HTTPException: 400 for a malformed list, 404 for an upload that is not the tenant's
                or not uploaded yet.
        """
        if refs is None:
            return []
        if not isinstance(refs, list) or len(refs) > FILE_LIMIT:
            raise fail(400, f"files must be an array of at most {FILE_LIMIT} upload ids or file URLs")
        urls = []
        for i, ref in enumerate(refs):
            if not isinstance(ref, str):
                raise fail(400, f"files[{i}] must be an uploadId or a fileUrl from POST /job/file/upload")
            parts = urlsplit(ref)
            found = _FILE_URL.search(parts.path) if parts.scheme in ("http", "https") else None
            upload_id = ref if _UPLOAD_ID.match(ref) else found.group(1) if found else None
            if upload_id is None:
                if parts.scheme in ("http", "https") and parts.netloc:
                    urls.append(ref)
                    continue
                raise fail(400, f"files[{i}] must be an uploadId or a fileUrl from POST /job/file/upload, or a URL")
            done = await self.uploads.completed(upload_id, tenant) if self.uploads is not None else None
            if done is None:
                raise fail(404, f"files[{i}]: no uploaded file {upload_id!r} (upload it to its presigned URL first)")
            urls.append(done.file_url)
        return urls

    async def submit(self, caller: KeyInfo, sub: Submission) -> dict[str, Any]:
        """Map ``sub`` onto its workflow's payload and start the job; the answer's body."""
        workflow_id = self._workflow(sub.workflow_id)
        schema = self.jobs.payload_schema(workflow_id, caller.tenant)
        files = await self._file_urls(sub.anomaly.get(_FILES), caller.tenant)
        instance = _mapped(sub, schema, files)
        title, description = _title(sub.anomaly)
        job, execution_id = await self.jobs.start_job(caller, workflow_id, title, description, instance)
        return _answer(job.job_id, workflow_id, execution_id, instance)

    async def api(self, request: web.Request) -> web.Response:
        """An anomaly becomes a job of its workflow (202 with its ``jobExecutionId``, the mapped
        ``jobPayloadSchemaInstance`` and the monitor's URL). JSON: ``{"anomaly", "workflowId"?,
        "mapping"?}``, ``anomaly.files`` naming uploads from ``POST /job/file/upload``; or
        ``multipart/form-data`` with a part ``anomaly`` (that JSON) and one part per file. Each
        type of payload field takes the anomaly's values as seed 000's step 5 says
        (``map_anomaly``); what does not fit is a 400 naming the field, before any job exists."""
        if request.content_type.startswith("multipart/"):
            return await self.upload(request)
        try:
            body = await read_body(request)
            answer = await self.submit(request[AUTH], _submission(body))
        except web.HTTPException:
            ANOMALIES.labels("api", "refused").inc()
            raise
        ANOMALIES.labels("api", "job").inc()
        return web.json_response(answer, status=202)

    async def upload(self, request: web.Request) -> web.Response:
        """The upload way in: a multipart body of the anomaly (part ``anomaly``) and its files."""
        caller: KeyInfo = request[AUTH]
        try:
            body, parts = await _read_multipart(request, self._max_file_bytes())
            sub = _submission(body)
            workflow_id = self._workflow(sub.workflow_id)
            schema = self.jobs.payload_schema(workflow_id, caller.tenant)
            refs = await self._file_urls(sub.anomaly.get(_FILES), caller.tenant)
            if len(refs) + len(parts) > FILE_LIMIT:
                raise fail(400, f"an anomaly carries at most {FILE_LIMIT} files")
            if parts and self.uploads is None:
                raise fail(503, "file uploads are not set up on this service")
            # Checked before anything is recorded: the URLs the files will get are of the same type.
            placeholders = [f"https://files.invalid/{i}" for i in range(len(parts))]
            _mapped(sub, schema, [*refs, *placeholders])
            title, description = _title(sub.anomaly)
            job_id = await self.jobs.initiate_job(caller, workflow_id, title, description)
            urls = list(refs)
            for part in parts:
                assert self.uploads is not None
                try:
                    stored = await self.uploads.store(
                        request, caller.tenant, job_id, part.extension, part.data, part.content_type
                    )
                except UploadError as exc:
                    raise fail(exc.status, str(exc)) from None
                urls.append(stored.file_url)
            instance = _mapped(sub, schema, urls)
            job = await load_job(self.ctx.log, job_id)
            assert job is not None  # initiated above
            execution_id = await self.jobs.execute_job(job, instance)
        except web.HTTPException:
            ANOMALIES.labels("upload", "refused").inc()
            raise
        ANOMALIES.labels("upload", "job").inc()
        return web.json_response(_answer(job.job_id, workflow_id, execution_id, instance), status=202)

    def _max_file_bytes(self) -> int:
        return self.uploads.presigner.max_bytes if self.uploads is not None else 0

    async def on_event(self, event: CloudEvent) -> str | None:
        """The real-time way in: an external event of an anomaly becomes a job (once); its id."""
        stream = event.streamid or ""
        if not stream.startswith("ext-") or (event.extevent or "") not in self.events:
            return None
        tenant = event.tenant or PLATFORM_TENANT
        caller = KeyInfo(key_id=f"producer:{stream.removeprefix('ext-')}", kind="client", owner=tenant)
        job_id = job_id_for_event(event.id)
        made = await load_job(self.ctx.log, job_id)
        if made is not None and made.execution_id is not None:
            return job_id  # made already: a redelivery, a replay, another replica
        try:
            sub = _submission(event.data)
            workflow_id = self._workflow(sub.workflow_id)
            schema = self.jobs.payload_schema(workflow_id, tenant)
            files = await self._file_urls(sub.anomaly.get(_FILES), tenant)
            instance = _mapped(sub, schema, files)
            title, description = _title(sub.anomaly)
            await self.jobs.start_job(
                caller, workflow_id, title, description, instance, job_id=job_id, causation_id=event.id
            )
        except web.HTTPException as exc:
            ANOMALIES.labels("realtime", "refused").inc()
            logger.warning(
                "the anomaly of external event %s (%s, tenant %s) did not become a job: %s",
                event.id,
                stream,
                tenant,
                _reason(exc),
            )
            return None
        ANOMALIES.labels("realtime", "job").inc()
        return job_id


def _submission(body: Any) -> Submission:
    try:
        return submission(body)
    except PayloadError as exc:
        raise fail(400, str(exc), problems=exc.as_json()["problems"]) from None


def _mapped(sub: Submission, schema: Mapping[str, PayloadField], files: Sequence[str]) -> dict[str, dict[str, Any]]:
    try:
        return map_anomaly(sub.anomaly, schema, files=files, mapping=sub.mapping)
    except PayloadError as exc:
        message = f"the anomaly does not fit the workflow's jobPayloadSchema: {exc}"
        raise fail(400, message, problems=exc.as_json()["problems"]) from None


def _answer(job_id: str, workflow_id: str, execution_id: str, instance: dict[str, Any]) -> dict[str, Any]:
    return {
        "success": True,
        "jobExecutionId": job_id,
        "workflowId": workflow_id,
        "executionId": execution_id,
        "jobPayloadSchemaInstance": instance,
        "statusUrl": f"/job/{job_id}/status",
        "monitorUrl": f"/api/opus/job/{job_id}/monitor",
    }


def _reason(exc: web.HTTPException) -> str:
    try:
        return str(json.loads(exc.text or "{}").get("error") or exc.reason)
    except ValueError:
        return exc.reason


@dataclass(frozen=True)
class _FilePart:
    extension: str
    data: bytes
    content_type: str


async def _read_multipart(request: web.Request, max_file_bytes: int) -> tuple[Any, list[_FilePart]]:
    """The ``anomaly`` part (JSON; ``workflowId`` and ``mapping`` parts may come beside it) and
    the file parts (any part with a file name), each at most ``max_file_bytes``.

    Raises:
        web.HTTPException: 400 for a malformed body or a missing ``anomaly``, 413 for a file too large.
    """
    body: dict[str, Any] = {}
    files: list[_FilePart] = []
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise fail(400, "nested multipart bodies are not accepted")
            if part.filename is not None:
                if len(files) >= FILE_LIMIT:
                    raise fail(400, f"an anomaly carries at most {FILE_LIMIT} files")
                data = await _read_part(part, max_file_bytes)
                extension = part.filename.rpartition(".")[2] if "." in part.filename else "bin"
                content_type = part.headers.get("Content-Type", "application/octet-stream")
                files.append(_FilePart(extension=extension, data=data, content_type=content_type))
                continue
            text = (await _read_part(part, 1024 * 1024)).decode()
            if part.name == "anomaly" or part.name == "mapping":
                body[part.name] = json.loads(text)
            elif part.name == "workflowId":
                body["workflowId"] = text
            else:
                raise fail(400, f"unknown part {part.name!r}: send 'anomaly' (JSON), 'workflowId', 'mapping' and files")
    except (ValueError, AssertionError, LookupError, RuntimeError) as exc:
        raise fail(400, f"the multipart body could not be read: {exc}") from None
    if "anomaly" not in body:
        raise fail(400, "the multipart body needs a part 'anomaly' holding the anomaly as JSON")
    return body, files


async def _read_part(part: BodyPartReader, limit: int) -> bytes:
    chunks, size = [], 0
    while chunk := await part.read_chunk(64 * 1024):
        size += len(chunk)
        if size > limit:
            what = part.filename or part.name
            raise fail(413, f"part {what!r} is larger than {limit} bytes", max_bytes=limit, size=size)
        chunks.append(chunk)
    return b"".join(chunks)


class AnomalyBody(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /anomalies`` (JSON; or multipart/form-data with the same as part ``anomaly`` and
    one part per file)."""

    anomaly: dict[str, Any]
    """The anomaly: title, description, severity, confidence, location, timestamp, modalities,
    tags, verified, and ``files`` (upload ids or file URLs from ``POST /job/file/upload``)."""
    workflowId: str | None = None
    """The workflow to run; default ``NEXUS_ANOMALY_WORKFLOW``."""
    mapping: dict[str, str] | None = None
    """Payload field → the anomaly's key, where the step-5 rules do not guess it."""


class AnomalyJob(msgspec.Struct, frozen=True, kw_only=True):
    """The job an anomaly became."""

    success: bool
    jobExecutionId: str
    workflowId: str
    executionId: str
    jobPayloadSchemaInstance: dict[str, Any]
    """What the anomaly was mapped to (seed 000's step 5)."""
    statusUrl: str
    monitorUrl: str


def install(service: Service, ctx: WorkflowContext) -> None:
    """Add ``POST /anomalies`` and follow the log for external anomalies (needs the job API)."""
    if JOB_API not in service.app:
        raise RuntimeError("anomalies need the job API (jobapi.install) installed first")
    jobs = service.app[JOB_API]
    intake = AnomalyIntake(ctx, jobs, service.app.get(UPLOADS))

    service.route(
        "POST",
        "/anomalies",
        summary="An anomaly (JSON, or multipart with its files) becomes a job of its workflow",
        request=AnomalyBody,
        response=AnomalyJob,
        status=202,
        responses={
            400: "No workflow named or set, or the anomaly does not fit its jobPayloadSchema",
            404: "No such workflow, or a file that is not the caller's upload",
            413: "A file over the upload limit",
        },
        tags=["jobs (seed 000)"],
        auth="client",
        error_shape=seed_error,
        error_model=SeedError,
    )(intake.api)

    async def follow(app: web.Application) -> AsyncIterator[None]:
        if not intake.events:
            yield
            return

        # Every replica follows the log from its start (an anomaly published while the service
        # was down is not lost); the job id derived from the event's makes each one job.
        async def offer(event: CloudEvent) -> None:
            await intake.on_event(event)

        task = asyncio.create_task(tail(ctx.log, offer, name="anomalies"), name="workflow-anomalies")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    service.app.cleanup_ctx.append(follow)
