"""The console's admin pages in a real browser, against ``nexus up`` as processes.

The admin filters every client's requests, opens one, asks for a recommendation, assigns a
template with a parameter set in the form built from its JSON Schema, executes it and watches
it complete without a reload; creates a client and a user; reads the run's cost in the ledger;
redrives a real dead letter (a start command the workflow service refused, sent back once the
workflow exists); and sees every process ready. A client's user finds none of the admin pages
(``Not found``) and the admin routes answer it 403.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from typing import Any

import aiohttp
import nats
import pytest
from conftest import Console, shot

from nexus.client import KamClient

pytestmark = [pytest.mark.nats, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

PROBE = """
id: console_dlq_probe
name: Dead-letter probe
steps:
  - id: wait
    type: wait_event
    event: com.example.never
    timeout_seconds: 60
"""


async def admin_page(console: Console, pages: list[Any]) -> Any:
    page = await console.page()
    pages.append(page)
    await console.sign_in(page, "admin", console.up.admin_password, admin=True)
    return page


async def test_the_admin_runs_a_request_from_the_list_to_its_completion_and_its_cost(
    console: Console, pages: list[Any]
) -> None:
    # Acme's user asks for two things.
    username, password = await console.client_user("acme")
    async with KamClient(console.url) as ana:
        await ana.login(username, password)
        wanted = await ana.create_request(
            "Market brief on AI developer tools",
            "A short overview of the market for AI developer tools: vendors and trends.",
            urgency="high",
            category="research",
        )
        await ana.create_request("Team offsite agenda", "Plan two days.", urgency="low", category="planning")
        page = await admin_page(console, pages)
        await page.get_by_role("heading", name="Overview").wait_for()
        await page.get_by_role("link", name=re.compile(r"\d+ pending request")).wait_for()
        await shot(page, "admin-overview")

        # The list, filtered by words and client: only the market brief.
        await page.get_by_role("navigation", name="Main").get_by_role("link", name="Requests").click()
        await page.get_by_role("heading", name="Requests").wait_for()
        await page.get_by_label("Words").fill("market brief")
        await page.get_by_label("Client").select_option("acme")
        await page.get_by_role("button", name="Apply").click()
        results = page.get_by_role("table", name="Requests")
        await results.get_by_role("link", name="Market brief on AI developer tools").wait_for()
        assert await results.get_by_role("link", name="Team offsite agenda").count() == 0
        await page.get_by_text("Live updates: on").wait_for()
        # A new request that matches the filters appears by itself; one that does not, does not.
        await ana.create_request("Market brief for Europe", "Same, for Europe.", category="research")
        await ana.create_request("Holiday rota", "Who is on call.")
        await results.get_by_role("link", name="Market brief for Europe").wait_for()
        assert await results.get_by_role("link", name="Holiday rota").count() == 0
    await shot(page, "admin-requests")

    # The request: ranked templates, each with its score and reasons.
    await results.get_by_role("link", name="Market brief on AI developer tools").click()
    await page.get_by_role("heading", name="Market brief on AI developer tools").wait_for()
    await page.get_by_role("button", name="Recommend").click()
    ranked = page.get_by_role("list", name="Recommended templates")
    await ranked.wait_for()
    assert await ranked.get_by_role("meter").count() >= 2
    first = ranked.locator("> li").first
    assert "%" in await first.inner_text() and await first.locator(".a-reasons li").count() >= 1

    # Assign quick_brief with parameters from the form its JSON Schema builds.
    await ranked.get_by_role("button", name="Choose quick_brief").click()
    await page.get_by_label("Tone").select_option(label="formal")
    await page.get_by_label("Max tokens").fill("300")
    await page.get_by_role("button", name="Assign", exact=True).click()
    facts = page.locator("dl.facts").first
    await facts.get_by_text("quick_brief (basic)").wait_for()
    assert json.loads(await facts.locator("code").first.inner_text()) == {"tone": "formal", "max_tokens": 300}
    await shot(page, "admin-request-assigned")

    # A value outside the schema's bounds is held back by the form itself (minimum 100).
    await page.get_by_label("Max tokens").fill("5")
    await page.get_by_role("button", name="Assign", exact=True).click()
    assert await page.get_by_label("Max tokens").evaluate("(input) => input.validity.rangeUnderflow")
    assert (await console.admin.request(wanted["request_id"]))["template"]["parameters"]["max_tokens"] == 300
    await page.get_by_label("Max tokens").fill("300")

    # Execute, and watch it run to its end without reloading the page.
    await page.evaluate("window.__sameDocument = true")
    await page.get_by_role("button", name="Execute").click()
    steps = page.get_by_role("list", name="Workflow steps")
    await steps.get_by_text("brief", exact=True).wait_for()
    await facts.locator(".badge-completed").wait_for(timeout=60_000)
    await steps.locator(".badge-completed").wait_for()
    await page.get_by_role("heading", name="Deliverables").wait_for()
    assert await page.evaluate("window.__sameDocument === true"), "the page was reloaded"
    history = await page.locator("ol.timeline .badge").all_inner_texts()
    assert history == ["pending", "template_assigned", "executing", "completed"]
    request = await console.admin.request(wanted["request_id"])
    assert request["status"] == "completed" and request["template"]["parameters"]["tone"] == "formal"
    await shot(page, "admin-request-completed")

    # The ledger shows the run's cost, with acme's total.
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Ledger").click()
    await page.get_by_role("heading", name="Cost ledger").wait_for()
    await page.get_by_label("Client", exact=True).select_option("acme")
    await page.get_by_role("button", name="Apply").click()
    entries = page.get_by_role("table", name="Entries, newest first")
    await entries.get_by_role("link", name=wanted["request_id"]).first.wait_for()
    costs = await console.admin.costs("acme")
    expected = await page.evaluate(
        "(amount) => new Intl.NumberFormat(undefined, {style: 'currency', currency: 'USD', "
        "maximumFractionDigits: 6}).format(amount)",
        costs["total"],
    )
    assert costs["total"] == pytest.approx(request["metrics"]["estimated_cost"])
    assert expected in await page.locator(".a-total").inner_text()
    per_client = page.get_by_role("table", name="Per client")
    assert "Acme" in await per_client.inner_text()
    await shot(page, "admin-ledger")


async def test_the_admin_creates_a_client_and_a_user_who_can_sign_in(console: Console, pages: list[Any]) -> None:
    page = await admin_page(console, pages)
    await page.goto(console.url + "/#/clients")
    await page.get_by_role("heading", name="Clients", exact=True).wait_for()
    client_id = f"initech-{secrets.token_hex(3)}"
    new_client = page.get_by_role("form", name="New client")
    await new_client.get_by_label("Client id").fill(client_id)
    await new_client.get_by_label("Client name").fill("Initech")
    await new_client.get_by_label("Tier").select_option("premium")
    await new_client.get_by_label("Monthly budget").fill("250")
    await new_client.get_by_role("button", name="Create client").click()
    await page.get_by_role("heading", name=f"Initech ({client_id})").wait_for()

    # A client id already taken: the platform's message, in the form.
    await new_client.get_by_label("Client id").fill(client_id)
    await new_client.get_by_label("Client name").fill("Initech again")
    await new_client.get_by_role("button", name="Create client").click()
    await new_client.get_by_role("alert").wait_for()
    assert "409" in await new_client.get_by_role("alert").inner_text()

    new_user = page.get_by_role("form", name="New user")
    await new_user.get_by_label("Of client").select_option(client_id)
    await new_user.get_by_label("Login name").fill(f"peter@{client_id}.example")
    await new_user.get_by_label("Display name").fill("Peter")
    password = secrets.token_urlsafe(16)
    await new_user.get_by_label("Initial password").fill(password)
    await new_user.get_by_role("button", name="Create user").click()
    users = page.get_by_role("table", name="Users of Initech")
    await users.get_by_text(f"peter@{client_id}.example").wait_for()
    await shot(page, "admin-clients")
    # The new user signs in with the password the admin gave.
    async with KamClient(console.url) as peter:
        login = await peter.login(f"peter@{client_id}.example", password)
        assert login["kamContext"]["client_id"] == client_id


async def until(predicate: Any, what: str, seconds: float = 20) -> Any:
    """``predicate()``'s first true answer, asked every 0.2 s for up to ``seconds``."""
    for _ in range(int(seconds / 0.2)):
        found = await predicate()
        if found:
            return found
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what} did not happen within {seconds} s")


