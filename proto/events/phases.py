"""Events of seed 001's phases beyond the trigger: claims routed, confirmed, submitted, decided and
paid, the per-user ledger, the proof packet's root, the learning stream and the user's updates.

Every event below except ``learning.rejection`` lives in the user's phase stream
(``phases-[<client>/]<user>``), appended in one batch with the phase trigger that caused it, so
a phase's work and its trigger are recorded together or not at all. Amounts are decimal strings
(``"1234.50"``): money is never a binary float.
"""

from __future__ import annotations

from typing import Any

import msgspec

from nexus.proto._catalog import event_type


@event_type("nexus.workflow.claim.routed")
class ClaimRouted(msgspec.Struct, frozen=True, kw_only=True):
    """Phase 4 routed one matched claim by its confidence (the claim's evidence event)."""

    user_id: str
    claim_id: str
    claim_type: str
    confidence: str
    """The matcher's confidence, 0-1, as a decimal string."""
    adjusted_confidence: str
    """``confidence`` minus what the claim type's rejections taught (never below 0)."""
    route: str
    """``auto_submit`` (adjusted ≥ the auto-submit threshold), ``smart_prompt`` (≥ the prompt
    threshold) or ``held`` (below it)."""
    auto_submit_threshold: str
    prompt_threshold: str
    amount: str | None = None
    """The amount the claim asks for, when the matcher said."""
    evidence: Any = None
    """What the matcher matched (documents, order ids…), as it sent it."""


@event_type("nexus.workflow.claim.prompted")
class ClaimPrompted(msgspec.Struct, frozen=True, kw_only=True):
    """A smart prompt: the user is asked to confirm a claim of middling confidence."""

    user_id: str
    claim_id: str
    claim_type: str
    adjusted_confidence: str
    question: str
    confirm_path: str
    """Where the confirmation is posted (``POST``; phase 5 follows it)."""


@event_type("nexus.workflow.claim.confirmed")
class ClaimConfirmed(msgspec.Struct, frozen=True, kw_only=True):
    """The user confirmed a prompted claim; phase 5 is triggered for it in the same batch."""

    user_id: str
    claim_id: str
    key_id: str = ""
    """The key (or session) that confirmed it."""


@event_type("nexus.workflow.claim.submitted")
class ClaimSubmitted(msgspec.Struct, frozen=True, kw_only=True):
    """Phase 5: the claim is submitted and its payout is awaited (monitored until phase 6 or 7)."""

    user_id: str
    claim_id: str
    claim_type: str
    origin: str
    """``auto_submit``, ``confirmation``, or ``api`` / ``ext:<source>`` for a submission reported from outside."""
    submission_id: str = ""
    """The marketplace's reference for the submission, when it was given."""
    monitoring: str = "awaiting_payout"


@event_type("nexus.workflow.claim.decided")
class ClaimDecided(msgspec.Struct, frozen=True, kw_only=True):
    """The claim's decision: ``rejected`` (phase 6, with the reason) or ``approved`` (phase 7)."""

    user_id: str
    claim_id: str
    claim_type: str
    decision: str
    reason: str = ""


@event_type("nexus.workflow.claim.paid")
class ClaimPaid(msgspec.Struct, frozen=True, kw_only=True):
    """Phase 7: the payout arrived and the platform's fee was taken from it."""

    user_id: str
    claim_id: str
    amount: str
    fee: str
    net: str
    """``amount - fee``: what the user keeps."""
    currency: str
    fee_rate: str
    rounding: str
    """How the fee was rounded to cents (``ROUND_HALF_EVEN``)."""
    payout_id: str = ""


@event_type("nexus.workflow.ledger.recorded")
class LedgerRecorded(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of the user's ledger (a payout and its fee), with the running totals of its currency."""

    user_id: str
    claim_id: str
    entry: int
    """1-based number of the entry in the user's ledger."""
    currency: str
    amount: str
    fee: str
    net: str
    total_amount: str
    total_fees: str
    total_net: str


@event_type("nexus.workflow.claim.proved")
class ClaimProved(msgspec.Struct, frozen=True, kw_only=True):
    """The proof packet of a paid claim: the Merkle root over its events, recorded in the log."""

    user_id: str
    claim_id: str
    root: str
    """Merkle root (hex, ``sha256+rfc6962``) of the packet's manifest."""
    event_ids: list[str]
    """The events the manifest covers, in stream order."""
    created: str


@event_type("nexus.workflow.phase.updated")
class PhaseUpdated(msgspec.Struct, frozen=True, kw_only=True):
    """The update a user receives for a phase: its work done or failed, or its workflow ended."""

    user_id: str
    phase: int
    status: str
    """``completed`` or ``failed``."""
    part: str
    """``work`` (what the platform records for the phase) or ``workflow`` (the phase's execution)."""
    message: str
    claim_id: str = ""
    execution_id: str = ""
    counts: dict[str, int] = {}
    """Phase 4: claims per route."""


@event_type("nexus.workflow.learning.rejection")
class LearningRejection(msgspec.Struct, frozen=True, kw_only=True):
    """A rejected claim, for learning (stream ``phase-learning[-<client>]``): its type lowers the
    confidence later claims of that type are routed with."""

    user_id: str
    claim_id: str
    claim_type: str
    reason: str
    decided_event_id: str
