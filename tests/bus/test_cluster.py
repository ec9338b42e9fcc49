"""The embedded three-node JetStream cluster (``nexus up --nats-cluster 3``): one cluster with a
leader, R3 streams and buckets, messages across nodes, authenticated routes, and a node killed
with SIGKILL in the middle of a stream without losing anything that was acknowledged."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import nats
import pytest

from nexus.bus import BusError, ConsumerSpec, Delivery
from nexus.bus.embedded import (
    ROUTE_USER,
    EmbeddedNats,
    EmbeddedNatsCluster,
    add_producer,
    load_credentials,
    producer_inbox_prefix,
)
from nexus.bus.jetstream import NEXUS_STREAMS, JetStreamBus

pytestmark = [pytest.mark.nats, pytest.mark.slow]

NODE_NAMES = {"nexus-1", "nexus-2", "nexus-3"}


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[EmbeddedNatsCluster]:
    async with EmbeddedNatsCluster(tmp_path / "nats") as running:
        yield running
    # A client that reconnected to another node leaves its old connection's writer to the garbage
    # collector: collect it while the event loop still runs (later, it warns the loop is closed).
    gc.collect()


async def connect(urls: str, cluster: EmbeddedNatsCluster, **options: object) -> JetStreamBus:
    user, password = cluster.credentials()
    return await JetStreamBus.connect(urls, user=user, password=password, replicas=cluster.replicas, **options)  # type: ignore[arg-type]


async def within(awaitable: object, what: str, seconds: float = 30.0) -> None:
    try:
        await asyncio.wait_for(awaitable, seconds)  # type: ignore[arg-type]
    except TimeoutError:
        raise AssertionError(f"{what}: not within {seconds:g} s") from None


async def test_three_nodes_form_one_jetstream_cluster_whose_streams_and_buckets_keep_three_copies(
    cluster: EmbeddedNatsCluster, tmp_path: Path
) -> None:
    # Three servers, each with its own store and ports, the same users.
    assert len(cluster.nodes) == 3 and len(set(cluster.urls)) == 3
    assert cluster.url == ",".join(cluster.urls)
    for n, node in enumerate(cluster.nodes, start=1):
        assert node.store_dir == tmp_path / "nats" / f"node-{n}"
        assert (node.store_dir / "jetstream").is_dir()
        assert (node.store_dir / "nats-server.conf").stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / "nats" / "jetstream").exists()

    bus = await connect(cluster.url, cluster)
    try:
        # Every Nexus stream is replicated on all three nodes, with an elected leader.
        for spec in NEXUS_STREAMS:
            info = await bus.js.stream_info(spec.name)
            assert info.config.num_replicas == 3, spec.name
            assert info.cluster is not None and info.cluster.name == "nexus"
            assert info.cluster.leader in NODE_NAMES
            followers = {peer.name for peer in info.cluster.replicas or []}
            assert followers == NODE_NAMES - {info.cluster.leader}, spec.name
        # So is a key-value bucket (the relay's lease and checkpoint are buckets).
        bucket = await bus.key_value("cluster-test", ttl=30)
        await bucket.put("lease", b"me")
        kv_stream = await bus.js.stream_info("KV_cluster-test")
        assert kv_stream.config.num_replicas == 3
        # Each node answers for the cluster: a client of node 3 reads what a client of node 1 wrote.
        other = await connect(cluster.nodes[2].url, cluster, ensure_streams=False)
        try:
            entry = await (await other.key_value("cluster-test")).get("lease")
            assert entry is not None and entry.value == b"me"
        finally:
            await other.close()
    finally:
        await bus.close()


async def test_an_existing_single_copy_stream_is_moved_to_three(cluster: EmbeddedNatsCluster) -> None:
    # A bus without a replica count creates one-copy streams (and changes none)...
    single = await connect(cluster.url, cluster, ensure_streams=False)
    single.replicas = None
    try:
        await single.ensure_streams()
        assert (await single.js.stream_info("NEXUS_EVT")).config.num_replicas == 1
        await single.publish("nexus.evt.test.thing.done", b"kept", msg_id="kept")
    finally:
        await single.close()
    # ...and a service started with NEXUS_NATS_REPLICAS=3 moves them to three, messages kept.
    bus = await connect(cluster.url, cluster)
    try:
        info = await bus.js.stream_info("NEXUS_EVT")
        assert info.config.num_replicas == 3 and info.state.messages == 1
    finally:
        await bus.close()


async def test_a_message_published_on_one_node_is_consumed_on_another(cluster: EmbeddedNatsCluster) -> None:
    publisher = await connect(cluster.nodes[0].url, cluster)
    consumer_bus = await connect(cluster.nodes[2].url, cluster, ensure_streams=False)
    received: list[bytes] = []
    all_in = asyncio.Event()

    async def handle(delivery: Delivery) -> None:
        received.append(delivery.data)
        if len(received) == 200:
            all_in.set()

    try:
        consumer = await consumer_bus.consume(
            ConsumerSpec("across-nodes", "NEXUS_EVT", ("nexus.evt.test.>",), ack_wait_seconds=5), handle
        )
        for i in range(200):
            await publisher.publish("nexus.evt.test.thing.done", str(i).encode(), msg_id=f"across-{i}")
        await within(all_in.wait(), "200 messages published on node 1 consumed on node 3")
        await consumer.stop()
        assert sorted(int(data) for data in received) == list(range(200))
    finally:
        await publisher.close()
        await consumer_bus.close()


async def test_a_route_connection_without_the_route_password_is_refused(cluster: EmbeddedNatsCluster) -> None:
    # A process that could open a route would see every subject, whatever the client permissions.
    route_port = cluster.nodes[0].cluster.port  # type: ignore[union-attr]
    reader, writer = await asyncio.open_connection("127.0.0.1", route_port)
    try:
        info = await asyncio.wait_for(reader.readline(), 5)
        assert info.startswith(b"INFO ") and json.loads(info[5:])["auth_required"] is True
        hello = {"verbose": False, "pedantic": False, "name": "stranger", "cluster": "nexus", "user": ROUTE_USER}
        writer.write(b"CONNECT " + json.dumps({**hello, "pass": "guess"}).encode() + b"\r\nPING\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(4096), 5)
        assert b"-ERR 'Authorization Violation'" in answer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    # The route password is kept with the other credentials, 0600, and differs from every user's.
    credentials = load_credentials(cluster.store_dir)
    assert credentials["routes"][ROUTE_USER] not in credentials["users"].values()
    assert (cluster.store_dir / "credentials.json").stat().st_mode & 0o777 == 0o600


async def test_a_producer_credential_works_on_every_node_at_once(cluster: EmbeddedNatsCluster) -> None:
    bus = await connect(cluster.url, cluster)
    try:
        user, password, reloaded = add_producer(cluster.store_dir, "gaia")
        assert reloaded
        # Every node reloaded the shared authorization file: the producer publishes through each.
        for n, node in enumerate(cluster.nodes):
            producer = None
            for _ in range(50):
                with contextlib.suppress(nats.errors.Error, OSError):
                    producer = await nats.connect(
                        node.url,
                        user=user,
                        password=password,
                        inbox_prefix=producer_inbox_prefix("gaia"),
                        allow_reconnect=False,
                    )
                    break
                await asyncio.sleep(0.1)
            assert producer is not None, f"node {n + 1} refused the new producer"
            try:
                ack = await producer.jetstream().publish(f"nexus.ext.gaia.n{n}", b"{}")
                assert ack.stream == "NEXUS_EXT"
            finally:
                await producer.close()
    finally:
        await bus.close()


def _node_of(cluster: EmbeddedNatsCluster, server_name: str) -> EmbeddedNats:
    return cluster.nodes[int(server_name.rsplit("-", 1)[1]) - 1]


async def test_a_stream_leader_killed_mid_stream_and_restarted_loses_nothing_acknowledged(
    cluster: EmbeddedNatsCluster,
) -> None:
    total = 3000
    publisher = await connect(cluster.url, cluster, ack_timeout=3.0)
    consumer_bus = await connect(cluster.url, cluster, ensure_streams=False)
    acknowledged: set[int] = set()
    delivered: Counter[int] = Counter()
    retries = 0
    progress = asyncio.Condition()

    async def handle(delivery: Delivery) -> None:
        delivered[int(delivery.data)] += 1
        async with progress:
            progress.notify_all()

    async def publish_all() -> None:
        # A publisher that retries each message with its id until JetStream acknowledges it,
        # as the relay does: the stream's de-duplication keeps one copy.
        nonlocal retries
        for i in range(total):
            while True:
                try:
                    await publisher.publish("nexus.evt.test.tick.done", str(i).encode(), msg_id=f"tick-{i}")
                except BusError:
                    retries += 1
                    await asyncio.sleep(0.05)
                    continue
                acknowledged.add(i)
                async with progress:
                    progress.notify_all()
                break

    async def until(condition: Callable[[], bool]) -> None:
        async with progress:
            await progress.wait_for(condition)

    consumer = await consumer_bus.consume(
        ConsumerSpec("survivor", "NEXUS_EVT", ("nexus.evt.test.>",), ack_wait_seconds=3), handle
    )
    try:
        publishing = asyncio.create_task(publish_all())
        # Mid-stream, with the publisher and the consumer running: kill -9 the stream's leader.
        await within(until(lambda: len(acknowledged) >= total // 3 and len(delivered) >= total // 4), "a third")
        info = await publisher.js.stream_info("NEXUS_EVT")
        assert info.cluster is not None and info.cluster.leader
        victim = _node_of(cluster, info.cluster.leader)
        loop = asyncio.get_running_loop()
        await victim.kill()
        killed, killed_at = loop.time(), len(acknowledged)
        # The two others elect a new leader and the publisher goes on without the dead node.
        await within(until(lambda: len(acknowledged) > killed_at), "publishing on two nodes")
        paused = loop.time() - killed
        await within(until(lambda: len(acknowledged) > killed_at + 100), "publishing on two nodes")
        await victim.start()
        await within(publishing, "publishing every message through the failover", 60)
        await within(until(lambda: len(delivered) == total), "consuming every acknowledged message", 60)
        await consumer.stop()

        # Nothing acknowledged is lost; the stream holds each message once.
        lost = acknowledged - set(delivered)
        duplicated = sum(count - 1 for count in delivered.values())
        print(
            f"\nacknowledged {len(acknowledged)}, lost {len(lost)}, redelivered {duplicated}, "
            f"publish retries {retries}, first ack {paused:.2f} s after the kill"
        )
        assert acknowledged == set(range(total))
        assert lost == set()
        info = await publisher.js.stream_info("NEXUS_EVT")
        assert info.state.messages == total
        # The restarted node caught up: every copy is current again.
        for _ in range(100):
            info = await publisher.js.stream_info("NEXUS_EVT")
            assert info.cluster is not None
            if all(peer.current for peer in info.cluster.replicas or []) and len(info.cluster.replicas or []) == 2:
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError(f"the restarted node did not catch up: {info.cluster}")
    finally:
        await consumer_bus.close()
        await publisher.close()
