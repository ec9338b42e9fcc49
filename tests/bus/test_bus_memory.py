"""The in-memory bus passes the bus contract."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from bus_contract import BusContract
from opentelemetry.sdk.trace import TracerProvider

from nexus.bus import Bus
from nexus.bus.memory import MemoryBus


class TestMemoryBus(BusContract):
    @pytest.fixture
    async def bus(self) -> AsyncIterator[Bus]:
        self.tracer_provider = TracerProvider()
        bus = MemoryBus(tracer_provider=self.tracer_provider)
        await bus.ensure_streams()
        yield bus
        await bus.close()
