"""Raw: one contract suite for every backend, plus what is particular to each."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from nexus.hooks import FixedClock, RecordingMetrics
from nexus.raw import (
    RawBackend,
    RawKeyError,
    RawNotFoundError,
    RawQuotaError,
    RawStorage,
    check_key,
    check_prefix,
    key_tenant,
    open_raw,
    ref_key,
    tenant_key,
    tenant_prefix,
)
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


class TestFileRaw(RawContract):
    async def make_raw(self, tmp_path: Path) -> RawBackend:
        return await open_raw(f"file://{tmp_path / 'raw'}")

    async def test_blobs_are_plain_files_beside_metadata(self, tmp_path: Path) -> None:
        raw = FileRaw(tmp_path, clock=FixedClock(42.0))
        await raw.store("x/y.txt", b"hello", "text/plain")
        assert (tmp_path / "data/x/y.txt").read_bytes() == b"hello"
        assert (await raw.stat("x/y.txt")).created == 42.0
        assert (tmp_path / "meta/x/y.txt.json").exists()

    async def test_crash_during_write_leaves_old_content(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        raw = FileRaw(tmp_path)
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

    async def test_stale_metadata_is_rebuilt(self, tmp_path: Path) -> None:
        raw = FileRaw(tmp_path)
        await raw.store("k", b"old", "text/plain")
        # A crash between the data rename and the metadata rename: the content is new.
        (tmp_path / "data/k").write_bytes(b"newer")
        stat = await raw.stat("k")
        assert (stat.size, stat.sha256, stat.content_type) == (5, hashlib.sha256(b"newer").hexdigest(), "text/plain")

    async def test_symlink_escape_is_refused(self, tmp_path: Path) -> None:
        raw = FileRaw(tmp_path / "store")
        await raw.store("inside", b"1")
        (tmp_path / "outside").mkdir()
        (tmp_path / "store/data/link").symlink_to(tmp_path / "outside")
        with pytest.raises(RawKeyError, match="outside the store"):
            await raw.store("link/x", b"escape")
        assert not (tmp_path / "outside/x").exists()

    async def test_listing_stays_inside_the_store(self, tmp_path: Path) -> None:
        # Before the fix, list("../../../etc/") walked the host: the prefix was not checked.
        (tmp_path / "secret.txt").write_text("host file")
        (tmp_path / "events.db").write_text("the event log")
        raw = FileRaw(tmp_path / "store")
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
        raw = FileRaw(tmp_path)
        await raw.store("a", b"1")
        with pytest.raises(RawKeyError, match="clashes"):
            await raw.store("a/b", b"2")

    async def test_storage_wrapper_counts(self, tmp_path: Path) -> None:
        metrics = RecordingMetrics()
        raw = RawStorage(FileRaw(tmp_path), metrics=metrics)
        await raw.store("k", b"abc")
        await raw.retrieve("k")
        with pytest.raises(RawNotFoundError):
            await raw.retrieve("missing")
        assert metrics.count("raw_operations_total", op="retrieve") == 2
        assert metrics.count("raw_operations_total", outcome="RawNotFoundError") == 1
        assert metrics.count("raw_bytes_stored_total") == 3


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
class TestMongoRaw(RawContract):
    @pytest.fixture(autouse=True)
    def _server(self, mongo_url: str) -> None:
        self.server_url = mongo_url

    async def make_raw(self, tmp_path: Path) -> RawBackend:
        import uuid

        base = self.server_url.rstrip("/").split("?")[0]
        return await open_raw(f"{base}/nexus_raw_test?bucket=t{uuid.uuid4().hex[:12]}")
