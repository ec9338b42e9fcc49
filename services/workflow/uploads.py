"""Presigned upload URLs for job files (seed 000, steps 3 and 4).

``POST /job/file/upload`` issues a URL that carries its own authority: an HMAC-SHA256 over the
upload id, file extension, size limit and expiry, under a signing key that is either configured
(``NEXUS_UPLOAD_SIGNING_KEY`` in the service's settings, shared by replicas) or drawn at random when the process starts.
``PUT`` to it needs no other credential; the body is stored in Raw and the use is recorded as an
event in stream ``upload-<id>``, appended at the stream's expected version, so a URL works once
even when two requests race. The file belongs to the client that asked for the URL: it is
stored in that client's Raw namespace (``t/<client>/uploads/…``), and a ``jobExecutionId``
given with the request must name one of the client's own jobs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

import msgspec
from aiohttp import web

from nexus.auth import AUTH, can_see
from nexus.eventlog import ConcurrencyError
from nexus.proto import PLATFORM_TENANT, CloudEvent, new_event
from nexus.proto.events.jobs import UploadCompleted, UploadIssued
from nexus.raw import RawBackend, tenant_key
from nexus.runtime import Service
from nexus.services.workflow.context import WorkflowContext
from nexus.services.workflow.jobapi import SeedError, base_url, load_job, read_body, seed_error

UPLOAD_STREAM_PREFIX = "upload-"
UNTRUSTED_CONTENT_HEADERS = {
    "Content-Security-Policy": "sandbox; default-src 'none'",
    "X-Content-Type-Options": "nosniff",
}
"""Headers on a file whose content type its uploader chose: opened in a browser it runs no
script and reads no cookie of the platform's origin."""
_EXTENSION = re.compile(r"^[A-Za-z0-9]{1,16}$")


class UploadError(Exception):
    """A presigned URL was refused; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def normalise_extension(extension: object) -> str:
    """``".PDF"`` → ``"pdf"``; refuses anything but 1–16 letters and digits.

    Raises:
        UploadError: 400 naming the bad extension.
    """
    if not isinstance(extension, str):
        raise UploadError(400, f"fileExtension must be a string such as 'pdf', got {type(extension).__name__}")
    ext = extension.strip().lstrip(".").lower()
    if not _EXTENSION.match(ext):
        raise UploadError(400, f"fileExtension {extension!r} must be 1-16 letters or digits, e.g. 'pdf'")
    return ext


def signing_key(configured: str) -> bytes:
    """The configured signing key (``WorkflowSettings.upload_signing_key``), else a random key for
    this process.

    A random key means a URL is only valid on the replica that issued it; configure the key when
    several replicas serve uploads.

    Raises:
        ValueError: the configured key is shorter than 32 characters.
    """
    if configured:
        if len(configured) < 32:
            raise ValueError("NEXUS_UPLOAD_SIGNING_KEY must be at least 32 characters (use a random value)")
        return configured.encode()
    return secrets.token_bytes(32)


@dataclass(frozen=True)
class UploadGrant:
    """What a presigned URL allows, as verified from its query."""

    upload_id: str
    extension: str
    max_bytes: int
    expires_at: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Presigner:
    """Signs and verifies upload (``put``) and download (``get``) capabilities.

    Args:
        key: HMAC key; never logged, never stored.
        ttl_seconds: How long an upload URL stays valid.
        max_bytes: The largest file an upload URL accepts.
        clock: Unix time source (tests move it forward).
    """

    def __init__(
        self,
        key: bytes,
        *,
        ttl_seconds: float = 900.0,
        max_bytes: int = 50 * 1024 * 1024,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if len(key) < 32:
            raise ValueError("the signing key must be at least 32 bytes")
        if ttl_seconds <= 0 or max_bytes <= 0:
            raise ValueError("ttl_seconds and max_bytes must be positive")
        self._key = key
        self.ttl_seconds = ttl_seconds
        self.max_bytes = max_bytes
        self._clock = clock or time.time

    def now(self) -> float:
        return self._clock()

    def _sign(self, purpose: str, *parts: object) -> str:
        message = "\n".join([purpose, *map(str, parts)]).encode()
        return _b64(hmac.new(self._key, message, hashlib.sha256).digest())

    def issue(self, extension: str, *, max_bytes: int | None = None) -> tuple[UploadGrant, dict[str, str]]:
        """A new grant and the query parameters of its URL (``exp``, ``max``, ``sig``)."""
        limit = self.max_bytes if max_bytes is None else min(max_bytes, self.max_bytes)
        grant = UploadGrant(
            upload_id=secrets.token_hex(16),
            extension=normalise_extension(extension),
            max_bytes=limit,
            expires_at=int(self.now() + self.ttl_seconds),
        )
        sig = self._sign("put", grant.upload_id, grant.extension, grant.max_bytes, grant.expires_at)
        return grant, {"exp": str(grant.expires_at), "max": str(grant.max_bytes), "sig": sig}

    def verify_put(self, upload_id: str, extension: str, query: Mapping[str, str]) -> UploadGrant:
        """The grant a PUT URL carries.

        Raises:
            UploadError: 403 for a missing or wrong signature (any part tampered with), 410 when
                the URL has expired.
        """
        try:
            expires_at = int(query["exp"])
            max_bytes = int(query["max"])
            sig = query["sig"]
        except (KeyError, ValueError):
            raise UploadError(403, "the upload URL is not a presigned URL (exp, max and sig are required)") from None
        expected = self._sign("put", upload_id, extension, max_bytes, expires_at)
        if not hmac.compare_digest(expected.encode(), sig.encode()):
            raise UploadError(403, "the upload URL's signature does not match (the URL was altered or not issued here)")
        if self.now() > expires_at:
            raise UploadError(410, "the upload URL has expired; ask for a new one with POST /job/file/upload")
        return UploadGrant(upload_id=upload_id, extension=extension, max_bytes=max_bytes, expires_at=expires_at)

    def file_signature(self, upload_id: str, extension: str) -> str:
        """Signature of the download URL that job payloads pass for an uploaded file."""
        return self._sign("get", upload_id, extension)

    def verify_get(self, upload_id: str, extension: str, sig: str) -> None:
        """Raises UploadError(403) unless ``sig`` is this file's download signature."""
        if not hmac.compare_digest(self.file_signature(upload_id, extension).encode(), (sig or "").encode()):
            raise UploadError(403, "the file URL's signature does not match")


