"""Studio's blob routes: versions, conflicts, patches, tombstones, owners, content in Raw, replay."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from nexus.auth import issue_key
from nexus.eventlog.memory import MemoryEventLog
from nexus.proto import new_event
from nexus.proto.events.studio import Delta
from nexus.proto.events.workflow import SchemaRegistered
from nexus.raw.memory import MemoryRaw
from nexus.replay import state_digest
from nexus.runtime import Service
from nexus.services.studio.blobs import BLOBS, BlobConflict, Blobs
from nexus.services.studio.deltas import apply_deltas
from nexus.services.studio.projections import Studio
from nexus.services.studio.state import StudioState
from tests.inprocess import build


@dataclass
class Caller:
    """One key's view of the studio over HTTP."""

    http: aiohttp.ClientSession
    base: str
    key: str

    async def call(self, method: str, path: str, body: Any = None, **kwargs: Any) -> tuple[int, Any]:
        headers = {"X-API-Key": self.key, **kwargs.pop("headers", {})}
        if body is not None:
            kwargs["data"] = msgspec.json.encode(body)
            headers.setdefault("Content-Type", "application/json")
        async with self.http.request(method, self.base + path, headers=headers, **kwargs) as resp:
            text = await resp.read()
            return resp.status, (msgspec.json.decode(text) if text else None)


@dataclass
class Studio_:
    service: Service
    log: MemoryEventLog
    raw: MemoryRaw
    acme: Caller
    bob: Caller
    admin: Caller

    @property
    def blobs(self) -> Blobs:
        return self.service.app[BLOBS]


@pytest.fixture
async def studio(tmp_path: Path) -> AsyncIterator[Studio_]:
    log, raw = MemoryEventLog(), MemoryRaw()
    service = await build("studio", tmp_path, log=log, raw=raw, NEXUS_STUDIO_MAX_BLOB_BYTES="4096")
    await service.start()
    keys = [
        (await issue_key(log, "client", "acme")).secret,
        (await issue_key(log, "client", "bob")).secret,
        (await issue_key(log, "client", "ops", scopes=("admin",))).secret,
    ]
    base = f"http://127.0.0.1:{service.port}"
    try:
        async with aiohttp.ClientSession() as http:
            acme, bob, admin = (Caller(http, base, key) for key in keys)
            yield Studio_(service, log, raw, acme, bob, admin)
    finally:
        await service.stop()


CHAPTER = {"title": "One", "text": "It was a dark night.", "characters": ["Ana"]}


