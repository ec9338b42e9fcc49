"""The console's client pages in a real browser: a client asks for work from the dashboard's form,
watches its request run live (the status and each workflow step, without reloading the page),
views and downloads the deliverable, reads its costs as charts and tables, creates an API key
(its secret shown once) and revokes it; another client's request URL says "Not found"."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import aiohttp
import pytest
from conftest import Console, shot
from playwright.async_api import expect

from nexus.client import KamClient

pytestmark = [pytest.mark.nats, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]
# A page's answer to a change may wait on the platform's processes: a loaded machine is slower.
expect.set_options(timeout=15_000)

WAIT_MS = 45_000
"""How long a run on the platform may take to show in the page (the bundled templates run on the
granulator in a second or two; a loaded CI machine is slower)."""


def watch_errors(page: Any) -> list[str]:
    """The page's script errors and refused resources (a CSP violation is one): the list fills as they happen."""
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(f"pageerror: {error}"))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    return errors


async def run(console: Console, request_id: str) -> dict[str, Any]:
    """The admin assigns the template the recommender ranks first (assign) and runs it (execute)."""
    recommended = await console.admin.recommend(request_id, {"budget": 50.0})
    best = recommended["recommendations"][0]
    await console.admin.assign(request_id, best["template_id"], best["template_name"])
    return dict(best)


async def completed_request(console: Console, client_id: str) -> dict[str, Any]:
    """A request of ``client_id`` run to completion through the API (for the pages that read one)."""
    username, password = await console.client_user(client_id)
    async with KamClient(console.url) as user:
        await user.login(username, password)
        created = await user.create_request("Quarterly brief", "A short brief of the quarter.", category="writing")
        await run(console, created["request_id"])
        await console.admin.execute(created["request_id"])
        for _ in range(int(WAIT_MS / 200)):
            found = await user.request(created["request_id"])
            if found["status"] in ("completed", "failed"):
                assert found["status"] == "completed", found
                return found
            await asyncio.sleep(0.2)
    raise AssertionError(f"request {created['request_id']} did not complete")


async def test_a_client_creates_a_request_and_watches_it_run_live_then_views_and_downloads_its_deliverable(
    console: Console, pages: list[Any]
) -> None:
    username, password = await console.client_user("acme")
    page = await console.page()
    pages.append(page)
    await console.sign_in(page, username, password)
    # From here on (the login page's own session check answers 401 before the sign-in).
    errors = watch_errors(page)
    await page.get_by_role("heading", name="Dashboard").wait_for()

    # The form creates the request; it appears in the list, pending.
    form = page.get_by_role("form", name="New request")
    await form.get_by_label("Title").fill("Market analysis for AI tools")
    await form.get_by_label("Description").fill("Vendors, pricing and trends of AI developer tools.")
    await form.get_by_label("Urgency").select_option("high")
    await form.get_by_label("Category").fill("research")
    await form.get_by_role("button", name="Create request").click()
    link = page.get_by_role("link", name="Market analysis for AI tools")
    await link.wait_for()
    row = page.get_by_role("row").filter(has=link)
    await expect(row.get_by_text("pending", exact=True)).to_be_visible()
    href = await link.get_attribute("href")
    assert href is not None and href.startswith("#/requests/req_")
    request_id = href.removeprefix("#/requests/")
    await expect(form.get_by_label("Title")).to_have_value("")

    # The admin assigns a template: the dashboard shows it live, without a reload.
    await page.evaluate("window.__sameDocument = true")
    await expect(page.get_by_role("status").filter(has_text="Live updates: on")).to_be_visible()
    best = await run(console, request_id)
    await expect(row.get_by_text("template_assigned", exact=True)).to_be_visible(timeout=WAIT_MS)
    await expect(row.get_by_text(best["template_name"])).to_be_visible()
    await shot(page, "client-dashboard")

    # On the request's page, the run is followed as it happens: its steps, then "completed".
    await link.click()
    await page.get_by_role("heading", name="Market analysis for AI tools").wait_for()
    await expect(page.get_by_role("status").filter(has_text="Live updates: on")).to_be_visible()
    await console.admin.execute(request_id)
    steps = page.get_by_role("list", name="Workflow steps")
    await expect(steps.get_by_role("listitem").first).to_be_visible(timeout=WAIT_MS)
    status = page.locator(".c-request-status")
    await expect(status.get_by_text("completed", exact=True)).to_be_visible(timeout=WAIT_MS)
    for item in await steps.get_by_role("listitem").all():
        await expect(item.get_by_text("completed", exact=True)).to_be_visible()
    history = page.get_by_role("list", name="Status history")
    await expect(history.get_by_role("listitem")).to_have_count(4)
    costs = page.get_by_role("region", name="Costs")
    await expect(costs.get_by_text("Cost of the last run")).to_be_visible()
    assert await page.evaluate("window.__sameDocument") is True, "the page was reloaded"

    # The deliverable is viewed in the page and downloaded as a file.
    deliverables = page.get_by_role("region", name="Deliverables")
    result = deliverables.get_by_role("listitem").filter(has_text="The run's result")
    await result.get_by_role("button", name=re.compile(r"^View ")).click()
    shown = result.locator("pre.c-deliverable-text")
    await expect(shown).to_contain_text('"request_id"')
    viewed = json.loads(await shown.inner_text())
    assert viewed["request_id"] == request_id and viewed["template"] == best["template_name"]
    await shot(page, "client-request")
    async with page.expect_download() as started:
        await result.get_by_role("link", name=re.compile(r"^Download ")).click()
    download = await started.value
    assert download.suggested_filename.endswith(".json")
    path = await download.path()
    assert json.loads(path.read_text()) == viewed
    assert errors == [], errors


