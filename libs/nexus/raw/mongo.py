"""``mongodb://HOST/DB``: blobs in GridFS through PyMongo's asyncio API.

Each blob is one GridFS file named by its key, in the bucket ``raw`` (``?bucket=`` changes it),
with ``metadata`` holding its sha256, content type and creation time. A store uploads a new
revision and then removes the older ones: readers always take the newest revision, so a crash
between the two steps leaves a readable blob and a stale revision that the next store removes.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

from nexus.hooks import Clock, SystemClock
from nexus.raw._errors import RawKeyError, RawNotFoundError, RawUnavailableError
from nexus.raw._port import DEFAULT_CONTENT_TYPE, RawBackend, RawPage, RawStat, check_key, check_list_args

try:
    from gridfs import AsyncGridFSBucket
    from gridfs.errors import NoFile
    from pymongo import ASCENDING, DESCENDING, AsyncMongoClient
    from pymongo.errors import PyMongoError
    from pymongo.write_concern import WriteConcern
except ImportError:  # pragma: no cover - pymongo is a declared dependency
    AsyncMongoClient = None  # type: ignore[assignment,misc]  # pymongo missing: refused at open


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
            await raw._files.create_index([("filename", ASCENDING), ("uploadDate", DESCENDING)])
        except PyMongoError as exc:
            await client.close()
            raise RawUnavailableError(f"MongoDB at {parts.hostname} is unavailable: {exc}") from None
        return raw

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
        try:
            new_id = await self._bucket.upload_from_stream(key, data, metadata=metadata)
            async for old in self._files.find({"filename": key, "_id": {"$ne": new_id}}, {"_id": 1}):
                await self._bucket.delete(old["_id"])
        except NoFile:
            pass  # a concurrent store of the same key already removed that revision
        except PyMongoError as exc:
            raise RawUnavailableError(f"storing {key!r} in GridFS failed: {exc}") from None
        return stat

    async def retrieve(self, key: str) -> bytes:
        check_key(key)
        try:
            stream = await self._bucket.open_download_stream_by_name(key)
            return bytes(await stream.read())
        except NoFile:
            raise RawNotFoundError(key) from None
        except PyMongoError as exc:
            raise RawUnavailableError(f"reading {key!r} from GridFS failed: {exc}") from None

    async def _newest(self, key: str) -> dict[str, Any] | None:
        try:
            newest: dict[str, Any] | None = await self._files.find_one(
                {"filename": key}, sort=[("uploadDate", DESCENDING)]
            )
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
        try:
            # Distinct names via the (filename, uploadDate) index; revisions collapse into one key.
            pipeline = [
                {"$match": query},
                {"$group": {"_id": "$filename"}},
                {"$sort": {"_id": 1}},
                {"$limit": limit + 1},
            ]
            cursor_ = await self._files.aggregate(pipeline)
            names = [doc["_id"] async for doc in cursor_]
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
