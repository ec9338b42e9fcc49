"""Workflow replicas on one shared PostgreSQL log: executions/s with one and with two replicas, same run.

Each measurement starts a fresh database on one durable PostgreSQL server (fsync on), one
nats-server, and one or two ``python -m nexus.services.workflow`` processes (distinct replica
ids) on that log; then N executions of a workflow of three ``api_call`` steps to an HTTP stub
served from this process, POSTed to the replicas in turn, and the time from the first POST to
the last ``execution.completed`` in the log. Each repeat runs one replica then two (in
alternating order), so both see the same machine state; the two-replica row's peer is the
one-replica figure and their ratio.

Beside the rate, each row notes where the CPU went: the machine's busy share of all cores
over the run (``/proc/stat``) and the share this run's own processes used, and the CPU
milliseconds per execution spent in the workflow replicas, the PostgreSQL server, the
nats-server and this process (client and stub), and PostgreSQL's committed transactions per
execution (how many appends each commit carried: every write transaction of the shared log,
from any process, holds one row lock until it has committed). On a machine with
few cores a second replica can only add throughput while the cores are not already busy with
the first replica, the database and the stub; those figures say how much room there was.

What bounds the gain on 2 cores, as measured: one replica is one event loop, one core at most
(about 4 ms of its CPU per execution), so with the database and the stub it leaves part of the
second core idle; two replicas fill both cores (every process of the run together spends about
6 ms of CPU per execution, so 2 cores cap the rate near 2 / 6 ms, some 330 executions/s), and
each replica's own cost per execution rises a little, since it also folds the other replica's
events (its view serves any execution) and its appends share the log's single ordered head with
the other's (every write transaction holds the head's row lock until it commits: commits per
execution show how well each replica's group commit still batches).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import socket
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench._harness import Context, Row
from nexus.auth import issue_key
from nexus.bus.embedded import EmbeddedNats
from nexus.eventlog import EventLog, open_event_log
from nexus.testing._postgres import PostgresServer, PostgresUnavailable

SUITE = "replicas"
ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
COMPLETED = "nexus.workflow.execution.completed"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of one process and its reaped children, in seconds (0 once it is gone)."""
    try:
        fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(v) for v in fields[11:15]) / CLOCK_TICKS


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def _postgres_pids(server: PostgresServer) -> Iterator[int]:
    """The postmaster and its backends: every process whose command line names the server's data directory,
    and their children."""
    root = None
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if str(server.data) in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    root = int(entry.name)
                    break
    if root is None:
        return
    yield root
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == root:
                    yield int(entry.name)


