"""Raw: one contract suite for every backend, plus what is particular to each."""

from __future__ import annotations

import asyncio
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
    RawUnavailableError,
    check_key,
    check_prefix,
    is_ref,
    key_tenant,
    open_raw,
    put_value,
    ref_key,
    ref_tenant,
    resolve,
    tenant_key,
    tenant_prefix,
)
from nexus.raw.file import FileRaw

BAD_KEYS = [
    "",
    "/abs",
    "/etc/passwd",
    "../x",
    "..",
    "a/../../x",
    "a/..",
    "a//b",
    "a/./b",
    "back\\slash",
    "..\\..\\x",
    "nul\x00byte",
    "new\nline",
    "del\x7f",
    "lone\udcffsurrogate",
    "x" * 1025,
    "a/",
]
BAD_PREFIXES = ["../", "../../../etc/", "..", "a/../../", "/", "/etc", "a//", "./", "a\\..", "nul\x00", "x" * 1025]


class RawContract:
    """What every backend must do. Subclasses provide ``raw`` as a fixture."""

    async def test_store_retrieve_stat(self, raw: RawBackend) -> None:
        stat = await raw.store("a/b.json", b'{"x": 1}', "application/json")
        assert (stat.key, stat.size, stat.content_type) == ("a/b.json", 8, "application/json")
        assert stat.sha256 == hashlib.sha256(b'{"x": 1}').hexdigest()
        assert await raw.retrieve("a/b.json") == b'{"x": 1}'
        again = await raw.stat("a/b.json")
        assert (again.size, again.sha256, again.content_type) == (8, stat.sha256, "application/json")
        assert await raw.exists("a/b.json")
        assert not await raw.exists("a/missing")

    async def test_overwrite_replaces(self, raw: RawBackend) -> None:
        await raw.store("k", b"one")
        await raw.store("k", b"two!")
        assert await raw.retrieve("k") == b"two!"
        assert (await raw.stat("k")).size == 4
        assert await raw.list_all() == ["k"]

    async def test_missing_keys(self, raw: RawBackend) -> None:
        for call in (raw.retrieve, raw.stat, raw.delete):
            with pytest.raises(RawNotFoundError, match=r"non-existent\.txt"):
                await call("non-existent.txt")

    async def test_delete(self, raw: RawBackend) -> None:
        await raw.store("d/x", b"1")
        await raw.delete("d/x")
        assert not await raw.exists("d/x")
        assert await raw.list_all() == []

    async def test_list_prefix_and_pages(self, raw: RawBackend) -> None:
        keys = [f"p/{i:03d}" for i in range(25)] + ["q/1", "pz"]
        await asyncio.gather(*(raw.store(k, k.encode()) for k in keys))
        page = await raw.list("p/", limit=10)
        assert page.keys == [f"p/{i:03d}" for i in range(10)] and page.cursor == "p/009"
        collected = list(page.keys)
        while page.cursor:
            page = await raw.list("p/", page.cursor, limit=10)
            collected.extend(page.keys)
        assert collected == [f"p/{i:03d}" for i in range(25)]
        assert await raw.list_all("p") == [*(f"p/{i:03d}" for i in range(25)), "pz"]
        assert (await raw.list("nothing/")).keys == []

    @pytest.mark.parametrize("key", BAD_KEYS)
    async def test_bad_keys_are_refused(self, raw: RawBackend, key: str) -> None:
        # Every operation that takes a key refuses it before touching the store.
        with pytest.raises(RawKeyError):
            await raw.store(key, b"x")
        for call in (raw.retrieve, raw.exists, raw.stat, raw.delete):
            with pytest.raises(RawKeyError):
                await call(key)

    @pytest.mark.parametrize("prefix", BAD_PREFIXES)
    async def test_traversal_prefixes_are_refused(self, raw: RawBackend, prefix: str) -> None:
        await raw.store("inside/k", b"1")
        with pytest.raises(RawKeyError, match="prefix"):
            await raw.list(prefix)

    async def test_good_prefixes_list(self, raw: RawBackend) -> None:
        await raw.store("t/acme/a/b", b"1")
        await raw.store("t/acme/c", b"2")
        await raw.store("t/bob/x", b"3")
        assert (await raw.list("t/acme/")).keys == ["t/acme/a/b", "t/acme/c"]
        assert (await raw.list("t/acme/a")).keys == ["t/acme/a/b"]
        assert (await raw.list("")).keys == ["t/acme/a/b", "t/acme/c", "t/bob/x"]

    async def test_traversal_reference_is_a_key_error_not_unavailable(self, raw: RawBackend) -> None:
        # raw://../../etc/passwd is the caller's mistake (a 400), never "retry later".
        with pytest.raises(RawKeyError, match=r"'\.\.'") as caught:
            await resolve(raw, "raw://../../etc/passwd")
        assert not isinstance(caught.value, RawUnavailableError)

    async def test_tenant_references(self, raw: RawBackend) -> None:
        large = {"text": "y" * 2000}
        ref = await put_value(raw, large, tenant="acme")
        assert ref.startswith("raw://t/acme/refs/") and ref_tenant(ref) == "acme"
        assert await resolve(raw, ref, tenant="acme") == large
        assert await resolve(raw, ref) == large  # the platform (or an admin) reads any key
        # Another tenant is answered exactly as for a missing key.
        with pytest.raises(RawNotFoundError):
            await resolve(raw, ref, tenant="bob")
        with pytest.raises(RawKeyError, match="outside tenant 'bob'"):
            await put_value(raw, large, key="t/acme/stolen", tenant="bob")

    async def test_parallel_stores(self, raw: RawBackend) -> None:
        await asyncio.gather(*(raw.store(f"file-{i}.dat", f"data-{i}".encode()) for i in range(100)))
        assert len(await raw.list_all("file-")) == 100
        assert await raw.retrieve("file-42.dat") == b"data-42"

    async def test_references(self, raw: RawBackend) -> None:
        small = {"n": 1}
        assert await put_value(raw, small) == small
        large = {"text": "x" * 2000}
        ref = await put_value(raw, large)
        assert is_ref(ref) and ref.startswith("raw://refs/")
        assert await resolve(raw, ref) == large
        assert await resolve(raw, small) == small
        # A string that looks like a reference is stored, so it is never taken for one.
        tricky = await put_value(raw, "raw://not-a-ref")
        assert tricky != "raw://not-a-ref" and await resolve(raw, tricky) == "raw://not-a-ref"


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
    @pytest.fixture
    async def raw(self) -> RawBackend:
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
    @pytest.fixture
    async def raw(self, tmp_path: Path) -> RawBackend:
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
    @pytest.fixture
    async def raw(self, mongo_url: str) -> RawBackend:
        import uuid

        base = mongo_url.rstrip("/").split("?")[0]
        backend = await open_raw(f"{base}/nexus_raw_test?bucket=t{uuid.uuid4().hex[:12]}")
        yield backend
        await backend.close()
