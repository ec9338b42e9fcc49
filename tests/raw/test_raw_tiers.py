"""Seed 002's storage tiers: inline under 1 KB, kv:// up to the kv limit, r2:// above, each a key in
the tenant's namespace of the platform's Raw."""

from __future__ import annotations

import pytest

from nexus.raw import (
    RawKeyError,
    RawNotFoundError,
    RefPolicy,
    is_ref,
    key_tenant,
    put_ref,
    put_value,
    ref_key,
    resolve,
)
from nexus.raw.memory import MemoryRaw


async def test_each_size_goes_to_its_tier_and_resolves_back() -> None:
    raw = MemoryRaw()
    policy = RefPolicy(inline_max=1024, kv_max=4096)
    small = {"topic": "tea"}
    medium = {"text": "m" * 2000}
    large = {"text": "l" * 5000}

    # Under 1 KB the value itself travels; nothing is stored.
    assert await put_ref(raw, small, namespace="input", tenant="acme", policy=policy) == small
    assert await raw.list_all() == []
    # Up to the kv limit: kv://namespace/key, placed under the tenant's kv/ prefix.
    kv = await put_ref(raw, medium, namespace="input", name="exec_123", tenant="acme", policy=policy)
    assert kv == "kv://input/exec_123" and is_ref(kv)
    assert await raw.exists("t/acme/kv/input/exec_123")
    # Above it: r2://bucket/path, under the r2/ prefix.
    r2 = await put_ref(raw, large, namespace="output", name="struct/789.json", tenant="acme", policy=policy)
    assert r2 == "r2://output/struct/789.json"
    assert await raw.exists("t/acme/r2/output/struct/789.json")

    for ref, value in ((kv, medium), (r2, large)):
        assert await resolve(raw, ref, tenant="acme", policy=policy) == value
    # Inline data resolves to itself, and raw:// references keep working as before.
    assert await resolve(raw, small, tenant="acme") == small
    legacy = await put_value(raw, large, tenant="acme")
    assert legacy.startswith("raw://t/acme/") and await resolve(raw, legacy, tenant="acme") == large


async def test_a_tier_reference_never_reaches_another_tenants_data() -> None:
    raw = MemoryRaw()
    ref = await put_ref(raw, {"secret": "s" * 2000}, namespace="input", name="plan", tenant="acme")
    # Bob presenting Acme's reference names a key in his own namespace: nothing is there.
    with pytest.raises(RawNotFoundError):
        await resolve(raw, ref, tenant="bob")
    # The platform (no tenant) reads its own namespace, not Acme's.
    with pytest.raises(RawNotFoundError):
        await resolve(raw, ref)
    assert key_tenant(ref_key(ref, tenant="acme")) == "acme"
    assert key_tenant(ref_key(ref, tenant="bob")) == "bob"
    assert key_tenant(ref_key(ref)) == "platform"


@pytest.mark.parametrize(
    "ref",
    ["kv://", "kv://only-namespace", "kv:///key", "r2://bucket/", "kv://ns/../../../etc/passwd", "r2://b/a//c"],
)
def test_malformed_tier_references_are_refused(ref: str) -> None:
    with pytest.raises(RawKeyError):
        ref_key(ref, tenant="acme")


async def test_a_string_that_looks_like_a_reference_is_stored_not_inlined() -> None:
    raw = MemoryRaw()
    for text in ("kv://input/x", "r2://b/p", "raw://k"):
        ref = await put_ref(raw, text, namespace="n", tenant="acme")
        assert ref != text and await resolve(raw, ref, tenant="acme") == text
    with pytest.raises(RawKeyError):
        await put_ref(raw, "x" * 2000, namespace="a/b", tenant="acme")


def test_the_policy_is_read_from_the_environment() -> None:
    policy = RefPolicy.from_env(
        {
            "NEXUS_REF_INLINE_MAX": "512",
            "NEXUS_REF_KV_MAX": "1048576",
            "NEXUS_REF_KV_PREFIX": "fast",
            "NEXUS_REF_R2_PREFIX": "bulk/",
        }
    )
    assert policy == RefPolicy(inline_max=512, kv_max=1_048_576, kv_prefix="fast/", r2_prefix="bulk/")
    assert [policy.tier(n) for n in (511, 512, 1_048_576, 1_048_577)] == ["inline", "kv", "kv", "r2"]
    assert ref_key("kv://input/x", tenant="acme", policy=policy) == "t/acme/fast/input/x"
    assert ref_key("r2://b/p", policy=policy) == "bulk/b/p"
    assert RefPolicy.from_env({}) == RefPolicy()
    with pytest.raises(RawKeyError, match="NEXUS_REF_KV_MAX"):
        RefPolicy.from_env({"NEXUS_REF_KV_MAX": "lots"})
    with pytest.raises(RawKeyError, match="below the inline limit"):
        RefPolicy.from_env({"NEXUS_REF_INLINE_MAX": "4096", "NEXUS_REF_KV_MAX": "1024"})
    with pytest.raises(RawKeyError):
        RefPolicy.from_env({"NEXUS_REF_KV_PREFIX": "../x"})