async def test_a_real_dead_letter_is_listed_and_redriven(console: Console, pages: list[Any]) -> None:
    up = console.up
    # A client asks NATS to start a workflow that does not exist yet: the workflow service's
    # start consumer gives up on it at once (its reason: the workflow is not registered).
    nc = await nats.connect(up.nats_url)
    try:
        command = json.dumps({"workflow_id": "console_dlq_probe", "input": {}}).encode()
        await nc.jetstream().publish("nexus.cmd.workflow.start", command, headers={"Nexus-Tenant": "e2e"})
    finally:
        await nc.close()

    async def listed() -> Any:
        letters = (await console.admin.call("GET", "/dead-letters"))["dead_letters"]
        return next((d for d in letters if "console_dlq_probe" in d["reason"]), None)

    letter = await until(listed, "the dead letter of the start command")
    assert letter["consumer"] == "workflow-cmd-start" and letter["redrivable"]

    page = await admin_page(console, pages)
    await page.goto(console.url + "/#/dead-letters")
    await page.get_by_role("heading", name="Dead letters").wait_for()
    table = page.get_by_role("table", name="Dead letters, oldest first")
    row = table.get_by_role("row").filter(has_text="console_dlq_probe")
    await row.wait_for()
    assert "workflow-cmd-start" in await row.inner_text() and "nexus.cmd.workflow.start" in await row.inner_text()
    await shot(page, "admin-dead-letters")

    # The workflow now exists (client e2e's): the redriven command starts it.
    key = await up.client_key()
    await up.register(key, ("/workflows", PROBE))
    await row.get_by_role("button", name=f"Redrive dead letter {letter['seq']}").click()
    await page.get_by_text("Redrove 1 dead letter.").wait_for()
    await table.get_by_role("row").filter(has_text="console_dlq_probe").wait_for(state="detached")

    async def started() -> Any:
        async with (
            aiohttp.ClientSession(headers={"x-service-key": key}) as http,
            http.get(up.workflow_url + "/executions") as answer,
        ):
            executions = (await answer.json())["executions"]
        return [e for e in executions if e["workflow_id"] == "console_dlq_probe"]

    [execution] = await until(started, "the redriven start command's execution")
    assert execution["idempotency_key"] == f"redrive:{letter['seq']}"


