"""``mongodb://HOST/DB``: blobs in GridFS through PyMongo's asyncio API.

Each blob is one GridFS file named by its key, in the bucket ``raw`` (``?bucket=`` changes it),
with ``metadata`` holding its sha256, content type and creation time.

**Revisions.** A store uploads a new revision, then removes the revisions OLDER than its own,
in the order (``uploadDate``, ``_id``) that every client sees alike; readers take the newest
revision in the same order. So two stores of one key racing (content-addressed ``refs/``
keys collide by design) leave the newer one, never nothing; a crash between the two steps
leaves a readable blob and a stale revision that the next store removes. A read that races
an overwrite (its revision removed while its chunks are read) takes the newest revision again:
it returns the old content or the new one, never an error.

**Failed uploads.** GridFS writes a file's chunks first and its files document last, and
PyMongo leaves the chunks behind when an upload fails. A store records its upload in
``<bucket>.uploads`` before writing, aborts a failed upload (removing its chunks), and drops
the record once the upload is complete; ``sweep_orphans`` (run at open) removes the chunks of
uploads recorded more than an hour ago that never completed (the process died, or the abort
failed with the server).
"""

from __future__ import annotations

import builtins
import contextlib
import datetime
import hashlib
import re
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from nexus.hooks import Clock, SystemClock
from nexus.raw._errors import RawKeyError, RawNotFoundError, RawUnavailableError
from nexus.raw._port import DEFAULT_CONTENT_TYPE, RawBackend, RawPage, RawStat, check_key, check_list_args

try:
    from bson import ObjectId
    from gridfs import AsyncGridFSBucket
    from gridfs.errors import CorruptGridFile, NoFile
    from pymongo import ASCENDING, DESCENDING, AsyncMongoClient
    from pymongo.errors import PyMongoError
    from pymongo.write_concern import WriteConcern
except ImportError:  # pragma: no cover - pymongo is a declared dependency
    AsyncMongoClient = None  # type: ignore[assignment,misc]  # pymongo missing: refused at open

_NEWEST_FIRST: Final = [("uploadDate", DESCENDING), ("_id", DESCENDING)]
"""The order of a key's revisions, newest first, which stores and readers share."""
_READ_ATTEMPTS: Final = 5
"""Reads of a key's newest revision, each retried when an overwrite removed it meanwhile."""
ORPHAN_AGE_S: Final = 3600.0
"""An upload recorded this long ago and not complete is taken for dead by ``sweep_orphans``."""


