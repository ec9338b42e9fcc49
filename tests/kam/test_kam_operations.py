"""KAM's operator routes: the cost ledger across clients, and the dead letters (list, redrive).

KAM runs in this process on the in-memory adapters, called over real HTTP; its NATS identity is
named ``kam`` (as ``nexus up`` names it), so the routes check what that identity may publish. The
last test runs the same library functions as KAM's identity against a real nats-server, to show
the server grants what the routes rely on and refuses what they say it refuses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from accounts_harness import Kam, running_kam

from nexus.bus import BusTimeoutError
from nexus.bus.deadletters import dead_letters, describe, redrive
from nexus.bus.embedded import IDENTITIES, EmbeddedNats
from nexus.bus.jetstream import JetStreamBus
from nexus.proto import STREAM_CMD, STREAM_DLQ, new_event
from nexus.proto.events.kam import KamCostRecorded
from nexus.services.kam.state import LEDGER_STREAM


def dead_letter_headers(consumer: str, subject: str, reason: str) -> dict[str, str]:
    """The headers the bus writes on a dead letter (nexus.bus._dispatch.dead_letter_headers)."""
    return {
        "Nexus-Error": "PoisonMessageError",
        "Nexus-Error-Reason": reason,
        "Nexus-Consumer": consumer,
        "Nexus-Original-Subject": subject,
        "Nexus-Original-Stream": "NEXUS_CMD" if subject.startswith("nexus.cmd.") else "NEXUS_EVT",
        "Nexus-Original-Seq": "7",
        "Nexus-Deliveries": "1",
        "Nexus-Tenant": "acme",
    }


@pytest.fixture
async def kam(tmp_path: Path) -> AsyncIterator[Kam]:
    async with running_kam(tmp_path, NEXUS_NATS_USER="kam", NEXUS_NATS_PASSWORD="unused-by-the-memory-bus") as kam:
        yield kam


async def record_costs(kam: Kam) -> None:
    """Five ledger entries: acme's two runs of template 1 and one of template 2, globex's run of 1."""
    entries = [
        ("c1", "acme", 0.05, "run", "1", "2026-03-01T10:00:00Z"),
        ("c2", "acme", 0.01, "stage", "1", "2026-03-01T10:00:00Z"),
        ("c3", "acme", 0.25, "run", "2", "2026-03-02T09:00:00Z"),
        ("c4", "globex", 0.05, "run", "1", "2026-03-03T08:00:00Z"),
        ("c5", "acme", 0.05, "run", "1", "2026-03-04T08:00:00Z"),
    ]
    events = [
        new_event(
            "nexus.kam.cost.recorded",
            KamCostRecorded(
                entry_id=entry_id,
                client_id=client,
                amount=amount,
                kind=kind,
                template_id=template,
                request_id=f"req_{entry_id}",
                at=at,
            ),
            source="test",
            tenant=client,
        )
        for entry_id, client, amount, kind, template, at in entries
    ]
    await kam.ctx.append(LEDGER_STREAM, events)


async def test_the_ledger_lists_every_clients_costs_with_totals_and_filters(kam: Kam) -> None:
    admin = await kam.admin()
    await kam.client_with_user(admin, "acme")
    await kam.client_with_user(admin, "globex")
    await record_costs(kam)

    everything = await kam.call("GET", "/api/costs", token=admin)
    assert everything.status == 200, everything.text
    body = everything.body
    # Newest first; each entry names its client and template.
    assert [e["entry_id"] for e in body["entries"]] == ["c5", "c4", "c3", "c2", "c1"]
    assert body["entries"][0]["template_name"] == "quick_brief" and body["entries"][0]["client_name"] == "acme"
    assert body["matching"] == 5 and body["next_cursor"] is None
    totals = {t["key"]: t["amount"] for t in body["by_client"]}
    assert totals == {"acme": pytest.approx(0.36), "globex": pytest.approx(0.05)}
    assert [t["key"] for t in body["by_client"]] == ["acme", "globex"]  # largest first
    by_template = {t["name"]: (t["amount"], t["entries"]) for t in body["by_template"]}
    assert by_template["quick_brief"] == (pytest.approx(0.16), 4)
    assert body["by_currency"] == {"USD": pytest.approx(0.41)}

    # Filters combine, and the totals are those of the matching entries.
    acme_brief = await kam.call("GET", "/api/costs?client_id=acme&template=quick_brief&kind=run", token=admin)
    assert [e["entry_id"] for e in acme_brief.body["entries"]] == ["c5", "c1"]
    assert acme_brief.body["by_currency"] == {"USD": pytest.approx(0.10)}
    window = await kam.call("GET", "/api/costs?from=2026-03-02&to=2026-03-03", token=admin)
    assert [e["entry_id"] for e in window.body["entries"]] == ["c4", "c3"]

    # Pages: the cursor continues where the last page ended, totals cover every page.
    first = await kam.call("GET", "/api/costs?limit=2", token=admin)
    assert [e["entry_id"] for e in first.body["entries"]] == ["c5", "c4"] and first.body["matching"] == 5
    second = await kam.call("GET", f"/api/costs?limit=2&cursor={first.body['next_cursor']}", token=admin)
    assert [e["entry_id"] for e in second.body["entries"]] == ["c3", "c2"]

    # Bad filters are named.
    for query, named in (
        ("kind=fee", "kind"),
        ("template=no_such", "template"),
        ("from=yesterday", "from"),
        ("limit=0", "limit"),
        ("cursor=xyz", "cursor"),
    ):
        refused = await kam.call("GET", f"/api/costs?{query}", token=admin)
        assert refused.status == 400 and named in refused.body["message"], (query, refused.text)


async def test_a_client_may_not_read_the_ledger_or_the_dead_letters(kam: Kam) -> None:
    admin = await kam.admin()
    _, acme = await kam.client_with_user(admin, "acme")
    for method, path, body in (
        ("GET", "/api/costs", None),
        ("GET", "/api/dead-letters", None),
        ("POST", "/api/dead-letters/redrive", {}),
    ):
        answer = await kam.call(method, path, token=acme, json=body)
        assert answer.status == 403, (path, answer.text)


async def test_dead_letters_are_listed_and_those_kam_may_send_back_are_redriven(kam: Kam) -> None:
    admin = await kam.admin()
    bus = kam.service.bus
    # A command the workflow service refused, and an event a consumer refused.
    await bus.publish(
        "nexus.dlq.workflow-cmd-start",
        b'{"workflow_id": "later"}',
        headers=dead_letter_headers("workflow-cmd-start", "nexus.cmd.workflow.start", "unknown workflow 'later'"),
    )
    await bus.publish(
        "nexus.dlq.kam-costs",
        b'{"n": 1}',
        headers=dead_letter_headers("kam-costs", "nexus.evt.kam.cost.recorded", "invalid event"),
    )

    listed = await kam.call("GET", "/api/dead-letters", token=admin)
    assert listed.status == 200, listed.text
    assert listed.body["total"] == 2 and listed.body["identity"] == "kam" and not listed.body["more"]
    command, event = listed.body["dead_letters"]
    assert command["consumer"] == "workflow-cmd-start" and command["reason"] == "unknown workflow 'later'"
    assert command["original_subject"] == "nexus.cmd.workflow.start" and command["deliveries"] == 1
    assert command["redrivable"] is True and command["not_redrivable_because"] is None
    # KAM may not publish platform events: it says so, and names what the operator runs.
    assert event["redrivable"] is False
    assert "nexus dlq redrive --consumer kam-costs" in event["not_redrivable_because"]
    one = await kam.call("GET", "/api/dead-letters?consumer=kam-costs", token=admin)
    assert [d["seq"] for d in one.body["dead_letters"]] == [event["seq"]]
    limited = await kam.call("GET", "/api/dead-letters?limit=1", token=admin)
    assert len(limited.body["dead_letters"]) == 1 and limited.body["more"] is True
    bad = await kam.call("GET", "/api/dead-letters?consumer=a.b", token=admin)
    assert bad.status == 400 and "consumer" in bad.body["message"]

    # One by its seq: the event's is refused (409, the reason), the command's goes back.
    refused = await kam.call("POST", "/api/dead-letters/redrive", token=admin, json={"seq": event["seq"]})
    assert refused.status == 409 and "only the relay publishes platform events" in refused.body["message"]
    sent = await kam.call("POST", "/api/dead-letters/redrive", token=admin, json={"seq": command["seq"]})
    assert sent.status == 200 and sent.body == {"redriven": 1, "problems": []}, sent.text
    again = await kam.call("POST", "/api/dead-letters/redrive", token=admin, json={"seq": command["seq"]})
    assert again.status == 404
    republished = await bus.last_message(STREAM_CMD, "nexus.cmd.workflow.start")
    assert republished is not None and republished.data == b'{"workflow_id": "later"}'
    # The original headers travel on (the tenant the command acts for), the dead-letter ones do not.
    assert republished.headers["Nexus-Tenant"] == "acme" and "Nexus-Error" not in republished.headers
    assert republished.headers["Nats-Msg-Id"] == f"redrive:{command['seq']}"

    # All: what remains cannot be sent back by KAM, and is left in place with the reason.
    everything = await kam.call("POST", "/api/dead-letters/redrive", token=admin, json={})
    assert everything.body["redriven"] == 0 and len(everything.body["problems"]) == 1
    assert [m.seq async for m in dead_letters(bus)] == [event["seq"]]
    unknown = await kam.call("POST", "/api/dead-letters/redrive", token=admin, json={"sequence": 1})
    assert unknown.status == 400


@pytest.mark.nats
async def test_kams_nats_identity_reads_deletes_and_republishes_commands_but_not_events(
    embedded_nats: EmbeddedNats,
) -> None:
    operator = await JetStreamBus.connect(embedded_nats.client_url())
    kam = await JetStreamBus.connect(embedded_nats.client_url("kam"), ack_timeout=1.0)
    try:
        for consumer, subject in (
            ("workflow-cmd-start", "nexus.cmd.workflow.start"),
            ("kam-costs", "nexus.evt.kam.cost.recorded"),
        ):
            await operator.publish(f"nexus.dlq.{consumer}", b"{}", headers=dead_letter_headers(consumer, subject, "x"))
        check = IDENTITIES["kam"].may_publish
        seen = [describe(m, check) async for m in dead_letters(kam)]
        assert [(d.consumer, d.redrivable) for d in seen] == [("workflow-cmd-start", True), ("kam-costs", False)]
        sent, problems = await redrive(kam, may_publish=check)
        assert sent == 1 and len(problems) == 1
        # The server let KAM read NEXUS_DLQ, delete from it and publish the command.
        assert [m.headers["Nexus-Consumer"] async for m in dead_letters(operator)] == ["kam-costs"]
        assert (await operator.last_message(STREAM_CMD, "nexus.cmd.workflow.start")) is not None
        assert (await operator.stream_state(STREAM_DLQ)).messages == 1
        # Without the check the server itself refuses the event: no ack comes back.
        with pytest.raises(BusTimeoutError):
            await redrive(kam, "kam-costs")
        assert (await operator.stream_state(STREAM_DLQ)).messages == 1
    finally:
        await kam.close()
        await operator.close()
