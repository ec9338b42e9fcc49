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

from nexus.eventlog import NO_STREAM, ConcurrencyError, DuplicateEventError
from nexus.proto import new_event, new_event_id
from nexus.proto.events.studio import BlobCreated, BlobDeleted, BlobOrigin, BlobUpdated, Delta
from nexus.raw import RawNotFoundError, ref_key
from nexus.runtime import HTTPError
from nexus.services.studio.content import (
    ContentError,
    check_content_type,
    decode_json,
    encode_content,
    kind_of,
    store_content,
)
from nexus.services.studio.context import StudioContext
from nexus.services.studio.deltas import PatchError, apply_json_patch, compute_deltas
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
            data = await self.ctx.service.raw.retrieve(ref_key(ref))
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
            old = await self.content(current.content_ref)
            ref, digest = await store_content(self.ctx.service.raw, blob.owner, data, new_type)
            self._cache.put(ref, data)
            deltas = await self._deltas(old, current.content_type, data, new_type, ref, digest, operations)
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
        self, old: bytes, old_type: str, new: bytes, new_type: str, ref: str, digest: str, operations: list[Any] | None
    ) -> list[Delta]:
        settings = self.ctx.settings

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


BLOBS: web.AppKey[Blobs] = web.AppKey("nexus_studio_blobs", Blobs)
"""``service.app[BLOBS]``: the studio's one ``Blobs`` (set by ``install``; other modules and tests use it)."""


def install(ctx: StudioContext) -> None:
    """Add the blob routes to the studio, and its ``Blobs`` as ``ctx.service.app[BLOBS]``."""
    ctx.service.app[BLOBS] = Blobs(ctx)
