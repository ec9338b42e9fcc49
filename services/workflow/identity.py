"""The workflow service's identity towards the platform services its steps call.

A step runs on behalf of its execution's tenant, so it must carry that tenant's authority and
never the replica's (the confused deputy of issue 9). At start each replica:

- publishes an Ed25519 delegation signer (``nexus.auth.DelegationSigner``: the public key in
  the log, the private key in memory only) and mints, for every ``api_call`` step to a platform
  service (kam, workflow, granulator/core, studio at their ``NEXUS_<NAME>_PORT``), a short-lived
  ``nxd_…`` token for the execution's tenant, its execution and that service, sent as
  ``X-API-Key``: the callee applies the tenant's permissions;
- issues itself a worker token (owner ``workflow/<replica id>``), kept for the replica's own
  platform duties; it is never sent on a step.

Neither credential goes to an external ``NEXUS_SERVICE_<NAME>``. A graceful stop revokes both;
a replica killed without a stop has its earlier ones revoked when it starts again under the
same replica id::

    identity = await ServiceIdentity.issue(log, "replica-a")
    identity.step_headers("acme", "ex-1", "core")   # {"X-API-Key": "nxd_…"}
    await identity.revoke(log)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from nexus.auth import DEFAULT_DELEGATION_TTL_SECONDS, DelegationSigner, KeyView, issue_key, revoke_key
from nexus.eventlog import EventLog

__all__ = ["AUDIENCES", "OWNER_PREFIX", "ServiceIdentity", "audience_of", "owner_of"]

logger = logging.getLogger("nexus.workflow.identity")

OWNER_PREFIX = "workflow/"
"""Owner of a replica's worker token: ``workflow/<replica id>``."""
SOURCE = "nexus/workflow"


AUDIENCES = {"core": "granulator"}
"""Step service names that are another name of a platform service (seed 004's ``core``)."""


def audience_of(service: str) -> str:
    """The platform service a step's ``service`` names: the audience of its delegated token."""
    return AUDIENCES.get(service, service)


def owner_of(replica_id: str) -> str:
    """The owner (and ``X-Worker-ID``) of ``replica_id``'s worker token."""
    return f"{OWNER_PREFIX}{replica_id}"


@dataclass
class ServiceIdentity:
    """One replica's worker token and delegation signer (no secret is ever printed, logged or recorded)."""

    worker_id: str
    """``workflow/<replica id>``: the token's owner and the ``X-Worker-ID`` sent with it."""
    key_id: str
    """The token's id in the log (what ``revoke`` names)."""
    _secret: str = field(repr=False)
    signer: DelegationSigner | None = field(default=None, repr=False)
    """Mints the delegated tokens of the steps (None: steps carry no credential)."""
    revoked: bool = False

    @classmethod
    async def issue(
        cls, log: EventLog, replica_id: str, *, delegation_ttl_seconds: float = DEFAULT_DELEGATION_TTL_SECONDS
    ) -> ServiceIdentity:
        """Issue a worker token and publish a delegation signer for ``replica_id``; revoke the ones
        an earlier run left behind.

        An earlier run of the same replica that was killed (no graceful stop) could not revoke
        its token; its secret died with the process, but the token would stay valid in the log.

        Args:
            delegation_ttl_seconds: Lifetime of the delegated tokens the steps carry.
        """
        owner = owner_of(replica_id)
        issued = await issue_key(log, "worker", owner, source=SOURCE)
        view = KeyView(log)
        await view.refresh()
        for record in view.records():
            stale = record.info.owner == owner and record.info.kind == "worker"
            if stale and record.info.key_id != issued.info.key_id and record.revoked_by is None:
                await revoke_key(log, record.info.key_id, reason="replaced at start", source=SOURCE)
        signer = await DelegationSigner.publish(log, owner, ttl_seconds=delegation_ttl_seconds, source=SOURCE)
        logger.info("service identity %s (token %s, signer %s) issued", owner, issued.info.key_id, signer.key_id)
        return cls(worker_id=owner, key_id=issued.info.key_id, _secret=issued.secret, signer=signer)

    def headers(self) -> dict[str, str]:
        """The headers that present the replica itself to a platform service (empty once revoked).

        For the replica's own platform duties only: a step never carries them (``step_headers``).
        """
        if self.revoked:
            return {}
        return {"Authorization": f"Bearer {self._secret}", "X-Worker-ID": self.worker_id}

    def step_headers(self, tenant: str, execution_id: str, service: str) -> dict[str, str]:
        """The credential of a step of ``execution_id`` (owned by ``tenant``) calling platform ``service``.

        A delegated token for the tenant, scoped to the execution and that service, as
        ``X-API-Key``; empty once revoked (the step is then refused, never upgraded).
        """
        if self.revoked or self.signer is None:
            return {}
        token = self.signer.mint(tenant, execution_id=execution_id, audience=audience_of(service))
        return {"X-API-Key": token}

    async def revoke(self, log: EventLog) -> None:
        """Revoke the token (graceful stop); the secret is forgotten."""
        if self.revoked:
            return
        self.revoked = True
        self._secret = ""
        if self.signer is not None:
            await self.signer.revoke(log, source=SOURCE)
        await revoke_key(log, self.key_id, reason="replica stopped", source=SOURCE)
        logger.info("service identity %s (token %s) revoked", self.worker_id, self.key_id)