WAITING_WORKFLOW = {
    "id": "console_waits_for_a_key",
    "provider_id": "nexus",
    "name": "Console test: a step, then a wait",
    "active": True,
    "timeout_seconds": 120,
    "steps": [
        {
            "id": "analyze",
            "name": "Ask the analyst",
            "type": "api_call",
            "service": "gaia",
            "endpoint": "/analyze",
            "method": "POST",
            "input_map": {"title": "$.input.context.request.title"},
        },
        {
            # An event of the client's that the test causes through the API when it chooses:
            # a key issued to the client. Until then the step runs (waits).
            "id": "approval",
            "name": "Wait for the approval",
            "type": "wait_event",
            "event": "nexus.kam.key.issued",
            "match": "$.event.data.client_id == $.input.context.client_id",
            "timeout_seconds": 60,
        },
    ],
    "output": {"verdict": "$.steps.analyze.output.verdict"},
}
WAITING_TEMPLATE = {
    "id": 901,
    "name": "console_waits_for_a_key",
    "title": "Console test: a step, then a wait",
    "tier": "basic",
    "description": "A run that waits between its steps, so a page can be seen following it.",
    "category": "testing",
    "workflow_id": "console_waits_for_a_key",
    "stages": ["analyze", "approval"],
    "cost": {"per_run": 0.01, "currency": "USD"},
    "deliverable": {"type": "verdict"},
}


