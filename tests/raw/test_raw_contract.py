"""Raw: one contract suite for every backend, plus what is particular to each."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nexus.hooks import FixedClock, RecordingMetrics
from nexus.raw import (
    RawBackend,
    RawKeyError,
    RawNotFoundError,
    RawQuotaError,
    RawStat,
    RawStorage,
    RawUnavailableError,
    check_key,
    check_prefix,
    key_tenant,
    open_raw,
    ref_key,
    tenant_key,
    tenant_prefix,
)
from nexus.raw._inline import InlineBlobs, Row
from nexus.raw.file import FileRaw
from nexus.testing import RawContract


class TestKeysAndTenants:
    """The key rules and tenant namespaces every backend shares."""

    def test_check_key_names_the_problem(self) -> None:
        with pytest.raises(RawKeyError, match="absolute"):
            check_key("/etc/passwd")
        with pytest.raises(RawKeyError, match="control character"):
            check_key("a\nb")
        with pytest.raises(RawKeyError, match="backslash"):
            check_key("a\\b")
        with pytest.raises(RawKeyError, match="limit is 1024"):
            check_key("k" * 1025)
        assert check_key("a/..b/c.d") == "a/..b/c.d"  # '..' only as a whole segment is refused

    def test_prefixes(self) -> None:
        assert check_prefix("") == "" and check_prefix("a/b/") == "a/b/" and check_prefix("a/b") == "a/b"
        with pytest.raises(RawKeyError, match="prefix"):
            check_prefix(None)

    def test_tenant_keys(self) -> None:
        assert tenant_key("acme", "uploads/a.json") == "t/acme/uploads/a.json"
        assert tenant_key("acme", "a", "b") == "t/acme/a/b"
        assert tenant_prefix("acme") == "t/acme/"
        assert key_tenant("t/acme/uploads/a.json") == "acme"
        assert key_tenant("refs/abc") == "platform"
        assert key_tenant("granulator/x.json") == "platform"
        assert ref_key("raw://t/acme/x") == "t/acme/x"
        escapes = [("acme", "../bob/x"), ("acme", "/x"), ("a/b", "x"), ("..", "x"), ("", "x")]
        for tenant, part in escapes:
            with pytest.raises(RawKeyError):
                tenant_key(tenant, part)
        with pytest.raises(RawKeyError, match="at least one part"):
            tenant_key("acme")
        with pytest.raises(RawKeyError):
            key_tenant("t/../x")


class TestMemoryRaw(RawContract):
    async def make_raw(self, tmp_path: Path) -> RawBackend:
        return await open_raw("memory://")

    async def test_quota_stores_nothing_beyond_it(self) -> None:
        raw = await open_raw("memory://?max_bytes=10")
        await raw.store("a", b"12345")
        with pytest.raises(RawQuotaError, match="would use 11 of 10 bytes"):
            await raw.store("b", b"123456")
        assert not await raw.exists("b")
        await raw.store("a", b"1234567890")  # replacing counts the old size out
        assert await raw.retrieve("a") == b"1234567890"


class StoreIfAbsentContract:
    """``store_if_absent`` on every backend: written when the key is free, nothing otherwise."""

    async def test_store_if_absent(self, raw: RawBackend) -> None:
        stat = await raw.store_if_absent("c/k", b"first", "text/plain")
        assert stat is not None and (stat.key, stat.size) == ("c/k", 5)
        assert stat.sha256 == hashlib.sha256(b"first").hexdigest()
        # The key holds a blob: nothing is written, whatever the content.
        assert await raw.store_if_absent("c/k", b"second") is None
        assert await raw.retrieve("c/k") == b"first"
        assert (await raw.stat("c/k")).content_type == "text/plain"
        with pytest.raises(RawKeyError):
            await raw.store_if_absent("../escape", b"x")

    async def test_store_if_absent_concurrently(self, raw: RawBackend) -> None:
        # Equal content under one key from many writers at once (content addressing): one blob.
        results = await asyncio.gather(*(raw.store_if_absent("same", b"content") for _ in range(20)))
        assert any(r is not None for r in results)
        assert await raw.retrieve("same") == b"content" and await raw.list_all() == ["same"]


class TestMemoryRawIfAbsent(StoreIfAbsentContract):
    @pytest.fixture
    async def raw(self) -> RawBackend:
        return await open_raw("memory://")


class TestStorageWrapperIfAbsent(StoreIfAbsentContract):
    @pytest.fixture
    async def raw(self, tmp_path: Path) -> AsyncIterator[RawBackend]:
        storage = RawStorage(FileRaw(tmp_path))
        yield storage
        await storage.close()


class TestFileRaw(StoreIfAbsentContract, RawContract):
    async def make_raw(self, tmp_path: Path) -> RawBackend:
        return await open_raw(f"file://{tmp_path / 'raw'}")

    async def test_small_blobs_are_rows_large_ones_plain_files(self, tmp_path: Path) -> None:
        raw = FileRaw(tmp_path, clock=FixedClock(42.0), inline_max=4)
        await raw.store("x/y.txt", b"hello", "text/plain")
        await raw.store("x/s.txt", b"hi", "text/plain")
        # Above inline_max: a plain file beside its metadata file.
        assert (tmp_path / "data/x/y.txt").read_bytes() == b"hello"
        assert (tmp_path / "meta/x/y.txt.json").exists()
        # Up to inline_max: a row of the store's database, no file.
        assert not (tmp_path / "data/x/s.txt").exists()
        with sqlite3.connect(tmp_path / "inline.db") as con:
            assert con.execute("SELECT data, content_type FROM blobs WHERE key = 'x/s.txt'").fetchall() == [
                (b"hi", "text/plain")
            ]
        for key in ("x/y.txt", "x/s.txt"):
            assert (await raw.stat(key)).created == 42.0
        assert await raw.list_all("x/") == ["x/s.txt", "x/y.txt"]
        assert stat.S_IMODE((tmp_path / "inline.db").stat().st_mode) == 0o600
        await raw.close()

    async def test_a_key_moves_between_row_and_file(self, tmp_path: Path) -> None:
        raw = FileRaw(tmp_path, inline_max=4)
        await raw.store("k", b"abc", "text/plain")
        await raw.store("k", b"a larger blob", "application/x-large")
        assert await raw.retrieve("k") == b"a larger blob" and await raw.list_all() == ["k"]
        assert (await raw.stat("k")).content_type == "application/x-large"
        with sqlite3.connect(tmp_path / "inline.db") as con:
            assert con.execute("SELECT count(*) FROM blobs").fetchone() == (0,)  # the row went
        await raw.store("k", b"xy")
        assert await raw.retrieve("k") == b"xy" and await raw.list_all() == ["k"]
        assert not (tmp_path / "data/k").exists() and not (tmp_path / "meta/k.json").exists()  # the file went
        await raw.delete("k")
        assert not await raw.exists("k") and await raw.list_all() == []
        await raw.close()

    async def test_stores_written_as_files_are_read_and_moved(self, tmp_path: Path) -> None:
        # A store from before small blobs became rows: every blob a file, metadata beside it.
        (tmp_path / "data/t").mkdir(parents=True)
        (tmp_path / "meta/t").mkdir(parents=True)
        (tmp_path / "data/t/old.json").write_bytes(b'{"a": 1}')
        st = (tmp_path / "data/t/old.json").stat()
        meta = {"key": "t/old.json", "size": 8, "sha256": hashlib.sha256(b'{"a": 1}').hexdigest()}
        meta |= {"content_type": "application/json", "created": 7.0, "mtime_ns": st.st_mtime_ns}
        (tmp_path / "meta/t/old.json.json").write_text(json.dumps(meta, sort_keys=True))
        raw = FileRaw(tmp_path)
        assert await raw.retrieve("t/old.json") == b'{"a": 1}'
        assert (await raw.stat("t/old.json")).content_type == "application/json"
        assert await raw.exists("t/old.json") and await raw.list_all() == ["t/old.json"]
        assert await raw.store_if_absent("t/old.json", b"other") is None  # the file counts
        # Stored again, it becomes a row and its file goes.
        await raw.store("t/old.json", b'{"a": 2}', "application/json")
        assert not (tmp_path / "data/t/old.json").exists() and not (tmp_path / "meta/t/old.json.json").exists()
        assert await raw.retrieve("t/old.json") == b'{"a": 2}' and await raw.list_all() == ["t/old.json"]
        await raw.close()

    async def test_concurrent_stores_share_one_commit(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        commits: list[int] = []
        put = InlineBlobs.put

        def counting(self: InlineBlobs, rows: list[Row]) -> None:
            commits.append(len(rows))
            put(self, rows)

        monkeypatch.setattr(InlineBlobs, "put", counting)
        raw = FileRaw(tmp_path)
        await asyncio.gather(*(raw.store(f"g/{i}", f"blob {i}".encode()) for i in range(200)))
        # Stores waiting at the same time are one batch, one commit: far fewer commits than stores.
        assert sum(commits) == 200 and len(commits) < 10, commits
        assert [await raw.retrieve(f"g/{i}") for i in (0, 199)] == [b"blob 0", b"blob 199"]
        await raw.close()

    def test_rows_beyond_one_statement(self, tmp_path: Path) -> None:
        # More rows than one INSERT takes: one transaction of several statements.
        rows = InlineBlobs(str(tmp_path / "inline.db"))
        batch: list[Row] = [(f"r/{i:04d}", b"x", "sha", "text/plain", 1.0) for i in range(1200)]
        assert rows.put(batch) == 1200
        assert rows.put(batch, replace=False) == 0  # every key holds a row: none written
        assert len(rows.keys("r/")) == 1200 and rows.keys("r/1") == [f"r/{i}" for i in range(1000, 1200)]
        assert rows.delete(["r/0000", "r/0001", "missing"]) == 2
        rows.close()

    async def test_one_failure_fails_only_its_store(self, tmp_path: Path) -> None:
        raw = FileRaw(tmp_path, inline_max=0)
        await raw.store("a", b"1")
        results = await asyncio.gather(raw.store("a/b", b"2"), raw.store("c", b"3"), return_exceptions=True)
        assert isinstance(results[0], RawKeyError) and "clashes" in str(results[0])
        assert isinstance(results[1], RawStat) and await raw.retrieve("c") == b"3"
        await raw.close()

    async def test_stores_are_flushed_before_they_return(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        synced: list[str] = []
        fsync = os.fsync

        def recording(fd: int) -> None:
            fsync(fd)
            synced.append(os.readlink(f"/proc/self/fd/{fd}"))

        monkeypatch.setattr(os, "fsync", recording)
        raw = FileRaw(tmp_path / "store", inline_max=4)
        await raw.store("d/first", b"a first blob")
        # New directories: their names in their parents were flushed as well.
        for directory in ("data/d", "data", "", "meta/d", "meta"):
            assert str(tmp_path / "store" / directory).rstrip("/") in synced
        synced.clear()
        await asyncio.gather(raw.store("d/big", b"a large blob"), raw.store("d/big2", b"another large"))
        # Each file and its metadata file flushed (under their temporary names), then each
        # directory renamed into once.
        assert sum(".nexus-tmp-" in path for path in synced) == 4
        assert sorted(p for p in synced if ".nexus-tmp-" not in p) == [
            str(tmp_path / "store/data/d"),
            str(tmp_path / "store/meta/d"),
        ]
        synced.clear()
        await raw.store("small", b"ab")
        # A row: committed by SQLite with synchronous=FULL (it flushes the write-ahead log), in
        # a database whose name in the store's directory was flushed when it was created.
        assert str(tmp_path / "store") in synced
        with sqlite3.connect(tmp_path / "store/inline.db") as con:
            assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert raw._rows._write_connection().execute("PRAGMA synchronous").fetchone() == (2,)
        await raw.close()

    async def test_crash_during_write_leaves_old_content(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        raw = FileRaw(tmp_path, inline_max=0)
        await raw.store("k", b"old")

        def crash(src, dst):  # type: ignore[no-untyped-def]
            raise OSError(5, "simulated crash before the rename")

        monkeypatch.setattr(os, "replace", crash)
        with pytest.raises(Exception, match="simulated crash"):
            await raw.store("k", b"new content")
        monkeypatch.undo()
        assert await raw.retrieve("k") == b"old"
        leftovers = [p.name for p in (tmp_path / "data").iterdir()]
        assert leftovers == ["k"]  # no temporary file left behind

    async def test_failed_commit_leaves_old_row(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        raw = FileRaw(tmp_path)
        await raw.store("k", b"old")

        def fail(self: InlineBlobs, rows: list[Row]) -> None:
            raise sqlite3.OperationalError("disk I/O error")

        monkeypatch.setattr(InlineBlobs, "put", fail)
        with pytest.raises(RawUnavailableError, match="disk I/O error"):
            await raw.store("k", b"new")
        monkeypatch.undo()
        assert await raw.retrieve("k") == b"old"
        await raw.close()

    async def test_stale_metadata_is_rebuilt(self, tmp_path: Path) -> None:
        raw = FileRaw(tmp_path, inline_max=0)
        await raw.store("k", b"old", "text/plain")
        # A crash between the data rename and the metadata rename: the content is new.
        (tmp_path / "data/k").write_bytes(b"newer")
        stat = await raw.stat("k")
        assert (stat.size, stat.sha256, stat.content_type) == (5, hashlib.sha256(b"newer").hexdigest(), "text/plain")

    async def test_symlink_escape_is_refused(self, tmp_path: Path) -> None:
        raw = FileRaw(tmp_path / "store", inline_max=0)
        await raw.store("inside", b"1")
        (tmp_path / "outside").mkdir()
        (tmp_path / "outside/secret").write_text("host file")
        (tmp_path / "store/data/link").symlink_to(tmp_path / "outside")
        with pytest.raises(RawKeyError, match="outside the store"):
            await raw.store("link/x", b"escape")
        assert not (tmp_path / "outside/x").exists()
        for call in (raw.retrieve, raw.stat, raw.exists, raw.delete):
            with pytest.raises(RawKeyError, match="outside the store"):
                await call("link/secret")
        assert (tmp_path / "outside/secret").read_text() == "host file"
        # A small blob (a row) under that key is refused as well, and no row is written.
        small = FileRaw(tmp_path / "store")
        with pytest.raises(RawKeyError, match="outside the store"):
            await small.store("link/y", b"row")
        assert not (tmp_path / "outside/y").exists()
        assert not (tmp_path / "store/inline.db").exists()  # no row was written
        await small.close()

    async def test_symlinked_blob_is_not_followed(self, tmp_path: Path) -> None:
        raw = FileRaw(tmp_path / "store", inline_max=0)
        await raw.store("d/k", b"1")
        (tmp_path / "secret").write_text("host file")
        (tmp_path / "store/data/d/planted").symlink_to(tmp_path / "secret")
        with pytest.raises(RawKeyError, match="symbolic link"):
            await raw.retrieve("d/planted")

    async def test_listing_stays_inside_the_store(self, tmp_path: Path) -> None:
        # Before the fix, list("../../../etc/") walked the host: the prefix was not checked.
        (tmp_path / "secret.txt").write_text("host file")
        (tmp_path / "events.db").write_text("the event log")
        raw = FileRaw(tmp_path / "store", inline_max=0)
        await raw.store("t/acme/a", b"1")
        for prefix in ("../", "../../", "data/../../", "../../../etc/"):
            with pytest.raises(RawKeyError):
                await raw.list(prefix)
        assert await raw.list_all() == ["t/acme/a"]
        # A directory symlinked out of the store is not listed through either.
        (tmp_path / "outside").mkdir()
        (tmp_path / "outside/leak").write_text("x")
        (tmp_path / "store/data/link").symlink_to(tmp_path / "outside")
        with pytest.raises(RawKeyError, match="outside the store"):
            await raw.list("link/")
        assert await raw.list_all() == ["t/acme/a"]

    async def test_key_clash_is_a_clear_error(self, tmp_path: Path) -> None:
        raw = FileRaw(tmp_path, inline_max=0)
        await raw.store("a", b"1")
        with pytest.raises(RawKeyError, match="clashes"):
            await raw.store("a/b", b"2")

    async def test_url_options(self, tmp_path: Path) -> None:
        raw = await open_raw(f"file://{tmp_path}?fsync=0&inline_max=0")
        assert isinstance(raw, FileRaw) and (raw.fsync, raw.inline_max) == (False, 0)
        with pytest.raises(RawKeyError, match="inline_max"):
            await open_raw(f"file://{tmp_path}?inline_max=lots")

    async def test_storage_wrapper_counts(self, tmp_path: Path) -> None:
        metrics = RecordingMetrics()
        raw = RawStorage(FileRaw(tmp_path), metrics=metrics)
        await raw.store("k", b"abc")
        await raw.retrieve("k")
        with pytest.raises(RawNotFoundError):
            await raw.retrieve("missing")
        assert await raw.store_if_absent("k", b"abc") is None
        assert metrics.count("raw_operations_total", op="retrieve") == 2
        assert metrics.count("raw_operations_total", outcome="RawNotFoundError") == 1
        assert metrics.count("raw_operations_total", op="store_if_absent") == 1
        assert metrics.count("raw_bytes_stored_total") == 3
        await raw.close()


def _mongo_url() -> str | None:
    url = os.environ.get("NEXUS_TEST_MONGO_URL")
    if url:
        return url
    return None


@pytest.fixture(scope="module")
def mongo_url() -> str:
    url = _mongo_url()
    if url:
        yield url
        return
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        pytest.skip("no MongoDB: NEXUS_TEST_MONGO_URL is unset and no Docker engine is reachable (no docker socket)")
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env()
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:
        pytest.skip(f"no MongoDB: NEXUS_TEST_MONGO_URL is unset and no Docker engine is reachable ({exc})")
    from testcontainers.mongodb import MongoDbContainer

    with MongoDbContainer("mongo:7") as container:
        yield container.get_connection_url()


@pytest.mark.mongo
class TestMongoRaw(StoreIfAbsentContract, RawContract):
    @pytest.fixture(autouse=True)
    def _server(self, mongo_url: str) -> None:
        self.server_url = mongo_url

    async def make_raw(self, tmp_path: Path) -> RawBackend:
        import uuid

        base = self.server_url.rstrip("/").split("?")[0]
        return await open_raw(f"{base}/nexus_raw_test?bucket=t{uuid.uuid4().hex[:12]}")