async def test_a_blob_lives_through_versions_patches_and_its_tombstone(studio: Studio_) -> None:
    acme = studio.acme
    # Created: version 1, no deltas, an ETag naming the version.
    status, made = await acme.call(
        "POST",
        "/blobs",
        {"content": CHAPTER, "content_type": "application/json", "metadata": {"type": "chapter", "book": "b1"}},
    )
    assert status == 201, made
    blob_id = made["id"]
    assert made["version"] == 1 and made["deltas"] == [] and made["metadata"]["type"] == "chapter"
    status, got = await acme.call("GET", f"/blobs/{blob_id}")
    assert status == 200 and got["content"] == CHAPTER and got["version"] == 1 and got["parent_id"] is None
    assert set(got) >= {"id", "version", "content", "content_type", "metadata", "parent_id", "created_at", "updated_at"}

    # PUT needs the version it replaces: 428 without, 409 naming the current one when stale.
    second = {**CHAPTER, "characters": ["Ana", "Ben"]}
    status, err = await acme.call("PUT", f"/blobs/{blob_id}", {"content": second})
    assert status == 428 and "If-Match" in err["message"]
    status, err = await acme.call("PUT", f"/blobs/{blob_id}", {"content": second}, headers={"If-Match": '"7"'})
    assert status == 409 and "version 1" in err["message"]
    status, err = await acme.call(
        "PUT", f"/blobs/{blob_id}", {"content": second, "expected_version": 2}, headers={"If-Match": '"1"'}
    )
    assert status == 400 and "disagree" in err["message"]
    status, put = await acme.call("PUT", f"/blobs/{blob_id}", {"content": second}, headers={"If-Match": '"1"'})
    assert status == 200, put
    assert put["version"] == 2 and put["deltas"] == [
        {"kind": "json-patch", "operations": [{"op": "add", "path": "/characters/1", "value": "Ben"}]}
    ]
    # The body's expected_version works as If-Match does.
    third = {**second, "title": "One (revised)"}
    status, put = await acme.call(
        "PUT", f"/blobs/{blob_id}", {"content": third, "expected_version": 2, "metadata": {"type": "chapter", "rev": 3}}
    )
    assert status == 200 and put["version"] == 3 and put["metadata"] == {"type": "chapter", "rev": 3}

    # PATCH: the client's operations are the version's delta; a failing one is named by index.
    ops = [
        {"op": "test", "path": "/title", "value": "One (revised)"},
        {"op": "replace", "path": "/text", "value": "Dawn."},
    ]
    status, patched = await acme.call(
        "PATCH", f"/blobs/{blob_id}", ops, headers={"Content-Type": "application/json-patch+json"}
    )
    assert status == 200, patched
    assert patched["version"] == 4 and patched["deltas"] == [{"kind": "json-patch", "operations": ops}]
    status, err = await acme.call(
        "PATCH", f"/blobs/{blob_id}", [{"op": "add", "path": "/x", "value": 1}, {"op": "remove", "path": "/nope"}]
    )
    assert status == 400 and "operation 1 (remove /nope)" in err["message"]
    status, err = await acme.call("PATCH", f"/blobs/{blob_id}", ops[1:], headers={"If-Match": '"2"'})
    assert status == 409 and "version 4" in err["message"]
    status, err = await acme.call("PATCH", f"/blobs/{blob_id}", {"op": "add"})
    assert status == 400

    # Versions and deltas: applying 2..4 to version 1 gives version 4 exactly.
    status, versions = await acme.call("GET", f"/blobs/{blob_id}/versions")
    assert [v["reason"] for v in versions["versions"]] == ["create", "update", "update", "patch"]
    status, deltas = await acme.call("GET", f"/blobs/{blob_id}/deltas")
    assert status == 200 and deltas["from"] == 1 and deltas["to"] == 4 and len(deltas["versions"]) == 3
    v1, _ = await studio.blobs.read(blob_id, 1)
    v4, _ = await studio.blobs.read(blob_id)
    replayed = apply_deltas(v1, *[msgspec.convert(v["deltas"], list[Delta]) for v in deltas["versions"]])
    assert replayed == v4 and msgspec.json.decode(v4)["text"] == "Dawn."
    status, some = await acme.call("GET", f"/blobs/{blob_id}/deltas", params={"from": "2", "to": "3"})
    assert [v["version"] for v in some["versions"]] == [3]
    assert (await acme.call("GET", f"/blobs/{blob_id}/deltas", params={"from": "3", "to": "2"}))[0] == 400
    assert (await acme.call("GET", f"/blobs/{blob_id}/deltas", params={"to": "9"}))[0] == 404
    status, old = await acme.call("GET", f"/blobs/{blob_id}", params={"version": "2"})
    assert status == 200 and old["content"] == second and old["latest_version"] == 4

    # DELETE: a tombstone. The current version is gone (410); the versions stay readable.
    assert (await acme.call("DELETE", f"/blobs/{blob_id}"))[0] == 204
    assert (await acme.call("GET", f"/blobs/{blob_id}"))[0] == 410
    status, old = await acme.call("GET", f"/blobs/{blob_id}", params={"version": "4"})
    assert status == 200 and old["deleted"] is True and old["content"]["text"] == "Dawn."
    assert (await acme.call("GET", f"/blobs/{blob_id}/versions"))[1]["deleted"] is True
    assert (await acme.call("PUT", f"/blobs/{blob_id}", {"content": {}}, headers={"If-Match": "4"}))[0] == 410
    assert (await acme.call("PATCH", f"/blobs/{blob_id}", ops[1:]))[0] == 410
    assert (await acme.call("DELETE", f"/blobs/{blob_id}"))[0] == 410
    # One stream, one event per write (create, two updates, a patch, the tombstone).
    events = await studio.log.read_stream(f"blob-{blob_id}")
    assert [e.type.rsplit(".", 1)[1] for e in events] == ["created", "updated", "updated", "updated", "deleted"]
    assert all(e.tenant == "acme" for e in events)


