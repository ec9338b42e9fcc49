"""The production NATS configuration (``deploy/nats/nats-{1,2,3}.conf``) boots as one JetStream
cluster: the three files as docker-compose.yml mounts them, with only their addresses moved to
free loopback ports and their store to a temporary directory, and every password from the
environment as compose passes it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from nexus.bus import ConsumerSpec, Delivery
from nexus.bus.embedded import IDENTITIES, find_nats_server
from nexus.bus.jetstream import NEXUS_STREAMS, JetStreamBus

pytestmark = [pytest.mark.nats, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
NODES = (1, 2, 3)


@dataclass
class DeployedCluster:
    urls: list[str]
    passwords: dict[str, str]
    route_ports: list[int]
    processes: list[asyncio.subprocess.Process]


def _loopback_copy(source: Path, target: Path, client: int, monitor: int, route: int, store: Path) -> None:
    """``source`` with its listen addresses and store moved; every other line as it is."""
    text = source.read_text()
    moves = {
        "listen: 0.0.0.0:4222": f"listen: 127.0.0.1:{client}",
        "http: 0.0.0.0:8222": f"http: 127.0.0.1:{monitor}",
        "listen: 0.0.0.0:6222": f"listen: 127.0.0.1:{route}",
        "store_dir: /data/jetstream": f'store_dir: "{store}"',
    }
    for old, new in moves.items():
        assert text.count(old) == 1, f"{source.name}: expected one {old!r}"
        text = text.replace(old, new)
    target.write_text(text)
    target.chmod(0o600)


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free ports (each socket held until all are chosen, so none repeats)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:]


async def _accepting(port: int, process: asyncio.subprocess.Process, log: Path, within: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        assert process.returncode is None, f"nats-server exited: {_tail(log)}"
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            assert loop.time() < deadline, f"nothing accepts connections on port {port}: {_tail(log)}"
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return


@pytest.fixture
async def deployed(tmp_path: Path) -> AsyncIterator[DeployedCluster]:
    ports = _free_ports(3 * len(NODES))
    clients, monitors, routes = ports[0:3], ports[3:6], ports[6:9]
    # Generated as deploy/nexus.env.example says (hex: a value nats-server parses as a string).
    passwords = {identity: secrets.token_hex(32) for identity in IDENTITIES}
    route_password = secrets.token_hex(32)
    # What docker-compose.yml's x-nats environment gives every node.
    env = {key: value for key, value in os.environ.items() if not key.startswith("NEXUS_NATS_")}
    env |= {f"NEXUS_NATS_{identity.upper()}_PASSWORD": password for identity, password in passwords.items()}
    env |= {"NEXUS_NATS_ROUTE_PASSWORD": route_password}
    env |= {f"NEXUS_NATS_ROUTE_{n}": f"nats-route://route:{route_password}@127.0.0.1:{routes[n - 1]}" for n in NODES}
    processes = []
    try:
        for n in NODES:
            config = tmp_path / f"nats-{n}.conf"
            store = tmp_path / f"store-{n}"
            store.mkdir()
            _loopback_copy(
                ROOT / "deploy" / "nats" / f"nats-{n}.conf",
                config,
                clients[n - 1],
                monitors[n - 1],
                routes[n - 1],
                store,
            )
            log = (tmp_path / f"nats-{n}.log").open("wb")
            processes.append(
                await asyncio.create_subprocess_exec(
                    str(find_nats_server()), "-c", str(config), env=env, stdout=log, stderr=log, start_new_session=True
                )
            )
            log.close()
        for n, (port, process) in enumerate(zip(clients, processes, strict=True), start=1):
            await _accepting(port, process, tmp_path / f"nats-{n}.log", 15)
        yield DeployedCluster([f"nats://127.0.0.1:{port}" for port in clients], passwords, routes, processes)
    finally:
        for process in processes:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


async def _bus(cluster: DeployedCluster, identity: str, urls: list[str] | None = None) -> JetStreamBus:
    # The meta leader is elected a moment after the routes form: JetStream answers 503 until then.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while True:
        try:
            return await JetStreamBus.connect(
                ",".join(urls or cluster.urls),
                user=identity,
                password=cluster.passwords[identity],
                replicas=3,
                reconnect=False,
            )
        except Exception:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_the_three_deploy_configurations_form_one_jetstream_cluster_with_r3_streams(
    deployed: DeployedCluster, tmp_path: Path
) -> None:
    bus = await _bus(deployed, "operator")
    try:
        for spec in NEXUS_STREAMS:
            info = await bus.js.stream_info(spec.name)
            assert info.config.num_replicas == 3
            assert info.cluster is not None and info.cluster.name == "nexus"
            assert info.cluster.leader in {"nats-1", "nats-2", "nats-3"}
            assert len(info.cluster.replicas or []) == 2
    finally:
        await bus.close()

    # A service's identity publishes on node 1 and a consumer on node 3 receives it.
    relay = await _bus(deployed, "relay", deployed.urls[:1])
    workflow = await _bus(deployed, "workflow", deployed.urls[2:])
    received: list[bytes] = []
    done = asyncio.Event()

    async def handle(delivery: Delivery) -> None:
        received.append(delivery.data)
        done.set()

    try:
        consumer = await workflow.consume(ConsumerSpec("deploy-test", "NEXUS_EVT", ("nexus.evt.test.>",)), handle)
        await relay.publish("nexus.evt.test.thing.done", b"across", msg_id="deploy-1")
        await asyncio.wait_for(done.wait(), 15)
        await consumer.stop()
        assert received == [b"across"]
    finally:
        await relay.close()
        await workflow.close()

    # No server accepted a route without the password, and none logged one.
    for n in NODES:
        log = (tmp_path / f"nats-{n}.log").read_text()
        assert "Authorization Violation" not in log and "authentication error" not in log
        assert not any(password in log for password in deployed.passwords.values())


async def test_a_deploy_route_without_the_password_is_refused(deployed: DeployedCluster) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", deployed.route_ports[0])
    try:
        info = await asyncio.wait_for(reader.readline(), 5)
        assert info.startswith(b"INFO ")
        writer.write(b'CONNECT {"verbose":false,"pedantic":false,"name":"stranger","cluster":"nexus"}\r\nPING\r\n')
        await writer.drain()
        assert b"-ERR 'Authorization Violation'" in await asyncio.wait_for(reader.read(4096), 5)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
