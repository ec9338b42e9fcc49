"""The bus contract: one suite, run against every adapter (see test_bus_memory, test_bus_jetstream).

Part of ``nexus.testing`` (needs the dev extras: pytest and pytest-asyncio in auto mode).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from nexus.bus import (
    Bus,
    BusArgumentError,
    BusError,
    BusUnavailableError,
    ConsumerSpec,
    Delivery,
    OutboundMessage,
    PoisonMessageError,
    RetryableError,
)
from nexus.bus.events import decode_delivery
from nexus.ingest import CommandRejected, CommandRouter, send_command
from nexus.proto import STREAM_CMD, STREAM_DLQ, STREAM_EVT, CloudEvent, new_event

WAIT = 10.0


def spec(name: str, *filters: str, stream: str = STREAM_EVT, **options: object) -> ConsumerSpec:
    return ConsumerSpec(name=name, stream=stream, filter_subjects=filters or ("nexus.evt.>",), **options)  # type: ignore[arg-type]


async def take(queue: asyncio.Queue[Delivery], count: int) -> list[Delivery]:
    return [await asyncio.wait_for(queue.get(), WAIT) for _ in range(count)]


class BusContract:
    """The contract of ``nexus.bus.Bus``: subclass it per adapter as ``Test...`` and implement
    ``make_bus``; pytest then runs every case against that adapter.

    An adapter that needs other fixtures to build its bus (a server, parameters) overrides the
    ``bus`` fixture instead, setting ``self.tracer_provider`` to the provider the bus traces to.
    """

    tracer_provider: TracerProvider | None = None

    async def make_bus(self, tracer_provider: TracerProvider) -> Bus:
        """A fresh bus with the platform's streams ensured, tracing to ``tracer_provider``."""
        raise NotImplementedError(f"{type(self).__name__} implements neither make_bus nor the bus fixture")

    @pytest.fixture
    async def bus(self) -> AsyncIterator[Bus]:
        self.tracer_provider = TracerProvider()
        bus = await self.make_bus(self.tracer_provider)
        try:
            yield bus
        finally:
            await bus.close()

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

    async def test_invalid_cloudevent_is_dead_lettered_with_the_field(self, bus: Bus) -> None:
        dlq = await self.collect(bus, spec("dlq-reader", "nexus.dlq.>", stream=STREAM_DLQ))
        applied: list[CloudEvent] = []

        async def view(delivery: Delivery) -> None:
            applied.append(decode_delivery(delivery))

        await bus.consume(spec("view"), view)
        await bus.publish("nexus.evt.test.thing.bad", b'{"specversion": "0.3"}')
        (dead,) = await take(dlq, 1)
        assert dead.headers["Nexus-Error"] == "EnvelopeError"
        assert dead.headers["Nexus-Consumer"] == "view"
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

        def handler_for(replica: str) -> Callable[[Delivery], Awaitable[None]]:
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

    @pytest.mark.parametrize("subject", ["", "nexus.evt.a b.c", "nexus.evt.a\r\nPUB x 1", "nexus.evt.\ttab"])
    async def test_a_bad_subject_is_an_argument_error(self, bus: Bus, subject: str) -> None:
        for call in (
            bus.publish(subject, b"x"),
            bus.publish_many([OutboundMessage("nexus.evt.test.thing.ok", b"x"), OutboundMessage(subject, b"x")]),
            bus.request(subject, b"x", timeout=1),
        ):
            with pytest.raises(BusArgumentError, match="invalid subject") as raised:
                await call
            assert not isinstance(raised.value, BusUnavailableError)
        # Nothing of a batch with a bad subject in it was stored.
        assert (await bus.stream_state(STREAM_EVT)).messages == 0

    @pytest.mark.parametrize("name", ["Bad Name", "a:b", "é"])
    async def test_a_bad_header_name_is_an_argument_error(self, bus: Bus, name: str) -> None:
        with pytest.raises(BusArgumentError, match="invalid header name"):
            await bus.publish("nexus.evt.test.thing.x", b"x", headers={name: "v"})
        assert (await bus.stream_state(STREAM_EVT)).messages == 0

    async def test_header_values_travel_on_one_line_and_blank_names_are_dropped(self, bus: Bus) -> None:
        queue = await self.collect(bus, spec("headers"))
        await bus.publish(
            "nexus.evt.test.thing.h", b"x", headers={"X-Reason": " two\r\nlines ", " ": "dropped", " X-Pad ": "k"}
        )
        (delivery,) = await take(queue, 1)
        assert delivery.headers["X-Reason"] == "two  lines"
        assert delivery.headers["X-Pad"] == "k"
        assert " " not in delivery.headers and "" not in delivery.headers

    async def test_a_message_larger_than_max_payload_is_refused(self, bus: Bus) -> None:
        with pytest.raises(BusError, match=f"NATS allows {bus.max_payload}"):
            await bus.publish("nexus.evt.test.thing.big", b"x" * (bus.max_payload + 1))

    async def test_messages_are_looked_up_by_sequence_and_subject_and_deleted(self, bus: Bus) -> None:
        for n in range(1, 5):
            await bus.publish(f"nexus.dlq.c{n % 2}", str(n).encode(), headers={"X-N": str(n)})
        state = await bus.stream_state(STREAM_DLQ)
        assert (state.name, state.messages, state.first_seq, state.last_seq) == (STREAM_DLQ, 4, 1, 4)
        assert state.subjects == ("nexus.dlq.>",)
        second = await bus.get_message(STREAM_DLQ, 2)
        assert second is not None
        assert (second.stream, second.seq, second.subject, second.data) == (STREAM_DLQ, 2, "nexus.dlq.c0", b"2")
        assert second.headers["X-N"] == "2"
        assert await bus.get_message(STREAM_DLQ, 99) is None
        found = await bus.next_message(STREAM_DLQ, 2, "nexus.dlq.c1")
        assert found is not None and found.seq == 3
        assert await bus.next_message(STREAM_DLQ, 4, "nexus.dlq.c1") is None
        everything = await bus.next_message(STREAM_DLQ, 1, "nexus.dlq.>")
        assert everything is not None and everything.seq == 1
        last = await bus.last_message(STREAM_DLQ, "nexus.dlq.c0")
        assert last is not None and last.seq == 4
        assert await bus.last_message(STREAM_DLQ, "nexus.dlq.nobody") is None
        assert await bus.delete_message(STREAM_DLQ, 3)
        assert not await bus.delete_message(STREAM_DLQ, 3)
        assert await bus.get_message(STREAM_DLQ, 3) is None
        assert (await bus.stream_state(STREAM_DLQ)).messages == 3
        assert STREAM_DLQ in {s.name for s in await bus.streams()}
        with pytest.raises(BusError):
            await bus.stream_state("NO_SUCH_STREAM")

    async def test_consumer_state_reports_progress(self, bus: Bus) -> None:
        assert await bus.consumer_state(STREAM_EVT, "progress") is None
        queue = await self.collect(bus, spec("progress", "nexus.evt.test.>"))
        for n in range(3):
            await bus.publish("nexus.evt.test.thing.p", str(n).encode())
        await take(queue, 3)
        for _ in range(200):
            state = await bus.consumer_state(STREAM_EVT, "progress")
            assert state is not None
            if state.ack_floor == 3:
                break
            await asyncio.sleep(0.02)
        assert state is not None
        assert (state.name, state.stream, state.filter_subjects) == ("progress", STREAM_EVT, ("nexus.evt.test.>",))
        assert (state.ack_floor, state.num_pending, state.num_ack_pending) == (3, 0, 0)
        assert [c.name for c in await bus.consumers(STREAM_EVT)] == ["progress"]

    async def test_key_value_create_update_and_purge(self, bus: Bus) -> None:
        kv = await bus.key_value("nexus_test_kv")
        assert await kv.get("k") is None
        first = await kv.create("k", b"one")
        assert first is not None
        assert await kv.create("k", b"again") is None
        entry = await kv.get("k")
        assert entry is not None and (entry.key, entry.value, entry.revision) == ("k", b"one", first)
        second = await kv.update("k", b"two", last=first)
        assert second is not None and second > first
        assert await kv.update("k", b"stale", last=first) is None
        third = await kv.put("k", b"three")
        assert third > second
        await kv.purge("k")
        assert await kv.get("k") is None
        assert await kv.update("k", b"gone", last=third) is None
        assert await kv.create("k", b"fresh") is not None
        # The same bucket again: its entries are still there.
        again = await (await bus.key_value("nexus_test_kv")).get("k")
        assert again is not None and again.value == b"fresh"

    async def test_key_value_entries_expire_after_the_ttl(self, bus: Bus) -> None:
        kv = await bus.key_value("nexus_test_lease", ttl=1.0)
        assert await kv.create("leader", b"a") is not None
        assert await kv.create("leader", b"b") is None
        await asyncio.sleep(1.6)
        assert await kv.get("leader") is None
        assert await kv.create("leader", b"b") is not None
