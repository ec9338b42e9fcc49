"""The console's job pages in a real browser (seed 000's job API, through KAM's gateway).

A client picks a workflow whose jobPayloadSchema has one field of each of the eight job types,
fills them all, attaches files (uploaded through the presigned URLs the job API gives, PUT
through the gateway), runs the job, watches its status change live without a reload, and reads
its results, its payload (the files downloadable) and its audit trail. Another client opening
the job's address sees "Not found"; an admin sees it.
"""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from conftest import Console, shot

pytestmark = [pytest.mark.nats, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

SCHEMA = """
id: console_job_input_v1
type: input
definition:
  type: object
  required: [summary, confidence, verified, observed_on, location, tags, report, attachments]
  properties:
    summary: {type: string, description: What was seen}
    confidence: {type: number}
    verified: {type: boolean}
    observed_on: {type: string, format: date}
    location: {type: object}
    tags: {type: array, items: {type: string}}
    report: {type: string, contentMediaType: application/pdf}
    attachments: {type: array, items: {type: string, contentMediaType: image/png}}
    note: {type: string, description: Optional}
"""
# The pause (an event that never comes, for two seconds, then on) keeps the job IN PROGRESS long
# enough for the page to show a status change as it happens; the analysis is the stub service's.
WORKFLOW = """
id: console_job
name: Console job
description: Every job payload type, a short pause, then the analysis
input_schema_id: console_job_input_v1
steps:
  - id: pause
    type: wait_event
    event: com.example.never
    timeout_seconds: 2
    on_failure: continue
  - id: analyze
    service: gaia
    endpoint: /analyze
    input_map:
      title: $.input.summary
      confidence: $.input.confidence
      region: $.input.location.region
    retry: {max_attempts: 1}
output:
  verdict: $.steps.analyze.output.verdict
  tags: $.input.tags
"""
FAILING_SCHEMA = """
id: console_failing_input_v1
type: input
definition:
  type: object
  required: [summary]
  properties:
    summary: {type: string}
"""
# Its one step calls an endpoint the stub service does not have: the job fails, saying why.
FAILING = """
id: console_failing_job
name: Console failing job
input_schema_id: console_failing_input_v1
steps:
  - id: missing
    service: gaia
    endpoint: /no-such-endpoint
    input_map:
      title: $.input.summary
    retry: {max_attempts: 1}
"""
# A property with no type: the workflow cannot take a job payload, and its form page says why.
UNFIT_SCHEMA = """
id: console_unfit_input_v1
type: input
definition:
  type: object
  properties:
    anything: {}
"""
UNFIT = """
id: console_unfit_job
name: Console unfit job
input_schema_id: console_unfit_input_v1
steps:
  - id: missing
    service: gaia
    endpoint: /analyze
"""
PDF = b"%PDF-1.4\n% a report of the console's job test\n"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 24

SEEN: dict[str, str] = {}
"""What one test leaves for the next (the job's id)."""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def job_workflow(console: Console) -> str:
    """The workflow, registered in the platform's namespace through the gateway with the admin's
    session (a session in a header needs no CSRF token), so every client sees it."""
    token = console.admin.session_token
    assert token
    documents = (
        ("/schemas", SCHEMA),
        ("/workflows", WORKFLOW),
        ("/schemas", FAILING_SCHEMA),
        ("/workflows", FAILING),
        ("/schemas", UNFIT_SCHEMA),
        ("/workflows", UNFIT),
    )
    async with aiohttp.ClientSession(headers={"X-Session-Token": token}) as http:
        for path, document in documents:
            async with http.post(f"{console.url}/svc/workflow{path}", data=document) as response:
                assert response.status == 201, await response.text()
    return "console_job"


async def _fill_every_field(page: Any) -> None:
    await page.get_by_label("Job title").fill("Seismic check")
    await page.get_by_label("Job description").fill("Anomaly 123 from the detector")
    await page.get_by_label("Summary").fill("Seismic activity")
    await page.get_by_label("Confidence").fill("0.95")
    await page.get_by_label("Verified").check()
    await page.get_by_label("Observed on").fill("2026-11-19")
    await page.get_by_label("Location").fill('{"region": "tohoku", "lat": 38.3, "lng": 142.4}')
    await page.get_by_label("Tags").fill("seismic\nenvironmental")
    await page.get_by_label("Report").set_input_files(
        files=[{"name": "report.pdf", "mimeType": "application/pdf", "buffer": PDF}]
    )
    await page.get_by_label("Attachments").set_input_files(
        files=[
            {"name": "front.png", "mimeType": "image/png", "buffer": PNG},
            {"name": "side.png", "mimeType": "image/png", "buffer": PNG + b"side"},
        ]
    )


async def test_a_client_runs_a_job_with_files_and_watches_it_live(
    console: Console, pages: list[Any], job_workflow: str
) -> None:
    username, password = await console.client_user("acme")
    page = await console.page()
    pages.append(page)
    await console.sign_in(page, username, password)

    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Jobs").click()
    await page.get_by_role("heading", name="Jobs", exact=True).wait_for()
    await shot(page, "jobs")
    await page.get_by_role("link", name="Start a job: Console job").click()
    await page.get_by_role("heading", name="New job: Console job").wait_for()

    # A wrong value is said on the page, naming the field, and nothing is started.
    await _fill_every_field(page)
    await page.get_by_label("Location").fill("[1, 2]")
    await page.get_by_role("button", name="Run job").click()
    alert = page.get_by_role("alert")
    await alert.wait_for()
    assert "location: give a JSON object" in await alert.inner_text()
    assert console.up.calls == []

    await page.get_by_label("Location").fill('{"region": "tohoku", "lat": 38.3, "lng": 142.4}')
    await shot(page, "job-new")
    await page.get_by_role("button", name="Run job").click()
    await page.wait_for_url(re.compile(r"#/jobs/[0-9a-f-]{8,}$"))
    job_id = page.url.rsplit("/", 1)[1]
    SEEN["job"] = job_id
    await page.get_by_role("heading", name="Seismic check").wait_for()
    # Nothing below reloads the page: a value set now must survive until the job has finished.
    await page.evaluate("window.nexusTestMarker = 'still here'")
    status = page.get_by_role("heading", name=re.compile("^Status"))
    updates = page.get_by_role("list", name="Status updates")
    await updates.get_by_text("IN PROGRESS").first.wait_for()
    assert "IN PROGRESS" in await status.inner_text()
    await shot(page, "job-live")
    await status.get_by_text("COMPLETED").wait_for(timeout=20_000)
    assert await page.evaluate("window.nexusTestMarker") == "still here"
    items = await updates.get_by_role("listitem").all_inner_texts()
    assert "IN PROGRESS" in items[0] and "COMPLETED" in items[-1], items

    # The results, as the workflow's output gave them; the step the stub answered.
    results = page.get_by_role("region", name="Results")
    await results.get_by_text("confirmed: Seismic activity").first.wait_for()
    assert "environmental" in await results.inner_text()
    assert console.up.calls[-1] == {"title": "Seismic activity", "confidence": 0.95, "region": "tohoku"}

    # The payload the workflow received: every field, the files downloadable through the gateway.
    payload = page.get_by_role("region", name="Payload")
    text = await payload.inner_text()
    for expected in ("Seismic activity", "0.95", "true", "2026-11-19", "tohoku", "seismic"):
        assert expected in text, (expected, text)
    links = payload.get_by_role("link")
    assert await links.count() == 3
    report = payload.get_by_role("link", name=re.compile(r"\.pdf$"))
    href = await report.get_attribute("href")
    assert href is not None and href.startswith("/svc/workflow/job/file/")
    body = await page.evaluate("(url) => fetch(url).then(r => r.text())", href)
    assert body == PDF.decode()

    # The audit trail, from the event log: the job's events and its execution's.
    audit = page.get_by_role("region", name="Audit trail")
    audit_text = await audit.inner_text()
    for kind in ("job.initiated", "job.executed", "execution.queued", "execution.completed"):
        assert kind in audit_text, (kind, audit_text)
    await shot(page, "job-completed")

    # On a phone: nothing wider than the screen.
    await page.set_viewport_size({"width": 390, "height": 844})
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390
    await shot(page, "job-phone")

    # The recent jobs list names it.
    await page.goto(console.url + "/#/jobs")
    recent = page.get_by_role("table", name="Your recent jobs")
    await recent.get_by_role("row").filter(has_text=job_id).get_by_role("link", name="Seismic check").wait_for()
    assert "COMPLETED" in await recent.get_by_role("row").filter(has_text=job_id).inner_text()


async def test_another_client_gets_not_found_and_an_admin_sees_the_job(console: Console, pages: list[Any]) -> None:
    job_id = SEEN.get("job")
    if job_id is None:
        pytest.skip("the job of the first test did not run")
    username, password = await console.client_user("globex")
    page = await console.page()
    pages.append(page)
    await console.sign_in(page, username, password)
    await page.goto(f"{console.url}/#/jobs/{job_id}")
    await page.get_by_role("heading", name="Not found").wait_for()
    await shot(page, "job-not-found")
    await page.goto(console.url + "/#/jobs")
    await page.get_by_role("heading", name="Jobs", exact=True).wait_for()
    await page.get_by_role("heading", name="Recent jobs").wait_for()
    assert await page.get_by_text(job_id).count() == 0

    admin = await console.page()
    pages.append(admin)
    await console.sign_in(admin, "admin", console.up.admin_password, admin=True)
    await admin.goto(f"{console.url}/#/jobs/{job_id}")
    await admin.get_by_role("heading", name="Seismic check").wait_for()
    await admin.get_by_role("heading", name=re.compile("^Status")).get_by_text("COMPLETED").wait_for()


async def test_a_failing_job_says_failed_and_why(console: Console, pages: list[Any], job_workflow: str) -> None:
    username, password = await console.client_user("acme")
    page = await console.page()
    pages.append(page)
    await console.sign_in(page, username, password)
    await page.goto(f"{console.url}/#/jobs/new/console_unfit_job")
    await page.get_by_role("alert").get_by_text("cannot take a job payload").wait_for()
    await page.goto(f"{console.url}/#/jobs/new/console_failing_job")
    await page.get_by_role("heading", name="New job: Console failing job").wait_for()
    # The form on a phone: nothing wider than the screen.
    await page.set_viewport_size({"width": 390, "height": 844})
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390
    await shot(page, "job-new-phone")
    # A required field left empty is named before anything is sent.
    await page.get_by_role("button", name="Run job").click()
    await page.get_by_role("alert").get_by_text("summary is required").wait_for()
    await page.get_by_label("Summary").fill("Bound to fail")
    await page.get_by_role("button", name="Run job").click()
    status = page.get_by_role("heading", name=re.compile("^Status"))
    await status.get_by_text("FAILED").wait_for(timeout=20_000)
    results = page.get_by_role("region", name="Results")
    await results.get_by_text("The job failed").wait_for()
    assert "missing" in await results.inner_text()
    await shot(page, "job-failed")


async def test_a_job_left_unexecuted_is_listed_and_run_later(
    console: Console, pages: list[Any], job_workflow: str
) -> None:
    username, password = await console.client_user("acme")
    page = await console.page()
    pages.append(page)
    await console.sign_in(page, username, password)
    # Initiated, then the tab closed before its payload was sent.
    job_id = await page.evaluate(
        """() => fetch("/svc/workflow/job/initiate", {
             method: "POST",
             headers: {"Content-Type": "application/json",
                       "X-CSRF-Token": document.cookie.match(/nexus_csrf=([^;]+)/)[1]},
             body: JSON.stringify({workflowId: "console_failing_job", title: "Left for later"}),
           }).then(r => r.json()).then(b => b.jobExecutionId)"""
    )
    await page.goto(console.url + "/#/jobs")
    recent = page.get_by_role("table", name="Your recent jobs")
    row = recent.get_by_role("row").filter(has_text="Left for later")
    await row.get_by_text("not executed").wait_for()
    await shot(page, "jobs-recent")
    await row.get_by_role("link", name="Give Left for later its payload").click()
    await page.get_by_role("heading", name="Run job: Left for later").wait_for()
    assert await page.get_by_label("Job title").input_value() == "Left for later"
    await shot(page, "job-run-later")
    await page.get_by_label("Summary").fill("Later")
    await page.get_by_role("button", name="Run job").click()
    await page.wait_for_url(f"**/#/jobs/{job_id}")
    await page.get_by_role("heading", name=re.compile("^Status")).get_by_text("FAILED").wait_for(timeout=20_000)

    # An admin's list names each job's client.
    admin = await console.page()
    pages.append(admin)
    await console.sign_in(admin, "admin", console.up.admin_password, admin=True)
    await admin.goto(console.url + "/#/jobs")
    every = admin.get_by_role("table", name="Recent jobs of every client")
    await every.get_by_role("row").filter(has_text="Left for later").get_by_text("acme").wait_for()
