"""``nexus proof verify FILE``: check a claim's proof packet offline, with no platform running.

A packet (``GET /api/v1/users/{user_id}/claims/{claim_id}/proof``, format ``nexus.proof.claim/1``)
holds the claim's events as the log stored them (each one's stored JSON envelope), a manifest of them
(path, size, sha256) with a Merkle root (``sha256+rfc6962``), an inclusion proof per event, and
the root the log recorded when the claim was paid. The check recomputes everything from the
packet alone:

- each event's bytes against its manifest entry (size and sha256), and no entry without its event;
- the manifest's root from its entries, and each inclusion proof against that root;
- each event's own ``hash`` (the log's chain hash over its content and place in its stream);
- that every event belongs to the packet's user and claim;
- the root the log recorded (``claim.proved``) against the manifest's root;
- the payout's arithmetic: fee = amount × rate rounded to cents as the event says, net = amount - fee.

Exit status 0 when the packet holds, 1 when a check fails (each failure printed), 2 when the file
is not a packet.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import msgspec

from nexus.eventlog.chain import event_hash
from nexus.proof import InclusionProof, Manifest, ManifestEntry, ProofError, merkle_root, verify_inclusion_proof
from nexus.proto import EnvelopeError, decode_event

__all__ = ["PACKET_FORMAT", "PacketError", "register", "verify_packet"]

PACKET_FORMAT = "nexus.proof.claim/1"
_ROUNDINGS = {"ROUND_HALF_EVEN", "ROUND_HALF_UP"}


class PacketError(ValueError):
    """The document is not a claim proof packet at all (not a failed check: that is a result)."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("proof", help="check proof packets offline")
    sub = parser.add_subparsers(dest="proof_command", metavar="SUBCOMMAND", required=True)
    verify = sub.add_parser("verify", help="check a claim's proof packet (JSON file, '-' for stdin)")
    verify.add_argument("file", help="the packet, as GET …/claims/{claim_id}/proof answered it")
    verify.add_argument("--root", default=None, help="a root you trust from elsewhere: the packet must match it")
    verify.set_defaults(func=_verify)


def _verify(args: argparse.Namespace) -> int:
    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
        packet = json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        print(f"nexus proof: cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    try:
        problems = verify_packet(packet, root=args.root)
    except PacketError as exc:
        print(f"nexus proof: {args.file}: {exc}", file=sys.stderr)
        return 2
    who = f"claim {packet.get('claim_id')} of user {packet.get('user_id')}"
    if problems:
        for problem in problems:
            print(f"FAIL {problem}")
        print(f"{who}: {len(problems)} problem(s)")
        return 1
    manifest = packet["manifest"]
    print(f"OK {who}: {len(manifest['entries'])} events, root {manifest['root']}")
    return 0


def verify_packet(packet: Any, *, root: str | None = None) -> list[str]:
    """Every problem found in a claim proof packet (empty: it holds).

    Args:
        packet: The decoded JSON document.
        root: A root the caller trusts (from the log's ``claim.proved`` event or a seal): the
            manifest's must equal it. Without it the packet's own recorded root is used.

    Raises:
        PacketError: the document is not a packet of format ``nexus.proof.claim/1``.
    """
    if not isinstance(packet, dict) or packet.get("format") != PACKET_FORMAT:
        raise PacketError(f"not a claim proof packet (format {PACKET_FORMAT!r} expected)")
    try:
        manifest = msgspec.convert(packet.get("manifest"), Manifest)
        proofs = msgspec.convert(packet.get("proofs") or [], list[InclusionProof])
        items = msgspec.convert(packet.get("events") or [], list[dict[str, str]])
    except msgspec.ValidationError as exc:
        raise PacketError(f"malformed packet: {exc}") from None
    problems: list[str] = []
    entries = sorted(manifest.entries, key=lambda e: e.path)
    recomputed = merkle_root([e.leaf() for e in entries]).hex()
    if recomputed != manifest.root:
        problems.append(f"the manifest's root {manifest.root} is not the root of its entries ({recomputed})")
    by_path = {e.path: e for e in entries}
    seen: set[str] = set()
    user_id, claim_id = packet.get("user_id"), packet.get("claim_id")
    payouts: list[dict[str, Any]] = []
    for item in items:
        path, body = item.get("path", ""), item.get("event", "")
        seen.add(path)
        problems.extend(_check_event(path, body, by_path.get(path), user_id, claim_id, payouts))
    problems.extend(
        f"{path}: in the manifest, but the packet has no such event" for path in sorted(set(by_path) - seen)
    )
    proved = {p.entry.path for p in proofs}
    for proof in proofs:
        if by_path.get(proof.entry.path) != proof.entry:
            problems.append(f"{proof.entry.path}: its inclusion proof names an entry the manifest does not hold")
        elif not verify_inclusion_proof(proof, manifest.root):
            problems.append(f"{proof.entry.path}: its inclusion proof does not lead to the root {manifest.root}")
    problems.extend(f"{path}: no inclusion proof" for path in sorted(set(by_path) - proved))
    recorded = packet.get("recorded") if isinstance(packet.get("recorded"), dict) else None
    trusted = root or (recorded or {}).get("root")
    if trusted is None:
        problems.append("no root to check against: the claim's root is not recorded yet (not paid?)")
    elif trusted != manifest.root:
        problems.append(f"the manifest's root {manifest.root} is not the recorded root {trusted}")
    for data in payouts:
        problems.extend(_check_fee(data))
    return problems


def _check_event(
    path: str,
    body: str,
    entry: ManifestEntry | None,
    user_id: Any,
    claim_id: Any,
    payouts: list[dict[str, Any]],
) -> list[str]:
    if entry is None:
        return [f"{path}: an event the manifest does not list"]
    raw = body.encode()
    problems = []
    if (len(raw), hashlib.sha256(raw).hexdigest()) != (entry.size, entry.sha256):
        problems.append(f"{path}: the event's bytes do not match the manifest (size or sha256 changed)")
    try:
        event = decode_event(raw)
    except (EnvelopeError, ProofError, ValueError) as exc:
        return [*problems, f"{path}: not a CloudEvent: {exc}"]
    if event.hash is None or event_hash(event) != event.hash:
        problems.append(f"{path}: the event's hash is not the log's chain hash of its content and place")
    data = event.data if isinstance(event.data, dict) else {}
    if data.get("user_id") != user_id or data.get("claim_id") != claim_id:
        problems.append(f"{path}: the event is not of user {user_id!r} and claim {claim_id!r}")
    if event.type == "nexus.workflow.claim.paid":
        payouts.append(data)
    return problems


def _check_fee(data: dict[str, Any]) -> list[str]:
    try:
        amount, fee, net = (Decimal(str(data[k])) for k in ("amount", "fee", "net"))
        rate = Decimal(str(data["fee_rate"]))
    except (KeyError, InvalidOperation):
        return ["the payout event lacks a decimal amount, fee, net or fee_rate"]
    rounding = str(data.get("rounding"))
    if rounding not in _ROUNDINGS:
        return [f"the payout's rounding {rounding!r} is not one this check knows ({sorted(_ROUNDINGS)})"]
    expected = (amount * rate).quantize(Decimal("0.01"), rounding=rounding)
    problems = []
    if fee != expected:
        problems.append(f"the fee {fee} is not {rate} of {amount} rounded to cents {rounding} ({expected})")
    if net != amount - fee:
        problems.append(f"the net {net} is not the amount {amount} minus the fee {fee}")
    return problems
