"""``nexus demo`` as a user runs it: a throw-away platform, a workflow and a job end to end, then
everything stopped and the temporary directory removed."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.nats, pytest.mark.slow]


async def test_nexus_demo_runs_end_to_end_and_cleans_up(tmp_path):
    # The caller's settings must not leak into the throw-away platform.
    env = {
        **os.environ,
        "NEXUS_DATA_DIR": str(tmp_path / "must-stay-empty"),
        "NEXUS_EVENT_LOG_URL": f"sqlite:///{tmp_path / 'must-not-exist.db'}",
    }
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nexus.cli.main",
        "demo",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    elapsed = time.monotonic() - started
    text, errors = out.decode(), err.decode()
    assert proc.returncode == 0, f"{text}\n{errors}"
    assert elapsed < 60
    data_dir = Path(re.search(r"a throw-away platform in (\S+)", text).group(1))
    assert not os.path.exists(data_dir)  # noqa: ASYNC240 - one check after the process ended
    assert re.search(r"execution [0-9a-f-]{36} queued", text)
    for pattern in (r"execution\.queued +text_expansion version 1", r"step\.started +expand \(attempt 1\)"):
        assert re.search(pattern, text), f"{pattern!r} not in:\n{text}"
    for expected in (
        "step.completed",
        "execution.completed",
        "final state: COMPLETED",
        "generator: builtin",
        "jobPayloadSchema of text_expansion: title (str, required), text (str, required)",
        "status: COMPLETED",
        "nexus.workflow.job.executed",
        "Demo finished: every step succeeded.",
    ):
        assert expected in text, f"{expected!r} not in:\n{text}"
    # Nothing was written where the caller's settings point.
    assert not os.listdir(tmp_path)
    print(f"nexus demo took {elapsed:.1f} s")
