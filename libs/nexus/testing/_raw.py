"""Raw's behaviour, written once; every backend's test module subclasses it.

Part of ``nexus.testing`` (needs the dev extras: pytest and pytest-asyncio in auto mode).
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nexus.raw import (
    RawBackend,
    RawKeyError,
    RawNotFoundError,
    RawUnavailableError,
    is_ref,
    put_value,
    ref_tenant,
    resolve,
)

__all__ = ["BAD_KEYS", "BAD_PREFIXES", "RawContract"]

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


class RawContract(abc.ABC):
    """The contract of ``nexus.raw.RawBackend``: subclass it per backend as ``Test...`` and
    implement ``make_raw``; pytest then runs every case against that backend.

    The backend may add its own cases to the subclass and use the ``raw`` fixture (a fresh,
    empty store from ``make_raw``, closed after the test).
    """

    @abc.abstractmethod
    async def make_raw(self, tmp_path: Path) -> RawBackend:
        """A new, empty store (skip the test when the backend cannot be reached)."""

    @pytest.fixture
    async def raw(self, tmp_path: Path) -> AsyncIterator[RawBackend]:
        raw = await self.make_raw(tmp_path)
        try:
            yield raw
        finally:
            await raw.close()

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

    async def test_racing_stores_of_one_key_leave_one_of_them(self, raw: RawBackend) -> None:
        # Content-addressed keys (refs/<sha256>) collide by design, so stores of one key race.
        # Whatever their order, the key ends up holding one of the stored blobs, whole and with
        # its own stat, never nothing; reads racing them return a stored content, never fail.
        await raw.store("race/k", b"initial")
        contents = [f"content {i};".encode() * (i + 1) for i in range(8)]
        results = await asyncio.gather(
            *(raw.store("race/k", content, f"text/x-{i}") for i, content in enumerate(contents)),
            *(raw.retrieve("race/k") for _ in range(8)),
        )
        assert all(read in [b"initial", *contents] for read in results[len(contents) :])
        final = await raw.retrieve("race/k")
        assert final in contents
        stat = await raw.stat("race/k")
        expected = (len(final), hashlib.sha256(final).hexdigest(), f"text/x-{contents.index(final)}")
        assert (stat.size, stat.sha256, stat.content_type) == expected
        assert await raw.list_all("race/") == ["race/k"]
        # The same content from every writer at once (one value stored by several workers).
        await asyncio.gather(*(raw.store("race/same", b"same value") for _ in range(8)))
        assert await raw.retrieve("race/same") == b"same value"
        assert await raw.list_all("race/") == ["race/k", "race/same"]

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
