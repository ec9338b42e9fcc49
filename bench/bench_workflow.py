"""Workflow engine: executions/s of a 3-step workflow, dispatch latency, recovery after kill -9.

The workflow service runs as its own process (``python -m nexus.services.workflow``) with the
embedded defaults: a SQLite event log (``synchronous=FULL``) and a nats-server; every step calls
a local HTTP stub served from this process. So the figures include a real fsync'd log, real
HTTP and the service's own event loop, on the same machine as the stub and the client. Every
route of the service needs a client API key: the benchmark issues one into the service's log
before the first start and sends it as ``x-service-key``.

``NEXUS_BENCH_PROFILE=DIR`` runs the service under cProfile and writes one ``.prof`` file per
service start into DIR (read it with ``python -m pstats``); the figures are then slower.

- throughput: N executions started at once; executions/s and step completions/s from the first
  POST to the last COMPLETED. Beside it, in the same run and on the same stub, two
  durable-execution peers run the same workflow (three HTTP steps, each recorded durably before
  the next): DBOS Transact on its SQLite system database and Restate (its server, and its Python
  SDK on Hypercorn), each with 256 executions in flight. One run of each per repeat, in turn;
  the ratios of the medians are rows of their own. The peers are installed by the bench on
  first use (``bench/peers``); a peer that cannot be installed or started has a row saying why.
- dispatch latency: executions started at 100/s; per step attempt, the time from "step ready"
  (the previous step's result in hand, or the claim) to its request leaving, which includes
  appending and fsyncing the ``step.started`` event. p99 from the service's own measurement.
- recovery: 1,000 executions whose second step is slow; kill -9 the service with all of them in
  flight, start it again, and time until every one of them has re-sent its in-flight step (same
  idempotency key), i.e. resumed; then until all are COMPLETED.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import signal
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench._harness import Context, Row, target_row
from bench.peers import RESTATE_SERVER_VERSION, PeerUnavailable, drivers, pinned
from nexus.auth import issue_key
from nexus.bus.embedded import EmbeddedNats
from nexus.eventlog import open_event_log

SUITE = "workflow"
ROOT = Path(__file__).resolve().parent.parent


class Stub:
    """The service the steps call: answers after ``/slow/<ms>``, counts requests and answers per Idempotency-Key."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.answered: Counter[str] = Counter()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def handle(request: web.Request) -> web.Response:
            key = request.headers.get("Idempotency-Key", "")
            self.requests[key] += 1
            await request.read()
            delay = int(request.match_info.get("ms", "0"))
            if delay:
                await asyncio.sleep(delay / 1000)
            self.answered[key] += 1
            return web.json_response({"ok": True, "key": key})

        app = web.Application()
        app.router.add_post("/step", handle)
        app.router.add_post("/slow/{ms}", handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class ServiceProcess:
    """``python -m nexus.services.workflow`` in a child process."""

    def __init__(self, workdir: Path, nats_url: str, stub_url: str) -> None:
        self.log_path = workdir / "service.log"
        self.data_dir = workdir / "data"
        self.env = {
            **os.environ,
            "NEXUS_DATA_DIR": str(self.data_dir),
            "NEXUS_NATS_URL": nats_url,
            "NEXUS_WORKFLOW_PORT": "0",
            "NEXUS_WORKFLOW_BUNDLED": "none",
            "NEXUS_WORKFLOW_REPLICA_ID": "bench",
            "NEXUS_WORKFLOW_CONCURRENCY": "2000",
            # Recovery holds 1,000 executions on their slow step at once: one connection each
            # (the default pool of 200 would leave 800 of them waiting for a connection).
            "NEXUS_WORKFLOW_HTTP_CONNECTIONS": "2000",
            "NEXUS_SERVICE_STUB": stub_url,
            "NEXUS_LOG_LEVEL": "info",
        }
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self.headers: dict[str, str] = {}
        """``x-service-key``: an operator's client key (scope ``admin``) issued in the service's log:
        every route needs a key, and the replica's own figures in ``/queue/stats`` are an operator's."""
        self._starts = 0

    async def _issue_key(self) -> None:
        """Issue the benchmark's client key into the log the service will open (once per data dir)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = await open_event_log(f"sqlite:///{self.data_dir / 'events.db'}")
        try:
            issued = await issue_key(log, "client", "bench", scopes=("admin",), source="nexus/bench")
        finally:
            await log.close()
        self.headers = {"x-service-key": issued.secret}

    def _command(self) -> list[str]:
        profile_dir = os.environ.get("NEXUS_BENCH_PROFILE")
        if not profile_dir:
            return [sys.executable, "-m", "nexus.services.workflow"]
        Path(profile_dir).mkdir(parents=True, exist_ok=True)
        out = Path(profile_dir).resolve() / f"{self.log_path.parent.name}-{self._starts}.prof"
        return [sys.executable, "-m", "cProfile", "-o", str(out), "-m", "nexus.services.workflow"]

    async def start(self) -> None:
        if not self.headers:
            await self._issue_key()
        self._starts += 1
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                *self._command(), env=self.env, stdout=err, stderr=err, cwd=ROOT
            )
        async with asyncio.timeout(30):
            while True:
                text = self.log_path.read_bytes()[offset:].decode(errors="replace")
                found = re.search(r'listening on http://[^"]*?:(\d+)"', text)
                if found:
                    self.url = f"http://127.0.0.1:{found.group(1)}"
                    return
                if self.proc.returncode is not None:
                    raise RuntimeError(f"the workflow service exited at start:\n{text[-2000:]}")
                await asyncio.sleep(0.02)

    async def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                async with asyncio.timeout(10):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


def three_steps(workflow_id: str, endpoints: tuple[str, str, str]) -> dict[str, Any]:
    return {
        "id": workflow_id,
        "steps": [
            {"id": f"s{i}", "service": "stub", "endpoint": endpoint, "input_map": {"n": "$.input.n"}}
            for i, endpoint in enumerate(endpoints)
        ],
    }


async def stats(http: aiohttp.ClientSession, service: ServiceProcess) -> dict[str, Any]:
    async with http.get(f"{service.url}/queue/stats", headers=service.headers) as r:
        if r.status != 200:
            raise RuntimeError(f"GET /queue/stats answered {r.status}: {await r.text()}")
        return await r.json()


async def register(http: aiohttp.ClientSession, service: ServiceProcess, workflow: dict[str, Any]) -> None:
    async with http.post(f"{service.url}/workflows", json=workflow, headers=service.headers) as r:
        if r.status != 201:
            raise RuntimeError(f"POST /workflows answered {r.status}: {await r.text()}")


async def wait_completed(
    http: aiohttp.ClientSession,
    service: ServiceProcess,
    count: int,
    timeout: float,  # noqa: ASYNC109
) -> None:
    async with asyncio.timeout(timeout):
        while (await stats(http, service))["statuses"].get("COMPLETED", 0) < count:  # noqa: ASYNC110 - over HTTP
            await asyncio.sleep(0.05)


async def start_many(
    http: aiohttp.ClientSession, service: ServiceProcess, workflow_id: str, count: int, parallel: int = 64
) -> list[str]:
    ids: list[str] = [""] * count
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(count):
        queue.put_nowait(n)

    async def worker() -> None:
        while not queue.empty():
            n = queue.get_nowait()
            body = {"workflow_id": workflow_id, "input": {"n": n}}
            async with http.post(f"{service.url}/executions", json=body, headers=service.headers) as r:
                if r.status != 202:
                    raise RuntimeError(f"POST /executions answered {r.status}: {await r.text()}")
                ids[n] = (await r.json())["id"]

    await asyncio.gather(*(worker() for _ in range(parallel)))
    return ids


async def run(ctx: Context) -> list[Row]:
    rows: list[Row] = []
    stub = Stub()
    await stub.start()
    async with EmbeddedNats(ctx.workdir / "nats", port=0) as nats:
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=128))
        try:
            # The service process connects as the workflow identity (NATS refuses anonymous clients).
            url = nats.client_url("workflow")
            rows += await _throughput(ctx, url, stub, http)
            rows += await _latency(ctx, url, stub, http)
            rows += await _recovery(ctx, url, stub, http)
        finally:
            await http.close()
            await stub.stop()
    return rows


PEER_CONCURRENCY = 256
"""Executions each peer keeps in flight (Restate's figures in the issue were taken at 256)."""


async def _nexus_rate(ctx: Context, nats_url: str, stub: Stub, http: aiohttp.ClientSession, repeat: int) -> float:
    count = ctx.scale(3000, 300)
    workdir = ctx.workdir / f"throughput-{repeat}"
    workdir.mkdir(parents=True, exist_ok=True)
    service = ServiceProcess(workdir, nats_url, stub.url)
    await service.start()
    try:
        await register(http, service, three_steps("bench3", ("/step",) * 3))
        began = time.perf_counter()
        await start_many(http, service, "bench3", count)
        await wait_completed(http, service, count, timeout=300)
        return count / (time.perf_counter() - began)
    finally:
        await service.stop()


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


async def _throughput(ctx: Context, nats_url: str, stub: Stub, http: aiohttp.ClientSession) -> list[Row]:
    """Nexus, DBOS and Restate on the same workload, one run of each per repeat, taken in turn.

    Taking them in turn (rather than all of Nexus's runs, then all of a peer's) spreads any
    change in the machine's load over all three, so the ratios compare like with like.
    """
    count = ctx.scale(3000, 300)
    # DBOS runs at tens of executions/s here: 500 keep each of its runs under a minute.
    peer_counts = {"DBOS": ctx.scale(500, 50), "Restate": ctx.scale(3000, 300)}
    ours: list[float] = []
    peers: dict[str, list[float]] = {"DBOS": [], "Restate": []}
    why_not: dict[str, str] = {}

    def stub_requests() -> int:
        return sum(stub.requests.values())

    for repeat in range(ctx.repeats):
        ours.append(await _nexus_rate(ctx, nats_url, stub, http, repeat))
        for name in ("DBOS", "Restate"):
            if name in why_not:
                continue
            measure = drivers.dbos_rate if name == "DBOS" else drivers.restate_rate
            workdir = ctx.workdir / f"{name.lower()}-{repeat}"
            try:
                peers[name].append(await measure(workdir, stub.url, stub_requests, peer_counts[name], PEER_CONCURRENCY))
            except PeerUnavailable as exc:
                why_not[name] = str(exc)
                print(f"   {name} not measured: {exc}", file=sys.stderr, flush=True)
    rate = _median(ours)
    dbos, restate = _median(peers["DBOS"]), _median(peers["Restate"])
    peer_text = "; ".join(
        f"{name} {value:,.0f} (x{rate / value:.1f})"
        for name, value in (("DBOS", dbos), ("Restate", restate))
        if not math.isnan(value)
    )
    rows = [
        target_row(
            SUITE, f"executions/s, 3 HTTP steps, n={count}", rate, "executions/s", at_least=1000, peer=peer_text
        ),
        target_row(SUITE, "step completions/s (same run)", rate * 3, "steps/s", at_least=3000),
    ]
    described = {
        "DBOS": (
            f"peer: DBOS Transact {pinned('dbos')}, executions/s, 3 HTTP steps, n={peer_counts['DBOS']}",
            10,
            f"{PEER_CONCURRENCY} in flight; SQLite system database with DBOS's defaults (rollback journal, "
            "synchronous=FULL), each step's output checkpointed; a library in the caller's process, "
            "so no HTTP ingress in its figure",
        ),
        "Restate": (
            f"peer: Restate server {RESTATE_SERVER_VERSION} + Python SDK {pinned('restate-sdk')} on Hypercorn, "
            f"executions/s, 3 HTTP steps, n={peer_counts['Restate']}",
            2,
            f"{PEER_CONCURRENCY} invocations in flight through its ingress; a service handler of three ctx.run "
            "steps, each journalled in the server's log with its default durability (fsync'd)",
        ),
    }
    for name, (label, at_least, note) in described.items():
        value = _median(peers[name])
        if name in why_not:
            reason = f"not measured: {why_not[name]}"
            rows.append(Row(SUITE, label, math.nan, "executions/s", note=reason))
            rows.append(Row(SUITE, f"executions/s, ratio to {name}", math.nan, "x", f">= {at_least}", None, "", reason))
            continue
        rows.append(Row(SUITE, label, value, "executions/s", note=note))
        rows.append(target_row(SUITE, f"executions/s, ratio to {name}", rate / value, "x", at_least=at_least))
    return rows


async def _latency(ctx: Context, nats_url: str, stub: Stub, http: aiohttp.ClientSession) -> list[Row]:
    seconds = ctx.scale(10, 3)
    workdir = ctx.workdir / "latency"
    workdir.mkdir(parents=True, exist_ok=True)
    service = ServiceProcess(workdir, nats_url, stub.url)
    await service.start()
    try:
        await register(http, service, three_steps("paced", ("/step",) * 3))
        began = time.perf_counter()
        pending: list[asyncio.Task[Any]] = []
        for n in range(100 * seconds):
            # Paced at 100 executions/s.
            delay = began + n / 100 - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            pending.append(
                asyncio.create_task(
                    http.post(
                        f"{service.url}/executions",
                        json={"workflow_id": "paced", "input": {}},
                        headers=service.headers,
                    )
                )
            )
        for response in await asyncio.gather(*pending):
            if response.status != 202:
                raise RuntimeError(f"POST /executions answered {response.status}: {await response.text()}")
            response.release()
        await wait_completed(http, service, 100 * seconds, timeout=120)
        dispatch = (await stats(http, service))["stats"]["dispatch_ms"]
    finally:
        await service.stop()
    return [
        target_row(SUITE, "dispatch latency p99 at 100 executions/s", dispatch["p99"], "ms", at_most=10),
        target_row(SUITE, "dispatch latency p50 at 100 executions/s", dispatch["p50"], "ms"),
    ]


async def _recovery(ctx: Context, nats_url: str, stub: Stub, http: aiohttp.ClientSession) -> list[Row]:
    count = ctx.scale(1000, 200)
    workdir = ctx.workdir / "recovery"
    workdir.mkdir(parents=True, exist_ok=True)
    service = ServiceProcess(workdir, nats_url, stub.url)
    await service.start()
    try:
        await register(http, service, three_steps("recover", ("/step", "/slow/3000", "/step")))
        ids = await start_many(http, service, "recover", count)
        keys = [f"{execution_id}:s1" for execution_id in ids]
        async with asyncio.timeout(120):
            while sum(1 for k in keys if stub.requests[k] >= 1) < count:  # noqa: ASYNC110 - a counter, no event
                await asyncio.sleep(0.02)
        # Every execution has reached its slow step: kill -9 the service now.
        await service.kill()
        # On a loaded machine, starting 1,000 executions can take longer than the slow step, so the
        # first ones' step may have been answered before the kill: those need not re-send it.
        in_flight = [k for k in keys if not stub.answered[k]]
        restarted = time.perf_counter()
        await service.start()
        async with asyncio.timeout(120):
            while sum(1 for k in in_flight if stub.requests[k] >= 2) < len(in_flight):  # noqa: ASYNC110 - a counter
                await asyncio.sleep(0.01)
        resumed = time.perf_counter() - restarted
        await wait_completed(http, service, count, timeout=120)
        completed = time.perf_counter() - restarted
    finally:
        await service.stop()
    return [
        target_row(
            SUITE,
            f"recovery after kill -9: {count} in flight all resumed",
            resumed,
            "s",
            at_most=10,
            note=""
            if len(in_flight) == count
            else f"{len(in_flight)} of {count} were still on their slow step at the kill",
        ),
        target_row(SUITE, f"recovery after kill -9: {count} all completed (step 2 takes 3 s)", completed, "s"),
    ]
