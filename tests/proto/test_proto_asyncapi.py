"""proto/asyncapi.yaml: generated from the catalogues, complete, and valid for the AsyncAPI parser."""

from __future__ import annotations

from pathlib import Path

import yaml
from asyncapi_parser import parse, problems
from inprocess import SERVICES, build, memory_bus

from nexus.bus import DEAD_LETTER_HEADERS
from nexus.eventlog.memory import MemoryEventLog
from nexus.proto import CATALOG, STREAM_CMD, asyncapi, cmd_subject
from nexus.proto.commands import COMMAND_HEADERS, COMMANDS
from nexus.proto.deadletters import DEAD_LETTER_HEADERS as DOCUMENTED_DEAD_LETTER_HEADERS


def test_checked_in_asyncapi_document_is_up_to_date() -> None:
    assert asyncapi.DOCUMENT.read_text() == asyncapi.render(), "proto/asyncapi.yaml is stale: run `make proto`"


def test_document_has_a_channel_and_message_per_event_type() -> None:
    document = yaml.safe_load(asyncapi.render())
    assert document["asyncapi"].startswith("3.")
    addresses = {channel["address"] for channel in document["channels"].values()}
    for type_ in CATALOG:
        assert "nexus.evt." + type_.removeprefix("nexus.") in addresses
    assert "CloudEvent" in document["components"]["schemas"]


def test_every_family_of_subjects_is_documented_with_who_sends_and_receives() -> None:
    document = yaml.safe_load(asyncapi.render())
    channels = document["channels"]
    addresses = {channel["address"] for channel in channels.values()}
    # Commands, the external ingest, dead letters (any consumer's and the relay's placeholders).
    assert {cmd_subject(spec.service, spec.verb) for spec in COMMANDS} <= addresses
    assert {"nexus.ext.{source}.{event}", "nexus.dlq.{consumer}", "nexus.dlq.relay"} <= addresses
    # Every channel with an address has a sender and a receiver, each naming who it is.
    for key, channel in channels.items():
        if channel["address"] is None:
            continue  # the reply inbox: reached through the receive operations' reply
        ref = f"#/channels/{key}"
        actions = {op["action"]: op["tags"] for op in document["operations"].values() if op["channel"]["$ref"] == ref}
        assert set(actions) == {"send", "receive"}, key
        assert all(tags for tags in actions.values()), key
    # A command's handler answers on the inbox named by Nexus-Reply-To.
    start = document["operations"]["receiveCmdWorkflowStart"]
    assert start["reply"]["address"]["location"] == "$message.header#/Nexus-Reply-To"
    assert start["tags"] == [{"name": "workflow"}]
    headers = document["components"]["messages"]["CmdWorkflowStart"]["headers"]["properties"]
    assert {"Nexus-Reply-To", "Nexus-Tenant", "Idempotency-Key"} <= set(headers) == set(COMMAND_HEADERS)


def test_dead_letter_headers_are_the_ones_the_bus_adds() -> None:
    assert set(DOCUMENTED_DEAD_LETTER_HEADERS) == set(DEAD_LETTER_HEADERS)
    document = yaml.safe_load(asyncapi.render())
    dead_letter = document["components"]["messages"]["DeadLetter"]["headers"]["properties"]
    assert set(DEAD_LETTER_HEADERS) < set(dead_letter)
    placeholder = document["components"]["messages"]["RelayPlaceholder"]["headers"]["properties"]
    assert {"Nexus-Error", "Nexus-Error-Reason", "Nexus-Event-Id", "Nexus-Payload-Truncated"} <= set(placeholder)


def test_the_asyncapi_parser_accepts_the_document(tmp_path: Path) -> None:
    document = tmp_path / "asyncapi.yaml"
    document.write_text(asyncapi.render())
    result = parse(document)
    assert result["parsed"] and not problems(result), "\n".join(problems(result))


def test_the_asyncapi_parser_rejects_a_broken_document(tmp_path: Path) -> None:
    # The same document with a reply naming a message its channel does not have, and an address
    # parameter left undescribed: the parser must say so (the check above is not vacuous).
    broken = yaml.safe_load(asyncapi.render())
    broken["operations"]["receiveCmdWorkflowStart"]["reply"]["messages"] = [
        {"$ref": "#/channels/CommandReply/messages/NoSuchReply"}
    ]
    broken["channels"]["External"]["address"] = "nexus.ext.{source}.{name}"
    document = tmp_path / "broken.yaml"
    document.write_text(yaml.safe_dump(broken))
    found = "\n".join(problems(parse(document)))
    assert "NoSuchReply" in found
    assert "asyncapi3-channel-parameters" in found


async def test_the_catalogue_lists_exactly_the_commands_the_services_handle(tmp_path: Path) -> None:
    # Start the four services on one in-memory bus and read back the durable consumers they
    # created on NEXUS_CMD: one per command, named <service>-cmd-<verb>, filtering its subject.
    bus = await memory_bus()
    log = MemoryEventLog()
    started = []
    try:
        for name in SERVICES:
            service = await build(name, tmp_path, log=log, bus=bus)
            await service.start()
            started.append(service)
        consumers = await bus.consumers(STREAM_CMD)
    finally:
        for service in reversed(started):
            await service.stop()
        await log.close()
    handled = {(c.name, c.filter_subjects) for c in consumers}
    documented = {(spec.consumer, (spec.subject,)) for spec in COMMANDS}
    assert handled == documented


def test_granulator_command_payloads_are_the_bodies_the_granulator_decodes() -> None:
    # The granulator decodes its commands with the catalogue's own Structs: what the document
    # describes is what the service reads.
    from nexus.proto import commands
    from nexus.services.granulator import model

    pairs = [
        (commands.GranulatorHandshakeRequest, model.HandshakeRequest),
        (commands.GranulatorProcessRequest, model.ProcessRequest),
        (commands.GranulatorAcknowledgeRequest, model.AcknowledgeRequest),
        (commands.GranulatorExpandRequest, model.ExpandRequest),
        (commands.GranulatorExpandResult, model.ExpandResult),
    ]
    for documented, decoded in pairs:
        assert decoded is documented, decoded
