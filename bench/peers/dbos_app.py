"""The DBOS Transact peer: the benchmark's 3-step workflow, run in the peers' own venv.

Run as ``<peer venv>/bin/python bench/peers/dbos_app.py --stub URL --db FILE --count N
--concurrency C``: it launches DBOS on a SQLite system database (DBOS's default durability:
SQLite's rollback journal with ``synchronous=FULL``, every step's output checkpointed before the
next step runs), then runs ``count`` executions with at most ``concurrency`` in flight, each a
workflow of three steps that POST to the stub with the same body and ``Idempotency-Key`` as a
Nexus step. It prints one JSON line: executions, seconds (from the first start to the last
result) and how many steps the database recorded, so the bench can check the work was done.

DBOS runs in this process as a library: no HTTP ingress sits in front of it, which the Nexus
figure (every execution started through ``POST /executions``) pays and this one does not.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import time
from typing import Any

import aiohttp
from dbos import DBOS, DBOSConfig

_http: aiohttp.ClientSession | None = None


@DBOS.step()
async def call_stub(url: str, key: str, n: int) -> dict[str, Any]:
    """One HTTP step: its result is checkpointed in the system database before the workflow goes on."""
    assert _http is not None
    async with _http.post(url, json={"n": n}, headers={"Idempotency-Key": key}) as response:
        response.raise_for_status()
        result: dict[str, Any] = await response.json()
        return result


@DBOS.workflow()
async def three_steps(stub: str, n: int) -> int:
    workflow_id = DBOS.workflow_id
    for i in range(3):
        await call_stub(f"{stub}/step", f"{workflow_id}:s{i}", n)
    return n


async def drive(stub: str, count: int, concurrency: int) -> float:
    global _http
    _http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=max(concurrency, 100)))
    gate = asyncio.Semaphore(concurrency)

    async def one(n: int) -> None:
        async with gate:
            handle = await DBOS.start_workflow_async(three_steps, stub, n)
            if await handle.get_result() != n:
                raise RuntimeError(f"execution {n} returned a wrong result")

    try:
        began = time.perf_counter()
        await asyncio.gather(*(one(n) for n in range(count)))
        return time.perf_counter() - began
    finally:
        await _http.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stub", required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    args = parser.parse_args()
    config: DBOSConfig = {"name": "nexus-bench-peer", "system_database_url": f"sqlite:///{args.db}"}
    DBOS(config=config)
    DBOS.launch()
    try:
        seconds = asyncio.run(drive(args.stub, args.count, args.concurrency))
    finally:
        DBOS.destroy()
    with sqlite3.connect(args.db) as db:
        steps = db.execute("SELECT count(*) FROM operation_outputs").fetchone()[0]
    print(json.dumps({"executions": args.count, "seconds": seconds, "steps": steps}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
