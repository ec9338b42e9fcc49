"""Run one measurement of each durable-execution peer, from the bench's side (the Nexus venv).

Each peer runs the workflow suite's workload: ``count`` executions of a workflow of three steps,
each step a POST to the suite's local stub (the same stub, body and ``Idempotency-Key`` form as
a Nexus step), each step's result recorded durably before the next one starts, at most
``concurrency`` executions in flight. A run is checked before its rate is believed: every
execution returned its own input, and the stub counted at least three requests per execution
(DBOS's run also counts its checkpointed steps in its database).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import aiohttp

from bench.peers import HERE, PeerUnavailable, free_port, peer_python, restate_server


def _tail(path: Path, chars: int = 300) -> str:
    try:
        return " ".join(path.read_text(errors="replace")[-chars:].split())
    except OSError:
        return ""


def _fresh(workdir: Path) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir


def _check_stub(stub_requests: Callable[[], int], before: int, count: int) -> None:
    sent = stub_requests() - before
    if sent < 3 * count:
        raise PeerUnavailable(f"the stub saw {sent} step requests for {count} executions (3 each expected)")


async def dbos_rate(
    workdir: Path, stub_url: str, stub_requests: Callable[[], int], count: int, concurrency: int
) -> float:
    """Executions/s of DBOS Transact on a fresh SQLite system database in ``workdir``."""
    python = await peer_python()
    log = _fresh(workdir) / "dbos.log"
    before = stub_requests()
    with log.open("ab") as err:
        proc = await asyncio.create_subprocess_exec(
            str(python),
            str(HERE / "dbos_app.py"),
            "--stub",
            stub_url,
            "--db",
            str(workdir / "dbos.sqlite"),
            "--count",
            str(count),
            "--concurrency",
            str(concurrency),
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
        )
    try:
        async with asyncio.timeout(900):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise PeerUnavailable(f"DBOS did not finish {count} executions in 900 s") from None
    if proc.returncode != 0:
        raise PeerUnavailable(f"the DBOS program exited {proc.returncode}: {_tail(log)}")
    result = json.loads(out.decode().strip().splitlines()[-1])
    if result["steps"] != 3 * count:
        raise PeerUnavailable(f"DBOS recorded {result['steps']} steps for {count} executions")
    _check_stub(stub_requests, before, count)
    return count / float(result["seconds"])


async def _stop(proc: asyncio.subprocess.Process, *, graceful: bool = True) -> None:
    if proc.returncode is None and not graceful:
        proc.kill()
        await proc.wait()
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(15):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


@asynccontextmanager
async def _restate(workdir: Path, stub_url: str, http: aiohttp.ClientSession) -> AsyncIterator[str]:
    """A fresh Restate server and the bench service on Hypercorn, registered; yields the ingress URL."""
    binary = await restate_server()
    python = await peer_python()
    _fresh(workdir)
    ingress, admin, node, service = (free_port() for _ in range(4))
    env = {
        **os.environ,
        "RESTATE_INGRESS__BIND_ADDRESS": f"127.0.0.1:{ingress}",
        "RESTATE_ADMIN__BIND_ADDRESS": f"127.0.0.1:{admin}",
        "RESTATE_BIND_ADDRESS": f"127.0.0.1:{node}",
        "RESTATE_LISTEN_MODE": "tcp",
        "RESTATE_DISABLE_TELEMETRY": "true",
        "RESTATE_LOG_DISABLE_ANSI_CODES": "true",
    }
    server_log, app_log = workdir / "restate-server.log", workdir / "restate-app.log"
    procs: list[asyncio.subprocess.Process] = []
    try:
        with server_log.open("ab") as err:
            procs.append(
                await asyncio.create_subprocess_exec(
                    str(binary),
                    "--base-dir",
                    str(workdir / "restate-data"),
                    "--node-name",
                    "bench",
                    "--no-logo",
                    env=env,
                    stdout=err,
                    stderr=err,
                )
            )
        with app_log.open("ab") as err:
            procs.append(
                await asyncio.create_subprocess_exec(
                    str(python),
                    str(HERE / "restate_app.py"),
                    "--stub",
                    stub_url,
                    "--port",
                    str(service),
                    stdout=err,
                    stderr=err,
                )
            )
        admin_url, ingress_url = f"http://127.0.0.1:{admin}", f"http://127.0.0.1:{ingress}"

        async def until(what: str, attempt: Callable[[], Awaitable[bool]]) -> None:
            """Retry ``attempt`` (a coroutine that answers True when done) for up to 60 s."""
            deadline = time.monotonic() + 60
            last = ""
            while time.monotonic() < deadline:
                for proc, log in zip(procs, (server_log, app_log), strict=True):
                    if proc.returncode is not None:
                        raise PeerUnavailable(f"{log.stem} exited {proc.returncode} before {what}: {_tail(log)}")
                try:
                    if await attempt():
                        return
                except aiohttp.ClientError as exc:
                    last = str(exc)
                await asyncio.sleep(0.1)
            raise PeerUnavailable(f"Restate: no {what} within 60 s ({last or 'no answer'})")

        async def healthy() -> bool:
            async with http.get(f"{admin_url}/health") as r:
                return r.status == 200

        async def registered() -> bool:
            body = {"uri": f"http://127.0.0.1:{service}", "force": True}
            async with http.post(f"{admin_url}/deployments", json=body) as r:
                return r.status in (200, 201)

        async def invocable() -> bool:
            async with http.post(f"{ingress_url}/NexusBench/three_steps", json=-1) as r:
                return r.status == 200 and await r.json() == -1

        await until("admin API", healthy)
        await until("deployment registered", registered)
        # The ingress learns of the new service a moment after registration: one invocation shows it has.
        await until("invocation through the ingress", invocable)
        yield ingress_url
    finally:
        # The server first, then the service. The service gets SIGKILL: under restate-sdk 1.2.0 a
        # SIGTERM never reaches Python's handler in that process (the SDK's native module takes
        # the signal), so it would only wait out the stop timeout; it holds no state of its own.
        for proc, graceful in zip(procs, (True, False), strict=False):
            with suppress(ProcessLookupError):
                await _stop(proc, graceful=graceful)


async def restate_rate(
    workdir: Path, stub_url: str, stub_requests: Callable[[], int], count: int, concurrency: int
) -> float:
    """Executions/s of Restate: ``count`` invocations through its ingress, ``concurrency`` at a time."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:
        async with _restate(workdir, stub_url, http) as ingress:
            before = stub_requests()
            numbers = iter(range(count))

            async def invoker() -> None:
                for n in numbers:
                    async with http.post(f"{ingress}/NexusBench/three_steps", json=n) as r:
                        if r.status != 200:
                            raise PeerUnavailable(f"Restate's ingress answered {r.status}: {(await r.text())[:200]}")
                        if await r.json() != n:
                            raise PeerUnavailable(f"Restate's invocation {n} returned a wrong result")

            began = time.perf_counter()
            try:
                async with asyncio.timeout(900):
                    await asyncio.gather(*(invoker() for _ in range(concurrency)))
            except TimeoutError:
                raise PeerUnavailable(f"Restate did not finish {count} invocations in 900 s") from None
            elapsed = time.perf_counter() - began
            _check_stub(stub_requests, before, count)
            return count / elapsed
