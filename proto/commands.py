"""The command catalogue: every ``nexus.cmd.<service>.<verb>`` a service handles, with its payload.

A command is published on NEXUS_CMD (a work queue) as a CloudEvent whose ``data`` is the
payload declared here; a caller that wants the answer names its inbox in the ``Nexus-Reply-To``
header (``Bus.request`` does), and the handler's reply is sent there. The effects of a command
are events in the log, never only the reply. ``proto/asyncapi.py`` documents each one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec

from nexus.proto._subjects import cmd_subject
from nexus.proto.events.granulator import GranulatorRequirements, GranulatorValidationConfig

__all__ = [
    "COMMANDS",
    "COMMAND_HEADERS",
    "PLATFORM_IDENTITIES",
    "CommandRefused",
    "CommandSpec",
    "GranulatorAcknowledgeRequest",
    "GranulatorCommandReply",
    "GranulatorExpandRequest",
    "GranulatorExpandResult",
    "GranulatorGranulateRequest",
    "GranulatorHandshakeRequest",
    "GranulatorProcessRequest",
    "WorkflowRegisterCommand",
    "WorkflowRegisterReply",
    "WorkflowStartCommand",
    "WorkflowStartReply",
    "WorkflowTaskCommand",
]

PLATFORM_IDENTITIES = ("kam", "workflow", "granulator", "studio", "operator")
"""Who may publish on ``nexus.cmd.>`` (the NATS permissions of ``nexus.bus.embedded``)."""

TENANT_HEADER = "Nexus-Tenant"
"""The header naming the tenant a command acts for (see COMMAND_HEADERS)."""
EXECUTION_HEADER = "Nexus-Execution-ID"
"""The header naming the execution a workflow task step's command belongs to."""

COMMAND_HEADERS: dict[str, str] = {
    "Nexus-Reply-To": (
        "The requester's inbox: JetStream messages carry no core reply subject, so the handler "
        "sends its answer to the inbox named here (set by Bus.request)."
    ),
    "Nexus-Tenant": (
        "The tenant the command acts for (only platform identities may publish commands, so the "
        "claim is the platform's); absent: the platform itself. What the payload says is never taken for it."
    ),
    "Idempotency-Key": "A workflow task step's key (<execution id>:<step id>); the same key does the work once.",
    "Nexus-Execution-ID": "The execution a workflow task step's command belongs to.",
    "Nats-Msg-Id": "JetStream de-duplication id; a command without an idempotency key uses it as the key.",
    "traceparent": "W3C trace context: the handler's span continues the caller's trace.",
}
"""The headers a command may carry, and what each one means to the handler."""


# -- replies ----------------------------------------------------------------------------------


