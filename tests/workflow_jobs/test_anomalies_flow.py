"""Anomalies become jobs of seed 000's API: by API (POST /anomalies), by upload (multipart), and in
real time (an external CloudEvent on nexus.ext.<source>.anomaly_detected), each owned by its sender."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from anomaly_platform import SEED_ANOMALY, Platform, running, wait_status

from nexus.auth import KeyInfo
from nexus.eventlog.memory import MemoryEventLog
from nexus.ingest import ExtIngest, ingested_id, register_producer
from nexus.proto import CloudEvent, encode_event, new_event
from nexus.services.workflow.anomalies import ANOMALIES, AnomalyIntake, job_id_for_event
from nexus.services.workflow.jobapi import JOB_API

ENV = {"NEXUS_ANOMALY_WORKFLOW": "gaia_anomaly_review"}


async def _upload(session: aiohttp.ClientSession, platform: Platform, data: bytes, tenant: str = "alpha") -> str:
    """Seed 000's steps 3-4: a presigned URL, then a PUT with no key; the upload's id."""
    async with session.post(
        f"{platform.url}/job/file/upload", json={"fileExtension": "pdf"}, headers=platform.headers(tenant)
    ) as resp:
        grant = await resp.json()
    async with session.put(grant["presignedUrl"], data=data) as resp:
        assert resp.status == 200, await resp.text()
    return str(grant["uploadId"])


async def test_an_anomaly_sent_to_the_api_becomes_a_job_with_its_uploaded_files(tmp_path: Path) -> None:
    async with running(tmp_path, ENV) as platform, aiohttp.ClientSession() as session:
        report = await _upload(session, platform, b"%PDF seismograph")
        evidence_url = f"{platform.url}/job/file/{await _upload(session, platform, b'x' * 30)}.pdf"
        anomaly = dict(SEED_ANOMALY, files=[report, evidence_url])
        # No workflowId: NEXUS_ANOMALY_WORKFLOW names it.
        async with session.post(
            f"{platform.url}/anomalies", json={"anomaly": anomaly}, headers=platform.headers()
        ) as resp:
            assert resp.status == 202, await resp.text()
            answer = await resp.json()
        job_id = answer["jobExecutionId"]
        assert answer["workflowId"] == "gaia_anomaly_review"
        assert answer["monitorUrl"] == f"/api/opus/job/{job_id}/monitor"
        # Visible under seed 000's job routes like any job: status, results, audit.
        final = await wait_status(session, platform, job_id)
        assert final["status"] == "COMPLETED", final
        async with session.get(f"{platform.url}/job/{job_id}/results", headers=platform.headers()) as resp:
            assert (await resp.json())["results"]["file_sizes"] == [16, 16, 30]
        async with session.get(f"{platform.url}/job/{job_id}/audit", headers=platform.headers()) as resp:
            types = [e["type"] for e in (await resp.json())["auditTrail"]]
        assert types[0] == "nexus.workflow.job.initiated" and "nexus.workflow.job.executed" in types
        async with session.get(f"{platform.url}/jobs", headers=platform.headers()) as resp:
            listed = (await resp.json())["jobs"]
        assert [(j["jobExecutionId"], j["title"]) for j in listed] == [(job_id, "Seismic Activity")]
    # The workflow received the mapped payload (step 5), the files as their signed URLs.
    (received,) = platform.reviewed
    payload = received["payload"]
    assert payload["workflow_input_we4tej0ly"] == "Seismic Activity"
    assert payload["workflow_input_a0hk6ujuo"] == 0.95
    assert payload["workflow_input_m2z6rkzgj"] is True
    assert payload["workflow_input_bzti690ga"]["location"] == {"lat": 38.3, "lng": 142.4}
    assert payload["workflow_input_h69vx5i4a"].split("?")[0].endswith(f"/job/file/{report}.pdf")
    assert len(payload["workflow_input_auqgnzk8d"]) == 2


async def test_what_the_api_refuses_it_refuses_before_recording_a_job(tmp_path: Path) -> None:
    async with running(tmp_path, ENV) as platform, aiohttp.ClientSession() as session:
        url, alpha = f"{platform.url}/anomalies", platform.headers()
        # An anomaly that does not fit the payload: 400 naming the field.
        async with session.post(url, json={"title": "x", "confidence": "very"}, headers=alpha) as resp:
            assert resp.status == 400
            body = await resp.json()
            assert body["success"] is False and "workflow_input_a0hk6ujuo" in body["error"]
            assert body["problems"][0]["field"] == "workflow_input_a0hk6ujuo"
        # Another client's upload, or one never uploaded, is no file of the caller's: 404.
        beta_upload = await _upload(session, platform, b"beta's", tenant="beta")
        async with session.post(url, json=dict(SEED_ANOMALY, files=[beta_upload]), headers=alpha) as resp:
            assert resp.status == 404 and beta_upload in (await resp.json())["error"]
        async with session.post(url, json=dict(SEED_ANOMALY, files=[17]), headers=alpha) as resp:
            assert resp.status == 400
        async with session.post(url, json=dict(SEED_ANOMALY, workflowId="nope"), headers=alpha) as resp:
            assert resp.status == 404
        async with session.post(url, data=b"[1, 2]", headers=alpha) as resp:
            assert resp.status == 400
        async with session.post(url, json=SEED_ANOMALY) as resp:
            assert resp.status == 401
        async with session.get(f"{platform.url}/jobs", headers=alpha) as resp:
            assert (await resp.json())["total"] == 0


async def test_without_a_default_workflow_the_anomaly_must_name_one(tmp_path: Path) -> None:
    async with running(tmp_path) as platform, aiohttp.ClientSession() as session:
        url = f"{platform.url}/anomalies"
        async with session.post(url, json=SEED_ANOMALY, headers=platform.headers()) as resp:
            assert resp.status == 400 and "workflowId is required" in (await resp.json())["error"]
        named = {"anomaly": SEED_ANOMALY, "workflowId": "gaia_anomaly_review"}
        async with session.post(url, json=named, headers=platform.headers()) as resp:
            assert resp.status == 202


async def test_an_anomaly_belongs_to_its_sender(tmp_path: Path) -> None:
    async with running(tmp_path, ENV) as platform, aiohttp.ClientSession() as session:
        async with session.post(f"{platform.url}/anomalies", json=SEED_ANOMALY, headers=platform.headers()) as resp:
            job_id = (await resp.json())["jobExecutionId"]
        for route in ("status", "audit", "monitor"):
            async with session.get(f"{platform.url}/job/{job_id}/{route}", headers=platform.headers("beta")) as resp:
                assert resp.status == 404, route
        async with session.get(f"{platform.url}/jobs", headers=platform.headers("beta")) as resp:
            assert (await resp.json())["total"] == 0


async def test_an_anomaly_uploaded_with_its_files_becomes_a_job(tmp_path: Path) -> None:
    async with running(tmp_path, ENV) as platform, aiohttp.ClientSession() as session:
        form = aiohttp.FormData()
        form.add_field("anomaly", json.dumps(SEED_ANOMALY), content_type="application/json")
        form.add_field("files", b"%PDF report", filename="report.pdf", content_type="application/pdf")
        form.add_field("files", b"z" * 25, filename="trace.csv", content_type="text/csv")
        before = ANOMALIES.labels("upload", "job")._value.get()
        async with session.post(f"{platform.url}/anomalies", data=form, headers=platform.headers()) as resp:
            assert resp.status == 202, await resp.text()
            job_id = (await resp.json())["jobExecutionId"]
        assert ANOMALIES.labels("upload", "job")._value.get() == before + 1
        final = await wait_status(session, platform, job_id)
        assert final["status"] == "COMPLETED", final
        # The files went through the presigned path's records, each tied to the job.
        uploads = [e for e in await platform.log.read_all() if e.type.startswith("nexus.workflow.upload.")]
        issued = [e.data for e in uploads if e.type.endswith(".issued")]
        assert [d["job_id"] for d in issued] == [job_id, job_id] and {d["tenant"] for d in issued} == {"alpha"}
        assert [d["file_extension"] for d in issued] == ["pdf", "csv"]
        # An upload with no anomaly part, or a file over the limit, is refused.
        bare = aiohttp.FormData()
        bare.add_field("files", b"x", filename="x.bin")
        async with session.post(f"{platform.url}/anomalies", data=bare, headers=platform.headers()) as resp:
            assert resp.status == 400 and "'anomaly'" in (await resp.json())["error"]
    (received,) = platform.reviewed
    assert received["file_sizes"] == [11, 11, 25]  # the file field takes the first; array_files both


async def test_an_upload_too_large_is_refused_with_413(tmp_path: Path) -> None:
    async with running(tmp_path, {**ENV, "NEXUS_UPLOAD_MAX_BYTES": "100"}) as platform:
        async with aiohttp.ClientSession() as session:
            form = aiohttp.FormData()
            form.add_field("anomaly", json.dumps(SEED_ANOMALY))
            form.add_field("files", b"y" * 101, filename="big.bin")
            async with session.post(f"{platform.url}/anomalies", data=form, headers=platform.headers()) as resp:
                assert resp.status == 413
            async with session.get(f"{platform.url}/jobs", headers=platform.headers()) as resp:
                assert (await resp.json())["total"] == 0


def _external(event_id: str, data: Any) -> bytes:
    return encode_event(new_event("org.gaia.anomaly.detected", data, source="https://gaia.example/", id=event_id))


async def _wait_job(platform: Platform, job_id: str, within: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while (job := await platform.service.app[JOB_API].tenant_of(job_id)) is None:
        assert asyncio.get_running_loop().time() < deadline, f"no job {job_id}"
        await asyncio.sleep(0.05)
    assert job


async def test_an_external_anomaly_event_becomes_a_job_of_the_producers_client(tmp_path: Path) -> None:
    async with running(tmp_path, ENV) as platform, aiohttp.ClientSession() as session:
        # Source "gaia" is bound to client alpha: its events are alpha's, whatever they claim.
        await register_producer(platform.log, "gaia", "alpha")
        ingest = ExtIngest(platform.bus, platform.log)
        await ingest.start()
        try:
            await platform.bus.publish("nexus.ext.gaia.anomaly_detected", _external("gaia-1", SEED_ANOMALY))
            job_id = job_id_for_event(ingested_id("https://gaia.example/", "gaia-1"))
            await _wait_job(platform, job_id)
            final = await wait_status(session, platform, job_id)
            assert final["status"] == "COMPLETED" and final["results"]["verdict"] == "reviewed"
            async with session.get(f"{platform.url}/job/{job_id}/status", headers=platform.headers("beta")) as resp:
                assert resp.status == 404
            # The producer sends it again: still one job. A malformed anomaly makes none.
            refused = ANOMALIES.labels("realtime", "refused")._value.get()
            await platform.bus.publish("nexus.ext.gaia.anomaly_detected", _external("gaia-1", SEED_ANOMALY))
            await platform.bus.publish("nexus.ext.gaia.anomaly_detected", _external("gaia-2", {"confidence": 2}))
            async with asyncio.timeout(10):
                while ANOMALIES.labels("realtime", "refused")._value.get() == refused:  # noqa: ASYNC110 - a counter
                    await asyncio.sleep(0.05)
            # Other events of the source are not anomalies.
            await platform.bus.publish("nexus.ext.gaia.heartbeat", _external("gaia-3", SEED_ANOMALY))
            await asyncio.sleep(0.3)
            async with session.get(f"{platform.url}/jobs", headers=platform.headers()) as resp:
                assert [j["jobExecutionId"] for j in (await resp.json())["jobs"]] == [job_id]
        finally:
            await ingest.stop()
    assert len(platform.reviewed) == 1


async def test_an_anomaly_published_while_the_service_was_down_becomes_a_job_when_it_is_back(
    tmp_path: Path,
) -> None:
    log = MemoryEventLog()
    # Ingested earlier (stream ext-gaia, tenant from the binding), before the service ran.
    await register_producer(log, "gaia", "alpha")
    (stored,) = await log.append("ext-gaia", [_ingested(SEED_ANOMALY)])
    async with running(tmp_path, ENV, log=log) as platform, aiohttp.ClientSession() as session:
        job_id = job_id_for_event(stored.id)
        await _wait_job(platform, job_id)
        assert (await wait_status(session, platform, job_id))["status"] == "COMPLETED"
        # Offered again (a replay, another replica): the same job, no second execution.
        intake = AnomalyIntake(platform.service.app[JOB_API].ctx, platform.service.app[JOB_API], None)
        assert await intake.on_event(stored) == job_id
    assert len(platform.reviewed) == 1


def _ingested(data: Any, extevent: str = "anomaly_detected") -> CloudEvent:
    """An external event as the ingest stores it: the subject's event token, the bound tenant."""
    event = new_event("org.gaia.anomaly.detected", data, source="gaia", tenant="alpha")
    return msgspec.structs.replace(event, extevent=extevent)