# --- routes ------------------------------------------------------------------------------------

UPLOAD_ISSUED = "nexus.workflow.upload.issued"
UPLOAD_COMPLETED = "nexus.workflow.upload.completed"
RAW_PREFIX = "jobs/uploads/"


def upload_stream(upload_id: str) -> str:
    return f"{UPLOAD_STREAM_PREFIX}{upload_id}"


def _error(exc: UploadError) -> web.Response:
    return web.json_response({"success": False, "error": str(exc)}, status=exc.status)


class Uploads:
    """``POST /job/file/upload``, the presigned ``PUT``, and the signed file download."""

    def __init__(self, ctx: WorkflowContext, presigner: Presigner) -> None:
        self.ctx = ctx
        self.presigner = presigner

    def _raw(self) -> RawBackend:
        if self.ctx.raw is None:
            raise UploadError(503, "file uploads need Raw storage (NEXUS_RAW_URL), which is not configured")
        raw: RawBackend = self.ctx.raw
        return raw

    def _file_url(self, request: web.Request, upload_id: str, extension: str) -> str:
        """The capability URL a job payload passes for the file (signed, read-only)."""
        sig = urlencode({"sig": self.presigner.file_signature(upload_id, extension)})
        return f"{base_url(request, self.ctx.settings.public_url)}/job/file/{upload_id}.{extension}?{sig}"

    async def issue(self, request: web.Request) -> web.Response:
        body = await read_body(request)
        try:
            self._raw()
            requested = body.get("maxBytes")
            if requested is not None and (
                not isinstance(requested, int) or isinstance(requested, bool) or requested <= 0
            ):
                raise UploadError(400, "maxBytes must be a positive integer")
            grant, query = self.presigner.issue(body.get("fileExtension", ""), max_bytes=requested)
        except UploadError as exc:
            return _error(exc)
        info = request[AUTH]
        job_id = body.get("jobExecutionId") or ""
        if job_id:
            job = await load_job(self.ctx.log, str(job_id))
            if job is None or not can_see(info, job.owner or PLATFORM_TENANT):
                return _error(UploadError(404, f"no job with jobExecutionId {job_id!r}"))
        data = UploadIssued(
            upload_id=grant.upload_id,
            file_extension=grant.extension,
            max_bytes=grant.max_bytes,
            expires_at=grant.expires_at,
            job_id=str(job_id),
            tenant=info.tenant,
        )
        event = new_event(
            UPLOAD_ISSUED,
            data,
            source="nexus/workflow",
            subject=grant.upload_id,
            correlationid=str(job_id) or None,
            tenant=info.tenant,
        )
        await self.ctx.log.append(upload_stream(grant.upload_id), [event], expected_version=0)
        base = base_url(request, self.ctx.settings.public_url)
        presigned = f"{base}/job/file/upload/{grant.upload_id}.{grant.extension}?{urlencode(query)}"
        file_url = self._file_url(request, grant.upload_id, grant.extension)
        return web.json_response(
            {
                "success": True,
                "presignedUrl": presigned,
                "fileUrl": file_url,
                "uploadId": grant.upload_id,
                "expiresAt": grant.expires_at,
                "maxBytes": grant.max_bytes,
            }
        )

    async def put(self, request: web.Request) -> web.Response:
        try:
            upload_id, extension = _split(request.match_info["name"])
            grant = self.presigner.verify_put(upload_id, extension, request.query)
            events = await self.ctx.log.read_stream(upload_stream(upload_id))
            if not events:
                raise UploadError(403, "the upload URL was not issued here")
            if len(events) > 1:
                raise UploadError(410, "the upload URL was already used; ask for a new one")
            declared = request.content_length
            if declared is not None and declared > grant.max_bytes:
                raise UploadError(413, f"the file is {declared} bytes; this URL accepts at most {grant.max_bytes}")
            data = await _read_limited(request, grant.max_bytes)
            content_type = request.headers.get("Content-Type", "application/octet-stream")
            done = await self._complete(request, events[0], extension, data, content_type)
        except UploadError as exc:
            return _error(exc)
        return web.json_response({"success": True, "fileUrl": done.file_url, "size": done.size, "sha256": done.sha256})

    async def _complete(
        self, request: web.Request, issued_event: CloudEvent, extension: str, data: bytes, content_type: str
    ) -> UploadCompleted:
        """Store an issued upload's bytes in its client's Raw namespace and record the use.

        Raises:
            UploadError: 410 when the upload was completed already (of two racing uses only one
                is recorded).
        """
        issued = msgspec.convert(issued_event.data, UploadIssued)
        upload_id = issued.upload_id
        key = tenant_key(issued.tenant, f"{RAW_PREFIX}{upload_id}.{extension}")
        stat = await self._raw().store(key, data, content_type)
        done = UploadCompleted(
            upload_id=upload_id,
            raw_ref=f"raw://{key}",
            size=stat.size,
            sha256=stat.sha256,
            file_url=self._file_url(request, upload_id, extension),
            content_type=content_type,
        )
        event = new_event(
            UPLOAD_COMPLETED,
            done,
            source="nexus/workflow",
            subject=upload_id,
            causationid=issued_event.id,
            correlationid=issued_event.correlationid,
            tenant=issued.tenant,
        )
        try:
            # Appended at version 1: of two racing PUTs only one records the use.
            await self.ctx.log.append(upload_stream(upload_id), [event], expected_version=1)
        except ConcurrencyError:
            raise UploadError(410, "the upload URL was already used; ask for a new one") from None
        return done

    async def store(
        self, request: web.Request, tenant: str, job_id: str, extension: object, data: bytes, content_type: str
    ) -> UploadCompleted:
        """Upload a file the service received itself (an anomaly's multipart upload) through the
        same records as the presigned path: ``upload.issued`` then ``upload.completed`` in stream
        ``upload-<id>``, the bytes in the tenant's Raw namespace, the same signed file URL.

        Raises:
            UploadError: 400 for a bad extension, 413 for a file over the size limit, 503 without Raw.
        """
        self._raw()
        if len(data) > self.presigner.max_bytes:
            raise UploadError(413, f"the file is {len(data)} bytes; at most {self.presigner.max_bytes} are accepted")
        grant, _ = self.presigner.issue(normalise_extension(extension))
        issued = UploadIssued(
            upload_id=grant.upload_id,
            file_extension=grant.extension,
            max_bytes=grant.max_bytes,
            expires_at=grant.expires_at,
            job_id=job_id,
            tenant=tenant,
        )
        event = new_event(
            UPLOAD_ISSUED,
            issued,
            source="nexus/workflow",
            subject=grant.upload_id,
            correlationid=job_id or None,
            tenant=tenant,
        )
        [stored] = await self.ctx.log.append(upload_stream(grant.upload_id), [event], expected_version=0)
        return await self._complete(request, stored, grant.extension, data, content_type)

    async def completed(self, upload_id: str, tenant: str) -> UploadCompleted | None:
        """The completed upload ``upload_id`` of ``tenant``, or None (no such upload, not yet
        uploaded, or another tenant's: the caller cannot tell which)."""
        if not re.fullmatch(r"[0-9a-f]{32}", upload_id):
            return None
        events = await self.ctx.log.read_stream(upload_stream(upload_id))
        if not events or events[0].type != UPLOAD_ISSUED:
            return None
        issued = msgspec.convert(events[0].data, UploadIssued)
        if issued.tenant != tenant:
            return None
        done = next((e for e in events if e.type == UPLOAD_COMPLETED), None)
        return msgspec.convert(done.data, UploadCompleted) if done is not None else None

    async def download(self, request: web.Request) -> web.StreamResponse:
        try:
            upload_id, extension = _split(request.match_info["name"])
            self.presigner.verify_get(upload_id, extension, request.query.get("sig", ""))
            events = await self.ctx.log.read_stream(upload_stream(upload_id))
            done = next((e for e in events if e.type == UPLOAD_COMPLETED), None)
            if done is None:
                raise UploadError(404, "nothing was uploaded to this URL yet")
            info = msgspec.convert(done.data, UploadCompleted)
            data = await self._raw().retrieve(info.raw_ref.removeprefix("raw://"))
        except UploadError as exc:
            return _error(exc)
        # The uploader chose the content type: opened in a browser the file runs no script and
        # reads no cookie of this origin (an HTML upload is not a page of the platform).
        return web.Response(
            body=data, content_type=info.content_type.split(";")[0], headers=dict(UNTRUSTED_CONTENT_HEADERS)
        )


