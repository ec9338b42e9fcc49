"""The AI factory's whole flow (seed 002) against ``nexus up`` as processes, as its users live it.

The admin creates two clients and a user of each; acme's user logs in and asks for a report;
the admin asks for a recommendation, assigns the template it ranks first and executes it; the
workflow service runs the template's workflow, whose steps the granulator serves; KAM learns
that the execution ended from its event and records the deliverable and the costs; acme's user
sees the transitions live, fetches the deliverable and reads the costs; globex's user sees none
of it, and the request transitions reach a NATS subscriber as events.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any

import nats
import pytest
from e2e_platform import within
from platform_process import running_platform

from nexus.client import KamApiError, KamClient

pytestmark = [pytest.mark.nats, pytest.mark.slow]


async def test_from_a_clients_request_to_its_deliverable_and_costs_with_nobody_else_seeing_it(tmp_path: Any) -> None:
    async with running_platform(tmp_path) as up:
        nc = await nats.connect(up.nats_url)
        js = nc.jetstream()
        watcher = await js.pull_subscribe("nexus.evt.kam.>", durable="e2e-kam", stream="NEXUS_EVT")
        admin, ana, bob = KamClient(up.kam_url), KamClient(up.kam_url), KamClient(up.kam_url)
        try:
            # The admin creates the clients and their users.
            await admin.login("admin", up.admin_password, login_type="admin")
            await admin.create_client("acme", name="Acme Corp", monthly_budget=100.0)
            await admin.create_client("globex", name="Globex")
            ana_password, bob_password = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
            await admin.create_user("acme", "ana@acme.example", ana_password)
            await admin.create_user("globex", "bob@globex.example", bob_password)

            # Acme's user logs in and asks for work.
            login = await ana.login("ana@acme.example", ana_password)
            assert login["success"] is True and login["sessionToken"].startswith("sess_")
            assert login["kamContext"]["client_id"] == "acme" and login["kamContext"]["role"] == "client"
            request = await ana.create_request(
                "Market analysis for AI tools",
                "Need a comprehensive report on the market for AI developer tools: vendors, pricing, trends.",
                urgency="high",
                category="research",
            )
            request_id = request["request_id"]
            notifications: list[dict[str, Any]] = []

            async def follow() -> None:
                async for note in ana.notifications():
                    notifications.append(note)
                    if note.get("event", "").endswith("request.completed"):
                        return

            listener = asyncio.create_task(follow())

            # The admin asks for a recommendation, assigns the first one and executes it.
            recommended = await admin.recommend(request_id, {"budget": 50.0})
            assert recommended["recommendations"], recommended
            best = recommended["recommendations"][0]
            assert best["reasons"] and 0 <= best["score"] <= 1
            await admin.assign(request_id, best["template_id"], best["template_name"])
            started = await admin.execute(request_id)
            assert started["execution_id"]

            # The user sees it finish, live, and the request says so.
            await within(listener, "the request's completion on the user's notification stream", 60)
            final = await ana.request(request_id)
            assert final["status"] == "completed", final
            statuses = [step["status"] for step in final["history"]]
            assert statuses == ["pending", "template_assigned", "executing", "completed"]
            assert final["metrics"]["stages_completed"] >= 1
            assert final["metrics"]["estimated_cost"] > 0

            # The deliverable, from Raw, to its owner.
            [listed, *_] = (await ana.deliverables(request_id))["deliverables"]
            assert listed["storage_ref"].startswith("raw://") and listed["size_bytes"] > 0
            content = json.loads(await ana.deliverable(listed["id"]))
            assert content, "an empty deliverable"

            # The costs show the run, and equal the request's estimated cost.
            costs = await ana.costs("acme", group="template")
            assert costs["total"] == pytest.approx(final["metrics"]["estimated_cost"])
            assert [group["key"] for group in costs["groups"]] == [best["template_name"]]

            # Globex's user sees none of it: 404 everywhere, an empty listing.
            await bob.login("bob@globex.example", bob_password)
            for call in (
                bob.request(request_id),
                bob.deliverable(listed["id"]),
                bob.deliverables(request_id),
                bob.costs("acme"),
            ):
                with pytest.raises(KamApiError) as refused:
                    await call
                assert refused.value.status == 404, refused.value.body
            assert (await bob.requests())["requests"] == []

            # The transitions went out on NATS as events of acme's request.
            seen: list[str] = []

            async def until_completed_on_nats() -> None:
                while "nexus.kam.request.completed" not in seen:
                    try:
                        messages = await watcher.fetch(batch=50, timeout=1)
                    except TimeoutError:
                        continue
                    for message in messages:
                        await message.ack()
                        body = json.loads(message.data)
                        if body.get("data", {}).get("request_id") == request_id:
                            assert body.get("tenant") == "acme"
                            seen.append(body["type"])

            await within(until_completed_on_nats(), "the request's events on nexus.evt.kam.>", 20)
            assert seen[0] == "nexus.kam.request.created"

            # The audit knows who did what; acme's user sees only acme's records.
            own = await ana.audit()
            records = own["records"] if isinstance(own, dict) else own
            assert records and all(record.get("client_id") in ("acme", None) for record in records)
        finally:
            for client in (admin, ana, bob):
                await client.close()
            await nc.close()
