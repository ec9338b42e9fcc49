"""Presigned upload URLs: no key needed to PUT, stored in Raw, expiring, single-use, size-limited, tamper-proof."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from nexus.auth import issue_key
from nexus.bus.memory import MemoryBus
from nexus.config import ConfigError
from nexus.eventlog.memory import MemoryEventLog
from nexus.raw import open_raw
from nexus.runtime import Service
from nexus.services.workflow import uploads
from nexus.services.workflow.context import WorkflowContext
from nexus.services.workflow.settings import load_settings
from nexus.services.workflow.uploads import Presigner, UploadError, signing_key


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[tuple[str, str, Clock, MemoryEventLog, object]]:
    log = MemoryEventLog()
    raw = await open_raw(f"file://{tmp_path / 'raw'}")
    clock = Clock()
    settings = load_settings({"NEXUS_WORKFLOW_PORT": "0", "NEXUS_WORKFLOW_BUNDLED": "none"})
    ctx = WorkflowContext(settings=settings, log=log, bus=None, raw=raw, engine=None, registry=None)  # type: ignore[arg-type]
    service = Service(settings, log=log, bus=MemoryBus())
    uploads.install(service, ctx, presigner=Presigner(b"k" * 32, ttl_seconds=60, max_bytes=1000, clock=clock))
    key = await issue_key(log, "client", "gaia")
    async with TestServer(service.app, host="127.0.0.1", port=0) as server:
        yield str(server.make_url("")).rstrip("/"), key.secret, clock, log, raw
    await log.close()


async def _grant(session: aiohttp.ClientSession, base: str, key: str, **body: object) -> dict:
    async with session.post(
        f"{base}/job/file/upload", json={"fileExtension": "pdf", **body}, headers={"x-service-key": key}
    ) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


def _with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


async def test_a_presigned_put_needs_no_key_and_stores_the_file_once(service) -> None:
    base, key, _clock, log, raw = service
    async with aiohttp.ClientSession() as session:
        # Asking for a URL needs the key.
        async with session.post(f"{base}/job/file/upload", json={"fileExtension": "pdf"}) as resp:
            assert resp.status == 401
        grant = await _grant(session, base, key)
        assert grant["maxBytes"] == 1000
        body = b"%PDF-1.7 seismic report"
        # Step 4 of seed 000: PUT with no auth header at all.
        async with session.put(
            grant["presignedUrl"], data=body, headers={"Content-Type": "application/octet-stream"}
        ) as resp:
            assert resp.status == 200, await resp.text()
            stored = await resp.json()
        assert stored["sha256"] == hashlib.sha256(body).hexdigest()
        assert await raw.retrieve(f"t/gaia/jobs/uploads/{grant['uploadId']}.pdf") == body
        # The file URL serves it back; the same URL with a forged signature does not.
        async with session.get(stored["fileUrl"]) as resp:
            assert resp.status == 200 and await resp.read() == body
            # The uploader chose the type: in a browser the file is sandboxed (no script, no cookie).
            assert resp.headers["Content-Security-Policy"].startswith("sandbox")
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
        async with session.get(_with_query(stored["fileUrl"], sig="x" * 43)) as resp:
            assert resp.status == 403
        # Single use: the second PUT is refused and the stored file is untouched.
        async with session.put(grant["presignedUrl"], data=b"other") as resp:
            assert resp.status == 410
            assert "already used" in (await resp.json())["error"]
        assert await raw.retrieve(f"t/gaia/jobs/uploads/{grant['uploadId']}.pdf") == body
    # Issue and use are events of the upload's stream.
    events = await log.read_stream(f"upload-{grant['uploadId']}")
    assert [e.type for e in events] == ["nexus.workflow.upload.issued", "nexus.workflow.upload.completed"]


async def test_two_racing_puts_store_one_use(service) -> None:
    base, key, _clock, log, _raw = service
    async with aiohttp.ClientSession() as session:
        grant = await _grant(session, base, key)

        async def put(data: bytes) -> int:
            async with session.put(grant["presignedUrl"], data=data) as resp:
                return resp.status

        statuses = sorted(await asyncio.gather(*(put(bytes([i]) * 10) for i in range(5))))
    assert statuses.count(200) == 1 and statuses.count(410) == 4
    assert len(await log.read_stream(f"upload-{grant['uploadId']}")) == 2


async def test_an_expired_url_is_refused(service) -> None:
    base, key, clock, _log, _raw = service
    async with aiohttp.ClientSession() as session:
        grant = await _grant(session, base, key)
        clock.now += 61
        async with session.put(grant["presignedUrl"], data=b"late") as resp:
            assert resp.status == 410
            assert "expired" in (await resp.json())["error"]


async def test_a_file_over_the_limit_is_refused_whatever_content_length_says(service) -> None:
    base, key, _clock, _log, raw = service
    async with aiohttp.ClientSession() as session:
        grant = await _grant(session, base, key)
        async with session.put(grant["presignedUrl"], data=b"x" * 1001) as resp:
            assert resp.status == 413

        # Chunked, without Content-Length: counted as it arrives.
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(11):
                yield b"y" * 100

        async with session.put(grant["presignedUrl"], data=chunks()) as resp:
            assert resp.status == 413
        assert await raw.list_all("t/gaia/jobs/") == []
        # A smaller limit may be asked for, never a larger one.
        small = await _grant(session, base, key, maxBytes=10)
        assert small["maxBytes"] == 10
        big = await _grant(session, base, key, maxBytes=10**9)
        assert big["maxBytes"] == 1000
        # The refused URL is still unused: a file within the limit goes through.
        async with session.put(grant["presignedUrl"], data=b"z" * 1000) as resp:
            assert resp.status == 200


@pytest.mark.parametrize(
    "change",
    [
        {"max": "100000"},  # a larger limit
        {"exp": "9999999999"},  # a later expiry
        {"sig": "A" * 43},  # a made-up signature
        {"sig": ""},
    ],
)
async def test_a_tampered_url_is_refused(service, change: dict[str, str]) -> None:
    base, key, _clock, _log, _raw = service
    async with aiohttp.ClientSession() as session:
        grant = await _grant(session, base, key)
        async with session.put(_with_query(grant["presignedUrl"], **change), data=b"x") as resp:
            assert resp.status == 403
        # Another extension on the same id and signature is refused too.
        other = grant["presignedUrl"].replace(".pdf?", ".exe?")
        async with session.put(other, data=b"x") as resp:
            assert resp.status == 403


async def test_bad_extensions_are_named(service) -> None:
    base, key, _clock, _log, _raw = service
    async with aiohttp.ClientSession() as session:
        for ext in ("../etc", "", "p d f", 7):
            async with session.post(
                f"{base}/job/file/upload", json={"fileExtension": ext}, headers={"x-service-key": key}
            ) as resp:
                assert resp.status == 400
                assert "fileExtension" in (await resp.json())["error"]


def test_the_signing_key_has_no_default() -> None:
    # Unset: a fresh random key per process, so no two processes share a guessable secret.
    assert load_settings({}).upload_signing_key == ""
    assert signing_key("") != signing_key("")
    # The settings refuse a short key at start, naming the variable; the presigner's check stays.
    with pytest.raises(ConfigError, match="NEXUS_UPLOAD_SIGNING_KEY must be at least 32"):
        load_settings({"NEXUS_UPLOAD_SIGNING_KEY": "short"})
    with pytest.raises(ValueError, match="at least 32"):
        signing_key("short")
    configured = load_settings({"NEXUS_UPLOAD_SIGNING_KEY": "s" * 40})
    assert signing_key(configured.upload_signing_key) == b"s" * 40
    # A secret: never in the settings' repr (which may be logged).
    assert "s" * 40 not in repr(configured)
    with pytest.raises(UploadError):
        Presigner(b"k" * 32).verify_put("a" * 32, "pdf", {})


async def test_an_upload_belongs_to_its_client_and_names_only_its_own_jobs(service) -> None:
    base, _key, _clock, log, raw = service
    other = await issue_key(log, "client", "hermes")
    async with aiohttp.ClientSession() as session:
        # A job id that does not exist, and a job id of another client, are the same 404.
        for job_id in ("no-such-job", await _job_of(log, "gaia")):
            async with session.post(
                f"{base}/job/file/upload",
                json={"fileExtension": "pdf", "jobExecutionId": job_id},
                headers={"x-service-key": other.secret},
            ) as resp:
                assert resp.status == 404
                assert await resp.json() == {"success": False, "error": f"no job with jobExecutionId {job_id!r}"}
        # The other client's own file lands in its own namespace, never in gaia's.
        grant = await _grant(session, base, other.secret)
        async with session.put(grant["presignedUrl"], data=b"hermes' file") as resp:
            assert resp.status == 200
    assert await raw.retrieve(f"t/hermes/jobs/uploads/{grant['uploadId']}.pdf") == b"hermes' file"
    assert await raw.list_all("t/gaia/") == []


async def _job_of(log: MemoryEventLog, owner: str) -> str:
    """A job initiated by ``owner``, written to the log as the job API writes it."""
    from nexus.proto import new_event
    from nexus.proto.events.jobs import JobInitiated

    data = JobInitiated(job_id="job-a", workflow_id="w", title="", description="", key_id="k", owner=owner)
    await log.append("job-job-a", [new_event("nexus.workflow.job.initiated", data, source="test", tenant=owner)])
    return "job-a"