def _split(name: str) -> tuple[str, str]:
    upload_id, dot, extension = name.rpartition(".")
    if not dot or not re.fullmatch(r"[0-9a-f]{32}", upload_id) or not _EXTENSION.match(extension):
        raise UploadError(404, "not an upload URL")
    return upload_id, extension


async def _read_limited(request: web.Request, limit: int) -> bytes:
    """The body, refusing (413) as soon as it passes ``limit`` bytes, whatever Content-Length said."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise UploadError(413, f"the file is larger than the {limit} bytes this URL accepts")
        chunks.append(chunk)
    return b"".join(chunks)


PRESIGNER = web.AppKey("nexus.workflow.presigner", Presigner)
UPLOADS = web.AppKey("nexus.workflow.uploads", Uploads)
"""The upload routes' handler, for the modules that attach files themselves (anomalies)."""


class UploadRequest(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /job/file/upload``."""

    fileExtension: str
    """The file's extension, e.g. ``pdf`` (1-16 letters or digits)."""
    jobExecutionId: str = ""
    """The job the file is for (one of the caller's)."""
    maxBytes: int | None = None
    """A smaller size limit than the platform's."""


class UploadGranted(msgspec.Struct, frozen=True, kw_only=True):
    success: bool
    presignedUrl: str
    fileUrl: str
    uploadId: str
    expiresAt: float
    maxBytes: int


def install(service: Service, ctx: WorkflowContext, *, presigner: Presigner | None = None) -> None:
    """Add the upload routes; the presigner is built from the service's settings unless given."""
    if presigner is None:
        settings = ctx.settings
        presigner = Presigner(
            signing_key(settings.upload_signing_key),
            ttl_seconds=settings.upload_ttl_seconds,
            max_bytes=settings.upload_max_bytes,
        )
    service.app[PRESIGNER] = presigner
    uploads = Uploads(ctx, presigner)
    service.app[UPLOADS] = uploads
    service.route(
        "POST",
        "/job/file/upload",
        summary="A presigned URL to upload one file for a job (seed 000, step 3)",
        request=UploadRequest,
        response=UploadGranted,
        responses={404: "No such job", 503: "No Raw storage is configured"},
        tags=["jobs (seed 000)"],
        auth="client",
        error_shape=seed_error,
        error_model=SeedError,
    )(uploads.issue)
    # No API key on these two: the signature in the URL is the authority (seed 000, step 4).
    service.route(
        "PUT",
        "/job/file/upload/{name}",
        summary="Upload the file to a presigned URL (its signature is the credential; works once)",
        responses={403: "Bad or expired signature", 404: "Not an upload URL", 410: "Already used", 413: "Too large"},
        tags=["jobs (seed 000)"],
        query={"exp": "from the presigned URL", "max": "from the presigned URL", "sig": "the signature"},
        error_model=SeedError,
    )(uploads.put)
    service.route(
        "GET",
        "/job/file/{name}",
        summary="Download an uploaded file through its signed file URL",
        content_type="application/octet-stream",
        responses={403: "Bad signature", 404: "Nothing uploaded there"},
        tags=["jobs (seed 000)"],
        query={"sig": "the file URL's signature"},
        error_model=SeedError,
    )(uploads.download)
