"""The job API client: seed 000's flow (schema, initiate, upload, payload, execute, monitor, results)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp

from nexus.client._payload import PayloadError, PayloadField, build_instance, schema_from_json
from nexus.client._session import ServiceSession
from nexus.client._sse import parse_sse

FINAL_STATUSES: Final = ("COMPLETED", "FAILED")
"""Job statuses after which nothing changes; before them the status is ``IN PROGRESS``."""


class JobApiError(Exception):
    """The job API answered with an error, or could not be reached.

    Attributes:
        status: HTTP status (0 when no answer came).
        body: The decoded error body, when there was one.
    """

    def __init__(self, message: str, *, status: int = 0, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


@dataclass(frozen=True)
class TriggerResult:
    """The outcome of one ``trigger`` (seed 000: ``{success, jobId}`` or ``{success: false, error}``)."""

    success: bool
    job_id: str | None = None
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        if self.success:
            return {"success": True, "jobId": self.job_id}
        out: dict[str, Any] = {"success": False, "error": self.error}
        if self.job_id:
            out["jobId"] = self.job_id
        return out


@dataclass(frozen=True)
class BatchResult:
    """All-settled outcome of a batch: every item has a result, failures do not stop the others."""

    total: int
    successful: int
    failed: int
    results: list[TriggerResult] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "successful": self.successful,
            "failed": self.failed,
            "results": [r.as_json() for r in self.results],
        }


FileLike = bytes | bytearray | Path


class JobClient(ServiceSession):
    """A client of the workflow service's job API.

    Args:
        base_url: The workflow service, e.g. ``http://127.0.0.1:8082``.
        service_key: The API key sent as ``x-service-key`` (never on presigned uploads).
        session: An aiohttp session to reuse; one is created (and closed by ``close``) otherwise.
        poll_interval: Seconds between status polls when SSE is unavailable (seed 000: 5).
        timeout: Longest wait for a job in ``monitor`` (seed 000: 5 minutes).
        request_timeout: Bound on each HTTP request.

    Example::

        async with JobClient(url, key) as client:
            outcome = await client.trigger("anomaly_review", anomaly, mapping={...})
            final = await client.monitor(outcome.job_id)
    """

    def __init__(
        self,
        base_url: str,
        service_key: str,
        *,
        session: aiohttp.ClientSession | None = None,
        poll_interval: float = 5.0,
        timeout: float = 300.0,
        request_timeout: float = 30.0,
    ) -> None:
        super().__init__(base_url, service_key, session=session)
        self.poll_interval = poll_interval
        self.timeout = timeout
        self._request_timeout = aiohttp.ClientTimeout(total=request_timeout)

    @property
    def _headers(self) -> dict[str, str]:
        return {"x-service-key": self._key, "Content-Type": "application/json"}

    async def _call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        url = f"{self.base_url}{path}"
        try:
            async with self._http().request(
                method, url, json=body, headers=self._headers, timeout=self._request_timeout
            ) as resp:
                text = await resp.text()
                try:
                    data = json.loads(text) if text else None
                except json.JSONDecodeError:
                    data = text
                if resp.status >= 400:
                    message = data.get("error") or data.get("message") if isinstance(data, dict) else text
                    raise JobApiError(f"{method} {path}: {resp.status} {message}", status=resp.status, body=data)
                if not isinstance(data, dict):
                    raise JobApiError(
                        f"{method} {path}: the answer is not a JSON object", status=resp.status, body=data
                    )
                return data
        except aiohttp.ClientError as exc:
            raise JobApiError(f"{method} {path}: {exc}") from exc

    # Step 1 ----------------------------------------------------------------------------------
    async def get_schema(self, workflow_id: str) -> dict[str, PayloadField]:
        """``GET /workflow/{workflowId}``: the typed fields of the workflow's job payload."""
        doc = await self._call("GET", f"/workflow/{workflow_id}")
        return schema_from_json(doc["jobPayloadSchema"])

    # Step 2 ----------------------------------------------------------------------------------
    async def initiate(self, workflow_id: str, title: str = "", description: str = "") -> str:
        """``POST /job/initiate``: a new job's ``jobExecutionId``."""
        doc = await self._call(
            "POST", "/job/initiate", {"workflowId": workflow_id, "title": title, "description": description}
        )
        return str(doc["jobExecutionId"])

    # Steps 3 and 4 ---------------------------------------------------------------------------
    async def upload_file(self, data: FileLike, extension: str | None = None, *, job_id: str | None = None) -> str:
        """Get a presigned URL, ``PUT`` the file to it (no key sent) and return the file's URL.

        Args:
            data: The file's bytes, or a path to read.
            extension: The file extension; taken from the path when omitted.
            job_id: The job the file belongs to (recorded with the upload).
        """
        if isinstance(data, Path):
            extension = extension or data.suffix.lstrip(".") or "bin"
            data = data.read_bytes()
        body: dict[str, Any] = {"fileExtension": extension or "bin"}
        if job_id:
            body["jobExecutionId"] = job_id
        grant = await self._call("POST", "/job/file/upload", body)
        try:
            async with self._http().put(
                grant["presignedUrl"],
                data=bytes(data),
                headers={"Content-Type": "application/octet-stream"},
                timeout=self._request_timeout,
            ) as resp:
                if resp.status >= 400:
                    text = await resp.text()
                    raise JobApiError(f"PUT presigned URL: {resp.status} {text}", status=resp.status)
                stored = await resp.json()
        except aiohttp.ClientError as exc:
            raise JobApiError(f"PUT presigned URL: {exc}") from exc
        return str(stored.get("fileUrl") or grant["fileUrl"])

    # Step 5 ----------------------------------------------------------------------------------
    async def build_payload(
        self,
        schema: Mapping[str, PayloadField],
        record: Mapping[str, Any],
        mapping: Mapping[str, str] | None = None,
        *,
        job_id: str | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Map a record to a ``jobPayloadSchemaInstance``, uploading files first.

        Values of ``file`` fields that are bytes or paths are uploaded and replaced by their
        URL; so are the items of ``array_files`` fields. Other values are converted to the
        field's type (see ``build_instance``).
        """
        mapping = dict(mapping or {})
        prepared = dict(record)
        for name, fld in schema.items():
            key = mapping.get(name, name)
            if key not in prepared or fld.type not in ("file", "array_files"):
                continue
            value = prepared[key]
            if fld.type == "file" and isinstance(value, (bytes, bytearray, Path)):
                prepared[key] = await self.upload_file(value, job_id=job_id)
            elif fld.type == "array_files" and isinstance(value, (list, tuple)):
                prepared[key] = [
                    await self.upload_file(item, job_id=job_id) if isinstance(item, (bytes, bytearray, Path)) else item
                    for item in value
                ]
        return build_instance(schema, prepared, mapping)

    # Step 6 ----------------------------------------------------------------------------------
    async def execute(self, job_id: str, instance: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /job/execute``: ``{success, message}``; a typing mismatch raises JobApiError (400)."""
        return await self._call(
            "POST", "/job/execute", {"jobExecutionId": job_id, "jobPayloadSchemaInstance": dict(instance)}
        )

    # Step 7 ----------------------------------------------------------------------------------
    async def status(self, job_id: str) -> dict[str, Any]:
        """``GET /job/{id}/status``: ``{"status": "IN PROGRESS" | "COMPLETED" | "FAILED", …}``."""
        return await self._call("GET", f"/job/{job_id}/status")

    async def stream(self, job_id: str) -> AsyncIterator[dict[str, Any]]:
        """The updates of ``GET /job/{id}/monitor`` (Server-Sent Events) until a final status."""
        url = f"{self.base_url}/job/{job_id}/monitor"
        headers = {"x-service-key": self._key, "Accept": "text/event-stream"}
        timeout = aiohttp.ClientTimeout(total=self.timeout, sock_connect=self._request_timeout.total)
        async with self._http().get(url, headers=headers, timeout=timeout) as resp:
            if resp.status != 200 or not resp.content_type.startswith("text/event-stream"):
                raise JobApiError(f"GET /job/{job_id}/monitor: {resp.status} {resp.content_type}", status=resp.status)
            async for update in parse_sse(resp.content):
                data = json.loads(update["data"]) if update.get("data") else {}
                yield data
                if data.get("status") in FINAL_STATUSES:
                    return

    async def monitor(
        self,
        job_id: str,
        *,
        on_update: Callable[[dict[str, Any]], Awaitable[None] | None] | None = None,
        use_sse: bool = True,
    ) -> dict[str, Any]:
        """Wait for a final status: SSE first, polling ``/status`` if SSE fails or breaks off.

        Returns:
            The last update (status ``COMPLETED`` or ``FAILED``).

        Raises:
            JobApiError: no final status within ``timeout`` (status 0, message says so).
        """
        deadline = time.monotonic() + self.timeout
        if use_sse:
            try:
                async for update in self.stream(job_id):
                    await _notify(on_update, update)
                    if update.get("status") in FINAL_STATUSES:
                        return update
            except (TimeoutError, JobApiError, aiohttp.ClientError, json.JSONDecodeError) as exc:
                if isinstance(exc, JobApiError) and exc.status in (401, 403, 404):
                    raise
                # The stream broke off or is not offered: the status endpoint tells the same story.
        while True:
            update = await self.status(job_id)
            await _notify(on_update, update)
            if update.get("status") in FINAL_STATUSES:
                return update
            if time.monotonic() + self.poll_interval > deadline:
                raise JobApiError(f"job {job_id} did not finish within {self.timeout:g} s")
            await asyncio.sleep(self.poll_interval)

    # Steps 8 and 9 ---------------------------------------------------------------------------
    async def results(self, job_id: str) -> dict[str, Any]:
        """``GET /job/{id}/results``: ``{results, data}``."""
        return await self._call("GET", f"/job/{job_id}/results")

    async def audit(self, job_id: str) -> dict[str, Any]:
        """``GET /job/{id}/audit``: ``{auditTrail}`` read from the event log."""
        return await self._call("GET", f"/job/{job_id}/audit")

    # The whole flow --------------------------------------------------------------------------
    async def trigger(
        self,
        workflow_id: str,
        record: Mapping[str, Any],
        *,
        mapping: Mapping[str, str] | None = None,
        title: str | None = None,
        description: str | None = None,
        schema: Mapping[str, PayloadField] | None = None,
    ) -> TriggerResult:
        """Seed 000's ``triggerOpusWorkflow``: schema, initiate, upload, build, execute.

        Never raises for an API or payload error: the failure comes back as
        ``TriggerResult(success=False, error=…)``, as the seed's error handling flow returns it.
        """
        job_id: str | None = None
        try:
            fields = schema if schema is not None else await self.get_schema(workflow_id)
            job_id = await self.initiate(
                workflow_id,
                title if title is not None else str(record.get("title", "")),
                description if description is not None else str(record.get("description", "")),
            )
            instance = await self.build_payload(fields, record, mapping, job_id=job_id)
            await self.execute(job_id, instance)
        except (JobApiError, PayloadError) as exc:
            return TriggerResult(success=False, job_id=job_id, error=str(exc))
        return TriggerResult(success=True, job_id=job_id)

    async def batch_trigger(
        self,
        workflow_id: str,
        records: Sequence[Mapping[str, Any]],
        *,
        mapping: Mapping[str, str] | None = None,
        concurrency: int = 8,
    ) -> BatchResult:
        """Seed 000's ``batchTriggerOpusWorkflows``: every record is tried (all-settled)."""
        schema = await self.get_schema(workflow_id)
        gate = asyncio.Semaphore(max(1, concurrency))

        async def one(record: Mapping[str, Any]) -> TriggerResult:
            async with gate:
                return await self.trigger(workflow_id, record, mapping=mapping, schema=schema)

        settled = await asyncio.gather(*(one(r) for r in records), return_exceptions=True)
        results = [
            s if isinstance(s, TriggerResult) else TriggerResult(success=False, error=f"{type(s).__name__}: {s}")
            for s in settled
        ]
        ok = sum(1 for r in results if r.success)
        return BatchResult(total=len(results), successful=ok, failed=len(results) - ok, results=results)

    async def execute_batch(self, workflow_id: str, jobs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """``POST /job/batch``: the server initiates and executes each job (all-settled).

        Each job is ``{"title", "description", "jobPayloadSchemaInstance"}``.
        """
        return await self._call("POST", "/job/batch", {"workflowId": workflow_id, "jobs": list(jobs)})


async def _notify(callback: Callable[[dict[str, Any]], Awaitable[None] | None] | None, update: dict[str, Any]) -> None:
    if callback is None:
        return
    result = callback(update)
    if asyncio.iscoroutine(result):
        await result
