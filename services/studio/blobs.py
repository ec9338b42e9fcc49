"""The studio's blobs: versions with their deltas as events, content in Raw, and their routes.

The Python API other studio modules use is the class :class:`Blobs`. ``install`` puts the
studio's one instance at ``ctx.service.app[BLOBS]`` (bootstrap installs blobs before
providers); ``Blobs(ctx)`` builds another, which agrees with it (an instance keeps nothing of
its own but a cache of immutable content). Its methods (``create``, ``update``, ``patch``,
``delete``, ``read``) raise :class:`BlobError` subclasses, which are ``HTTPError``s: a route
lets them through and the caller gets their status (404, 409, 410, 400, 413).

Every write appends one event to the blob's stream ``blob-<id>`` with the stream version the
writer read as ``expected_version``, so of two writers racing only one wins; the other gets a
409 naming the version that won (or, when it gave no expected version, computes again on top
of it). A handler changes nothing in memory: the answer is read from the state once this
replica's fold has the event (``LiveFold.append``).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import msgspec
from aiohttp import web

from nexus.auth import AUTH, KeyInfo
from nexus.eventlog import NO_STREAM, ConcurrencyError, DuplicateEventError
from nexus.proto import new_event, new_event_id
from nexus.proto.events.studio import BlobCreated, BlobDeleted, BlobOrigin, BlobUpdated, Delta
from nexus.raw import RawNotFoundError, ref_key
from nexus.runtime import HTTPError, Owned, json_response, read_json
from nexus.services.studio import checks
from nexus.services.studio.content import (
    ContentError,
    check_content_type,
    content_ref,
    decode_json,
    encode_content,
    kind_of,
    present,
    store_content,
)
from nexus.services.studio.context import StudioContext
from nexus.services.studio.deltas import PatchError, apply_json_patch, compute_deltas, replace_delta
from nexus.services.studio.state import (
    BLOB_CREATED,
    BLOB_DELETED,
    BLOB_UPDATED,
    Blob,
    Version,
    blob_stream,
)

__all__ = [
    "BLOBS",
    "BlobConflict",
    "BlobError",
    "BlobGone",
    "BlobInvalid",
    "BlobNotFound",
    "BlobTooLarge",
    "Blobs",
    "install",
]

_BLOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
"""A blob id a caller may choose (for an exactly-once derived blob): one path segment."""
_IDS = uuid.UUID("5b0c8f3e-6a43-4d0e-9c61-2f1d7a9e4b10")
_RETRIES = 20
"""How often a write without an expected version computes again after losing a race."""
_THREAD_BYTES = 64 * 1024
"""Content at least this large is diffed in a worker thread, so the event loop keeps serving."""
_CACHE_BYTES = 64 * 1024 * 1024
_metadata_encoder = msgspec.json.Encoder()


class BlobError(HTTPError):
    """A blob operation refused; its status is the HTTP answer."""


class BlobNotFound(BlobError):
    """No such blob (or version), or not the caller's: 404."""

    def __init__(self, message: str) -> None:
        super().__init__(404, message)


class BlobGone(BlobError):
    """The blob is deleted (a tombstone): 410. Its versions stay readable with ``?version=``."""

    def __init__(self, blob_id: str) -> None:
        super().__init__(410, f"blob {blob_id} is deleted; its versions stay readable with ?version=n", error="gone")


class BlobConflict(BlobError):
    """The blob is not at the version the writer expected (or a chosen id holds other content): 409."""

    def __init__(self, message: str, current: int | None = None) -> None:
        super().__init__(409, message, error="conflict")
        self.current = current


class BlobInvalid(BlobError):
    """Content, metadata, a patch or an argument that cannot be accepted: 400, naming it."""

    def __init__(self, message: str, error: str = "invalid_blob") -> None:
        super().__init__(400, message, error=error)


class BlobTooLarge(BlobError):
    """Content above ``NEXUS_STUDIO_MAX_BLOB_BYTES``: 413."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            413, f"content is {size} bytes; the studio keeps at most {limit} per version", error="too_large"
        )


class _ContentCache:
    """Recently read or written content by ``raw://`` reference (content-addressed, so never stale),
    bounded by bytes: an update diffs against the previous version without reading Raw."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.items: OrderedDict[str, bytes] = OrderedDict()

    def get(self, ref: str) -> bytes | None:
        data = self.items.get(ref)
        if data is not None:
            self.items.move_to_end(ref)
        return data

    def put(self, ref: str, data: bytes) -> None:
        if len(data) > self.limit // 8 or ref in self.items:
            return
        self.items[ref] = data
        self.size += len(data)
        while self.size > self.limit:
            _, old = self.items.popitem(last=False)
            self.size -= len(old)


