"""What a step type is: a runner registered under its kind, given one ``StepInput`` per attempt.

A runner returns an ``Outcome``: success with a result, or a failure that is retryable
(connection error, timeout, 5xx, 429, no answer by the deadline) or not (any other 4xx, an
unknown service, a worker's final refusal). The driver records the outcome; a runner never
appends to the log itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar, get_args

from nexus.services.workflow.definitions import StepKind

if TYPE_CHECKING:
    import aiohttp

    from nexus.bus import Bus
    from nexus.eventlog import EventLog
    from nexus.services.workflow.definitions import CompensationDefinition, StepDefinition
    from nexus.services.workflow.handlers import ExecutionState
    from nexus.services.workflow.identity import ServiceIdentity
    from nexus.services.workflow.view import ExecutionView

__all__ = ["Outcome", "StepInput", "StepRuntime", "StepType", "register", "registered_kinds", "step_type"]


@dataclass(frozen=True)
class Outcome:
    """The result of one attempt."""

    ok: bool
    result: Any = None
    error: str = ""
    retryable: bool = False
    status: int | None = None
    sent_at: float = 0.0
    """``time.perf_counter()`` when the request left (for the dispatch latency figure)."""
    interrupted: bool = False
    """The attempt was cut short by a cancel request; it has no outcome to record."""


class StepRuntime(Protocol):
    """What the engine lends every step: its connections and the view of the log."""

    @property
    def services(self) -> Mapping[str, str]:
        """Base URL of every service an ``api_call`` step may name."""
        ...

    @property
    def platform_services(self) -> frozenset[str]:
        """The services that get a token delegated from the execution's tenant."""
        ...

    @property
    def identity(self) -> ServiceIdentity | None:
        """The replica's worker token (None until the service has started)."""
        ...

    @property
    def bus(self) -> Bus | None:
        """For commands to workers (None: ``task`` steps fail, saying so)."""
        ...

    @property
    def log(self) -> EventLog:
        """The event log (events a step waits for may already be in it)."""
        ...

    @property
    def view(self) -> ExecutionView:
        """The executions view (new events a step waits for arrive through it)."""
        ...

    @property
    def max_output_bytes(self) -> int:
        """The largest answer a step may return (its output must fit in one event)."""
        ...

    @property
    def session(self) -> aiohttp.ClientSession:
        """The HTTP client of every step call (open while the engine processes)."""
        ...


@dataclass(frozen=True, slots=True)
class StepInput:
    """One attempt of one step (or of its compensation), as the driver hands it to the runner."""

    step: StepDefinition
    """The step of the workflow."""
    acting: StepDefinition | CompensationDefinition
    """What runs: the step, or its compensation when ``compensation``."""
    compensation: bool
    attempt: int
    """1-based; a resumed attempt keeps its number (and its idempotency key)."""
    request: Any
    """The mapped input (``input_map`` evaluated over the context), or None."""
    idempotency_key: str
    context: dict[str, Any]
    """The document JSONPaths are evaluated against (``handlers.context_of``)."""
    execution: ExecutionState
    """The execution as of this attempt's ``step.started``."""
    traceparent: str
    wake: asyncio.Event
    """Set when a cancel request arrives: a runner that only waits may stop (``Outcome.interrupted``)."""
    runtime: StepRuntime


class StepType(Protocol):
    """A kind of step: ``kind`` names it in definitions (``type: <kind>``)."""

    kind: ClassVar[StepKind]
    waits: ClassVar[bool]
    """Whether an attempt waits for an event: its bound (``wait_until``) and the log position
    it waits after are recorded in ``step.started``, so a restart resumes the same wait."""

    async def run(self, attempt: StepInput) -> Outcome:
        """Run one attempt and say how it went (never raises for the step's own failures)."""
        ...


_REGISTRY: dict[str, StepType] = {}
_T = TypeVar("_T", bound=StepType)


def register(cls: type[_T]) -> type[_T]:
    """Class decorator: register a step type under its ``kind`` (one module per kind)."""
    if cls.kind not in get_args(StepKind):
        raise ValueError(f"step kind {cls.kind!r} is not one of definitions.StepKind {get_args(StepKind)}")
    if cls.kind in _REGISTRY:
        raise ValueError(f"step kind {cls.kind!r} is registered twice")
    _REGISTRY[cls.kind] = cls()
    return cls


def step_type(kind: str) -> StepType:
    """The registered step type of ``kind`` (definitions are validated, so it exists)."""
    return _REGISTRY[kind]


def registered_kinds() -> frozenset[str]:
    """Every kind a runner is registered for."""
    return frozenset(_REGISTRY)
