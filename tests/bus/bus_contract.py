"""The bus contract: one suite, run against every adapter (see test_bus_memory, test_bus_jetstream)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from nexus.bus import Bus, ConsumerSpec, Delivery, PoisonMessageError, RetryableError
from nexus.bus.events import EventConsumer, MemoryCheckpointStore
from nexus.eventlog.memory import MemoryEventLog
from nexus.ingest import CommandRejected, CommandRouter, send_command
from nexus.proto import STREAM_CMD, STREAM_DLQ, STREAM_EVT, CloudEvent, new_event

WAIT = 10.0


def spec(name: str, *filters: str, stream: str = STREAM_EVT, **options: object) -> ConsumerSpec:
    return ConsumerSpec(name=name, stream=stream, filter_subjects=filters or ("nexus.evt.>",), **options)  # type: ignore[arg-type]


async def take(queue: asyncio.Queue[Delivery], count: int) -> list[Delivery]:
    return [await asyncio.wait_for(queue.get(), WAIT) for _ in range(count)]


class BusContract:
    """Subclasses provide the ``bus`` fixture (a fresh bus, streams ensured) and ``delete_message``."""

    tracer_provider: TracerProvider | None = None

    @pytest.fixture
    async def bus(self) -> AsyncIterator[Bus]:
        raise NotImplementedError
        yield  # pragma: no cover

    async def delete_message(self, bus: Bus, stream: str, seq: int) -> None:
        raise NotImplementedError

    async def collect(self, bus: Bus, consumer: ConsumerSpec) -> asyncio.Queue[Delivery]:
        queue: asyncio.Queue[Delivery] = asyncio.Queue()

        async def handler(delivery: Delivery) -> None:
            await queue.put(delivery)

        await bus.consume(consumer, handler)
        return queue

    async def test_publish_deduplicates_by_msg_id(self, bus: Bus) -> None:
        first = await bus.publish("nexus.evt.test.thing.done", b"1", msg_id="same")
        again = await bus.publish("nexus.evt.test.thing.done", b"2", msg_id="same")
        other = await bus.publish("nexus.evt.test.thing.done", b"3", msg_id="other")
        assert (first.stream, first.duplicate) == (STREAM_EVT, False)
        assert again.duplicate and again.seq == first.seq
        assert other.seq == first.seq + 1

    async def test_publish_event_uses_its_subject_and_id(self, bus: Bus) -> None:
        queue = await self.collect(bus, spec("reader"))
        event = new_event("nexus.workflow.thing.happened", {"n": 1}, source="nexus/test")
        await bus.publish_event(event)
        await bus.publish_event(event)  # a re-publish is stored once
        (delivery,) = await take(queue, 1)
        assert delivery.subject == "nexus.evt.workflow.thing.happened"
        assert delivery.headers["Nats-Msg-Id"] == event.id
        assert queue.empty()

    async def test_handler_success_acks_once(self, bus: Bus) -> None:
        calls: list[int] = []
        done = asyncio.Event()

        async def handler(delivery: Delivery) -> None:
            calls.append(delivery.num_delivered)
            if len(calls) == 3:
                done.set()

        first = await bus.consume(spec("acker"), handler)
        for n in range(3):
            await bus.publish(f"nexus.evt.test.thing.n{n}", b"x")
        await asyncio.wait_for(done.wait(), WAIT)
        await first.stop()
        # A fresh replica of the same durable gets only what comes next: all three were acknowledged.
        late = await self.collect(bus, spec("acker"))
        await bus.publish("nexus.evt.test.thing.last", b"y")
        (delivery,) = await take(late, 1)
        assert delivery.data == b"y"
        assert calls == [1, 1, 1]

    async def test_retryable_error_redelivers_with_count(self, bus: Bus) -> None:
        seen: list[int] = []
        done = asyncio.Event()

        async def handler(delivery: Delivery) -> None:
            seen.append(delivery.num_delivered)
            if delivery.num_delivered < 3:
                raise RetryableError("not yet")
            done.set()

        await bus.consume(spec("retrier", backoff_seconds=(0.01, 0.02)), handler)
        await bus.publish("nexus.evt.test.thing.retry", b"x")
        await asyncio.wait_for(done.wait(), WAIT)
        assert seen == [1, 2, 3]

    async def test_poison_message_is_dead_lettered_and_the_consumer_goes_on(self, bus: Bus) -> None:
        dlq = await self.collect(bus, spec("dlq-reader", "nexus.dlq.>", stream=STREAM_DLQ))
        good: asyncio.Queue[bytes] = asyncio.Queue()

        async def handler(delivery: Delivery) -> None:
            if delivery.data == b"poison":
                raise PoisonMessageError("cannot be processed, ever")
            await good.put(delivery.data)

        await bus.consume(spec("picky"), handler)
        await bus.publish("nexus.evt.test.thing.bad", b"poison", headers={"X-Origin": "test"})
        await bus.publish("nexus.evt.test.thing.good", b"fine")
        assert await asyncio.wait_for(good.get(), WAIT) == b"fine"
        (dead,) = await take(dlq, 1)
        assert dead.subject == "nexus.dlq.picky"
        assert dead.data == b"poison"
        assert dead.headers["Nexus-Error"] == "PoisonMessageError"
        assert dead.headers["Nexus-Error-Reason"] == "cannot be processed, ever"
        assert dead.headers["Nexus-Consumer"] == "picky"
        assert dead.headers["Nexus-Deliveries"] == "1"
        assert dead.headers["Nexus-Original-Subject"] == "nexus.evt.test.thing.bad"
        assert dead.headers["X-Origin"] == "test"

    async def test_invalid_cloudevent_is_dead_lettered_with_the_field(
        self, bus: Bus, memory_log: MemoryEventLog
    ) -> None:
        dlq = await self.collect(bus, spec("dlq-reader", "nexus.dlq.>", stream=STREAM_DLQ))
        applied: list[CloudEvent] = []
        consumer = EventConsumer(bus, memory_log, spec("view"), self._appender(applied))
        await consumer.start()
        await bus.publish("nexus.evt.test.thing.bad", b'{"specversion": "0.3"}')
        (dead,) = await take(dlq, 1)
        assert dead.headers["Nexus-Error"] == "EnvelopeError"
        assert "$." in dead.headers["Nexus-Error-Reason"]
        assert applied == []

    async def test_max_deliver_dead_letters_after_the_last_attempt(self, bus: Bus) -> None:
        dlq = await self.collect(bus, spec("dlq-reader", "nexus.dlq.>", stream=STREAM_DLQ))
        attempts: list[int] = []

        async def handler(delivery: Delivery) -> None:
            attempts.append(delivery.num_delivered)
            raise RuntimeError("database down")

        await bus.consume(spec("doomed", max_deliver=3, backoff_seconds=(0.01,)), handler)
        await bus.publish("nexus.evt.test.thing.x", b"x")
        (dead,) = await take(dlq, 1)
        assert attempts == [1, 2, 3]
        assert dead.headers["Nexus-Error"] == "MaxDeliveriesExceeded"
        assert dead.headers["Nexus-Deliveries"] == "3"
        assert "database down" in dead.headers["Nexus-Error-Reason"]

    async def test_replicas_share_a_durable_and_split_the_messages(self, bus: Bus) -> None:
        seen: dict[str, list[bytes]] = {"a": [], "b": []}
        total = 200
        done = asyncio.Event()

        def handler_for(replica: str):  # type: ignore[no-untyped-def]
            async def handler(delivery: Delivery) -> None:
                seen[replica].append(delivery.data)
                # Yield so the other replica gets its turn, as real work would.
                await asyncio.sleep(0)
                if len(seen["a"]) + len(seen["b"]) >= total:
                    done.set()

            return handler

        await bus.consume(spec("shared", batch=10), handler_for("a"))
        await bus.consume(spec("shared", batch=10), handler_for("b"))
        for n in range(total):
            await bus.publish("nexus.evt.test.thing.n", str(n).encode())
        await asyncio.wait_for(done.wait(), WAIT)
        everything = seen["a"] + seen["b"]
        assert sorted(everything, key=int) == [str(n).encode() for n in range(total)]
        assert seen["a"] and seen["b"]

    async def test_stop_finishes_the_message_in_flight(self, bus: Bus) -> None:
        started = asyncio.Event()
        release = asyncio.Event()
        finished: list[bytes] = []

        async def slow(delivery: Delivery) -> None:
            started.set()
            await release.wait()
            finished.append(delivery.data)

        consumer = await bus.consume(spec("slow"), slow)
        await bus.publish("nexus.evt.test.thing.slow", b"in-flight")
        await asyncio.wait_for(started.wait(), WAIT)
        stopping = asyncio.create_task(consumer.stop())
        await asyncio.sleep(0)
        release.set()
        await asyncio.wait_for(stopping, WAIT)
        assert finished == [b"in-flight"]
        # It was acknowledged: a new replica receives only what comes after.
        after = await self.collect(bus, spec("slow"))
        await bus.publish("nexus.evt.test.thing.slow", b"next")
        (delivery,) = await take(after, 1)
        assert delivery.data == b"next"

    async def test_commands_are_answered_through_the_router(self, bus: Bus) -> None:
        router = CommandRouter(bus, "svc")

        async def create(command: CloudEvent) -> dict[str, object]:
            if command.data.get("name") == "taken":
                raise CommandRejected("name already taken", "conflict")
            return {"id": "thing-1"}

        router.route("create", create)
        await router.start()
        accepted = await send_command(bus, "svc", "create", {"name": "new"}, source="nexus/test")
        rejected = await send_command(bus, "svc", "create", {"name": "taken"}, source="nexus/test")
        unknown = await send_command(bus, "svc", "explode", {}, source="nexus/test")
        assert accepted == {"accepted": True, "id": "thing-1"}
        assert rejected == {"accepted": False, "error": "conflict", "reason": "name already taken"}
        assert unknown["accepted"] is False and "explode" in unknown["reason"]
        raw = json.loads(await bus.request("nexus.cmd.svc.create", b"not json"))
        assert raw["error"] == "EnvelopeError"

    async def test_command_queue_is_shared_work(self, bus: Bus) -> None:
        queue = await self.collect(bus, spec("svc-work", "nexus.cmd.work.>", stream=STREAM_CMD))
        await bus.publish("nexus.cmd.work.do", b"job")
        (delivery,) = await take(queue, 1)
        assert delivery.data == b"job"

    @staticmethod
    def _appender(applied: list[CloudEvent]):  # type: ignore[no-untyped-def]
        async def apply(event: CloudEvent) -> None:
            applied.append(event)

        return apply

    async def test_event_consumer_skips_duplicates_and_fills_gaps(self, bus: Bus, memory_log: MemoryEventLog) -> None:
        stored = await memory_log.append(
            "thing-1", [new_event("nexus.test.thing.changed", {"n": n}, source="nexus/test") for n in range(1, 6)]
        )
        applied: list[CloudEvent] = []
        gate = asyncio.Event()
        holding = asyncio.Event()
        finished = asyncio.Event()
        checkpoint = MemoryCheckpointStore()

        async def apply(event: CloudEvent) -> None:
            applied.append(event)
            if event.streamversion == 2:
                # Hold the consumer so that what is published next waits in the stream.
                holding.set()
                await gate.wait()
            if event.streamversion == 5:
                finished.set()

        # batch=1: nothing is fetched ahead while the handler is held.
        consumer = EventConsumer(bus, memory_log, spec("view", batch=1), apply, checkpoint=checkpoint)
        await consumer.start()
        await bus.publish_events(stored[:2])
        await asyncio.wait_for(holding.wait(), WAIT)
        acks = await bus.publish_events(stored[2:])
        # Version 3 disappears from the stream (a lost tail, a deleted message).
        await self.delete_message(bus, STREAM_EVT, acks[0].seq)
        # Versions 1 and 2 arrive again (a relay that re-published them after a restart).
        await bus.publish("nexus.evt.test.thing.changed", bus_payload(stored[0]), msg_id="republished-1")
        gate.set()
        await asyncio.wait_for(finished.wait(), WAIT)
        await consumer.stop()
        assert [e.streamversion for e in applied] == [1, 2, 3, 4, 5]
        assert checkpoint.versions == {"thing-1": 5}

    async def test_consumer_span_is_a_child_of_the_producer(self, bus: Bus) -> None:
        assert self.tracer_provider is not None
        exporter = InMemorySpanExporter()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = self.tracer_provider.get_tracer("test")
        done = asyncio.Event()

        async def handler(delivery: Delivery) -> None:
            done.set()

        await bus.consume(spec("traced"), handler)
        with tracer.start_as_current_span("operation") as operation:
            await bus.publish("nexus.evt.test.thing.traced", b"x")
        await asyncio.wait_for(done.wait(), WAIT)
        # The consume span ends just after the handler returns.
        for _ in range(100):
            if any(s.name == "consume" for s in exporter.get_finished_spans()):
                break
            await asyncio.sleep(0.01)
        spans = {s.name: s for s in exporter.get_finished_spans()}
        publish, consume = spans["publish"], spans["consume"]
        assert publish.parent is not None and publish.parent.span_id == operation.get_span_context().span_id
        assert consume.parent is not None and consume.parent.span_id == publish.context.span_id
        assert consume.context.trace_id == operation.get_span_context().trace_id


def bus_payload(event: CloudEvent) -> bytes:
    from nexus.proto import encode_event

    return encode_event(event)