class MongoRaw(RawBackend):
    """GridFS-backed blobs (production). Open with ``await MongoRaw.open(url)``."""

    def __init__(self, client: Any, database: str, bucket: str = "raw", *, clock: Clock | None = None, url: str = ""):
        self.url = url
        self._client = client
        # Durability as for the event log: acknowledged by a majority, journaled.
        self._db = client.get_database(database, write_concern=WriteConcern(w="majority", j=True))
        self._bucket_name = bucket
        self._bucket = AsyncGridFSBucket(self._db, bucket_name=bucket)
        self._files = self._db[f"{bucket}.files"]
        self._chunks = self._db[f"{bucket}.chunks"]
        self._uploads = self._db[f"{bucket}.uploads"]
        self._clock = clock or SystemClock()

    @classmethod
    async def open(cls, url: str, *, clock: Clock | None = None) -> MongoRaw:
        """Connect to the server named by ``url``; the database is the URL's path (default ``nexus``).

        Raises:
            RawUnavailableError: the server does not answer.
        """
        if AsyncMongoClient is None:  # pragma: no cover
            raise RawUnavailableError("pymongo is not installed")
        _check_url(url)
        parts = urlsplit(url)
        database = parts.path.lstrip("/") or "nexus"
        bucket = parse_qs(parts.query).get("bucket", ["raw"])[0]
        # The client must not see Nexus's own query parameter.
        query = "&".join(p for p in parts.query.split("&") if p and not p.startswith("bucket="))
        client_url = parts._replace(query=query).geturl()
        client: Any = AsyncMongoClient(client_url, serverSelectionTimeoutMS=5000, tz_aware=True)
        try:
            await client.admin.command("ping")
            raw = cls(client, database, bucket, clock=clock, url=url)
            await raw.prepare()
        except PyMongoError as exc:
            await client.close()
            raise RawUnavailableError(f"MongoDB at {parts.hostname} is unavailable: {exc}") from None
        return raw

    async def prepare(self) -> None:
        """Create the index that orders a key's revisions, and sweep orphaned chunks (at open).

        Raises:
            PyMongoError: the server failed (``open`` reports it as unavailable).
        """
        await self._files.create_index([("filename", ASCENDING), ("uploadDate", DESCENDING), ("_id", DESCENDING)])
        await self.sweep_orphans()

    async def store(self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> RawStat:
        check_key(key)
        data = bytes(data)
        stat = RawStat(
            key=key,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            content_type=content_type,
            created=self._clock.now(),
        )
        metadata = {"sha256": stat.sha256, "content_type": content_type, "created": stat.created}
        file_id = ObjectId()
        try:
            # Recorded first, so chunks left by a failure that the abort below cannot undo
            # (the server went away, the process died) are found by sweep_orphans.
            await self._uploads.insert_one({"_id": file_id, "filename": key})
            upload = self._bucket.open_upload_stream_with_id(file_id, key, metadata=metadata)
            try:
                await upload.write(data)
                await upload.close()  # the files document: the revision is readable from here
            except BaseException:
                # PyMongo leaves the chunks written so far behind: remove them now if we can.
                with contextlib.suppress(PyMongoError):
                    await upload.abort()
                    await self._uploads.delete_one({"_id": file_id})
                raise
            await self._remove_older(key, file_id)
            await self._uploads.delete_one({"_id": file_id})
        except PyMongoError as exc:
            raise RawUnavailableError(f"storing {key!r} in GridFS failed: {exc}") from None
        return stat

    async def _remove_older(self, key: str, file_id: Any) -> None:
        """Remove the revisions of ``key`` older than ``file_id``'s; newer ones are not ours to touch."""
        revisions = await self._files.find({"filename": key}, {"_id": 1}).sort(_NEWEST_FIRST).to_list()
        ids = [doc["_id"] for doc in revisions]
        if file_id not in ids:
            return  # a newer store of the key already removed ours
        for old in ids[ids.index(file_id) + 1 :]:
            with contextlib.suppress(NoFile):  # a concurrent store removed it first
                await self._bucket.delete(old)

    async def sweep_orphans(self, older_than_s: float | None = None) -> int:
        """Remove the chunks of uploads recorded more than ``older_than_s`` (default ``ORPHAN_AGE_S``)
        ago that never completed.

        Returns how many uploads were swept. An upload still running after ``older_than_s``
        would lose its chunks, so the age is far beyond any upload's duration.

        Raises:
            PyMongoError: the server failed.
        """
        now = datetime.datetime.now(tz=datetime.UTC)
        age = ORPHAN_AGE_S if older_than_s is None else older_than_s
        cutoff = ObjectId.from_datetime(now - datetime.timedelta(seconds=age))
        swept = 0
        for upload in await self._uploads.find({"_id": {"$lt": cutoff}}).to_list():
            file_id = upload["_id"]
            if await self._files.find_one({"_id": file_id}, {"_id": 1}) is None:
                await self._chunks.delete_many({"files_id": file_id})
                swept += 1
            await self._uploads.delete_one({"_id": file_id})
        return swept

    async def retrieve(self, key: str) -> bytes:
        check_key(key)
        for _ in range(_READ_ATTEMPTS):
            newest = await self._newest(key)
            if newest is None:
                raise RawNotFoundError(key)
            try:
                stream = await self._bucket.open_download_stream(newest["_id"])
                return bytes(await stream.read())
            except (NoFile, CorruptGridFile):
                continue  # overwritten while we read, and this revision removed: read the newer one
            except PyMongoError as exc:
                raise RawUnavailableError(f"reading {key!r} from GridFS failed: {exc}") from None
        raise RawUnavailableError(f"reading {key!r} from GridFS failed: it was overwritten during each of our reads")

    async def _newest(self, key: str) -> dict[str, Any] | None:
        try:
            newest: dict[str, Any] | None = await self._files.find_one({"filename": key}, sort=_NEWEST_FIRST)
            return newest
        except PyMongoError as exc:
            raise RawUnavailableError(f"looking up {key!r} in GridFS failed: {exc}") from None

    async def exists(self, key: str) -> bool:
        check_key(key)
        return await self._newest(key) is not None

    async def stat(self, key: str) -> RawStat:
        check_key(key)
        doc = await self._newest(key)
        if doc is None:
            raise RawNotFoundError(key)
        meta = doc.get("metadata") or {}
        return RawStat(
            key=key,
            size=int(doc["length"]),
            sha256=str(meta.get("sha256", "")),
            content_type=str(meta.get("content_type", DEFAULT_CONTENT_TYPE)),
            created=float(meta.get("created", doc["uploadDate"].timestamp())),
        )

    async def list(self, prefix: str = "", cursor: str | None = None, limit: int = 1000) -> RawPage:
        check_list_args(prefix, cursor, limit)
        condition: dict[str, Any] = {"$regex": "^" + re.escape(prefix)} if prefix else {}
        if cursor is not None:
            condition["$gt"] = cursor
        query = {"filename": condition} if condition else {}
        names: builtins.list[str] = []
        try:
            # Names in order along the (filename, uploadDate, _id) index, the index alone read;
            # a key's revisions are adjacent and collapse into one name. The scan stops after
            # limit + 1 names: a page costs its own size, not the bucket's.
            found = self._files.find(query, {"filename": 1, "_id": 0}).sort("filename", ASCENDING)
            try:
                async for doc in found.batch_size(limit + 1):
                    name = doc["filename"]
                    if not names or names[-1] != name:
                        names.append(name)
                        if len(names) > limit:
                            break
            finally:
                await found.close()
        except PyMongoError as exc:
            raise RawUnavailableError(f"listing GridFS failed: {exc}") from None
        page = names[:limit]
        return RawPage(page, page[-1] if len(names) > limit else None)

    async def delete(self, key: str) -> None:
        check_key(key)
        try:
            await self._bucket.delete_by_name(key)
        except NoFile:
            raise RawNotFoundError(key) from None
        except PyMongoError as exc:
            raise RawUnavailableError(f"deleting {key!r} from GridFS failed: {exc}") from None

    async def close(self) -> None:
        await self._client.close()


def _check_url(url: str) -> None:
    if not urlsplit(url).hostname:
        raise RawKeyError(f"NEXUS_RAW_URL {url!r}: give a host, e.g. mongodb://localhost:27017/nexus")
