"""The keys every service checks requests against (``nexus.auth.KeyView``), as a replay projection."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from nexus.auth import (
    DELEGATION_KEY_PUBLISHED,
    DELEGATION_KEY_REVOKED,
    KEY_ISSUED,
    KEY_REVOKED,
    KEYS_STREAM,
    KeyView,
)
from nexus.eventlog import EventLog
from nexus.proto import CloudEvent
from nexus.replay._fold import FoldProjection
from nexus.replay._projection import register_projection

__all__ = ["Keys"]


@register_projection
class Keys(FoldProjection):
    """API keys, worker tokens and delegation signers as a service's ``KeyView`` folds them."""

    name = "platform.keys"
    collection = "keys"
    reads = (KEY_ISSUED, KEY_REVOKED, DELEGATION_KEY_PUBLISHED, DELEGATION_KEY_REVOKED)

    def new_fold(self) -> KeyView:
        return KeyView()

    def fold_event(self, fold: KeyView, event: CloudEvent) -> None:
        # A service's view reads stream ``keys`` only: the same types elsewhere are not keys.
        if event.streamid == KEYS_STREAM:
            fold.apply(event)

    def state(self, fold: KeyView) -> Mapping[str, Any]:
        out: dict[str, Any] = {}
        for record in fold.records():
            out[f"key/{record.info.key_id}"] = {
                "info": record.info,
                "hash": record.hash,
                "issued_by": record.issued_by.id,
                "revoked_by": record.revoked_by.id if record.revoked_by else None,
            }
        for signer in fold.signers():
            out[f"signer/{signer.key_id}"] = {
                "owner": signer.owner,
                "public_key": signer.public_key.public_bytes(Encoding.Raw, PublicFormat.Raw).hex(),
                "published_by": signer.published_by.id,
                "revoked_by": signer.revoked_by.id if signer.revoked_by else None,
            }
        return out

    async def running(self, log: EventLog) -> KeyView:
        view = KeyView(log)
        await view.refresh()
        return view