class Blobs:
    """Create, change, delete and read blobs (see the module); ``Blobs(ctx)``.

    Args:
        ctx: The studio's context (its log, fold, Raw and settings).
    """

    def __init__(self, ctx: StudioContext) -> None:
        self.ctx = ctx
        self._cache = _ContentCache(_CACHE_BYTES)

    # -- reading ----------------------------------------------------------------------------------

    def get(self, blob_id: str) -> Blob:
        """The blob (deleted or not).

        Raises:
            BlobNotFound: there is no such blob.
        """
        blob = self.ctx.state.blobs.get(blob_id)
        if blob is None:
            raise BlobNotFound(f"no blob {blob_id}")
        return blob

    def version(self, blob_id: str, version: int | None = None) -> Version:
        """Version ``version`` of the blob (the current one when None).

        Raises:
            BlobNotFound: no such blob or version.
        """
        blob = self.get(blob_id)
        if version is None:
            return blob.current
        if not 1 <= version <= blob.version:
            raise BlobNotFound(f"blob {blob_id} has no version {version} (it has 1 to {blob.version})")
        return blob.versions[version - 1]

    async def content(self, ref: str) -> bytes:
        """The bytes a content reference names.

        Raises:
            BlobError: 503 when Raw has lost them (the log names content Raw no longer holds).
        """
        data = self._cache.get(ref)
        if data is not None:
            return data
        try:
            data = bytes(await self.ctx.service.raw.retrieve(ref_key(ref)))
        except RawNotFoundError:
            raise BlobError(503, f"the content {ref} is missing from Raw", error="content_missing") from None
        self._cache.put(ref, data)
        return data

    async def read(self, blob_id: str, version: int | None = None) -> tuple[bytes, Version]:
        """The content and description of version ``version`` (the current one when None), even
        of a deleted blob (the routes answer 410 for a deleted blob's current version).

        Raises:
            BlobNotFound: no such blob or version.
        """
        found = self.version(blob_id, version)
        return await self.content(found.content_ref), found

    # -- writing ----------------------------------------------------------------------------------

    def _encode(self, content: Any, content_type: str) -> bytes:
        try:
            check_content_type(content_type)
            data = encode_content(content_type, content)
        except ContentError as exc:
            raise BlobInvalid(str(exc), error="invalid_content") from None
        if len(data) > self.ctx.settings.max_blob_bytes:
            raise BlobTooLarge(len(data), self.ctx.settings.max_blob_bytes)
        return data

    def _metadata(self, metadata: Mapping[str, Any] | None) -> dict[str, Any]:
        if metadata is None:
            return {}
        if not isinstance(metadata, Mapping):
            raise BlobInvalid("metadata must be a JSON object", error="invalid_metadata")
        try:
            encoded = _metadata_encoder.encode(metadata)
            value = decode_json(encoded)
        except (TypeError, ValueError, OverflowError) as exc:
            raise BlobInvalid(f"metadata is not JSON: {exc}", error="invalid_metadata") from None
        if len(encoded) > self.ctx.settings.max_metadata_bytes:
            raise BlobInvalid(
                f"metadata is {len(encoded)} bytes encoded; at most {self.ctx.settings.max_metadata_bytes}",
                error="invalid_metadata",
            )
        return dict(value)

    async def _append(self, blob_id: str, event: Any, expected: int) -> None:
        try:
            await self.ctx.fold.append(blob_stream(blob_id), [event], expected_version=expected)
        except TimeoutError:
            raise BlobError(503, f"blob {blob_id} was written; this replica's view of it lags, read it again") from None

    async def create(
        self,
        owner: str,
        by: str,
        content: Any,
        content_type: str,
        metadata: Mapping[str, Any] | None = None,
        parent_id: str | None = None,
        origin: BlobOrigin | None = None,
        blob_id: str | None = None,
    ) -> Blob:
        """Create a blob owned by ``owner`` (version 1).

        Args:
            owner: The client (tenant) owning it.
            by: Who creates it (``key:<id>``, ``worker:<name>``, ``run:<execution>``...).
            content: A JSON value (JSON types), a string (text types), or the bytes (any type).
            content_type: Its media type (``application/json``, ``text/markdown``...).
            metadata: A JSON object kept with the version.
            parent_id: The blob it derives from (the owner's).
            origin: The provider run that made it, for lineage.
            blob_id: Its id, chosen by the caller: creating the same id again with the same
                content and content type answers the first blob (exactly-once derived blobs);
                with other content, BlobConflict. None: a new UUIDv7.

        Raises:
            BlobInvalid: bad content, content type, metadata, parent or id.
            BlobTooLarge: content above the limit.
            BlobConflict: ``blob_id`` is taken by another blob.
        """
        data = self._encode(content, content_type)
        meta = self._metadata(metadata)
        if parent_id is not None:
            parent = self.ctx.state.blobs.get(parent_id)
            if parent is None or parent.owner != owner:
                raise BlobInvalid(f"parent_id {parent_id!r} names no blob of this client", error="invalid_parent")
        if blob_id is not None:
            if not isinstance(blob_id, str) or not _BLOB_ID.fullmatch(blob_id):
                raise BlobInvalid(f"blob id {blob_id!r} is not 1-128 letters, digits, '.', '_', ':', '-'")
            existing = self._same(blob_id, owner, data, content_type)
            if existing is not None:
                return existing
        new_id = blob_id or new_event_id()
        ref, digest = await store_content(self.ctx.service.raw, owner, data, content_type)
        self._cache.put(ref, data)
        event = new_event(
            BLOB_CREATED,
            BlobCreated(
                blob_id=new_id,
                owner=owner,
                created_by=by,
                content_type=content_type,
                content_ref=ref,
                size=len(data),
                sha256=digest,
                metadata=meta,
                parent_id=parent_id,
                origin=origin,
            ),
            source=self.ctx.source,
            # A chosen id has one creation event: two replicas creating it write the same id.
            id=str(uuid.uuid5(_IDS, f"created\x00{new_id}")) if blob_id is not None else None,
            subject=new_id,
            tenant=owner,
        )
        try:
            await self._append(new_id, event, NO_STREAM)
        except (ConcurrencyError, DuplicateEventError):
            await self.ctx.fold.caught_up(await self.ctx.service.log.head())
            existing = self._same(new_id, owner, data, content_type)
            if existing is not None:
                return existing
            raise BlobConflict(f"blob id {new_id} is taken") from None
        return self.ctx.state.blobs[new_id]

    def _same(self, blob_id: str, owner: str, data: bytes, content_type: str) -> Blob | None:
        """The blob ``blob_id`` when its first version is this content; None when there is none.

        Raises:
            BlobConflict: the id is taken by other content or another owner.
        """
        blob = self.ctx.state.blobs.get(blob_id)
        if blob is None:
            return None
        first = blob.versions[0]
        if (
            blob.owner != owner
            or first.content_type != content_type
            or first.sha256 != hashlib.sha256(data).hexdigest()
        ):
            raise BlobConflict(f"blob id {blob_id} is taken by other content", blob.version)
        return blob

    async def update(
        self,
        blob_id: str,
        by: str,
        content: Any,
        content_type: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        expected_version: int | None = None,
        origin: BlobOrigin | None = None,
        reason: str = "update",
        *,
        operations: list[Any] | None = None,
    ) -> Blob:
        """Write a new version of the blob, with the deltas from the current one.

        Args:
            blob_id: The blob.
            by: Who writes it.
            content: The new content (as for ``create``).
            content_type: Its media type; None keeps the current one.
            metadata: The new version's metadata; None keeps the current one's.
            expected_version: The version the writer read: when the blob is at another one,
                BlobConflict naming it. None: the write goes on top of whatever is current.
            origin: The provider run that wrote it, for lineage.
            reason: ``update``, ``patch``, ``delta``, ``rollback`` (recorded with the version).
            operations: For a JSON ``patch``: the operations that made ``content`` from the
                current version, recorded as its delta.

        Raises:
            BlobNotFound, BlobGone, BlobConflict, BlobInvalid, BlobTooLarge.
        """
        for _ in range(_RETRIES):
            blob = self.get(blob_id)
            if blob.deleted:
                raise BlobGone(blob_id)
            if expected_version is not None and expected_version != blob.version:
                raise BlobConflict(
                    f"blob {blob_id} is at version {blob.version}, not {expected_version}; read it and retry",
                    blob.version,
                )
            current = blob.current
            new_type = content_type or current.content_type
            data = self._encode(content, new_type)
            meta = dict(current.metadata) if metadata is None else self._metadata(metadata)
            # The content is made durable while the deltas are computed (its reference is its
            # digest); the event naming it is appended only once it is.
            digest = hashlib.sha256(data).hexdigest()
            ref = content_ref(blob.owner, digest)
            stored = asyncio.ensure_future(store_content(self.ctx.service.raw, blob.owner, data, new_type))
            try:
                deltas = await self._deltas(current, data, new_type, ref, digest, operations)
            except BaseException:
                await asyncio.gather(stored, return_exceptions=True)
                raise
            await stored
            self._cache.put(ref, data)
            event = new_event(
                BLOB_UPDATED,
                BlobUpdated(
                    blob_id=blob_id,
                    version=blob.version + 1,
                    updated_by=by,
                    content_type=new_type,
                    content_ref=ref,
                    size=len(data),
                    sha256=digest,
                    metadata=meta,
                    deltas=deltas,
                    origin=origin,
                    reason=reason,
                ),
                source=self.ctx.source,
                subject=blob_id,
                tenant=blob.owner,
            )
            try:
                await self._append(blob_id, event, blob.stream_version)
            except ConcurrencyError:
                # Another writer won; see what it wrote before answering or computing again.
                await self.ctx.fold.caught_up(await self.ctx.service.log.head())
                if expected_version is not None or operations is not None:
                    latest = self.get(blob_id)
                    if latest.deleted:
                        raise BlobGone(blob_id) from None
                    raise BlobConflict(
                        f"blob {blob_id} changed meanwhile: it is at version {latest.version}; read it and retry",
                        latest.version,
                    ) from None
                continue
            return self.ctx.state.blobs[blob_id]
        raise BlobConflict(f"blob {blob_id} is being written too often to update it; retry", self.get(blob_id).version)

    async def _deltas(
        self, current: Version, new: bytes, new_type: str, ref: str, digest: str, operations: list[Any] | None
    ) -> list[Delta]:
        """The deltas from ``current`` to ``new``; the previous content is read only when a diff
        is computed from it."""
        settings = self.ctx.settings
        old_type = current.content_type
        same_kind = kind_of(old_type) == kind_of(new_type)
        if same_kind and current.sha256 == digest:
            return []
        if not same_kind or kind_of(new_type) == "binary" or max(current.size, len(new)) > settings.max_diff_bytes:
            return [replace_delta(ref, len(new), digest)]
        old = await self.content(current.content_ref)

        def compute() -> list[Delta]:
            return compute_deltas(
                old,
                old_type,
                new,
                new_type,
                new_ref=ref,
                new_sha256=digest,
                max_bytes=settings.max_delta_bytes,
                max_diff_bytes=settings.max_diff_bytes,
                operations=operations,
            )

        if max(len(old), len(new)) >= _THREAD_BYTES:
            return await asyncio.to_thread(compute)
        return compute()

    async def patch(
        self,
        blob_id: str,
        operations: list[Any],
        by: str,
        expected_version: int | None = None,
        origin: BlobOrigin | None = None,
    ) -> Blob:
        """Apply an RFC 6902 JSON Patch to the blob's JSON content: a new version whose delta is
        the patch itself.

        A patch without ``expected_version`` applies to whatever version is current when it is
        written (a ``test`` operation guards what it relies on); if another writer wins the
        race in between, it is applied again on top of the new version.

        Raises:
            BlobInvalid: the content is not JSON, or an operation fails (its index named).
            BlobNotFound, BlobGone, BlobConflict, BlobTooLarge.
        """
        for _ in range(_RETRIES):
            blob = self.get(blob_id)
            if blob.deleted:
                raise BlobGone(blob_id)
            if expected_version is not None and expected_version != blob.version:
                raise BlobConflict(
                    f"blob {blob_id} is at version {blob.version}, not {expected_version}; read it and retry",
                    blob.version,
                )
            current = blob.current
            if kind_of(current.content_type) != "json":
                raise BlobInvalid(
                    f"blob {blob_id} holds {current.content_type}; a JSON Patch applies to JSON content only",
                    error="not_json",
                )
            document = decode_json(await self.content(current.content_ref))
            try:
                patched = apply_json_patch(document, operations)
            except PatchError as exc:
                raise BlobInvalid(f"the patch does not apply: {exc}", error="patch_failed") from None
            except ContentError as exc:
                raise BlobInvalid(str(exc), error="invalid_content") from None
            try:
                return await self.update(
                    blob_id,
                    by,
                    patched,
                    expected_version=blob.version,
                    origin=origin,
                    reason="patch",
                    operations=operations,
                )
            except BlobConflict:
                if expected_version is not None:
                    raise
        raise BlobConflict(f"blob {blob_id} is being written too often to patch it; retry", self.get(blob_id).version)

    async def delete(self, blob_id: str, by: str, origin: BlobOrigin | None = None) -> Blob:
        """Delete the blob: a tombstone (``BlobDeleted``); its versions stay readable. Deleting a
        deleted blob changes nothing and answers it.

        Raises:
            BlobNotFound: no such blob.
        """
        for _ in range(_RETRIES):
            blob = self.get(blob_id)
            if blob.deleted:
                return blob
            event = new_event(
                BLOB_DELETED,
                BlobDeleted(blob_id=blob_id, deleted_by=by, origin=origin),
                source=self.ctx.source,
                subject=blob_id,
                tenant=blob.owner,
            )
            try:
                await self._append(blob_id, event, blob.stream_version)
            except ConcurrencyError:
                await self.ctx.fold.caught_up(await self.ctx.service.log.head())
                continue
            return self.ctx.state.blobs[blob_id]
        raise BlobConflict(f"blob {blob_id} is being written too often to delete it; retry", self.get(blob_id).version)