def _commits(url: str) -> int:
    """Transactions committed in the database ``url`` names, as PostgreSQL's statistics count them."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as con:
        # The backends report their counts lazily: ask for a fresh snapshot of the statistics.
        con.execute("SELECT pg_stat_clear_snapshot()")
        row = con.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()").fetchone()
    return int(row[0]) if row else 0


class Stub:
    """The service every step calls: answers at once."""

    def __init__(self) -> None:
        self.url = ""
        self.requests = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def handle(request: web.Request) -> web.Response:
            self.requests += 1
            await request.read()
            return web.json_response({"ok": True})

        app = web.Application()
        app.router.add_post("/step", handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = _free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class Replica:
    """One workflow service process on the shared log."""

    def __init__(self, name: str, workdir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"{name}.log"
        (workdir / name).mkdir(parents=True, exist_ok=True)
        self.env = {
            **env,
            "NEXUS_DATA_DIR": str(workdir / name),
            "NEXUS_WORKFLOW_PORT": str(self.port),
            "NEXUS_WORKFLOW_REPLICA_ID": name,
        }
        self.proc: asyncio.subprocess.Process | None = None
        self.cpu = 0.0

    async def start(self, http: aiohttp.ClientSession) -> None:
        with self.log_path.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "nexus.services.workflow", env=self.env, stdout=out, stderr=out, cwd=ROOT
            )
        async with asyncio.timeout(60):
            while True:
                if self.proc.returncode is not None:
                    raise RuntimeError(f"{self.name} exited at start:\n{self.log_path.read_text()[-2000:]}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(self.url + "/readyz") as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.1)

    def sample(self) -> None:
        if self.proc is not None:
            self.cpu = _cpu_seconds(self.proc.pid)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(10):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


WORKFLOW = {
    "id": "bench_replicas",
    "steps": [
        {"id": f"s{i}", "service": "stub", "endpoint": "/step", "input_map": {"n": "$.input.n"}} for i in range(3)
    ],
}


async def _completed(log: EventLog, position: int) -> tuple[int, int]:
    batch = await log.read_all(position, 10_000, [COMPLETED])
    return len(batch), ((batch[-1].position or position) + 1) if batch else position


async def _measure(
    server: PostgresServer, nats: EmbeddedNats, stub: Stub, workdir: Path, replicas: int, count: int
) -> dict[str, float]:
    """One run: ``count`` executions on ``replicas`` workflow processes; the rate and where the CPU went."""
    url = await asyncio.to_thread(server.create_database)
    log = await open_event_log(url)
    fleet: list[Replica] = []
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=128))
    try:
        issued = await issue_key(log, "client", "bench", scopes=("admin",), source="nexus/bench")
        headers = {"x-service-key": issued.secret}
        user, password = nats.credentials("workflow")
        env = {
            **os.environ,
            "NEXUS_NATS_URL": nats.url,
            "NEXUS_NATS_USER": user,
            "NEXUS_NATS_PASSWORD": password,
            "NEXUS_EVENT_LOG_URL": url,
            "NEXUS_RAW_URL": f"file://{workdir / 'raw'}",
            "NEXUS_WORKFLOW_BUNDLED": "none",
            "NEXUS_WORKFLOW_CONCURRENCY": "2000",
            "NEXUS_WORKFLOW_HTTP_CONNECTIONS": "2000",
            "NEXUS_SERVICE_STUB": stub.url,
            "NEXUS_LOG_LEVEL": "warning",
        }
        fleet = [Replica(f"bench-{replicas}-{n}", workdir, env) for n in range(replicas)]
        await asyncio.gather(*(r.start(http) for r in fleet))
        async with http.post(fleet[0].url + "/workflows", json=WORKFLOW, headers=headers) as response:
            if response.status != 201:
                raise RuntimeError(f"POST /workflows answered {response.status}: {await response.text()}")
        for replica in fleet[1:]:
            async with asyncio.timeout(30):
                while True:
                    async with http.get(f"{replica.url}/workflows/bench_replicas", headers=headers) as response:
                        if response.status == 200:
                            break
                    await asyncio.sleep(0.05)

        postgres = list(_postgres_pids(server))
        nats_pid = nats.pid or 0
        cpu_before = {
            "workflow": sum(_cpu_seconds(r.proc.pid) for r in fleet if r.proc),
            "postgres": sum(_cpu_seconds(p) for p in postgres),
            "nats": _cpu_seconds(nats_pid),
            "bench": time.process_time(),
        }
        commits_before = await asyncio.to_thread(_commits, url)
        busy_before, total_before = _machine_ticks()
        began = time.perf_counter()
        queue: asyncio.Queue[int] = asyncio.Queue()
        for n in range(count):
            queue.put_nowait(n)

        async def poster() -> None:
            while not queue.empty():
                n = queue.get_nowait()
                body = {"workflow_id": "bench_replicas", "input": {"n": n}}
                async with http.post(f"{fleet[n % replicas].url}/executions", json=body, headers=headers) as r:
                    if r.status != 202:
                        raise RuntimeError(f"POST /executions answered {r.status}: {await r.text()}")

        posting = asyncio.gather(*(poster() for _ in range(64)))
        done, position = 0, 1
        async with asyncio.timeout(600):
            while done < count:
                got, position = await _completed(log, position)
                done += got
                if done < count:
                    await asyncio.sleep(0.05)
        await posting
        elapsed = time.perf_counter() - began
        busy_after, total_after = _machine_ticks()
        cpu = {
            "workflow": sum(_cpu_seconds(r.proc.pid) for r in fleet if r.proc) - cpu_before["workflow"],
            "postgres": sum(_cpu_seconds(p) for p in _postgres_pids(server)) - cpu_before["postgres"],
            "nats": _cpu_seconds(nats_pid) - cpu_before["nats"],
            "bench": time.process_time() - cpu_before["bench"],
        }
        cores = os.cpu_count() or 1
        await asyncio.sleep(1.0)  # backends flush their statistics at most once a second
        commits = await asyncio.to_thread(_commits, url) - commits_before
        return {
            "rate": count / elapsed,
            "busy": (busy_after - busy_before) / max(1, total_after - total_before),
            "ours": sum(cpu.values()) / (elapsed * cores),
            "commits": commits / count,
            **{f"{k}_ms": v * 1000 / count for k, v in cpu.items()},
        }
    finally:
        await asyncio.gather(*(r.stop() for r in fleet), return_exceptions=True)
        await http.close()
        await log.close()
        await asyncio.to_thread(server.drop_database, url)


def _note(runs: list[dict[str, float]]) -> str:
    def median(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    return (
        f"CPU busy {median('busy'):.0%} of {os.cpu_count()} cores, {median('ours'):.0%} by this run's processes; "
        f"CPU ms/execution: workflow {median('workflow_ms'):.1f}, PostgreSQL {median('postgres_ms'):.1f}, "
        f"nats-server {median('nats_ms'):.1f}, client+stub {median('bench_ms'):.1f}; "
        f"{median('commits'):.2f} PostgreSQL commits/execution"
    )


async def run(ctx: Context) -> list[Row]:
    count = ctx.scale(2000, 200)
    try:
        server = await asyncio.to_thread(PostgresServer, durable=True)
    except PostgresUnavailable as exc:
        reason = f"PostgreSQL cannot be started here: {exc}"
        return [
            Row(SUITE, "executions/s, 1 workflow replica, PostgreSQL log", math.nan, "executions/s", note=reason),
            Row(SUITE, "executions/s, 2 workflow replicas, PostgreSQL log", math.nan, "executions/s", note=reason),
        ]
    stub = Stub()
    await stub.start()
    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    try:
        async with EmbeddedNats(ctx.workdir / "nats", port=0) as nats:
            for repeat in range(ctx.repeats):
                # Alternate the order, so that neither count always runs on a warmer machine.
                for replicas in (1, 2) if repeat % 2 == 0 else (2, 1):
                    workdir = ctx.workdir / f"run-{repeat}-{replicas}"
                    workdir.mkdir(parents=True, exist_ok=True)
                    runs[replicas].append(await _measure(server, nats, stub, workdir, replicas, count))
    finally:
        await stub.stop()
        await asyncio.to_thread(server.stop)
    one = statistics.median(r["rate"] for r in runs[1])
    two = statistics.median(r["rate"] for r in runs[2])
    return [
        Row(
            SUITE,
            f"executions/s, 1 workflow replica, 3 HTTP steps, PostgreSQL log, n={count}",
            one,
            "executions/s",
            note=_note(runs[1]),
        ),
        Row(
            SUITE,
            f"executions/s, 2 workflow replicas, same log and workload, n={count}",
            two,
            "executions/s",
            peer=f"1 replica {one:,.0f} (x{two / one:.2f})",
            note=_note(runs[2]),
        ),
    ]