async def test_another_client_gets_404_everywhere(studio: Studio_) -> None:
    status, made = await studio.acme.call("POST", "/blobs", {"content": "secret\n", "content_type": "text/plain"})
    blob_id = made["id"]
    bob = studio.bob
    for method, path, body in [
        ("GET", f"/blobs/{blob_id}", None),
        ("GET", f"/blobs/{blob_id}/versions", None),
        ("GET", f"/blobs/{blob_id}/deltas", None),
        ("PUT", f"/blobs/{blob_id}", {"content": "mine\n", "expected_version": 1}),
        ("PATCH", f"/blobs/{blob_id}", []),
        ("DELETE", f"/blobs/{blob_id}", None),
        ("POST", "/blobs/validate", {"blob_id": blob_id}),
        ("POST", "/blobs/metadata", {"blob_id": blob_id}),
    ]:
        status, err = await bob.call(method, path, body)
        assert status == 404, (method, path, status, err)
        # The same answer as for a blob that does not exist.
        missing = path.replace(blob_id, "01900000-0000-7000-8000-000000000000")
        if body and "blob_id" in body:
            body = {**body, "blob_id": "01900000-0000-7000-8000-000000000000"}
        assert (await bob.call(method, missing, body))[0] == 404
    # Nor can bob derive from it, list it, or ask for acme's listing.
    status, err = await bob.call("POST", "/blobs", {"content": "x", "content_type": "text/plain", "parent_id": blob_id})
    assert status == 400 and "parent_id" in err["message"]
    assert (await bob.call("GET", "/blobs"))[1]["blobs"] == []
    assert (await bob.call("GET", "/blobs", params={"owner": "acme"}))[0] == 400
    # Nothing changed, and an admin sees it.
    status, got = await studio.admin.call("GET", f"/blobs/{blob_id}")
    assert status == 200 and got["content"] == "secret\n" and got["version"] == 1 and got["owner"] == "acme"


