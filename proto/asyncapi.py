"""Generate ``proto/asyncapi.yaml`` (AsyncAPI 3.0): events, commands, external ingest, dead letters.

Usage: ``python -m nexus.proto.asyncapi --write`` (``make proto``) or ``--check`` (exit 1 when
the checked-in document is stale).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import msgspec
import yaml

from nexus.proto import CATALOG, DLQ_PREFIX, EXT_PREFIX, CloudEvent, evt_subject
from nexus.proto.commands import COMMAND_HEADERS, COMMANDS, WorkflowTaskCommand
from nexus.proto.deadletters import (
    DEAD_LETTER_HEADERS,
    EXT_HEADERS,
    RELAY_CONSUMER,
    RELAY_PLACEHOLDER_HEADERS,
    TRUNCATED_HEADER,
    RelayPlaceholder,
)

DOCUMENT = Path(__file__).with_name("asyncapi.yaml")


def _ref_name(type_: str) -> str:
    return "".join(part.capitalize() for part in type_.split(".")[1:])


def _camel(*parts: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in parts)


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _headers(described: dict[str, str], note: str = "") -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {name: {"type": "string", "description": text} for name, text in described.items()},
    }
    if note:
        schema["description"] = note
    return schema


def _cloudevent(data: dict[str, Any], type_: str | None = None) -> dict[str, Any]:
    properties: dict[str, Any] = {"data": data}
    if type_ is not None:
        properties = {"type": {"const": type_}, **properties}
    return {"allOf": [_ref("schemas", "CloudEvent"), {"type": "object", "properties": properties}]}


# Who sends and who receives: operations carry the service (or actor) that performs them as a tag.
_TAGS = {
    "relay": "The outbox relay: publishes the log's events on nexus.evt.> and runs the external ingest.",
    "ingest": "The external ingest (in the relay process, or deployed alone): appends nexus.ext.> to the log.",
    "kam": "The key and account manager.",
    "workflow": "The workflow engine.",
    "granulator": "The granulator worker.",
    "studio": "The studio.",
    "operator": "The operator's identity: the nexus command line (`nexus dlq`, scripts).",
    "producer": "An external producer: may publish only on nexus.ext.<its source>.>.",
    "subscriber": "Any subscriber of NEXUS_EVT (triggers, external consumers).",
}


def _tags(*names: str) -> list[dict[str, str]]:
    return [{"name": name} for name in names]


def build() -> dict[str, Any]:
    """The AsyncAPI document as plain data, deterministic for the catalogues.

    Four families of channels: the platform events (``nexus.evt.*``, from CATALOG), the commands
    (``nexus.cmd.<service>.<verb>``, from ``nexus.proto.commands.COMMANDS``), the external ingest
    (``nexus.ext.<source>.<event>``) and the dead letters (``nexus.dlq.<consumer>``). Every channel
    has a ``send`` and a ``receive`` operation, tagged with the service or actor performing it.
    """
    types = list(CATALOG)
    structs = [CATALOG.struct_for(t) for t in types]
    commands = sorted(COMMANDS, key=lambda spec: spec.subject)
    replies = sorted({reply for spec in commands for reply in spec.replies}, key=lambda s: s.__name__)
    all_structs = [
        *(s for s in structs if s is not None),
        *(spec.payload for spec in commands),
        *replies,
        WorkflowTaskCommand,
        RelayPlaceholder,
    ]
    _, components = msgspec.json.schema_components([CloudEvent], ref_template="#/components/schemas/{name}")
    _, data_components = msgspec.json.schema_components(all_structs, ref_template="#/components/schemas/{name}")
    schemas = {**components, **data_components}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}

    # -- events ------------------------------------------------------------------------------
    for type_, struct in zip(types, structs, strict=True):
        assert struct is not None
        name = _ref_name(type_)
        messages[name] = {
            "name": type_,
            "title": type_,
            "summary": CATALOG.description(type_) or type_,
            "contentType": "application/cloudevents+json",
            "payload": _cloudevent(_ref("schemas", struct.__name__), type_),
        }
        channels[name] = {
            "address": evt_subject(type_),
            "messages": {name: _ref("messages", name)},
        }
        operations[f"send{name}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{name}"},
            "summary": f"The relay publishes each stored {type_} event (Nats-Msg-Id: the event id).",
            "tags": _tags("relay"),
        }
        operations[f"receive{name}"] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{name}"},
            "summary": f"Events of type {type_}, published by the outbox relay on stream NEXUS_EVT.",
            "tags": _tags("subscriber"),
        }

    # -- commands ----------------------------------------------------------------------------
    reply_channel = "CommandReply"
    channels[reply_channel] = {
        "address": None,
        "title": "A command's reply",
        "description": "Core NATS, to the requester's inbox named by the command's Nexus-Reply-To header.",
        "messages": {reply.__name__: _ref("messages", reply.__name__) for reply in replies},
    }
    for reply in replies:
        messages[reply.__name__] = {
            "name": reply.__name__,
            "summary": (reply.__doc__ or reply.__name__).strip().splitlines()[0],
            "contentType": "application/json",
            "payload": _ref("schemas", reply.__name__),
        }
    command_headers = _headers(COMMAND_HEADERS)
    for spec in commands:
        name = _camel("cmd", spec.service, spec.verb)
        channel_messages = {name: _ref("messages", name)}
        messages[name] = {
            "name": spec.subject,
            "title": spec.subject,
            "summary": spec.summary,
            "contentType": "application/cloudevents+json",
            "headers": command_headers,
            "payload": _cloudevent(_ref("schemas", spec.payload.__name__)),
        }
        if spec.bare_json:
            messages[f"{name}Bare"] = {
                "name": f"{spec.subject} (bare JSON)",
                "summary": f"{spec.summary} The payload without the CloudEvent envelope.",
                "contentType": "application/json",
                "headers": command_headers,
                "payload": _ref("schemas", spec.payload.__name__),
            }
            channel_messages[f"{name}Bare"] = _ref("messages", f"{name}Bare")
        if spec.task:
            task_type = f"nexus.{spec.service}.task.{spec.verb}"
            messages[f"{name}Task"] = {
                "name": task_type,
                "title": task_type,
                "summary": (
                    f"A workflow task step's {spec.verb}: the result is nexus.workflow.task.completed "
                    "or .failed with the same idempotency_key, appended to the log."
                ),
                "contentType": "application/cloudevents+json",
                "headers": command_headers,
                "payload": _cloudevent(_ref("schemas", WorkflowTaskCommand.__name__), task_type),
            }
            channel_messages[f"{name}Task"] = _ref("messages", f"{name}Task")
        channels[name] = {
            "address": spec.subject,
            "description": (
                f"Stream NEXUS_CMD (work queue); durable consumer {spec.consumer}, shared by every replica; "
                f"a message it gives up on goes to nexus.dlq.{spec.consumer}."
            ),
            "messages": channel_messages,
        }
        operations[f"send{name}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{name}"},
            "summary": f"A platform identity sends {spec.subject} (Bus.request to wait for the reply).",
            "tags": _tags(*spec.senders),
        }
        operations[f"receive{name}"] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{name}"},
            "summary": f"The {spec.service} handles {spec.subject}: {spec.summary}",
            "tags": _tags(spec.service),
            "reply": {
                "address": {
                    "location": "$message.header#/Nexus-Reply-To",
                    "description": "Sent only when the command names an inbox.",
                },
                "channel": {"$ref": f"#/channels/{reply_channel}"},
                "messages": [{"$ref": f"#/channels/{reply_channel}/messages/{r.__name__}"} for r in spec.replies],
            },
        }

    # -- external ingest ---------------------------------------------------------------------
    messages["ExternalEvent"] = {
        "name": "nexus.ext.<source>.<event>",
        "summary": "A CloudEvent from an external producer; its owner is the tenant the source is bound to.",
        "contentType": "application/cloudevents+json",
        "headers": _headers(EXT_HEADERS),
        "payload": _ref("schemas", "CloudEvent"),
    }
    channels["External"] = {
        "address": f"{EXT_PREFIX}.{{source}}.{{event}}",
        "description": (
            "Stream NEXUS_EXT; the ingest (durable consumer nexus-ingest) appends each event to the log "
            "stream ext-<source>, and the relay publishes it again on nexus.evt.ext.<source>.<event>."
        ),
        "parameters": {
            "source": {"description": "The producer's source (letters, digits, '_' and '-'; its NATS credential)."},
            "event": {"description": "The event's name, kept in the stored event's extevent attribute."},
        },
        "messages": {"ExternalEvent": _ref("messages", "ExternalEvent")},
    }
    operations["sendExternal"] = {
        "action": "send",
        "channel": {"$ref": "#/channels/External"},
        "summary": "An external producer publishes on nexus.ext.<its source>.<event> (its only permission).",
        "tags": _tags("producer"),
    }
    operations["receiveExternal"] = {
        "action": "receive",
        "channel": {"$ref": "#/channels/External"},
        "summary": "The ingest validates the envelope and appends the event to the log; a bad one is dead-lettered.",
        "tags": _tags("ingest"),
    }

    # -- dead letters ------------------------------------------------------------------------
    consumers = sorted({spec.consumer for spec in commands} | {"nexus-ingest"})
    messages["DeadLetter"] = {
        "name": "nexus.dlq.<consumer>",
        "summary": "A message a durable consumer gave up on: its payload, its headers and the DLQ headers.",
        "contentType": "application/octet-stream",
        "headers": _headers(
            {**DEAD_LETTER_HEADERS, TRUNCATED_HEADER: "When present: the payload was cut; its original size."},
            "The original message's headers are kept beside these.",
        ),
        "payload": {"description": "The original payload, unchanged (unless Nexus-Payload-Truncated says it was cut)."},
    }
    channels["DeadLetter"] = {
        "address": f"{DLQ_PREFIX}.{{consumer}}",
        "description": "Stream NEXUS_DLQ; `nexus dlq list` shows dead letters, `nexus dlq redrive` republishes them.",
        "parameters": {
            "consumer": {
                "description": "The durable consumer's name (the relay's placeholders: see RelayDeadLetter).",
                "examples": consumers,
            }
        },
        "messages": {"DeadLetter": _ref("messages", "DeadLetter")},
    }
    messages["RelayPlaceholder"] = {
        "name": f"{DLQ_PREFIX}.{RELAY_CONSUMER}",
        "summary": (RelayPlaceholder.__doc__ or "").strip(),
        "contentType": "application/json",
        "headers": _headers(RELAY_PLACEHOLDER_HEADERS),
        "payload": _ref("schemas", RelayPlaceholder.__name__),
    }
    channels["RelayDeadLetter"] = {
        "address": f"{DLQ_PREFIX}.{RELAY_CONSUMER}",
        "description": "Stream NEXUS_DLQ: placeholders naming events of the log the relay cannot publish.",
        "messages": {"RelayPlaceholder": _ref("messages", "RelayPlaceholder")},
    }
    operations["sendDeadLetter"] = {
        "action": "send",
        "channel": {"$ref": "#/channels/DeadLetter"},
        "summary": "A durable consumer dead-letters a message it cannot handle (any service, the ingest).",
        "tags": _tags("workflow", "granulator", "kam", "studio", "ingest"),
    }
    operations["receiveDeadLetter"] = {
        "action": "receive",
        "channel": {"$ref": "#/channels/DeadLetter"},
        "summary": "The operator lists and redrives dead letters (`nexus dlq`).",
        "tags": _tags("operator"),
    }
    operations["sendRelayDeadLetter"] = {
        "action": "send",
        "channel": {"$ref": "#/channels/RelayDeadLetter"},
        "summary": "The relay dead-letters a placeholder for an event it cannot publish, and goes on.",
        "tags": _tags("relay"),
    }
    operations["receiveRelayDeadLetter"] = {
        "action": "receive",
        "channel": {"$ref": "#/channels/RelayDeadLetter"},
        "summary": "The operator lists the placeholders (`nexus dlq list relay`); a redrive leaves them alone.",
        "tags": _tags("operator"),
    }

    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Nexus messages",
            "version": "0.2.0",
            "description": (
                "Every message on the platform's NATS subjects. Platform events: CloudEvents 1.0 in "
                "structured JSON mode, published from the event log on nexus.evt.<service>.<entity>.<event> "
                "(JetStream stream NEXUS_EVT). Commands: nexus.cmd.<service>.<verb> (NEXUS_CMD, a work "
                "queue), answered on the Nexus-Reply-To inbox. External events: nexus.ext.<source>.<event> "
                "(NEXUS_EXT). Dead letters: nexus.dlq.<consumer> (NEXUS_DLQ). Each operation's tag names "
                "the service or actor that sends or receives. "
                "Generated from nexus.proto by `make proto`; do not edit by hand."
            ),
            "tags": [{"name": name, "description": text} for name, text in _TAGS.items()],
        },
        "defaultContentType": "application/cloudevents+json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": dict(sorted(schemas.items()))},
    }


def render() -> str:
    return "# Generated by `make proto` from nexus.proto; do not edit.\n" + yaml.safe_dump(
        build(), sort_keys=False, width=100, allow_unicode=True
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", action="store_true", help="rewrite proto/asyncapi.yaml")
    group.add_argument("--check", action="store_true", help="exit 1 when proto/asyncapi.yaml is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.write:
        DOCUMENT.write_text(text)
        print(f"wrote {DOCUMENT.name} ({len(list(CATALOG))} event types, {len(COMMANDS)} commands)")
        return 0
    if not DOCUMENT.exists() or DOCUMENT.read_text() != text:
        print("proto/asyncapi.yaml is stale: run `make proto` and commit it", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
