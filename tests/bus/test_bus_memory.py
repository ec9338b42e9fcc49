"""The in-memory bus passes the bus contract."""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider

from nexus.bus import Bus
from nexus.bus.memory import MemoryBus
from nexus.testing import BusContract


class TestMemoryBus(BusContract):
    async def make_bus(self, tracer_provider: TracerProvider) -> Bus:
        bus = MemoryBus(tracer_provider=tracer_provider)
        await bus.ensure_streams()
        return bus
