"""The GridFS Raw against a fake MongoDB (``tests/mongo_fake.py``): the whole Raw contract, and
the defects a reading of the adapter against PyMongo's GridFS found.

The fake stores and reads GridFS files as PyMongo's ``AsyncGridFSBucket`` does (chunks first,
the files document at close, a failed upload's chunks left behind, downloads chunk by chunk),
and every call yields to the event loop, so concurrent stores interleave as against a server.
``tests/raw/test_raw_contract.py`` runs the same contract against a real server when one is
reachable.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mongo_fake import FakeBucket, FakeServer, FakeSession, Hook
from pymongo.errors import AutoReconnect

import nexus.raw.mongo as raw_mongo
from nexus.raw import RawBackend, RawNotFoundError, RawUnavailableError
from nexus.raw.mongo import MongoRaw
from nexus.testing import RawContract

_LARGE = 300 * 1024
"""Two GridFS chunks (255 KiB each)."""


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    monkeypatch.setattr(raw_mongo, "AsyncGridFSBucket", FakeBucket)
    return FakeServer()


async def _open(server: FakeServer) -> MongoRaw:
    raw = MongoRaw(server.client(), "nexus", "raw", url="mongodb://fake/nexus")
    await raw.prepare()
    return raw


@pytest.fixture
async def raw(server: FakeServer) -> MongoRaw:
    return await _open(server)


def _count(server: FakeServer, collection: str) -> int:
    return len(server.collection(collection).at(None))


def _failing(message: str) -> Hook:
    async def fail(session: FakeSession | None) -> None:
        raise AutoReconnect(message)

    return fail


class TestMongoRawOnFake(RawContract):
    """Every case of the Raw contract, the same-key race among them."""

    @pytest.fixture(autouse=True)
    def _fake(self, server: FakeServer) -> None:
        self.server = server

    async def make_raw(self, tmp_path: Path) -> RawBackend:
        return await _open(self.server)


async def test_a_failed_upload_leaves_no_chunks(server: FakeServer, raw: MongoRaw) -> None:
    # The connection drops as the upload's files document is written, after its two chunks.
    server.on("raw.files.insert_one", _failing("connection closed"))
    with pytest.raises(RawUnavailableError, match="connection closed"):
        await raw.store("k", b"x" * _LARGE)
    # PyMongo's upload leaves its chunks behind on an error; the store aborted it.
    assert _count(server, "raw.chunks") == 0
    assert _count(server, "raw.uploads") == 0
    assert not await raw.exists("k")


async def test_chunks_an_abort_could_not_remove_are_swept(server: FakeServer, raw: MongoRaw) -> None:
    # The upload fails and so does its abort (the server went away): the chunks stay, recorded.
    server.on("raw.files.insert_one", _failing("connection closed"))
    server.on("raw.chunks.delete_many", _failing("connection closed"))
    with pytest.raises(RawUnavailableError):
        await raw.store("k", b"x" * _LARGE)
    assert _count(server, "raw.chunks") == 2 and _count(server, "raw.uploads") == 1
    # A recent upload may still be running in another process: not swept.
    assert await raw.sweep_orphans() == 0 and _count(server, "raw.chunks") == 2
    # Once it is older than any upload takes, it is (here: as if the hour had passed).
    await raw.store("other", b"y" * _LARGE)  # a complete upload's record is gone already
    assert await raw.sweep_orphans(older_than_s=-5) == 1
    assert _count(server, "raw.chunks") == 2  # the other blob's chunks only
    assert _count(server, "raw.uploads") == 0
    assert await raw.retrieve("other") == b"y" * _LARGE


async def test_reopening_sweeps_old_orphans(server: FakeServer, raw: MongoRaw, monkeypatch: pytest.MonkeyPatch) -> None:
    server.on("raw.files.insert_one", _failing("connection closed"))
    server.on("raw.chunks.delete_many", _failing("connection closed"))
    with pytest.raises(RawUnavailableError):
        await raw.store("k", b"x" * _LARGE)
    monkeypatch.setattr(raw_mongo, "ORPHAN_AGE_S", -5.0)
    await _open(server)
    assert _count(server, "raw.chunks") == 0 and _count(server, "raw.uploads") == 0


async def test_a_read_racing_an_overwrite_returns_the_new_content(server: FakeServer, raw: MongoRaw) -> None:
    await raw.store("k", b"o" * _LARGE)

    async def overwrite(session: FakeSession | None) -> None:
        # Between the read's lookup of the newest revision and its first chunk, another
        # client stores the key again, removing that revision.
        await raw.store("k", b"n" * _LARGE)

    server.on("raw.chunks.find", overwrite)
    assert await raw.retrieve("k") == b"n" * _LARGE


async def test_revisions_with_one_upload_date_are_ordered_by_id(server: FakeServer, raw: MongoRaw) -> None:
    # Two revisions uploaded within the same millisecond (a crash left the older one): the
    # larger _id is the newer, for readers and for the store that cleans up alike.
    bucket = FakeBucket(raw._db, "raw")
    first = await bucket.upload_from_stream("k", b"first")
    second = await bucket.upload_from_stream("k", b"second")
    assert first < second
    same = (await raw._files.find_one({"_id": first}))["uploadDate"]  # type: ignore[index]
    await raw._files.update_one({"_id": second}, {"$set": {"uploadDate": same}})
    assert await raw.retrieve("k") == b"second"
    await raw.store("k", b"third")
    assert await raw.retrieve("k") == b"third" and _count(server, "raw.files") == 1


async def test_a_page_reads_its_own_size_not_the_bucket(server: FakeServer, raw: MongoRaw) -> None:
    for i in range(300):
        await raw.store(f"p/{i:03d}", b"v")
    # A stale revision (a store that crashed before its clean-up) is listed once.
    await FakeBucket(raw._db, "raw").upload_from_stream("p/001", b"stale")
    server.examined = 0
    page = await raw.list("p/", limit=10)
    assert page.keys == [f"p/{i:03d}" for i in range(10)] and page.cursor == "p/009"
    assert server.examined <= 12, server.examined  # 10 names, the stale revision, and one to know there is more
    page = await raw.list("p/", "p/295", limit=10)
    assert page.keys == [f"p/{i:03d}" for i in range(296, 300)] and page.cursor is None


async def test_a_missing_key_is_not_found_and_a_failing_server_unavailable(server: FakeServer, raw: MongoRaw) -> None:
    with pytest.raises(RawNotFoundError):
        await raw.retrieve("missing")
    server.on("raw.files.find", _failing("no primary"))
    with pytest.raises(RawUnavailableError, match="no primary"):
        await raw.retrieve("missing")