async def test_listing_filters_and_pages(studio: Studio_) -> None:
    acme = studio.acme
    ids = []
    for i in range(5):
        kind = "chapter" if i % 2 == 0 else "note"
        _, made = await acme.call(
            "POST",
            "/blobs",
            {"content": {"n": i}, "content_type": "application/json", "metadata": {"type": kind, "n": i}},
        )
        ids.append(made["id"])
    _, text = await acme.call("POST", "/blobs", {"content": "t", "content_type": "text/plain; charset=utf-8"})
    await studio.bob.call(
        "POST", "/blobs", {"content": {"n": 0}, "content_type": "application/json", "metadata": {"type": "chapter"}}
    )
    await acme.call("DELETE", f"/blobs/{ids[4]}")

    _, page = await acme.call("GET", "/blobs", params={"metadata.type": "chapter"})
    assert [b["id"] for b in page["blobs"]] == [ids[0], ids[2]] and page["next_cursor"] is None
    _, page = await acme.call("GET", "/blobs", params={"metadata.type": "chapter", "include_deleted": "true"})
    assert [b["id"] for b in page["blobs"]] == [ids[0], ids[2], ids[4]]
    _, page = await acme.call("GET", "/blobs", params={"metadata.n": "3"})
    assert [b["id"] for b in page["blobs"]] == [ids[3]]
    _, page = await acme.call("GET", "/blobs", params={"type": "text/plain"})
    assert [b["id"] for b in page["blobs"]] == [text["id"]]
    # Pages of two, each from the previous one's cursor.
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        _, page = await acme.call("GET", "/blobs", params=params)
        seen += [b["id"] for b in page["blobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted([*ids[:4], text["id"]])
    assert (await acme.call("GET", "/blobs", params={"limit": "0"}))[0] == 400
    # An admin sees every client's, or one client's with owner.
    _, page = await studio.admin.call("GET", "/blobs", params={"metadata.type": "chapter"})
    assert {b["owner"] for b in page["blobs"]} == {"acme", "bob"}
    _, page = await studio.admin.call("GET", "/blobs", params={"owner": "bob"})
    assert [b["owner"] for b in page["blobs"]] == ["bob"]


async def test_equal_content_is_stored_once_per_owner(studio: Studio_) -> None:
    acme = studio.acme
    _, a = await acme.call("POST", "/blobs", {"content": {"a": 1, "b": 2}, "content_type": "application/json"})
    # The same document with its keys in another order is the same canonical content.
    body = b'{"content": {"b": 2, "a": 1}, "content_type": "application/json"}'
    async with acme.http.post(acme.base + "/blobs", data=body, headers={"X-API-Key": acme.key}) as resp:
        b = await resp.json()
    assert a["sha256"] == b["sha256"] and a["id"] != b["id"]
    await acme.call("PUT", f"/blobs/{a['id']}", {"content": {"a": 1, "b": 3}, "expected_version": 1})
    await acme.call("PUT", f"/blobs/{a['id']}", {"content": {"a": 1, "b": 2}, "expected_version": 2})
    await studio.bob.call("POST", "/blobs", {"content": {"a": 1, "b": 2}, "content_type": "application/json"})
    keys = await studio.raw.list_all("t/")
    digest = hashlib.sha256(b'{"a":1,"b":2}').hexdigest()
    assert a["sha256"] == digest
    # Two contents for acme (whatever the blobs and versions holding them), one for bob.
    assert sorted(keys) == sorted(
        [
            f"t/acme/studio/sha256/{digest}",
            "t/acme/studio/sha256/" + hashlib.sha256(b'{"a":1,"b":3}').hexdigest(),
            f"t/bob/studio/sha256/{digest}",
        ]
    )


async def test_text_binary_and_refused_content(studio: Studio_) -> None:
    acme = studio.acme
    _, text = await acme.call("POST", "/blobs", {"content": "a\nb\n", "content_type": "text/markdown"})
    _, put = await acme.call("PUT", f"/blobs/{text['id']}", {"content": "a\nB\nb\n", "expected_version": 1})
    assert put["deltas"] == [{"kind": "text-diff", "operations": [{"at": 1, "delete": 0, "insert": ["B\n"]}]}]
    # Bytes travel as base64 and change by replace.
    png = bytes(range(256))
    status, binary = await acme.call(
        "POST", "/blobs", {"content_base64": base64.b64encode(png).decode(), "content_type": "image/png"}
    )
    assert status == 201
    status, got = await acme.call("GET", f"/blobs/{binary['id']}")
    assert base64.b64decode(got["content_base64"]) == png and "content" not in got
    _, put = await acme.call("PUT", f"/blobs/{binary['id']}", {"content_base64": "AAE=", "expected_version": 1})
    assert put["deltas"][0]["kind"] == "replace" and put["deltas"][0]["operations"][0]["size"] == 2
    # A patch applies to JSON only.
    status, err = await acme.call("PATCH", f"/blobs/{text['id']}", [{"op": "add", "path": "/a", "value": 1}])
    assert status == 400 and "JSON content only" in err["message"]
    for body, words in [
        ({"content": "x", "content_type": "image/png"}, "content_base64"),
        ({"content": 3, "content_type": "text/plain"}, "must be a string"),
        ({"content_type": "application/json"}, "content is missing"),
        ({"content": 1, "content_base64": "AA==", "content_type": "application/json"}, "not both"),
        ({"content_base64": "!!", "content_type": "image/png"}, "not valid base64"),
        ({"content_base64": base64.b64encode(b"{").decode(), "content_type": "application/json"}, "not JSON"),
        ({"content_base64": base64.b64encode(b"\xff").decode(), "content_type": "text/plain"}, "UTF-8"),
        ({"content": 1, "content_type": "nonsense"}, "media type"),
        ({"content": 1, "content_type": "application/json", "extra": 1}, "extra"),
        ({"content": 1, "content_type": "application/json", "metadata": []}, "metadata"),
    ]:
        status, err = await acme.call("POST", "/blobs", body)
        assert status == 400 and words in err["message"], (body, err)
    # Content above NEXUS_STUDIO_MAX_BLOB_BYTES (4096 here) is 413, and nothing is stored.
    status, err = await acme.call("POST", "/blobs", {"content": "x" * 5000, "content_type": "text/plain"})
    assert status == 413 and "4096" in err["message"]
    deep: Any = 1
    for _ in range(70):
        deep = [deep]
    assert (await acme.call("POST", "/blobs", {"content": deep, "content_type": "application/json"}))[0] == 400


async def test_two_writers_at_one_version_one_wins(studio: Studio_) -> None:
    blob = await studio.blobs.create("acme", "key:a", {"v": 0}, "application/json")
    results = await asyncio.gather(
        *(studio.blobs.update(blob.blob_id, "key:a", {"v": i}, expected_version=1) for i in range(1, 6)),
        return_exceptions=True,
    )
    wins = [r for r in results if not isinstance(r, BaseException)]
    conflicts = [r for r in results if isinstance(r, BlobConflict)]
    assert len(wins) == 1 and len(conflicts) == 4
    assert all(c.current == 2 and "version 2" in c.message for c in conflicts)
    # Writers without an expected version all land, one after another.
    await asyncio.gather(*(studio.blobs.update(blob.blob_id, "key:a", {"v": i}) for i in range(10, 15)))
    assert studio.blobs.get(blob.blob_id).version == 7
    # Patches without one too: each increments what the last one left.
    inc = [{"op": "add", "path": "/n-", "value": 1}]
    await asyncio.gather(*(studio.blobs.patch(blob.blob_id, inc, "key:a") for _ in range(3)))
    assert studio.blobs.get(blob.blob_id).version == 10


async def test_a_chosen_id_makes_create_idempotent(studio: Studio_) -> None:
    blobs = studio.blobs
    first = await blobs.create("acme", "run:e1", "derived\n", "text/plain", {"k": 1}, blob_id="e1.derived")
    again = await blobs.create("acme", "run:e1", "derived\n", "text/plain", {"k": 1}, blob_id="e1.derived")
    assert again is first and first.version == 1
    assert len(await studio.log.read_stream("blob-e1.derived")) == 1
    # Racing creators of one id: one event, every one answered the same blob.
    raced = await asyncio.gather(*(blobs.create("acme", "run:e2", "x", "text/plain", blob_id="e2.d") for _ in range(4)))
    assert {b.blob_id for b in raced} == {"e2.d"} and len(await studio.log.read_stream("blob-e2.d")) == 1
    with pytest.raises(BlobConflict, match="taken by other content"):
        await blobs.create("acme", "run:e1", "other\n", "text/plain", blob_id="e1.derived")
    with pytest.raises(BlobConflict):
        await blobs.create("bob", "run:e1", "derived\n", "text/plain", blob_id="e1.derived")
    with pytest.raises(Exception, match="is not 1-128"):
        await blobs.create("acme", "run:e1", "x", "text/plain", blob_id="../etc")


async def test_validate_and_metadata(studio: Studio_) -> None:
    acme = studio.acme
    # A schema acme registered in the workflow service, as the workflow service records it.
    schema = {
        "id": "chapter_v1",
        "definition": {"type": "object", "required": ["title"], "properties": {"title": {"type": "string"}}},
    }
    event = new_event(
        "nexus.workflow.schema.registered",
        SchemaRegistered(schema_id="chapter_v1", version=1, document=schema, tenant="acme"),
        source="nexus/workflow",
        tenant="acme",
    )
    await studio.log.append("schema-acme.chapter_v1", [event])
    _, good = await acme.call(
        "POST", "/blobs", {"content": CHAPTER, "content_type": "application/json", "metadata": {"type": "chapter"}}
    )
    _, bad = await acme.call("POST", "/blobs", {"content": {"title": 3}, "content_type": "application/json"})
    _, text = await acme.call("POST", "/blobs", {"content": "one two\nthree\n", "content_type": "text/plain"})

    status, answer = await acme.call("POST", "/blobs/validate", {"blob_id": good["id"], "schema_id": "chapter_v1"})
    assert status == 200 and answer["valid"] is True and answer["errors"] == [] and answer["schema_version"] == 1
    _, answer = await acme.call("POST", "/blobs/validate", {"blob_id": bad["id"], "schema_id": "chapter_v1"})
    assert answer["valid"] is False and answer["errors"] == [{"path": "/title", "message": "3 is not of type 'string'"}]
    _, answer = await acme.call("POST", "/blobs/validate", {"blob_id": text["id"], "schema_id": "chapter_v1"})
    assert answer["valid"] is False and "not JSON" in answer["errors"][0]["message"]
    # Without a schema: well formed for its type (the seed's workflow passes none).
    _, answer = await acme.call("POST", "/blobs/validate", {"blob_id": text["id"], "schema_id": None})
    assert answer["valid"] is True
    # Another client's schema of that name is not acme's; bob cannot use acme's.
    status, err = await acme.call("POST", "/blobs/validate", {"blob_id": good["id"], "schema_id": "nope"})
    assert status == 400 and "nope" in err["message"]
    _, bobs = await studio.bob.call("POST", "/blobs", {"content": CHAPTER, "content_type": "application/json"})
    status, _ = await studio.bob.call("POST", "/blobs/validate", {"blob_id": bobs["id"], "schema_id": "chapter_v1"})
    assert status == 400
    assert (await acme.call("POST", "/blobs/validate", {"blob_id": good["id"], "extra": 1}))[0] == 400

    status, facts = await acme.call(
        "POST", "/blobs/metadata", {"blob_id": good["id"], "extract_fields": ["content_type", "size", "checksum"]}
    )
    assert status == 200 and facts == {
        "content_type": "application/json",
        "size": good["size"],
        "checksum": f"sha256:{good['sha256']}",
    }
    _, facts = await acme.call(
        "POST",
        "/blobs/metadata",
        {"blob_id": text["id"], "extract_fields": ["line_count", "word_count", "version", "metadata.type"]},
    )
    assert facts == {"line_count": 2, "word_count": 3, "version": 1, "metadata.type": None}
    _, facts = await acme.call("POST", "/blobs/metadata", {"blob_id": good["id"]})
    assert set(facts) == {"content_type", "size", "checksum"}
    status, err = await acme.call("POST", "/blobs/metadata", {"blob_id": good["id"], "extract_fields": ["secrets"]})
    assert status == 400 and "secrets" in err["message"]


async def test_replay_of_the_log_rebuilds_the_running_state(studio: Studio_) -> None:
    acme = studio.acme
    _, parent = await acme.call("POST", "/blobs", {"content": CHAPTER, "content_type": "application/json"})
    _, child = await acme.call(
        "POST", "/blobs", {"content": "c\n", "content_type": "text/plain", "parent_id": parent["id"]}
    )
    await acme.call("PATCH", f"/blobs/{parent['id']}", [{"op": "add", "path": "/x", "value": [1, 2]}])
    await acme.call("PUT", f"/blobs/{child['id']}", {"content": "c\nd\n", "expected_version": 1})
    await acme.call("DELETE", f"/blobs/{child['id']}")
    projection = Studio()
    # The state the service answers from, and a fresh fold of the log (what `nexus replay
    # --verify` builds): the same documents, the same digest.
    running = studio.blobs.ctx.state
    fresh = StudioState()
    for event in await studio.log.read_all(1):
        fresh.apply(event)
    assert fresh.snapshot() == running.snapshot()
    assert state_digest("studio", projection.state(fresh)) == state_digest("studio", projection.state(running))
    check = await projection.check_running(studio.log)
    assert check.digest == state_digest("studio", projection.state(running))
    assert running.blobs[parent["id"]].children == [child["id"]]
    assert running.blobs[child["id"]].deleted and running.blobs[parent["id"]].version == 2


async def test_content_streams_in_and_out_as_it_is(studio: Studio_) -> None:
    acme = studio.acme
    http, base = acme.http, acme.base
    data = bytes(range(256)) * 12  # 3 KiB of bytes, no JSON around them
    headers = {"X-API-Key": acme.key, "Content-Type": "application/pdf"}
    async with http.post(base + "/blobs/content", data=data, headers=headers, params={"metadata.type": "scan"}) as r:
        made = await r.json()
        assert r.status == 201, made
    assert made["metadata"] == {"type": "scan"} and made["size"] == len(data)
    async with http.get(base + f"/blobs/{made['id']}/content", headers={"X-API-Key": acme.key}) as r:
        assert r.status == 200 and r.headers["Content-Type"] == "application/pdf" and r.headers["ETag"] == '"1"'
        assert await r.read() == data
        # The writer chose the type: in a browser the content is sandboxed (no script, no cookie).
        assert r.headers["Content-Security-Policy"].startswith("sandbox")
        assert r.headers["X-Content-Type-Options"] == "nosniff"

    # A new version streamed in, chunked (no Content-Length), at the version it replaces.
    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 1000):
            yield data[start : start + 1000][::-1]

    url = base + f"/blobs/{made['id']}/content"
    async with http.put(url, data=chunks(), headers=headers) as r:
        assert r.status == 428
    async with http.put(url, data=chunks(), headers={**headers, "If-Match": '"1"'}) as r:
        put = await r.json()
        assert r.status == 200 and put["version"] == 2 and put["deltas"][0]["kind"] == "replace"
    async with http.get(url, headers={"X-API-Key": acme.key}, params={"version": "1"}) as r:
        assert await r.read() == data

    # Beyond NEXUS_STUDIO_MAX_BLOB_BYTES (4096 here), chunked or not: 413, nothing written.
    async def too_much() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b"x" * 1000

    async with http.put(url, data=too_much(), headers={**headers, "If-Match": '"2"'}) as r:
        assert r.status == 413
    async with http.post(base + "/blobs/content", data=b"x" * 5000, headers=headers) as r:
        assert r.status == 413
    async with http.post(base + "/blobs/content", data=b"\xff", headers={**headers, "Content-Type": "text/plain"}) as r:
        assert r.status == 400 and "UTF-8" in (await r.json())["message"]
    assert studio.blobs.get(made["id"]).version == 2
    # Another client: 404, as for a blob that does not exist.
    async with http.get(url, headers={"X-API-Key": studio.bob.key}) as r:
        assert r.status == 404
    async with http.put(
        url, data=b"x", headers={"X-API-Key": studio.bob.key, "Content-Type": "text/plain", "If-Match": '"2"'}
    ) as r:
        assert r.status == 404


async def test_a_patch_that_doubles_itself_is_refused_quickly(studio: Studio_) -> None:
    acme = studio.acme
    _, made = await acme.call("POST", "/blobs", {"content": {"a": [1]}, "content_type": "application/json"})
    bomb = [{"op": "copy", "from": "/a", "path": "/a/0"}] * 40
    loop = asyncio.get_running_loop()
    started = loop.time()
    status, err = await acme.call("PATCH", f"/blobs/{made['id']}", bomb)
    assert status == 400 and "copies add more than" in err["message"], err
    assert loop.time() - started < 2
    assert studio.blobs.get(made["id"]).version == 1
