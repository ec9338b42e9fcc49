"""The Python clients of the services: KAM (seed 002), the job API (seed 000) and the workflow API.

``KamClient`` is an AI-factory client's and an admin's flow, from login to deliverable (see its module).

``WorkflowClient`` registers workflows and schemas, starts executions, reads their state and
history and follows them (Server-Sent Events); the ``nexus workflow`` and ``nexus demo`` commands
use it. ``JobClient`` is seed 000's job flow (below). Both raise one error each, carrying the
HTTP status (0 when the service could not be reached) and the decoded body.

``JobClient`` does a user's whole flow: fetch the workflow's ``jobPayloadSchema``, initiate a job, upload
files through presigned URLs, map a record's fields to the schema's types, execute, monitor
(Server-Sent Events, polling as fallback), and fetch results and the audit trail::

    async with JobClient("http://127.0.0.1:8082", key) as client:
        outcome = await client.trigger("anomaly_review", anomaly, mapping={"workflow_input_a": "title"})
        final = await client.monitor(outcome.job_id)
        results = await client.results(outcome.job_id)

The payload typing functions are shared with the service, so both sides agree on every type.
"""

from nexus.client._jobs import (
    FINAL_STATUSES,
    BatchResult,
    JobApiError,
    JobClient,
    TriggerResult,
)
from nexus.client._kam import KamApiError, KamClient
from nexus.client._payload import (
    JOB_TYPES,
    PayloadError,
    PayloadField,
    build_instance,
    check_instance,
    check_value,
    coerce,
    is_date,
    job_payload_schema,
    job_type,
    schema_from_json,
)
from nexus.client._sse import parse_sse
from nexus.client._workflows import EXECUTION_FINAL_STATUSES, WorkflowApiError, WorkflowClient

__all__ = [
    "EXECUTION_FINAL_STATUSES",
    "FINAL_STATUSES",
    "JOB_TYPES",
    "BatchResult",
    "JobApiError",
    "JobClient",
    "KamApiError",
    "KamClient",
    "PayloadError",
    "PayloadField",
    "TriggerResult",
    "WorkflowApiError",
    "WorkflowClient",
    "build_instance",
    "check_instance",
    "check_value",
    "coerce",
    "is_date",
    "job_payload_schema",
    "job_type",
    "parse_sse",
    "schema_from_json",
]
