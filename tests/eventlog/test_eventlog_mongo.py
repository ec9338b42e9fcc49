"""The contract on the MongoDB adapter, against a real replica set.

The server comes from ``NEXUS_TEST_MONGO_URL`` (e.g. ``mongodb://localhost:27017/?replicaSet=rs0``)
or, when a Docker engine is reachable, from a ``mongo:7`` container started as a one-member
replica set. Without either, every test here is skipped with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from nexus.eventlog import EventLog, EventLogUnavailableError, open_event_log
from nexus.eventlog.mongo import MongoEventLog
from nexus.proto import CloudEvent
from nexus.testing import EventLogContract, ev, take

pytestmark = pytest.mark.mongo

_NO_SERVER = (
    "MongoDB tests need a replica set: set NEXUS_TEST_MONGO_URL=mongodb://HOST:PORT/?replicaSet=NAME, "
    "or make a Docker engine reachable so a mongo:7 container can be started"
)


_INITIATE = "rs.initiate({_id: 'rs0', members: [{_id: 0, host: 'localhost:27017'}]})"


def _docker_replica_set() -> Iterator[str] | None:
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return None
    try:
        import docker
        from testcontainers.core.container import DockerContainer
        from testcontainers.core.wait_strategies import LogMessageWaitStrategy

        client = docker.from_env()
    except Exception:
        return None
    try:
        client.ping()
    except Exception:
        return None
    finally:
        client.close()

    def run() -> Iterator[str]:
        container = (
            DockerContainer("mongo:7")
            .with_command("--replSet rs0 --bind_ip_all")
            .with_exposed_ports(27017)
            .waiting_for(LogMessageWaitStrategy("Waiting for connections"))
        )
        with container:
            code, output = container.exec(
                [
                    "mongosh",
                    "--quiet",
                    "--eval",
                    "rs.initiate({_id: 'rs0', members: [{_id: 0, host: 'localhost:27017'}]})",
                ]
            )
            assert code == 0, output
            host, port = container.get_container_host_ip(), container.get_exposed_port(27017)
            # directConnection: the member calls itself localhost:27017, which the host cannot reach.
            yield f"mongodb://{host}:{port}/?directConnection=true"

    return run()


@pytest.fixture(scope="session")
def mongo_server_url() -> Iterator[str]:
    url = os.environ.get("NEXUS_TEST_MONGO_URL")
    if url:
        yield url
        return
    container = _docker_replica_set()
    if container is None:
        pytest.skip(_NO_SERVER)
    yield from container


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


class TestMongoEventLog(EventLogContract):
    @pytest.fixture(autouse=True)
    def _server(self, mongo_server_url: str) -> Iterator[None]:
        self.server_url = mongo_server_url
        self.databases: list[str] = []
        yield
        from pymongo import MongoClient

        with MongoClient(mongo_server_url, serverSelectionTimeoutMS=5000) as client:
            for name in self.databases:
                client.drop_database(name)

    async def make_log(self, tmp_path: Path) -> EventLog:
        if not self.databases:
            self.databases.append(f"nexus_test_{uuid.uuid4().hex[:12]}")
        log = await open_event_log(_with_database(self.server_url, self.databases[0]))
        assert isinstance(log, MongoEventLog)
        return log

    def record_subscription_reads(self, log: EventLog, monkeypatch: pytest.MonkeyPatch) -> list[int] | None:
        assert isinstance(log, MongoEventLog)
        starts: list[int] = []
        real = log._scan_types

        async def scan(start: int, types: list[str]) -> tuple[list[CloudEvent], int, bool]:
            starts.append(start)
            return await real(start, types)

        monkeypatch.setattr(log, "_scan_types", scan)
        return starts

    @pytest.fixture
    async def two_clients(self, log: EventLog) -> AsyncIterator[tuple[EventLog, EventLog]]:
        other = await self.make_log(Path("."))
        try:
            yield log, other
        finally:
            await other.close()

    async def test_writers_on_two_clients_never_make_a_reader_skip(
        self, two_clients: tuple[EventLog, EventLog]
    ) -> None:
        # Two clients append concurrently, so their transactions race on the position counter and
        # commit in an order of their own; a subscriber on the first client still sees every
        # position once, in order.
        one, two = two_clients
        writers, per_writer = 8, 25
        total = writers * per_writer

        async def writer(log: EventLog, n: int) -> None:
            for i in range(per_writer):
                await log.append(f"writer-{n}", [ev(n=i)])

        async with contextlib.aclosing(one.subscribe()) as tail:
            reader = asyncio.ensure_future(take(tail, total, within=60))
            await asyncio.gather(*(writer(one if n % 2 else two, n) for n in range(writers)))
            got = await reader
        assert [e.position for e in got] == list(range(1, total + 1))
        assert await one.head() == await two.head() == total

    async def test_appends_commit_in_groups_with_majority_and_journal(self) -> None:
        # The commands the driver sends, as the server receives them: each transaction begins
        # with read concern snapshot and commits with w: majority, j: true (a database's
        # concerns are not inherited by a transaction), and concurrent appends share commits.
        from pymongo import AsyncMongoClient
        from pymongo.monitoring import CommandListener, CommandStartedEvent

        class Commands(CommandListener):
            def __init__(self) -> None:
                self.seen: list[CommandStartedEvent] = []

            def started(self, event: CommandStartedEvent) -> None:
                self.seen.append(event)

            def succeeded(self, event: object) -> None:
                pass

            def failed(self, event: object) -> None:
                pass

        if not self.databases:
            self.databases.append(f"nexus_test_{uuid.uuid4().hex[:12]}")
        commands = Commands()
        client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(self.server_url, event_listeners=[commands])
        log = await MongoEventLog.on_client(self.server_url, client, self.databases[0])
        try:
            await asyncio.gather(*(log.append(f"s{i}", [ev(i=i)]) for i in range(50)))
        finally:
            await log.close()
        commits = [c.command for c in commands.seen if c.command_name == "commitTransaction"]
        firsts = [c.command for c in commands.seen if c.command.get("startTransaction")]
        assert commits and all(c["writeConcern"] == {"w": "majority", "j": True} for c in commits)
        assert firsts and all(c["readConcern"]["level"] == "snapshot" for c in firsts)
        assert log.transactions == len(commits) < 50 and log.appends == 50


async def test_a_server_that_does_not_answer_is_unavailable() -> None:
    # Port 1 on the loopback refuses connections: the driver's error is translated.
    with pytest.raises(EventLogUnavailableError, match="MongoDB"):
        await open_event_log("mongodb://127.0.0.1:1/nexus?serverSelectionTimeoutMS=200&connectTimeoutMS=200")
    # PyMongo drops the socket of a refused connection without closing it; collect it here, so
    # its ResourceWarning is not reported against whichever test happens to run next.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
