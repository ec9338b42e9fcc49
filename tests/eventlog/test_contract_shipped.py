"""nexus.testing proves adapters written outside this repository, and fails a broken one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ADAPTERS = '''
from nexus.eventlog import open_event_log
from nexus.eventlog.memory import MemoryEventLog
from nexus.bus.memory import MemoryBus
from nexus.testing import BusContract, EventLogContract


class TestSoundBus(BusContract):
    async def make_bus(self, tracer_provider):
        bus = MemoryBus(tracer_provider=tracer_provider)
        await bus.ensure_streams()
        return bus


class TestSound(EventLogContract):
    async def make_log(self, tmp_path):
        return await open_event_log("memory://")


class OffByOne(MemoryEventLog):
    """A log whose head is one behind: the contract must notice."""

    async def head(self):
        return max(0, await super().head() - 1)


class TestOffByOne(EventLogContract):
    async def make_log(self, tmp_path):
        return OffByOne()
'''


def test_an_outside_project_subclasses_the_suite(tmp_path: Path) -> None:
    # A project of its own: no conftest from this repository, only its own pytest settings.
    ini = "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    (tmp_path / "pytest.ini").write_text(ini)
    (tmp_path / "test_my_adapter.py").write_text(ADAPTERS)
    cases = "versions_are_per_stream or poison_message_is_dead_lettered"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-rf", "-k", cases],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=100,
    )
    out = run.stdout + run.stderr
    # The sound adapter passes; the broken one fails, and the suite's assert shows its operands.
    assert run.returncode == 1, out
    assert "FAILED test_my_adapter.py::TestOffByOne::test_versions_are_per_stream_and_positions_global" in out
    assert "assert 5 == 6" in out
    # The bus suite runs outside this repository too, on the adapter's own bus.
    bus_case = "test_poison_message_is_dead_lettered_and_the_consumer_goes_on"
    assert f"test_my_adapter.py::TestSoundBus::{bus_case} PASSED" in out
    assert " 1 failed, 2 passed, " in run.stdout.splitlines()[-1], out
