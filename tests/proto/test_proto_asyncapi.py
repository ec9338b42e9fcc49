"""proto/asyncapi.yaml is generated from the Structs and must not drift."""

from __future__ import annotations

import yaml

from nexus.proto import CATALOG, asyncapi


def test_checked_in_asyncapi_document_is_up_to_date() -> None:
    assert asyncapi.DOCUMENT.read_text() == asyncapi.render(), "proto/asyncapi.yaml is stale: run `make proto`"


def test_document_has_a_channel_and_message_per_event_type() -> None:
    document = yaml.safe_load(asyncapi.render())
    assert document["asyncapi"].startswith("3.")
    addresses = {channel["address"] for channel in document["channels"].values()}
    for type_ in CATALOG:
        assert "nexus.evt." + type_.removeprefix("nexus.") in addresses
    assert "CloudEvent" in document["components"]["schemas"]