async def test_the_request_page_follows_each_step_of_the_run_as_it_happens(console: Console, pages: list[Any]) -> None:
    # A platform workflow whose second step waits for the test, and a template that runs it.
    session = {"X-Session-Token": console.admin.session_token or ""}
    async with aiohttp.ClientSession(headers=session) as http:
        async with http.post(f"{console.up.workflow_url}/workflows", json=WAITING_WORKFLOW) as response:
            assert response.status == 201, await response.text()
    await console.admin.call("POST", "/templates", json_body=WAITING_TEMPLATE)
    username, password = await console.client_user("acme")
    async with KamClient(console.url) as user:
        await user.login(username, password)
        created = await user.create_request("Check the numbers", "Have the analyst confirm them.")
    request_id = created["request_id"]

    page = await console.page()
    pages.append(page)
    await console.sign_in(page, username, password)
    errors = watch_errors(page)
    await page.goto(f"{console.url}/#/requests/{request_id}")
    await page.get_by_role("heading", name="Check the numbers").wait_for()
    await expect(page.get_by_role("status").filter(has_text="Live updates: on")).to_be_visible()
    await page.evaluate("window.__sameDocument = true")

    # While it is pending, the client edits its request.
    await page.get_by_role("button", name="Edit request").click()
    editing = page.get_by_role("form", name="Edit request")
    await editing.get_by_label("Title").fill("Check the quarter's numbers")
    await editing.get_by_label("Urgency").select_option("urgent")
    await editing.get_by_role("button", name="Save changes").click()
    await page.get_by_role("heading", name="Check the quarter's numbers").wait_for()
    assert (await console.admin.request(request_id))["urgency"] == "urgent"

    # Once a template is assigned (live), it can no longer be edited.
    await console.admin.assign(request_id, WAITING_TEMPLATE["id"], WAITING_TEMPLATE["name"])
    await expect(page.locator(".c-request-status").get_by_text("template_assigned", exact=True)).to_be_visible()
    await expect(page.get_by_role("button", name="Edit request")).to_have_count(0)
    await console.admin.execute(request_id)

    # The first step completes and the second one runs: the page shows both as they are.
    steps = page.get_by_role("list", name="Workflow steps")
    analyze = steps.get_by_role("listitem").filter(has_text="Ask the analyst")
    approval = steps.get_by_role("listitem").filter(has_text="Wait for the approval")
    await expect(analyze.get_by_text("completed", exact=True)).to_be_visible(timeout=WAIT_MS)
    await expect(approval.get_by_text("running", exact=True)).to_be_visible()
    await expect(page.locator(".c-request-status").get_by_text("executing", exact=True)).to_be_visible()
    await expect(page.get_by_role("status").filter(has_text="Progress: on")).to_be_visible()
    await shot(page, "client-request-running")

    # The awaited event: the execution's stream brings the last step and the end to the page.
    await console.admin.create_key("acme", scopes=["requests:read"])
    await expect(approval.get_by_text("completed", exact=True)).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator(".c-request-status").get_by_text("completed", exact=True)).to_be_visible()
    await expect(page.get_by_role("region", name="Deliverables").get_by_text("The run's result")).to_be_visible()
    assert await page.evaluate("window.__sameDocument") is True, "the page was reloaded"
    assert errors == [], errors


async def test_the_costs_page_charts_the_clients_costs_over_time_and_by_template(
    console: Console, pages: list[Any]
) -> None:
    done = await completed_request(console, "acme")
    username, password = await console.client_user("acme")
    async with KamClient(console.url) as user:
        await user.login(username, password)
        expected = await user.costs("acme", group="template")
    page = await console.page()
    pages.append(page)
    await console.sign_in(page, username, password)
    # From here on (the login page's own session check answers 401 before the sign-in).
    errors = watch_errors(page)
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Costs").click()
    await page.get_by_role("heading", name="Costs", exact=True).wait_for()
    await expect(page.get_by_text("Costs per day", exact=True)).to_be_visible()
    await expect(page.get_by_text("Costs by template", exact=True).first).to_be_visible()
    charts = page.get_by_role("img")
    await expect(charts).to_have_count(2)
    # The by-template chart names the template that ran; the table and the total are what the API sums.
    assert done["template"]["template_name"] in (await charts.nth(1).get_attribute("aria-label") or "")
    by_template = page.get_by_role("table", name="Costs by template")
    for group in expected["groups"]:
        await expect(by_template.get_by_role("row").filter(has_text=group["key"])).to_have_count(1)
    total = await page.get_by_test_id("cost-total").inner_text()
    assert re.sub(r"[^0-9.]", "", total).rstrip("0").rstrip(".") == f"{expected['total']:f}".rstrip("0").rstrip(".")
    await shot(page, "client-costs")

    # A period with nothing in it says so.
    await page.get_by_label("From").fill("2001-01-01")
    await page.get_by_label("To (inclusive)").fill("2001-01-31")
    await page.get_by_role("button", name="Show").click()
    await expect(page.get_by_text("No costs in this period")).to_be_visible()
    assert errors == [], errors