# -- the HTTP API --------------------------------------------------------------------------------


class CreateBlob(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /blobs``: a new blob, owned by the caller's client."""

    content_type: str | None = None
    """Its media type: JSON types (``application/json``, ``*/*+json``) take a JSON value in
    ``content``; text types (``text/*``, XML, YAML) a string; anything else ``content_base64``.
    None (seed 004's ``book_chapter_expansion`` sends none): ``text/plain`` for a string,
    ``application/json`` for any other JSON value, ``application/octet-stream`` for base64."""
    content: Any = msgspec.UNSET
    """The content (a JSON value or a string, by ``content_type``)."""
    content_base64: str | None = None
    """The content's bytes in base64 (any type; instead of ``content``)."""
    metadata: dict[str, Any] = {}
    """A JSON object kept with the version (``type``, ``title``...); ``GET /blobs?metadata.type=`` filters on it."""
    parent_id: str | None = None
    """The caller's blob this one derives from (lineage)."""


class UpdateBlob(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``PUT /blobs/{blob_id}``: a new version, replacing the content whole."""

    content: Any = msgspec.UNSET
    content_base64: str | None = None
    content_type: str | None = None
    """None keeps the current one."""
    metadata: dict[str, Any] | None = None
    """None keeps the current version's metadata."""
    expected_version: int | None = None
    """The version the writer read (or the ``If-Match`` header): 409 when the blob is at another."""


class BlobWritten(msgspec.Struct, frozen=True, kw_only=True):
    """A blob as a write left it: its new version and the deltas that made it."""

    id: str
    version: int
    deltas: list[Delta]
    """From the previous version (none for version 1)."""
    content_type: str
    size: int
    sha256: str
    metadata: dict[str, Any]
    parent_id: str | None
    created_at: str
    updated_at: str


class BlobView(msgspec.Struct, frozen=True, kw_only=True):
    """One version of a blob with its content."""

    id: str
    version: int
    """The version shown (the current one unless ``?version=`` asked for another)."""
    latest_version: int
    content_type: str
    content: Any = msgspec.UNSET
    """JSON types: the JSON value; text types: the string."""
    content_base64: str | msgspec.UnsetType = msgspec.UNSET
    """Other types: the bytes in base64."""
    size: int
    sha256: str
    metadata: dict[str, Any]
    parent_id: str | None
    owner: str
    created_at: str
    updated_at: str
    """When the blob last changed (a deletion included)."""
    deleted: bool = False
    origin: BlobOrigin | None = None
    """The provider run that wrote this version, when one did."""


class VersionView(msgspec.Struct, frozen=True, kw_only=True):
    """One version's description (no content)."""

    version: int
    content_type: str
    size: int
    sha256: str
    metadata: dict[str, Any]
    at: str
    by: str
    reason: str
    """``create``, ``update``, ``patch``, ``delta``, ``rollback``."""
    delta_kinds: list[str]
    """The kinds of the deltas from the previous version (``GET …/deltas`` has them whole)."""
    origin: BlobOrigin | None = None


class VersionList(msgspec.Struct, frozen=True, kw_only=True):
    """A blob's versions, oldest first."""

    blob_id: str
    deleted: bool
    versions: list[VersionView]


class VersionDeltas(msgspec.Struct, frozen=True, kw_only=True):
    """The deltas that made one version from the previous one."""

    version: int
    deltas: list[Delta]


class DeltaList(msgspec.Struct, frozen=True, kw_only=True):
    """The deltas from version ``from`` to version ``to``: apply them in order to ``from``'s content."""

    blob_id: str
    from_version: int = msgspec.field(name="from")
    to_version: int = msgspec.field(name="to")
    versions: list[VersionDeltas]


class BlobSummary(msgspec.Struct, frozen=True, kw_only=True):
    """A blob in a listing (its current version, no content)."""

    id: str
    owner: str
    version: int
    content_type: str
    size: int
    metadata: dict[str, Any]
    parent_id: str | None
    created_at: str
    updated_at: str
    deleted: bool


class BlobList(msgspec.Struct, frozen=True, kw_only=True):
    """A page of blobs, by id (ids are time-ordered: oldest first)."""

    blobs: list[BlobSummary]
    next_cursor: str | None = None
    """Pass as ``cursor`` for the next page; absent on the last one."""


_PAGE = 100
_CHUNK = 64 * 1024
_MAX_PAGE = 1000


def _written(blob: Blob) -> BlobWritten:
    current = blob.current
    return BlobWritten(
        id=blob.blob_id,
        version=blob.version,
        deltas=current.deltas,
        content_type=current.content_type,
        size=current.size,
        sha256=current.sha256,
        metadata=current.metadata,
        parent_id=blob.parent_id,
        created_at=blob.created_at,
        updated_at=blob.updated_at,
    )


def _etag(version: int) -> dict[str, str]:
    return {"ETag": f'"{version}"'}


def _int_query(request: web.Request, name: str, low: int = 1) -> int | None:
    value = request.query.get(name)
    if value is None or value == "":
        return None
    if not value.isdigit() or len(value) > 12 or int(value) < low:
        raise HTTPError(
            400, f"{name} must be a whole number of at least {low}, got {value[:40]!r}", error="invalid_query"
        )
    return int(value)


def _if_match(request: web.Request) -> int | None:
    """The version in ``If-Match`` (``"3"``, ``3`` or ``W/"3"``), None when absent."""
    header = request.headers.get("If-Match")
    if header is None:
        return None
    value = header.strip().removeprefix("W/").strip('"')
    if not value.isdigit() or len(value) > 12:
        raise HTTPError(400, f'If-Match must name a version ("3"), got {header[:40]!r}', error="invalid_header")
    return int(value)


def actor(info: KeyInfo) -> str:
    """Who is writing: the execution for a workflow step's delegated token, else the key or worker."""
    if info.execution_id:
        return f"execution:{info.execution_id}"
    return StudioContext.actor(info)


def _matches(blob: Blob, filters: Mapping[str, str], media: str | None) -> bool:
    current = blob.current
    if media is not None and current.content_type.split(";", 1)[0].strip().lower() != media:
        return False
    for name, wanted in filters.items():
        if name not in current.metadata:
            return False
        value = current.metadata[name]
        if (value if isinstance(value, str) else _metadata_encoder.encode(value).decode()) != wanted:
            return False
    return True


BLOBS: web.AppKey[Blobs] = web.AppKey("nexus_studio_blobs", Blobs)
"""``service.app[BLOBS]``: the studio's one ``Blobs`` (set by ``install``; other modules and tests use it)."""


def install(ctx: StudioContext) -> None:
    """Add the blob routes to the studio, and its ``Blobs`` as ``ctx.service.app[BLOBS]``."""
    blobs = Blobs(ctx)
    ctx.service.app[BLOBS] = blobs
    service = ctx.service
    owned = Owned("blob", "blob_id", ctx.state.tenant_of_blob)

    async def body_content(body: CreateBlob | UpdateBlob, content_type: str) -> bytes:
        try:
            check_content_type(content_type)
            return encode_content(
                content_type, body.content, body.content_base64, has_content=body.content is not msgspec.UNSET
            )
        except ContentError as exc:
            raise BlobInvalid(str(exc), error="invalid_content") from None

    @service.route(
        "POST",
        "/blobs",
        summary="Create a blob (version 1), owned by the caller's client",
        request=CreateBlob,
        response=BlobWritten,
        status=201,
        responses={
            400: "Content that does not fit its content type, bad metadata, a parent_id that is not the caller's blob",
            413: "Content above NEXUS_STUDIO_MAX_BLOB_BYTES (or a body above NEXUS_MAX_BODY_BYTES)",
        },
        tags=["blobs"],
        auth="client",
    )
    async def create_blob(request: web.Request) -> web.Response:
        """Stores the content in Raw (once per distinct content of the client) and appends
        ``BlobCreated`` to the blob's stream. The answer carries ``ETag: "1"``."""
        info: KeyInfo = request[AUTH]
        body = await read_json(request, CreateBlob)
        content_type = body.content_type or (
            "application/octet-stream"
            if body.content is msgspec.UNSET
            else "text/plain"
            if isinstance(body.content, str)
            else "application/json"
        )
        data = await body_content(body, content_type)
        blob = await blobs.create(info.tenant, actor(info), data, content_type, body.metadata, parent_id=body.parent_id)
        return json_response(_written(blob), status=201, headers=_etag(blob.version))

    @service.route(
        "GET",
        "/blobs",
        summary="List the caller's blobs, filtered by metadata and content type, a page at a time",
        response=BlobList,
        responses={400: "A malformed limit or cursor, or owner from a client key"},
        tags=["blobs"],
        auth="client",
        query={
            "owner": "Admin keys: only this client's blobs (a client key sees its own only)",
            "metadata.<field>": "Only blobs whose current metadata has this field with this value "
            "(strings as they are, other values as JSON: metadata.count=3)",
            "type": "Only blobs of this media type (application/json)",
            "include_deleted": "true: deleted blobs too",
            "limit": f"At most this many (default {_PAGE}, at most {_MAX_PAGE})",
            "cursor": "From a previous page's next_cursor",
        },
    )
    async def list_blobs(request: web.Request) -> web.Response:
        """Blobs by id (time-ordered), the current version of each; a client key sees its own
        client's only, an admin key every client's (or ``owner``'s)."""
        info: KeyInfo = request[AUTH]
        owner = request.query.get("owner") or None
        if owner is not None and not info.is_admin and owner != info.tenant:
            raise HTTPError(400, "owner is for admin keys: a client key lists its own blobs", error="invalid_query")
        if not info.is_admin:
            owner = info.tenant
        limit = min(_int_query(request, "limit") or _PAGE, _MAX_PAGE)
        cursor = request.query.get("cursor") or ""
        media = (request.query.get("type") or "").strip().lower() or None
        include_deleted = request.query.get("include_deleted", "").lower() in ("1", "true", "yes")
        filters = {k[len("metadata.") :]: v for k, v in request.query.items() if k.startswith("metadata.")}
        # The fold's blobs, scanned: a listing costs a pass over the blobs in memory (a few
        # milliseconds per hundred thousand), never a read of the log or Raw.
        found = sorted(
            blob_id
            for blob_id, blob in ctx.state.blobs.items()
            if blob_id > cursor
            and (owner is None or blob.owner == owner)
            and (include_deleted or not blob.deleted)
            and _matches(blob, filters, media)
        )
        page = found[:limit]
        items = []
        for blob_id in page:
            blob = ctx.state.blobs[blob_id]
            current = blob.current
            items.append(
                BlobSummary(
                    id=blob_id,
                    owner=blob.owner,
                    version=blob.version,
                    content_type=current.content_type,
                    size=current.size,
                    metadata=current.metadata,
                    parent_id=blob.parent_id,
                    created_at=blob.created_at,
                    updated_at=blob.updated_at,
                    deleted=blob.deleted,
                )
            )
        next_cursor = page[-1] if len(found) > limit else None
        return json_response(BlobList(blobs=items, next_cursor=next_cursor))

    @service.route(
        "GET",
        "/blobs/{blob_id}",
        summary="Read a blob: its current version, or ?version=n",
        response=BlobView,
        responses={
            404: "No such blob (or another client's), or no such version",
            410: "The blob is deleted (its versions stay readable with ?version=n)",
        },
        tags=["blobs"],
        auth="client",
        owned=owned,
        query={"version": "An earlier version (1 is the first)"},
    )
    async def get_blob(request: web.Request) -> web.Response:
        """The content comes whole from Raw (at most NEXUS_STUDIO_MAX_BLOB_BYTES); a JSON blob's as
        its canonical JSON (keys sorted). ``ETag`` names the version shown."""
        blob_id = request.match_info["blob_id"]
        version = _int_query(request, "version")
        blob = blobs.get(blob_id)
        if version is None and blob.deleted:
            raise BlobGone(blob_id)
        data, found = await blobs.read(blob_id, version)
        shown = present(found.content_type, data)
        view = BlobView(
            id=blob_id,
            version=found.version,
            latest_version=blob.version,
            content_type=found.content_type,
            content=shown.get("content", msgspec.UNSET),
            content_base64=shown.get("content_base64", msgspec.UNSET),
            size=found.size,
            sha256=found.sha256,
            metadata=found.metadata,
            parent_id=blob.parent_id,
            owner=blob.owner,
            created_at=blob.created_at,
            updated_at=blob.updated_at,
            deleted=blob.deleted,
            origin=found.origin,
        )
        return json_response(view, headers=_etag(found.version))

    @service.route(
        "GET",
        "/blobs/{blob_id}/versions",
        summary="A blob's versions, oldest first (also of a deleted blob)",
        response=VersionList,
        responses={404: "No such blob (or another client's)"},
        tags=["blobs"],
        auth="client",
        owned=owned,
    )
    async def list_versions(request: web.Request) -> web.Response:
        """Each version's content type, size, sha256, metadata, author, reason and delta kinds."""
        blob = blobs.get(request.match_info["blob_id"])
        versions = [
            VersionView(
                version=v.version,
                content_type=v.content_type,
                size=v.size,
                sha256=v.sha256,
                metadata=v.metadata,
                at=v.at,
                by=v.by,
                reason=v.reason,
                delta_kinds=[d.kind for d in v.deltas],
                origin=v.origin,
            )
            for v in blob.versions
        ]
        return json_response(VersionList(blob_id=blob.blob_id, deleted=blob.deleted, versions=versions))

    @service.route(
        "GET",
        "/blobs/{blob_id}/deltas",
        summary="The deltas between two versions of a blob (?from=&to=)",
        response=DeltaList,
        responses={400: "from after to", 404: "No such blob (or another client's), or no such version"},
        tags=["blobs"],
        auth="client",
        owned=owned,
        query={"from": "The version to start from (default 1)", "to": "The version to reach (default the current)"},
    )
    async def list_deltas(request: web.Request) -> web.Response:
        """Applying the deltas of versions from+1..to, in order, to version ``from``'s content gives
        version ``to``'s exactly; a ``replace`` delta names the new content in Raw."""
        blob = blobs.get(request.match_info["blob_id"])
        start = _int_query(request, "from") or 1
        end = _int_query(request, "to") or blob.version
        for v in (start, end):
            blobs.version(blob.blob_id, v)
        if start > end:
            raise HTTPError(400, f"from ({start}) is after to ({end})", error="invalid_query")
        versions = [VersionDeltas(version=v.version, deltas=v.deltas) for v in blob.versions[start:end]]
        return json_response(DeltaList(blob_id=blob.blob_id, from_version=start, to_version=end, versions=versions))

    @service.route(
        "PUT",
        "/blobs/{blob_id}",
        summary="Write a new version of a blob, at the version the writer read (If-Match or expected_version)",
        request=UpdateBlob,
        response=BlobWritten,
        responses={
            400: "Bad content or metadata, or If-Match and expected_version disagreeing",
            404: "No such blob (or another client's)",
            409: "The blob is at another version (the message names it)",
            410: "The blob is deleted",
            413: "Content above NEXUS_STUDIO_MAX_BLOB_BYTES",
            428: "Neither If-Match nor expected_version given",
        },
        tags=["blobs"],
        auth="client",
        owned=owned,
    )
    async def put_blob(request: web.Request) -> web.Response:
        """A PUT must say which version it replaces (``If-Match: "3"`` or ``expected_version``):
        without it, 428 (Precondition Required), so a writer never overwrites a version it has
        not seen. The new version records the deltas from the previous one."""
        info: KeyInfo = request[AUTH]
        blob_id = request.match_info["blob_id"]
        body = await read_json(request, UpdateBlob)
        header = _if_match(request)
        if header is not None and body.expected_version is not None and header != body.expected_version:
            raise HTTPError(
                400,
                f"If-Match ({header}) and expected_version ({body.expected_version}) disagree",
                error="invalid_body",
            )
        expected = header if header is not None else body.expected_version
        if expected is None:
            raise HTTPError(
                428, 'say which version this replaces: If-Match: "<version>" or expected_version', error="precondition"
            )
        blob = blobs.get(blob_id)
        if blob.deleted:
            raise BlobGone(blob_id)
        content_type = body.content_type or blob.current.content_type
        data = await body_content(body, content_type)
        updated = await blobs.update(
            blob_id, actor(info), data, body.content_type, body.metadata, expected_version=expected
        )
        return json_response(_written(updated), headers=_etag(updated.version))

    @service.route(
        "PATCH",
        "/blobs/{blob_id}",
        summary="Apply an RFC 6902 JSON Patch to a JSON blob: a new version",
        request=list[dict[str, Any]],
        response=BlobWritten,
        responses={
            400: "Not a JSON Patch, an operation that fails (the message names it by index), or content not JSON",
            404: "No such blob (or another client's)",
            409: "If-Match names another version",
            410: "The blob is deleted",
        },
        tags=["blobs"],
        auth="client",
        owned=owned,
    )
    async def patch_blob(request: web.Request) -> web.Response:
        """The body is the patch (``application/json-patch+json`` or ``application/json``). With
        ``If-Match`` it applies to that version only (409 otherwise); without, to the current
        version when it is written (use a ``test`` operation to guard what it relies on). The
        patch itself is recorded as the version's delta."""
        info: KeyInfo = request[AUTH]
        operations = await read_json(request, list[dict[str, Any]])
        updated = await blobs.patch(
            request.match_info["blob_id"], operations, actor(info), expected_version=_if_match(request)
        )
        return json_response(_written(updated), headers=_etag(updated.version))

    @service.route(
        "DELETE",
        "/blobs/{blob_id}",
        summary="Delete a blob (a tombstone: its versions stay readable to its owner)",
        status=204,
        responses={404: "No such blob (or another client's)", 410: "Already deleted"},
        tags=["blobs"],
        auth="client",
        owned=owned,
    )
    async def delete_blob(request: web.Request) -> web.Response:
        """Appends ``BlobDeleted``. Afterwards ``GET /blobs/{id}`` answers 410, while
        ``?version=n``, ``/versions`` and ``/deltas`` still answer the owner; writes answer 410."""
        info: KeyInfo = request[AUTH]
        blob_id = request.match_info["blob_id"]
        if blobs.get(blob_id).deleted:
            raise BlobGone(blob_id)
        await blobs.delete(blob_id, actor(info))
        return web.Response(status=204)

    async def read_body(request: web.Request) -> bytes:
        """The raw request body, read in chunks up to NEXUS_STUDIO_MAX_BLOB_BYTES (413 beyond):
        not bounded by NEXUS_MAX_BODY_BYTES, which is for JSON documents."""
        limit = ctx.settings.max_blob_bytes
        if request.content_length is not None and request.content_length > limit:
            raise BlobTooLarge(request.content_length, limit)
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_chunked(_CHUNK):
            size += len(chunk)
            if size > limit:
                raise BlobTooLarge(size, limit)
            chunks.append(chunk)
        return b"".join(chunks)

    def media_type(request: web.Request) -> str:
        content_type = request.headers.get("Content-Type", "").strip()
        if not content_type:
            raise BlobInvalid("say what the content is in the Content-Type header", error="invalid_content")
        return content_type

    @service.route(
        "POST",
        "/blobs/content",
        summary="Create a blob from the request body as it is (large content; the Content-Type header is its type)",
        response=BlobWritten,
        status=201,
        responses={
            400: "No Content-Type, content that does not fit it, or a parent_id that is not the caller's blob",
            413: "Content above NEXUS_STUDIO_MAX_BLOB_BYTES",
        },
        tags=["blobs"],
        auth="client",
        query={
            "parent_id": "The caller's blob this one derives from",
            "metadata.<field>": "A metadata field (a string) of version 1",
        },
    )
    async def create_from_body(request: web.Request) -> web.Response:
        """The body is streamed in up to NEXUS_STUDIO_MAX_BLOB_BYTES, whatever NEXUS_MAX_BODY_BYTES
        allows a JSON document: the way in for content too large to wrap in JSON."""
        info: KeyInfo = request[AUTH]
        content_type = media_type(request)
        metadata = {k[len("metadata.") :]: v for k, v in request.query.items() if k.startswith("metadata.")}
        data = await read_body(request)
        blob = await blobs.create(
            info.tenant, actor(info), data, content_type, metadata, parent_id=request.query.get("parent_id") or None
        )
        return json_response(_written(blob), status=201, headers=_etag(blob.version))

    @service.route(
        "GET",
        "/blobs/{blob_id}/content",
        summary="A blob's content as it is stored (the current version, or ?version=n), with its Content-Type",
        content_type="application/octet-stream",
        responses={
            404: "No such blob (or another client's), or no such version",
            410: "The blob is deleted (its versions stay readable with ?version=n)",
        },
        tags=["blobs"],
        auth="client",
        owned=owned,
        query={"version": "An earlier version (1 is the first)"},
    )
    async def get_content(request: web.Request) -> web.StreamResponse:
        """Written out in 64 KiB chunks (read whole from Raw first: at most NEXUS_STUDIO_MAX_BLOB_BYTES);
        a JSON blob's content is its canonical JSON. ``ETag`` names the version."""
        blob_id = request.match_info["blob_id"]
        version = _int_query(request, "version")
        if version is None and blobs.get(blob_id).deleted:
            raise BlobGone(blob_id)
        data, found = await blobs.read(blob_id, version)
        # The writer chose the content type: opened in a browser, the content runs no script and
        # reads no cookie of this origin.
        response = web.StreamResponse(
            headers={
                "Content-Type": found.content_type,
                "Content-Security-Policy": "sandbox; default-src 'none'",
                "X-Content-Type-Options": "nosniff",
                **_etag(found.version),
            }
        )
        response.content_length = len(data)
        await response.prepare(request)
        view = memoryview(data)
        for start in range(0, len(data), _CHUNK):
            await response.write(bytes(view[start : start + _CHUNK]))
        await response.write_eof()
        return response

    @service.route(
        "PUT",
        "/blobs/{blob_id}/content",
        summary="Write a new version from the request body as it is (large content), at the version in If-Match",
        response=BlobWritten,
        responses={
            400: "No Content-Type, or content that does not fit it",
            404: "No such blob (or another client's)",
            409: "The blob is at another version (the message names it)",
            410: "The blob is deleted",
            413: "Content above NEXUS_STUDIO_MAX_BLOB_BYTES",
            428: "No If-Match",
        },
        tags=["blobs"],
        auth="client",
        owned=owned,
    )
    async def put_content(request: web.Request) -> web.Response:
        """As ``PUT /blobs/{blob_id}`` with the content streamed in; the metadata stays the current version's."""
        info: KeyInfo = request[AUTH]
        blob_id = request.match_info["blob_id"]
        expected = _if_match(request)
        if expected is None:
            raise HTTPError(428, 'say which version this replaces: If-Match: "<version>"', error="precondition")
        content_type = media_type(request)
        if blobs.get(blob_id).deleted:
            raise BlobGone(blob_id)
        data = await read_body(request)
        updated = await blobs.update(blob_id, actor(info), data, content_type, expected_version=expected)
        return json_response(_written(updated), headers=_etag(updated.version))

    checks.install(ctx, blobs)
