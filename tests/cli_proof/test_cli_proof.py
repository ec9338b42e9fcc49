"""``nexus proof verify FILE``: a claim's proof packet checked offline, as a separate process.

The packet is built the way the workflow service builds it (``claims.proof_packet`` over events
a memory log stored), written to a file, and checked by ``python -m nexus.cli.main`` with no
platform running: it holds; each kind of tampering is named; a file that is not a packet is
exit status 2.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nexus.eventlog.memory import MemoryEventLog
from nexus.proto import new_event
from nexus.proto.events.phases import ClaimDecided, ClaimPaid, ClaimProved, ClaimRouted, ClaimSubmitted
from nexus.services.workflow.claims import UserClaims, proof_packet


def _packet() -> dict[str, Any]:
    async def build() -> dict[str, Any]:
        log = MemoryEventLog()
        who = {"user_id": "u-1", "claim_id": "c-1"}
        batch = [
            ClaimRouted(
                **who,
                claim_type="damaged",
                confidence="0.9",
                adjusted_confidence="0.9",
                route="auto_submit",
                auto_submit_threshold="0.85",
                prompt_threshold="0.50",
                evidence=["photo-1"],
            ),
            ClaimSubmitted(**who, claim_type="damaged", origin="auto_submit"),
            ClaimDecided(**who, claim_type="damaged", decision="approved"),
            ClaimPaid(
                **who,
                amount="0.30",
                fee="0.04",
                net="0.26",
                currency="USD",
                fee_rate="0.15",
                rounding="ROUND_HALF_EVEN",
            ),
        ]
        types = ["routed", "submitted", "decided", "paid"]
        stored = await log.append(
            "phases-acme/u-1",
            [
                new_event(f"nexus.workflow.claim.{t}", d, source="test", tenant="acme")
                for t, d in zip(types, batch, strict=True)
            ],
        )
        state = UserClaims()
        for event in stored:
            state.apply(event)
        unrecorded = proof_packet("u-1", state.claims["c-1"], stored)
        proved = ClaimProved(
            **who, root=unrecorded["manifest"]["root"], event_ids=[e.id for e in stored], created=stored[-1].time
        )
        [recorded] = await log.append(
            "phases-acme/u-1", [new_event("nexus.workflow.claim.proved", proved, source="test")]
        )
        return proof_packet("u-1", state.claims["c-1"], stored, recorded)

    return asyncio.run(build())


def _verify(path: Path | str, *extra: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nexus.cli.main", "proof", "verify", str(path), *extra],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
        check=False,
    )


def test_a_packet_verifies_offline_from_a_file_and_from_stdin(tmp_path: Path) -> None:
    packet = _packet()
    path = tmp_path / "proof.json"
    path.write_text(json.dumps(packet))
    done = _verify(path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith(f"OK claim c-1 of user u-1: 4 events, root {packet['manifest']['root']}")
    assert _verify("-", stdin=json.dumps(packet)).returncode == 0
    # A root trusted from elsewhere must be the packet's.
    assert _verify(path, "--root", packet["manifest"]["root"]).returncode == 0
    wrong = _verify(path, "--root", "ab" * 32)
    assert wrong.returncode == 1 and "is not the recorded root" in wrong.stdout


@pytest.mark.parametrize(
    ("tamper", "named"),
    [
        # An event's content changed (its bytes, its chain hash and the fee's arithmetic all show it).
        (lambda p: _edit_event(p, "payout", '"fee":"0.04"', '"fee":"0.05"'), "do not match the manifest"),
        # An entry dropped from the manifest: its root no longer matches the recorded one.
        (lambda p: p["manifest"]["entries"].pop(0), "not the root of its entries"),
        # An event removed from the packet.
        (lambda p: p["events"].pop(1), "the packet has no such event"),
        # An inclusion proof altered.
        (lambda p: p["proofs"][2].update(path=["00" * 32]), "does not lead to the root"),
        # Not recorded: nothing trusted to compare the root with.
        (lambda p: p.update(recorded=None), "no root to check against"),
    ],
)
def test_tampering_is_found_and_named(tmp_path: Path, tamper: Any, named: str) -> None:
    packet = _packet()
    tamper(packet)
    path = tmp_path / "tampered.json"
    path.write_text(json.dumps(packet))
    done = _verify(path)
    assert done.returncode == 1, done.stdout
    assert named in done.stdout, done.stdout


def test_the_fee_arithmetic_is_checked_even_when_the_hashes_are_consistent(tmp_path: Path) -> None:
    # A packet whose payout says fee 0.05 for 0.30 at 0.15 half-to-even (0.045 -> 0.04) is wrong
    # even if someone re-hashed everything: the check recomputes the fee itself.
    from nexus.cli.commands.proof import _check_fee

    assert (
        _check_fee({"amount": "0.30", "fee": "0.04", "net": "0.26", "fee_rate": "0.15", "rounding": "ROUND_HALF_EVEN"})
        == []
    )
    [problem] = _check_fee(
        {"amount": "0.30", "fee": "0.05", "net": "0.25", "fee_rate": "0.15", "rounding": "ROUND_HALF_EVEN"}
    )
    assert "(0.04)" in problem


def test_a_file_that_is_not_a_packet_is_exit_status_2(tmp_path: Path) -> None:
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"format": "nexus.proof.manifest/1"}))
    done = _verify(path)
    assert done.returncode == 2 and "not a claim proof packet" in done.stderr
    assert _verify(tmp_path / "missing.json").returncode == 2


def _edit_event(packet: dict[str, Any], role: str, old: str, new: str) -> None:
    item = next(i for i in packet["events"] if i["role"] == role)
    assert old in item["event"]
    item["event"] = item["event"].replace(old, new)