async def test_the_health_page_shows_every_process_ready(console: Console, pages: list[Any]) -> None:
    page = await admin_page(console, pages)
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Health").click()
    await page.get_by_role("heading", name="Platform health").wait_for()
    processes = page.get_by_role("table", name="Processes")
    await processes.wait_for()
    rows = processes.locator("tbody tr")
    names = [await rows.nth(i).locator("td").first.inner_text() for i in range(await rows.count())]
    assert {"kam", "workflow", "granulator", "studio"} <= set(names), names
    readiness = await processes.locator("tbody td:nth-child(2)").all_inner_texts()
    assert readiness == ["ready"] * len(names), dict(zip(names, readiness, strict=True))
    await page.get_by_text("Platform: ready").wait_for()
    # Refreshed by itself: the time stamp changes without a reload.
    stamp = await page.get_by_text("refreshed every").inner_text()
    await page.wait_for_function(
        "(before) => [...document.querySelectorAll('p')].some(p => p.textContent.includes('refreshed every') "
        "&& p.textContent !== before)",
        arg=stamp,
        timeout=15_000,
    )
    await shot(page, "admin-health")
    # On a phone's width the page still reads (one column).
    await page.set_viewport_size({"width": 390, "height": 844})
    await shot(page, "admin-health-phone")


async def test_a_client_finds_no_admin_page_and_the_admin_routes_refuse_it(console: Console, pages: list[Any]) -> None:
    username, password = await console.client_user("acme")
    page = await console.page()
    pages.append(page)
    await console.sign_in(page, username, password)
    for route in ("#/ledger", "#/dead-letters", "#/health"):
        await page.goto(f"{console.url}/{route}")
        await page.get_by_role("heading", name="Not found").wait_for()
    nav = page.get_by_role("navigation", name="Main")
    assert await nav.get_by_role("link", name="Ledger").count() == 0
    assert await nav.get_by_role("link", name="Dead letters").count() == 0
    statuses = await page.evaluate(
        """async () => {
            const csrf = document.cookie.split('; ').find(c => c.startsWith('nexus_csrf=')).split('=')[1];
            const post = { method: 'POST', headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf },
                           body: '{}' };
            return [
                (await fetch('/api/costs')).status,
                (await fetch('/api/dead-letters')).status,
                (await fetch('/api/dead-letters/redrive', post)).status,
            ];
        }"""
    )
    assert statuses == [403, 403, 403]
