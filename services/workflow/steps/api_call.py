"""``type: api_call``: one HTTP request to a named service; its JSON answer is the step's output."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from nexus.services.workflow.definitions import StepKind
from nexus.services.workflow.steps._base import Outcome, StepInput, register
from nexus.services.workflow.steps._http import call_http, fill_endpoint

__all__ = ["ApiCall"]


@register
class ApiCall:
    """Sends ``method service/endpoint`` with the mapped input as its body.

    ``{name}`` path segments are filled from the mapped input, else the execution's input. A
    platform service gets a token delegated from the execution's tenant (never the replica's
    own token), so it applies that tenant's permissions; an external service gets none.
    """

    kind: ClassVar[StepKind] = "api_call"
    waits: ClassVar[bool] = False

    async def run(self, attempt: StepInput) -> Outcome:
        acting = attempt.acting
        runtime = attempt.runtime
        service = acting.service
        base = runtime.services.get(service)
        if base is None:
            return Outcome(False, error=f"service {service!r} has no URL (set NEXUS_SERVICE_{service.upper()})")
        endpoint, missing = fill_endpoint(acting.endpoint, attempt.request, attempt.execution.input)
        if missing:
            return Outcome(False, error=f"endpoint placeholders without a value: {', '.join(missing)}")
        identity = runtime.identity
        credentials = None
        if identity is not None and service in runtime.platform_services:
            credentials = identity.step_headers(attempt.execution.tenant, attempt.execution.execution_id, service)
        outcome = await call_http(
            runtime.session,
            acting.method,
            base + endpoint,
            attempt.request,
            idempotency_key=attempt.idempotency_key,
            traceparent=attempt.traceparent,
            timeout=acting.timeout_seconds,
            headers=credentials,
            max_bytes=runtime.max_output_bytes,
        )
        if not outcome.ok and outcome.error:
            # The step names a service, not a URL: say which one failed.
            outcome = dataclasses.replace(outcome, error=f"service {service!r}: {outcome.error}")
        return outcome