class CommandRefused(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to a command that was refused or dead-lettered (malformed, unknown verb or entity)."""

    accepted: Literal[False] = False
    error: str
    """A short machine-readable code (``rejected``, ``invalid_request``, ``PoisonMessageError``…)."""
    reason: str
    """What the caller is told."""


# -- workflow ---------------------------------------------------------------------------------


class WorkflowStartCommand(msgspec.Struct, frozen=True, kw_only=True):
    """``nexus.cmd.workflow.start``: start an execution of a registered workflow.

    The data of a CloudEvent, or the same object as bare JSON.
    """

    workflow_id: str
    input: Any = None
    """The execution's input, checked against the workflow's input schema."""
    priority: Annotated[int, msgspec.Meta(ge=0, le=100)] = 50
    idempotency_key: str | None = None
    """The same key starts one execution; absent: the CloudEvent's id (or Nats-Msg-Id)."""
    correlation_id: str | None = None
    trigger: dict[str, Any] | None = None
    """What started it, when a trigger did."""


class WorkflowStartReply(msgspec.Struct, frozen=True, kw_only=True):
    """The execution started (or the one the idempotency key already started)."""

    id: str
    """The execution id."""


class WorkflowRegisterCommand(msgspec.Struct, frozen=True, kw_only=True):
    """``nexus.cmd.workflow.register``: register a workflow or a schema definition.

    The data of a CloudEvent, or the same object as bare JSON (without ``document``, the whole
    object is the document).
    """

    kind: Literal["workflow", "schema"] = "workflow"
    document: str | dict[str, Any]
    """The definition as YAML or JSON text, or as an object."""


class WorkflowRegisterReply(msgspec.Struct, frozen=True, kw_only=True):
    """The definition registered."""

    id: str
    version: int


class WorkflowTaskCommand(msgspec.Struct, frozen=True, kw_only=True):
    """A workflow ``task`` step's command, type ``nexus.<service>.task.<verb>``.

    The worker answers by appending ``nexus.workflow.task.completed`` or ``.failed`` with the same
    ``idempotency_key``; the engine waits for that event, not for a reply.
    """

    execution_id: str
    step_id: str
    idempotency_key: str
    input: Any = None
    """The step's request: the body the verb takes."""


# -- granulator -------------------------------------------------------------------------------


class GranulatorHandshakeRequest(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /api/handshake`` / ``nexus.cmd.granulator.handshake``."""

    stage: str
    input: dict[str, Any]
    requirements: GranulatorRequirements
    execution_id: str = ""
    """Also accepted as the ``X-Execution-ID`` header."""
    validation: GranulatorValidationConfig | None = None
    """When absent, ``input.validation`` or the replica's default."""


class GranulatorProcessRequest(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /api/process`` / ``nexus.cmd.granulator.process``."""

    execution_id: str
    handshake_id: str
    data_ref: str | dict[str, Any] | None = None
    """``raw://…`` (a JSON object in Raw), an inline object, or absent (the handshake's input)."""


class GranulatorAcknowledgeRequest(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /api/acknowledge`` / ``nexus.cmd.granulator.acknowledge``."""

    execution_id: str
    handshake_id: str
    status: str = "completed"
    output_ref: str | None = None


class GranulatorGranulateRequest(msgspec.Struct, frozen=True, kw_only=True):
    """``nexus.cmd.granulator.granulate``: handshake, process and acknowledge in one call.

    A handshake's body whose ``stage`` and ``requirements`` may be left out; without ``input``,
    the granulation input is taken from the top-level fields.
    """

    stage: str = "content_granulation"
    input: dict[str, Any] | None = None
    requirements: GranulatorRequirements | None = None
    """Absent: 256 MB and 60 s."""
    execution_id: str = ""
    validation: GranulatorValidationConfig | None = None
    data_ref: str | dict[str, Any] | None = None
    topic: str | None = None
    structure_type: str | None = None
    depth: str | int | None = None
    sources: int | None = None
    audience: str | None = None


class GranulatorExpandRequest(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /generate`` / ``nexus.cmd.granulator.generate``: expand a text (the ``core`` service of seed 004)."""

    prompt: Annotated[str, msgspec.Meta(min_length=1, max_length=200_000)]
    model: str = ""
    """Model to ask for (the http generator passes it on; the builtin one ignores it)."""
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] = 0.7
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1024


class GranulatorExpandResult(msgspec.Struct, frozen=True, kw_only=True):
    """The expanded text."""

    text: str
    word_count: int
    model: str
    generator: str
    finish_reason: str = "stop"


class GranulatorCommandReply(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to an accepted granulator command: ``accepted`` plus the fields of the same
    call's HTTP answer (a handshake's id and estimate, a job's status, an expanded text…)."""

    accepted: Literal[True] = True


# -- the catalogue ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CommandSpec:
    """One command: its subject, payload, replies, and who sends and handles it."""

    service: str
    """The handling service (the subject's second token)."""
    verb: str
    payload: type[msgspec.Struct]
    """The CloudEvent's ``data``."""
    replies: tuple[type[msgspec.Struct], ...]
    """What the handler answers on ``Nexus-Reply-To`` (accepted first, then refused)."""
    senders: tuple[str, ...]
    summary: str
    consumer: str
    """The durable consumer on NEXUS_CMD whose dead letters go to ``nexus.dlq.<consumer>``."""
    bare_json: bool = False
    """The handler also takes the payload as bare JSON, without the CloudEvent envelope."""
    task: bool = False
    """A workflow ``task`` step may send it (type ``nexus.<service>.task.<verb>``, WorkflowTaskCommand)."""

    @property
    def subject(self) -> str:
        return cmd_subject(self.service, self.verb)


def _granulator(verb: str, payload: type[msgspec.Struct], summary: str, *extra: type[msgspec.Struct]) -> CommandSpec:
    return CommandSpec(
        service="granulator",
        verb=verb,
        payload=payload,
        replies=(*extra, GranulatorCommandReply, CommandRefused),
        senders=PLATFORM_IDENTITIES,
        summary=summary,
        consumer=f"granulator-cmd-{verb}",
        task=True,
    )


COMMANDS: tuple[CommandSpec, ...] = (
    _granulator(
        "acknowledge",
        GranulatorAcknowledgeRequest,
        "Acknowledge a processed handshake (its output was taken); the handshake is closed.",
    ),
    _granulator(
        "generate", GranulatorExpandRequest, "Expand a text with the configured generator.", GranulatorExpandResult
    ),
    _granulator(
        "granulate",
        GranulatorGranulateRequest,
        "Handshake, process and acknowledge in one call (what a workflow task step sends).",
    ),
    _granulator(
        "handshake",
        GranulatorHandshakeRequest,
        "Offer a job: the granulator accepts it with an estimate and a lease, or rejects it with a code.",
    ),
    _granulator("process", GranulatorProcessRequest, "Run an accepted handshake's job; the structure is an event."),
    CommandSpec(
        service="workflow",
        verb="register",
        payload=WorkflowRegisterCommand,
        replies=(WorkflowRegisterReply, CommandRefused),
        senders=PLATFORM_IDENTITIES,
        summary="Register a workflow or schema definition for the command's tenant.",
        consumer="workflow-cmd-register",
        bare_json=True,
    ),
    CommandSpec(
        service="workflow",
        verb="start",
        payload=WorkflowStartCommand,
        replies=(WorkflowStartReply, CommandRefused),
        senders=PLATFORM_IDENTITIES,
        summary="Start an execution of a workflow for the command's tenant.",
        consumer="workflow-cmd-start",
        bare_json=True,
    ),
)
"""Every command the services handle, sorted by subject."""
