"""``nexus replay --verify`` rebuilds the studio's blobs, versions and deltas to the running state's digest."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from nexus.eventlog import open_event_log
from nexus.raw.memory import MemoryRaw
from nexus.replay import state_digest
from nexus.services.studio.blobs import BLOBS, Blobs
from nexus.services.studio.projections import Studio
from tests.inprocess import build

ROOT = Path(__file__).resolve().parents[2]


def replay_verify(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NEXUS_DATA_DIR": str(data), "PYTHONPATH": str(ROOT)}
    env.pop("NEXUS_EVENT_LOG_URL", None)
    env.pop("NEXUS_RAW_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "nexus.cli.main", "replay", "--verify", "-p", "studio.state", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )


async def test_replay_verify_matches_the_running_studio(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    log = await open_event_log(f"sqlite:///{data / 'events.db'}")
    service = await build("studio", tmp_path, log=log, raw=MemoryRaw())
    await service.start()
    try:
        # Blobs of every kind through their lives: versions with each kind of delta, a derived
        # blob, a tombstone, an idempotent create.
        blobs: Blobs = service.app[BLOBS]
        doc = await blobs.create("acme", "key:a", {"title": "One", "n": [1]}, "application/json", {"type": "chapter"})
        await blobs.update(doc.blob_id, "key:a", {"title": "One", "n": [1, 2]}, expected_version=1)
        await blobs.patch(doc.blob_id, [{"op": "replace", "path": "/title", "value": "Uno"}], "key:a")
        text = await blobs.create("acme", "key:a", "a\nb\n", "text/plain", parent_id=doc.blob_id)
        await blobs.update(text.blob_id, "key:a", "a\nc\nb\n")
        await blobs.update(text.blob_id, "key:a", b"\x00\x01", "application/octet-stream")
        await blobs.delete(text.blob_id, "key:a")
        await blobs.create("bob", "run:e1", "x", "text/plain", blob_id="e1.derived")
        await blobs.create("bob", "run:e1", "x", "text/plain", blob_id="e1.derived")
        projection = Studio()
        running = blobs.ctx.state
        digest = state_digest(projection.collection, projection.state(running))
        position = running.position
    finally:
        await service.stop()
        await log.close()
    # The command line, as a process: a fresh fold of the log has the running state's digest...
    done = replay_verify(data, "--expect-digest", digest, "--at", str(position))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK studio.state: rebuilt" in done.stdout and digest in done.stdout
    # ...and a state that differs by one version does not.
    running.blobs[doc.blob_id].versions.pop()
    wrong = state_digest(projection.collection, projection.state(running))
    bad = replay_verify(data, "--expect-digest", wrong, "--at", str(position))
    assert bad.returncode == 1 and "MISMATCH studio.state" in bad.stdout
    # Without a digest: replay against the fold the service builds from the log.
    plain = replay_verify(data)
    assert plain.returncode == 0 and "OK studio.state: " in plain.stdout, plain.stdout + plain.stderr
    # Three blobs (and the providers bundled with the studio).
    assert int(plain.stdout.split("OK studio.state: ")[1].split()[0]) == 3 + sum(
        key.startswith("provider/") for key in projection.state(running)
    )
