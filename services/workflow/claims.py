"""What seed 001's phases 4 to 7 do with a user's claims: pure functions, no I/O.

``work(phase, …)`` turns one phase trigger into the events that record its work, computed from
the user's claims (``UserClaims``, the fold of the user's phase stream). The caller appends the
trigger and these events in one batch to the user's stream, with the stream's version as the
expected one, so a phase's work is recorded with its trigger or not at all, and two triggers of
one user never both act on the same state.

- Phase 4 routes each matched claim by its confidence, lowered by what the claim type's
  rejections taught (``penalty``): at least ``auto_submit`` → submitted at once (phase 5 is
  triggered for it in the same batch); at least ``prompt`` → a smart prompt asks the user to
  confirm (phase 5 follows ``POST …/claims/{claim_id}/confirm``); below → held.
- Phase 5 records the submission; the claim then awaits its payout (or its rejection).
- Phase 6 records the rejection and its reason; the service then appends it to the learning
  stream, which ``penalty`` reads: each rejection of a type lowers the confidence of later
  claims of that type by ``rejection_penalty``, at most ``max_penalty`` in all.
- Phase 7 records the approval, the payout, the fee (``fee_rate`` of the payout, exact decimals,
  rounded to cents with ``ROUND_HALF_EVEN``: a half cent goes to the even cent, so over many
  payouts rounding favours neither side) and the user's ledger entry.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any, Final

import msgspec

from nexus.proof import ManifestEntry, build_manifest, inclusion_proof
from nexus.proto import CloudEvent, encode_event
from nexus.proto.events.jobs import PhaseTriggered
from nexus.proto.events.phases import (
    ClaimConfirmed,
    ClaimDecided,
    ClaimPaid,
    ClaimPrompted,
    ClaimProved,
    ClaimRouted,
    ClaimSubmitted,
    LedgerRecorded,
    PhaseUpdated,
)

__all__ = [
    "CENT",
    "CLAIM_EVENTS",
    "MAX_MATCHES",
    "PACKET_FORMAT",
    "ROUNDING",
    "Claim",
    "ClaimConflict",
    "PhaseInputError",
    "PhaseRules",
    "UserClaims",
    "check_input",
    "confirmation",
    "decimal_of",
    "fee_of",
    "phase_update",
    "proof_packet",
    "proved",
    "submission",
    "work",
]

PHASE_TRIGGERED: Final = "nexus.workflow.phase.triggered"
ROUTED: Final = "nexus.workflow.claim.routed"
PROMPTED: Final = "nexus.workflow.claim.prompted"
CONFIRMED: Final = "nexus.workflow.claim.confirmed"
SUBMITTED: Final = "nexus.workflow.claim.submitted"
DECIDED: Final = "nexus.workflow.claim.decided"
PAID: Final = "nexus.workflow.claim.paid"
LEDGER: Final = "nexus.workflow.ledger.recorded"
PROVED: Final = "nexus.workflow.claim.proved"
UPDATED: Final = "nexus.workflow.phase.updated"

CLAIM_EVENTS: Final = {
    ROUTED: "evidence",
    PROMPTED: "prompt",
    CONFIRMED: "confirmation",
    SUBMITTED: "submission",
    DECIDED: "decision",
    PAID: "payout",
    LEDGER: "ledger",
}
"""The events of a claim that its proof packet covers, and the role each plays in it."""

CENT: Final = Decimal("0.01")
ROUNDING: Final = ROUND_HALF_EVEN
"""Fees are rounded to cents half-to-even (banker's rounding)."""
MAX_MATCHES: Final = 500
"""Most matched claims one phase-4 trigger may route (they are recorded in one batch)."""
MAX_AMOUNT: Final = Decimal("1000000000000")

_ID = re.compile(r"^[A-Za-z0-9_\-.@:]{1,200}$")
_TYPE = re.compile(r"^[A-Za-z0-9_\-.]{1,100}$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")


class PhaseInputError(ValueError):
    """A phase trigger's fields are missing or malformed (the message names the field): 400."""


class ClaimConflict(ValueError):
    """The trigger does not fit the claim's state (a paid claim paid again…): 409."""


@dataclass(frozen=True)
class PhaseRules:
    """The thresholds and rates of phases 4, 6 and 7 (``NEXUS_PHASE_*`` settings)."""

    auto_submit: Decimal = Decimal("0.85")
    prompt: Decimal = Decimal("0.50")
    rejection_penalty: Decimal = Decimal("0.05")
    max_penalty: Decimal = Decimal("0.25")
    fee_rate: Decimal = Decimal("0.20")

    @classmethod
    def of(cls, settings: Any) -> PhaseRules:
        """The rules of the workflow service's settings."""
        return cls(
            auto_submit=settings.phase_auto_submit_confidence,
            prompt=settings.phase_prompt_confidence,
            rejection_penalty=settings.phase_rejection_penalty,
            max_penalty=settings.phase_max_penalty,
            fee_rate=settings.phase_fee_rate,
        )

    def penalty(self, rejections: int) -> Decimal:
        """How much ``rejections`` of one claim type lower its confidence (the documented rule)."""
        return min(self.max_penalty, self.rejection_penalty * rejections)

    def route(self, confidence: Decimal) -> str:
        if confidence >= self.auto_submit:
            return "auto_submit"
        if confidence >= self.prompt:
            return "smart_prompt"
        return "held"


def fee_of(amount: Decimal, rate: Decimal) -> tuple[Decimal, Decimal]:
    """(fee, net) of a payout: ``rate`` of it rounded to cents half-to-even, and the rest."""
    fee = (amount * rate).quantize(CENT, rounding=ROUNDING)
    return fee, (amount - fee).quantize(CENT)


@dataclass
class Claim:
    """One claim of a user, as its events left it."""

    claim_id: str
    claim_type: str = "general"
    status: str = "new"
    """``held``, ``awaiting_confirmation``, ``submitted``, ``rejected`` or ``paid``."""
    confidence: str = ""
    adjusted_confidence: str = ""
    route: str = ""
    amount: str | None = None
    rejections: list[str] = field(default_factory=list)
    payout: dict[str, str] = field(default_factory=dict)
    proof_root: str = ""

    def view(self) -> dict[str, Any]:
        return {
            "claim_id": self.claim_id,
            "claim_type": self.claim_type,
            "status": self.status,
            "confidence": self.confidence,
            "adjusted_confidence": self.adjusted_confidence,
            "route": self.route,
            "amount": self.amount,
            "rejections": list(self.rejections),
            "payout": dict(self.payout),
            "proof_root": self.proof_root,
        }


@dataclass
class UserClaims:
    """The fold of one user's phase stream: claims, ledger, and the stream's version."""

    version: int = 0
    claims: dict[str, Claim] = field(default_factory=dict)
    ledger: list[dict[str, Any]] = field(default_factory=list)
    totals: dict[str, dict[str, Decimal]] = field(default_factory=dict)
    """Currency → ``amount``, ``fees``, ``net`` over the ledger."""

    def apply(self, event: CloudEvent) -> None:
        """Fold one event of the user's stream."""
        self.version = max(self.version, event.streamversion or 0)
        data = event.data if isinstance(event.data, dict) else {}
        claim_id = data.get("claim_id")
        if (event.type not in CLAIM_EVENTS and event.type != PROVED) or not isinstance(claim_id, str):
            return
        claim = self.claims.setdefault(claim_id, Claim(claim_id))
        if isinstance(data.get("claim_type"), str):
            claim.claim_type = data["claim_type"]
        if event.type == ROUTED:
            claim.confidence, claim.adjusted_confidence = data["confidence"], data["adjusted_confidence"]
            claim.route, claim.amount = data["route"], data.get("amount")
            claim.status = {"auto_submit": "submitted", "smart_prompt": "awaiting_confirmation"}.get(
                claim.route, "held"
            )
        elif event.type == SUBMITTED:
            claim.status = "submitted"
        elif event.type == DECIDED and data.get("decision") == "rejected":
            claim.status = "rejected"
            claim.rejections.append(str(data.get("reason", "")))
        elif event.type == PAID:
            claim.status = "paid"
            claim.payout = {k: str(data[k]) for k in ("amount", "fee", "net", "currency", "fee_rate", "rounding")}
        elif event.type == LEDGER:
            self.ledger.append({k: v for k, v in data.items() if k != "user_id"})
            totals = self.totals.setdefault(
                str(data["currency"]), {"amount": Decimal(0), "fees": Decimal(0), "net": Decimal(0)}
            )
            totals["amount"] = Decimal(data["total_amount"])
            totals["fees"] = Decimal(data["total_fees"])
            totals["net"] = Decimal(data["total_net"])
        elif event.type == PROVED:
            claim.proof_root = str(data.get("root", ""))


# -- the phases' input -----------------------------------------------------------------------


def _text(
    metadata: Mapping[str, Any], name: str, pattern: re.Pattern[str], what: str, default: str | None = None
) -> str:
    value = metadata.get(name, default)
    if not isinstance(value, str) or not pattern.match(value):
        raise PhaseInputError(f"{name} is required: {what}")
    return value


def _claim_id(metadata: Mapping[str, Any], prefix: str = "") -> str:
    return _text(metadata, "claim_id", _ID, f"{prefix}1-200 letters, digits or _ - . @ :")


def _claim_type(metadata: Mapping[str, Any], known: Claim | None) -> str:
    fallback = known.claim_type if known is not None else "general"
    return _text(metadata, "claim_type", _TYPE, "1-100 letters, digits or _ - .", fallback)


def decimal_of(value: Any, name: str) -> Decimal:
    """A decimal from a JSON string or number (a number is read as its shortest decimal text).

    Raises:
        PhaseInputError: naming ``name``, when it is not a finite decimal.
    """
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise PhaseInputError(f'{name} must be a decimal number (a string such as "12.50" keeps it exact)')
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise PhaseInputError(f"{name} must be a decimal number, got {value!r}") from None
    if not number.is_finite():
        raise PhaseInputError(f"{name} must be a finite number, got {value!r}")
    return number


def _confidence(value: Any, where: str) -> Decimal:
    confidence = decimal_of(value, f"{where}.confidence")
    if not Decimal(0) <= confidence <= Decimal(1):
        raise PhaseInputError(f"{where}.confidence must be from 0 to 1 (0.85 is 85%), got {value!r}")
    return confidence


def _money(value: Any, name: str) -> Decimal:
    amount = decimal_of(value, name)
    if amount <= 0 or amount > MAX_AMOUNT:
        raise PhaseInputError(f"{name} must be greater than 0 and at most {MAX_AMOUNT}, got {value!r}")
    if amount != amount.quantize(CENT):
        raise PhaseInputError(f"{name} has more than two decimal places (cents), got {value!r}")
    return amount.quantize(CENT)


def check_input(phase: int, metadata: Mapping[str, Any]) -> None:
    """Raise PhaseInputError when a trigger of ``phase`` lacks a field its work needs.

    Checked when the trigger is posted (a 400 naming the field) and again when the work is
    done, for triggers that arrive as external events.
    """
    if phase == 4:
        _matches(metadata)
    elif phase in (5, 6, 7):
        _claim_id(metadata)
        _claim_type(metadata, None)
    if phase == 6:
        reason = metadata.get("reason")
        if not isinstance(reason, str) or not reason.strip() or len(reason) > 2000:
            raise PhaseInputError("reason is required: why the claim was rejected (1-2000 characters)")
    if phase == 7:
        _money(metadata.get("amount"), "amount")
        _text(metadata, "currency", _CURRENCY, "an ISO 4217 code such as USD", "USD")


def _matches(metadata: Mapping[str, Any]) -> list[dict[str, Any]]:
    matches = metadata.get("matches", [])
    if not isinstance(matches, list):
        raise PhaseInputError("matches must be a list of {claim_id, confidence, claim_type?, amount?, evidence?}")
    if len(matches) > MAX_MATCHES:
        raise PhaseInputError(f"matches holds {len(matches)} claims; one trigger routes at most {MAX_MATCHES}")
    seen: set[str] = set()
    for i, match in enumerate(matches):
        where = f"matches[{i}]"
        if not isinstance(match, dict):
            raise PhaseInputError(f"{where} must be an object with claim_id and confidence")
        claim_id = _text(match, "claim_id", _ID, f"{where}.claim_id: 1-200 letters, digits or _ - . @ :")
        if claim_id in seen:
            raise PhaseInputError(f"{where}.claim_id {claim_id!r} appears twice")
        seen.add(claim_id)
        _confidence(match.get("confidence"), where)
        _text(match, "claim_type", _TYPE, f"{where}.claim_type: 1-100 letters, digits or _ - .", "general")
        if match.get("amount") is not None:
            _money(match["amount"], f"{where}.amount")
    return matches


# -- the work --------------------------------------------------------------------------------


Emitted = list[tuple[str, msgspec.Struct]]
"""(event type, data) in the order they are appended after the trigger."""


def phase_update(
    user_id: str, phase: int, status: str, part: str, message: str, **extra: Any
) -> tuple[str, PhaseUpdated]:
    return UPDATED, PhaseUpdated(user_id=user_id, phase=phase, status=status, part=part, message=message, **extra)


def work(
    trigger: PhaseTriggered,
    state: UserClaims,
    rules: PhaseRules,
    penalty: Callable[[str], Decimal],
    *,
    origin: str,
    confirm_path: Callable[[str], str] = lambda claim_id: claim_id,
) -> Emitted:
    """The events recording ``trigger``'s work, after it, ending with the phase's update.

    Args:
        trigger: The phase trigger (its ``metadata`` holds the phase's fields).
        state: The user's claims before the trigger.
        rules: Thresholds and rates.
        penalty: Claim type → how much its rejections lower its confidence.
        origin: Where the trigger came from (``api``, ``chain``, ``ext:<source>``, ``auto_submit``,
            ``confirmation``): phase 5 records it as the submission's origin.
        confirm_path: Claim id → the path a smart prompt's confirmation is posted to.

    Raises:
        PhaseInputError: a field the phase needs is missing or malformed.
        ClaimConflict: the trigger does not fit the claim's state.
    """
    phase, user_id, metadata = trigger.phase, trigger.user_id, trigger.metadata
    check_input(phase, metadata)
    if phase == 4:
        return _route(trigger, state, rules, penalty, confirm_path)
    if phase == 5:
        return _submit(user_id, metadata, state, origin)
    if phase == 6:
        return _reject(user_id, metadata, state)
    if phase == 7:
        return _pay(user_id, metadata, state, rules)
    # Phases 1-3 are their workflows' work (sync, detection, evidence matching).
    return []


def _route(
    trigger: PhaseTriggered,
    state: UserClaims,
    rules: PhaseRules,
    penalty: Callable[[str], Decimal],
    confirm_path: Callable[[str], str],
) -> Emitted:
    user_id = trigger.user_id
    out: Emitted = []
    submitted: Emitted = []
    counts = {"auto_submit": 0, "smart_prompt": 0, "held": 0, "skipped": 0}
    for i, match in enumerate(_matches(trigger.metadata)):
        claim_id = str(match["claim_id"])
        known = state.claims.get(claim_id)
        if known is not None and known.status in ("submitted", "paid"):
            counts["skipped"] += 1  # new evidence for a claim already submitted changes nothing
            continue
        claim_type = _claim_type(match, known)
        confidence = _confidence(match["confidence"], f"matches[{i}]")
        adjusted = max(Decimal(0), confidence - penalty(claim_type))
        route = rules.route(adjusted)
        counts[route] += 1
        amount = _money(match["amount"], "amount") if match.get("amount") is not None else None
        out.append(
            (
                ROUTED,
                ClaimRouted(
                    user_id=user_id,
                    claim_id=claim_id,
                    claim_type=claim_type,
                    confidence=str(confidence),
                    adjusted_confidence=str(adjusted),
                    route=route,
                    auto_submit_threshold=str(rules.auto_submit),
                    prompt_threshold=str(rules.prompt),
                    amount=None if amount is None else str(amount),
                    evidence=match.get("evidence"),
                ),
            )
        )
        if route == "smart_prompt":
            percent = (adjusted * 100).quantize(Decimal(1))
            question = (
                f"Claim {claim_id} ({claim_type}"
                + (f", {amount}" if amount is not None else "")
                + f") matched its evidence with {percent}% confidence. Submit it?"
            )
            out.append(
                (
                    PROMPTED,
                    ClaimPrompted(
                        user_id=user_id,
                        claim_id=claim_id,
                        claim_type=claim_type,
                        adjusted_confidence=str(adjusted),
                        question=question,
                        confirm_path=confirm_path(claim_id),
                    ),
                )
            )
        elif route == "auto_submit":
            submitted.extend(submission(user_id, claim_id, claim_type, "auto_submit", trigger.sync_id))
    summary = ", ".join(f"{n} {name.replace('_', ' ')}" for name, n in counts.items() if n)
    message = f"{sum(counts.values())} matched claims routed" + (f": {summary}" if summary else "")
    return [*out, *submitted, phase_update(user_id, 4, "completed", "work", message, counts=counts)]


def submission(user_id: str, claim_id: str, claim_type: str, origin: str, sync_id: str) -> Emitted:
    """Phase 5 triggered for one claim and its work: the trigger, the submission, the update."""
    trigger = PhaseTriggered(
        phase=5,
        user_id=user_id,
        sync_id=sync_id,
        metadata={"claim_id": claim_id, "claim_type": claim_type, "origin": origin},
    )
    return [
        (PHASE_TRIGGERED, trigger),
        (SUBMITTED, ClaimSubmitted(user_id=user_id, claim_id=claim_id, claim_type=claim_type, origin=origin)),
        phase_update(
            user_id, 5, "completed", "work", f"claim {claim_id} submitted; its payout is awaited", claim_id=claim_id
        ),
    ]


def confirmation(user_id: str, claim_id: str, state: UserClaims, key_id: str, sync_id: str = "") -> Emitted:
    """The user's confirmation of a prompted claim, with phase 5 for it.

    Raises:
        KeyError: the user has no such claim.
        ClaimConflict: the claim is not awaiting a confirmation.
    """
    claim = state.claims[claim_id]
    if claim.status != "awaiting_confirmation":
        raise ClaimConflict(f"claim {claim_id!r} is {claim.status}, not awaiting a confirmation")
    return [
        (CONFIRMED, ClaimConfirmed(user_id=user_id, claim_id=claim_id, key_id=key_id)),
        *submission(user_id, claim_id, claim.claim_type, "confirmation", sync_id),
    ]


def _final(claim: Claim | None, claim_id: str, what: str) -> None:
    if claim is not None and claim.status == "paid":
        raise ClaimConflict(f"claim {claim_id!r} is paid already: it cannot be {what}")


def _submit(user_id: str, metadata: Mapping[str, Any], state: UserClaims, origin: str) -> Emitted:
    claim_id = _claim_id(metadata)
    known = state.claims.get(claim_id)
    _final(known, claim_id, "submitted again")
    if known is not None and known.status == "submitted":
        raise ClaimConflict(f"claim {claim_id!r} is submitted already and awaits its payout")
    claim_type = _claim_type(metadata, known)
    reference = metadata.get("submission_id", "")
    data = ClaimSubmitted(
        user_id=user_id,
        claim_id=claim_id,
        claim_type=claim_type,
        origin=origin,
        submission_id=reference if isinstance(reference, str) else str(reference),
    )
    message = f"claim {claim_id} submitted; its payout is awaited"
    return [(SUBMITTED, data), phase_update(user_id, 5, "completed", "work", message, claim_id=claim_id)]


def _reject(user_id: str, metadata: Mapping[str, Any], state: UserClaims) -> Emitted:
    claim_id = _claim_id(metadata)
    known = state.claims.get(claim_id)
    _final(known, claim_id, "rejected")
    claim_type = _claim_type(metadata, known)
    reason = str(metadata["reason"]).strip()
    decided = ClaimDecided(
        user_id=user_id, claim_id=claim_id, claim_type=claim_type, decision="rejected", reason=reason
    )
    message = f"claim {claim_id} was rejected ({reason}); recorded for learning"
    return [(DECIDED, decided), phase_update(user_id, 6, "completed", "work", message, claim_id=claim_id)]


def _pay(user_id: str, metadata: Mapping[str, Any], state: UserClaims, rules: PhaseRules) -> Emitted:
    claim_id = _claim_id(metadata)
    known = state.claims.get(claim_id)
    _final(known, claim_id, "paid again")
    claim_type = _claim_type(metadata, known)
    amount = _money(metadata.get("amount"), "amount")
    currency = _text(metadata, "currency", _CURRENCY, "an ISO 4217 code such as USD", "USD")
    fee, net = fee_of(amount, rules.fee_rate)
    payout_id = metadata.get("payout_id", "")
    before = state.totals.get(currency, {"amount": Decimal(0), "fees": Decimal(0), "net": Decimal(0)})
    paid = ClaimPaid(
        user_id=user_id,
        claim_id=claim_id,
        amount=str(amount),
        fee=str(fee),
        net=str(net),
        currency=currency,
        fee_rate=str(rules.fee_rate),
        rounding=ROUNDING,
        payout_id=payout_id if isinstance(payout_id, str) else str(payout_id),
    )
    entry = LedgerRecorded(
        user_id=user_id,
        claim_id=claim_id,
        entry=len(state.ledger) + 1,
        currency=currency,
        amount=str(amount),
        fee=str(fee),
        net=str(net),
        total_amount=str(before["amount"] + amount),
        total_fees=str(before["fees"] + fee),
        total_net=str(before["net"] + net),
    )
    approved = ClaimDecided(user_id=user_id, claim_id=claim_id, claim_type=claim_type, decision="approved")
    message = f"payout of {amount} {currency} for claim {claim_id}: fee {fee}, you receive {net}"
    return [
        (DECIDED, approved),
        (PAID, paid),
        (LEDGER, entry),
        phase_update(user_id, 7, "completed", "work", message, claim_id=claim_id),
    ]


def proved(user_id: str, claim_id: str, root: str, event_ids: list[str], created: str) -> tuple[str, ClaimProved]:
    return PROVED, ClaimProved(user_id=user_id, claim_id=claim_id, root=root, event_ids=event_ids, created=created)


# -- the proof packet ------------------------------------------------------------------------

PACKET_FORMAT: Final = "nexus.proof.claim/1"


class _At:
    """A clock fixed at one instant: a packet's manifest is dated by its claim's last event."""

    def __init__(self, rfc3339: str) -> None:
        self.seconds = datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()

    def now(self) -> float:
        return self.seconds


def packet_path(index: int, role: str, event_id: str) -> str:
    """The manifest path of a packet's event: numbered, so path order is stream order."""
    return f"{index:04d}-{role}-{event_id}.json"


def proof_packet(
    user_id: str, claim: Claim, events: Sequence[CloudEvent], recorded: CloudEvent | None = None
) -> dict[str, Any]:
    """The proof packet of a claim: its events as the log stores them, a manifest over them
    (sha256 of each event's JSON as the log stores it) with its Merkle root, and an inclusion proof per event.

    Args:
        user_id: The claim's user.
        claim: The claim (its status and payout).
        events: The claim's events (``CLAIM_EVENTS`` types), in stream order.
        recorded: The ``claim.proved`` event that recorded the root when the claim was paid.

    The packet verifies offline (``nexus proof verify FILE``): each event's bytes against its
    manifest entry, the entries against the root, each inclusion proof, each event's own
    ``hash`` (the log's chain hash) and the root recorded in the log.
    """
    items = []
    entries = []
    for index, event in enumerate(events, start=1):
        body = encode_event(event)
        path = packet_path(index, CLAIM_EVENTS[event.type], event.id)
        entries.append(ManifestEntry(path, len(body), hashlib.sha256(body).hexdigest()))
        items.append({"path": path, "role": CLAIM_EVENTS[event.type], "event": body.decode()})
    created = events[-1].time if events else "1970-01-01T00:00:00Z"
    manifest = build_manifest(entries, clock=_At(created))
    return {
        "format": PACKET_FORMAT,
        "user_id": user_id,
        "claim_id": claim.claim_id,
        "status": claim.status,
        "payout": dict(claim.payout),
        "manifest": msgspec.to_builtins(manifest),
        "events": items,
        "proofs": [msgspec.to_builtins(inclusion_proof(manifest, entry.path)) for entry in manifest.entries],
        "recorded": None
        if recorded is None
        else {
            "event_id": recorded.id,
            "root": (recorded.data or {}).get("root"),
            "position": recorded.position,
            "hash": recorded.hash,
        },
    }