async def test_a_client_creates_an_api_key_shown_once_and_revokes_it(console: Console, pages: list[Any]) -> None:
    username, password = await console.client_user("acme")
    page = await console.page()
    pages.append(page)
    await console.sign_in(page, username, password)
    # From here on (the login page's own session check answers 401 before the sign-in).
    errors = watch_errors(page)
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="API keys").click()
    await page.get_by_role("heading", name="API keys").wait_for()

    # A key for one program, with fewer scopes than the user holds.
    form = page.get_by_role("form", name="Create a key")
    await form.get_by_label("Name").fill("nightly export")
    await form.get_by_label("audit:read").uncheck()
    await form.get_by_role("button", name="Create key").click()
    secret_box = page.locator(".secret")
    await expect(secret_box).to_be_visible()
    await expect(page.get_by_text("it will not be shown again")).to_be_visible()
    secret = (await secret_box.inner_text()).strip()
    assert secret.startswith("nxk_")
    row = page.get_by_role("row").filter(has_text="nightly export")
    await expect(row.get_by_text("active", exact=True)).to_be_visible()
    assert "audit:read" not in await row.inner_text()
    await shot(page, "client-keys")

    async def whoami() -> int:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            async with http.get(f"{console.url}/v1/whoami", headers={"X-API-Key": secret}) as response:
                return response.status

    assert await whoami() == 200

    # Shown once: after a reload the key is listed, its secret is not.
    await page.reload()
    await page.get_by_role("heading", name="API keys").wait_for()
    await expect(row).to_be_visible()
    assert await page.locator(".secret").count() == 0
    assert secret not in await page.content()

    # Revoked (after a confirmation): the page says so and the platform refuses the key.
    await row.get_by_role("button", name="Revoke").click()
    await row.get_by_role("button", name="Revoke nightly export now").click()
    await expect(row.get_by_text("revoked", exact=True)).to_be_visible()
    assert await whoami() == 401
    assert errors == [], errors


async def test_another_clients_request_is_not_found_and_the_dashboard_fits_a_phone(
    console: Console, pages: list[Any]
) -> None:
    username, password = await console.client_user("acme")
    async with KamClient(console.url) as acme:
        await acme.login(username, password)
        acme_request = await acme.create_request("Acme's private plan", "Not for globex.")
    globex_user, globex_password = await console.client_user("globex")
    page = await console.page()
    pages.append(page)
    await console.sign_in(page, globex_user, globex_password)
    await page.get_by_role("heading", name="Dashboard").wait_for()
    await expect(page.get_by_text("No requests here yet")).to_be_visible()
    await page.goto(f"{console.url}/#/requests/{acme_request['request_id']}")
    await page.get_by_role("heading", name="Not found").wait_for()
    assert "Acme's private plan" not in await page.content()
    await shot(page, "client-request-not-found")

    # At 390 px wide no client page overflows sideways.
    await page.set_viewport_size({"width": 390, "height": 844})
    for route, title in (("", "Dashboard"), ("costs", "Costs"), ("keys", "API keys")):
        await page.goto(f"{console.url}/#/{route}")
        await page.get_by_role("heading", name=title, exact=True).wait_for()
        assert await page.evaluate("document.documentElement.scrollWidth") <= 390, route
    await page.goto(f"{console.url}/#/")
    await page.get_by_role("heading", name="Dashboard").wait_for()
    await shot(page, "client-dashboard-phone")
