"""Commands: ``nexus.cmd.<service>.<verb>``, a durable work queue with optional replies."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec

from nexus.bus._metrics import COMMANDS
from nexus.bus._port import Bus, Consumer, ConsumerSpec, Delivery, PoisonMessageError
from nexus.bus.events import decode_delivery
from nexus.proto import CMD_PREFIX, STREAM_CMD, CloudEvent, cmd_subject, encode_event, new_event

__all__ = ["CommandHandler", "CommandRejected", "CommandRouter", "send_command"]

CommandHandler = Callable[[CloudEvent], Awaitable[Mapping[str, Any] | None]]
"""Handles one command (a CloudEvent whose data are the arguments). It returns what the caller
learns when accepted (ids of what it created), raises CommandRejected for a refusal the caller
should see, or RetryableError to have the command delivered again later."""


class CommandRejected(Exception):
    """The command is well-formed but refused (unknown entity, not allowed in this state…).

    Args:
        reason: what the caller is told.
        error: a short machine-readable code.
    """

    def __init__(self, reason: str, error: str = "rejected") -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error


class CommandRouter:
    """Dispatches one service's commands to a handler per verb, and answers ``Bus.request``.

    A command is a CloudEvent published on ``nexus.cmd.<service>.<verb>``. The reply, sent
    when the command carries a reply inbox, is JSON: ``{"accepted": true, ...handler result}``
    or ``{"accepted": false, "error": CODE, "reason": TEXT}``. Malformed commands and unknown
    verbs are dead-lettered (and answered with the reason); either way the command's effects
    appear as events in the log.

    Args:
        bus: the bus.
        service: the service's subject token, e.g. ``workflow``.
        name: durable name (default ``<service>-commands``); replicas share it.
    """

    def __init__(self, bus: Bus, service: str, *, name: str | None = None) -> None:
        self.bus = bus
        self.service = service
        self.spec = ConsumerSpec(
            name=name or f"{service}-commands",
            stream=STREAM_CMD,
            filter_subjects=(f"{CMD_PREFIX}.{service}.>",),
        )
        self._routes: dict[str, CommandHandler] = {}
        self._consumer: Consumer | None = None

    def route(self, verb: str, handler: CommandHandler) -> None:
        """Handle ``nexus.cmd.<service>.<verb>`` with ``handler``."""
        cmd_subject(self.service, verb)  # validates the token
        self._routes[verb] = handler

    async def start(self) -> None:
        self._consumer = await self.bus.consume(self.spec, self.handle)

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def handle(self, delivery: Delivery) -> bytes:
        verb = delivery.subject.rsplit(".", 1)[-1]
        handler = self._routes.get(verb)
        if handler is None:
            COMMANDS.labels(self.service, "dead_letter").inc()
            raise PoisonMessageError(
                f"{self.service} has no command {verb!r} (known: {', '.join(sorted(self._routes))})"
            )
        try:
            command = decode_delivery(delivery)
        except Exception:
            COMMANDS.labels(self.service, "dead_letter").inc()
            raise
        try:
            result = await handler(command)
        except CommandRejected as exc:
            COMMANDS.labels(self.service, "rejected").inc()
            return json.dumps({"accepted": False, "error": exc.error, "reason": exc.reason}).encode()
        COMMANDS.labels(self.service, "accepted").inc()
        return msgspec.json.encode({"accepted": True, **(result or {})})


async def send_command(
    bus: Bus,
    service: str,
    verb: str,
    data: Any,
    *,
    source: str,
    timeout: float = 5.0,  # noqa: ASYNC109 - a deadline per call, part of the API
    **attributes: Any,
) -> dict[str, Any]:
    """Send a command and return the decoded reply (``accepted`` plus the handler's result or error).

    Raises:
        BusTimeoutError: no reply within ``timeout`` seconds (the command stays queued).
    """
    event = new_event(f"{CMD_PREFIX}.{service}.{verb}", data, source=source, **attributes)
    reply = await bus.request(cmd_subject(service, verb), encode_event(event), timeout=timeout)
    decoded: dict[str, Any] = json.loads(reply)
    return decoded
