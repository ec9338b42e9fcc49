"""The workflow service's own identity towards the platform services its ``api_call`` steps call.

Platform services guard their worker routes (the granulator's ``/generate``, seed 004's ``core``)
with a worker token. At start each replica issues itself one through the log, like every token:
random, shown to nobody, only its hash recorded (owner ``workflow/<replica id>``). The secret
lives in this process's memory only; the replica sends it as ``Authorization: Bearer …`` with
``X-Worker-ID`` to the platform services (kam, workflow, granulator/core, studio at their
``NEXUS_<NAME>_PORT``) and never to an external ``NEXUS_SERVICE_<NAME>``. A graceful stop revokes
it; a replica killed without a stop has its earlier tokens revoked when it starts again under the
same replica id::

    identity = await ServiceIdentity.issue(log, "replica-a")
    headers = identity.headers()    # {"Authorization": "Bearer nxw_…", "X-Worker-ID": "workflow/replica-a"}
    await identity.revoke(log)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from nexus.auth import KeyView, issue_key, revoke_key
from nexus.eventlog import EventLog

__all__ = ["OWNER_PREFIX", "ServiceIdentity", "owner_of"]

logger = logging.getLogger("nexus.workflow.identity")

OWNER_PREFIX = "workflow/"
"""Owner of a replica's worker token: ``workflow/<replica id>``."""
SOURCE = "nexus/workflow"


def owner_of(replica_id: str) -> str:
    """The owner (and ``X-Worker-ID``) of ``replica_id``'s worker token."""
    return f"{OWNER_PREFIX}{replica_id}"


@dataclass
class ServiceIdentity:
    """One replica's worker token (the secret is never printed, logged or recorded)."""

    worker_id: str
    """``workflow/<replica id>``: the token's owner and the ``X-Worker-ID`` sent with it."""
    key_id: str
    """The token's id in the log (what ``revoke`` names)."""
    _secret: str = field(repr=False)
    revoked: bool = False

    @classmethod
    async def issue(cls, log: EventLog, replica_id: str) -> ServiceIdentity:
        """Issue a worker token for ``replica_id`` and revoke the ones an earlier run left behind.

        An earlier run of the same replica that was killed (no graceful stop) could not revoke
        its token; its secret died with the process, but the token would stay valid in the log.
        """
        owner = owner_of(replica_id)
        issued = await issue_key(log, "worker", owner, source=SOURCE)
        view = KeyView(log)
        await view.refresh()
        for record in view.records():
            stale = record.info.owner == owner and record.info.kind == "worker"
            if stale and record.info.key_id != issued.info.key_id and record.revoked_by is None:
                await revoke_key(log, record.info.key_id, reason="replaced at start", source=SOURCE)
        logger.info("service identity %s (token %s) issued", owner, issued.info.key_id)
        return cls(worker_id=owner, key_id=issued.info.key_id, _secret=issued.secret)

    def headers(self) -> dict[str, str]:
        """The headers that present this identity to a platform service (empty once revoked)."""
        if self.revoked:
            return {}
        return {"Authorization": f"Bearer {self._secret}", "X-Worker-ID": self.worker_id}

    async def revoke(self, log: EventLog) -> None:
        """Revoke the token (graceful stop); the secret is forgotten."""
        if self.revoked:
            return
        self.revoked = True
        self._secret = ""
        await revoke_key(log, self.key_id, reason="replica stopped", source=SOURCE)
        logger.info("service identity %s (token %s) revoked", self.worker_id, self.key_id)
