"""Granulator: granulations per second (builtin generator, validation level 2) and one full
handshake → process → acknowledge round over NATS (p50, p99)."""

from __future__ import annotations

import asyncio
import time

from bench._harness import Context, Row, median_rate, percentile, target_row
from nexus.bus.embedded import EmbeddedNats
from nexus.bus.jetstream import JetStreamBus
from nexus.eventlog import open_event_log
from nexus.eventlog.memory import MemoryEventLog
from nexus.ingest import send_command
from nexus.proto import PLATFORM_TENANT
from nexus.raw.memory import MemoryRaw
from nexus.services.granulator import (
    BuiltinGenerator,
    Granulator,
    Limits,
    OutlineRequest,
    ValidationConfig,
    bootstrap,
    load_settings,
    run_with_validation,
)
from nexus.services.granulator.handlers import Caller
from nexus.services.granulator.model import GranulationInput, normalise_input

SUITE = "granulator"
TOPICS = (
    "AI Tools Market Analysis",
    "The Fall of the Roman Empire",
    "Python Programming for Data Science",
    "Ocean Plastic Pollution",
    "Electric Vehicle Battery Supply Chains",
    "Sleep and Mental Health",
)
KINDS = ("research_report", "course", "book", "article")
VALIDATION = {"enabled": True, "level": 2, "threshold": 90.0, "max_retries": 2}


def _body(i: int) -> dict:
    return {
        "stage": "content_granulation",
        "execution_id": f"exec_{i}",
        "input": {"topic": TOPICS[i % len(TOPICS)], "structure_type": KINDS[i % len(KINDS)], "sources": 8},
        "requirements": {"memory_mb": 256, "timeout_ms": 60_000},
        "validation": VALIDATION,
    }


BENCH_WORKER = Caller(tenant=PLATFORM_TENANT, worker_id="bench")
"""An external worker (a worker token's holder): the platform's tenant."""


async def _rounds(worker: Granulator, count: int, concurrency: int) -> int:
    """``count`` full rounds (handshake, process, acknowledge) through the worker, ``concurrency`` at once."""
    queue = iter(range(count))

    async def lane() -> None:
        for i in queue:
            hs = await worker.handshake(_body(i), caller=BENCH_WORKER)
            assert hs["accepted"], hs
            call = {"execution_id": hs["execution_id"], "handshake_id": hs["handshake_id"]}
            result = await worker.process(call, caller=BENCH_WORKER)
            assert result["status"] == "completed"
            await worker.acknowledge({**call, "status": "completed"}, caller=BENCH_WORKER)

    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return count


def _worker(log, raw) -> Granulator:  # type: ignore[no-untyped-def]
    return Granulator(
        log=log,
        raw=raw,
        generator=BuiltinGenerator(),
        limits=Limits(capacity=64, max_memory_mb=1024, max_timeout_ms=600_000),
        replica_id="bench",
    )


async def run(ctx: Context) -> list[Row]:
    rows: list[Row] = []
    count = ctx.scale(2000, 200)

    # 1. Generation with validation alone: the CPU cost of a granulation.
    generator = BuiltinGenerator()
    config = ValidationConfig(**VALIDATION)
    requests = [
        OutlineRequest(normalise_input(GranulationInput(topic=TOPICS[i % 6], structure_type=KINDS[i % 4], sources=8)))
        for i in range(24)
    ]

    async def generate_only() -> int:
        for i in range(count):
            await run_with_validation(generator.outline, requests[i % len(requests)], config)
        return count

    rate = await median_rate(generate_only, ctx.repeats)
    rows.append(target_row(SUITE, "generate + validate (builtin, level 2)", rate, "structures/s"))

    # 2. Full rounds through the worker, every step recorded in an in-memory log.
    async def memory_rounds() -> int:
        return await _rounds(_worker(MemoryEventLog(), MemoryRaw()), count, 8)

    rate = await median_rate(memory_rounds, ctx.repeats)
    rows.append(
        target_row(
            SUITE,
            "granulations (handshake+process+ack, builtin, validation level 2, memory log)",
            rate,
            "granulations/s",
            at_least=200,
        )
    )

    # 3. The same on the embedded default: a SQLite log with synchronous=FULL.
    async def sqlite_rounds() -> int:
        path = ctx.workdir / f"events-{time.perf_counter_ns()}.db"
        log = await open_event_log(f"sqlite:///{path}")
        try:
            return await _rounds(_worker(log, MemoryRaw()), ctx.scale(500, 50), 16)
        finally:
            await log.close()

    rate = await median_rate(sqlite_rounds, ctx.repeats)
    rows.append(target_row(SUITE, "granulations (same, SQLite log, synchronous=FULL)", rate, "granulations/s"))

    # 4. One round over NATS commands: the orchestrator's view (three request/replies).
    async with EmbeddedNats(ctx.workdir / "nats", port=0) as server:
        settings = load_settings(
            {"NEXUS_DATA_DIR": str(ctx.workdir), "NEXUS_GRANULATOR_PORT": "0", "NEXUS_GRANULATOR_REPLICA_ID": "bench"}
        )
        service_bus = await JetStreamBus.connect(server.client_url(), name="granulator-bench")
        service = await bootstrap(settings, log=MemoryEventLog(), bus=service_bus, raw=MemoryRaw())
        await service.start()
        client = await JetStreamBus.connect(server.client_url(), name="orchestrator-bench")
        try:
            latencies: list[float] = []
            rounds = ctx.scale(1000, 100)
            for i in range(rounds + 20):
                t0 = time.perf_counter()
                hs = await send_command(client, "granulator", "handshake", _body(i), source="nexus/bench", timeout=10)
                call = {"execution_id": hs["execution_id"], "handshake_id": hs["handshake_id"]}
                result = await send_command(client, "granulator", "process", call, source="nexus/bench", timeout=10)
                assert result["accepted"], result
                await send_command(
                    client, "granulator", "acknowledge", {**call, "status": "completed"}, source="nexus/bench"
                )
                if i >= 20:  # the first rounds warm the consumers up
                    latencies.append((time.perf_counter() - t0) * 1000)
        finally:
            await client.close()
            await service.stop()
    rows.append(target_row(SUITE, "round over NATS (handshake→process→ack) p50", percentile(latencies, 50), "ms"))
    rows.append(target_row(SUITE, "round over NATS (handshake→process→ack) p99", percentile(latencies, 99), "ms"))
    return rows