@pytest.mark.parametrize("events", ["none", "quake_detected"])
async def test_the_event_names_that_are_anomalies_are_a_setting(tmp_path: Path, events: str) -> None:
    async with running(tmp_path, {**ENV, "NEXUS_ANOMALY_EVENTS": events}) as platform:
        ctx = platform.service.app[JOB_API].ctx
        intake = AnomalyIntake(ctx, platform.service.app[JOB_API], None)
        assert intake.events == (frozenset() if events == "none" else {"quake_detected"})
        (stored,) = await platform.log.append("ext-gaia", [_ingested(SEED_ANOMALY)])
        assert await intake.on_event(stored) is None


async def test_a_job_initiated_before_a_crash_is_executed_when_its_event_is_offered_again(tmp_path: Path) -> None:
    async with running(tmp_path, ENV) as platform, aiohttp.ClientSession() as session:
        jobs = platform.service.app[JOB_API]
        event = _ingested(SEED_ANOMALY)
        job_id = job_id_for_event(event.id)
        # The replica recorded job.initiated for the event, then died before executing it.
        producer = KeyInfo(key_id="producer:gaia", kind="client", owner="alpha")
        await jobs._initiate(producer, "gaia_anomaly_review", "t", "", job_id=job_id, causation_id=event.id)
        await platform.log.append("ext-gaia", [event])
        final = await wait_status(session, platform, job_id)
        assert final["status"] == "COMPLETED"
        async with session.get(f"{platform.url}/job/{job_id}/audit", headers=platform.headers()) as resp:
            types = [e["type"] for e in (await resp.json())["auditTrail"]]
        assert types.count("nexus.workflow.job.initiated") == 1 and types.count("nexus.workflow.job.executed") == 1
