"""The Restate peer's service: the benchmark's 3-step handler, served by Hypercorn in the peers' venv.

Run as ``<peer venv>/bin/python bench/peers/restate_app.py --stub URL --port PORT``. The service
``NexusBench`` has one handler, ``three_steps``: three ``ctx.run`` steps, each a POST to the stub
with the same body and ``Idempotency-Key`` as a Nexus step. Restate journals each step's result
in its log (fdatasync'd: the server's default durability) before the handler goes on, and
replays the journal if the handler is retried. The bench registers this deployment with the
server's admin API and invokes the handler through the ingress.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import aiohttp
import hypercorn.asyncio
import hypercorn.config
import restate

service = restate.Service("NexusBench")
_stub = ""
_http: aiohttp.ClientSession | None = None


async def call_stub(key: str, n: int) -> dict[str, Any]:
    """One HTTP step, run inside ``ctx.run`` so its result is journalled."""
    global _http
    if _http is None:
        _http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=2000))
    async with _http.post(f"{_stub}/step", json={"n": n}, headers={"Idempotency-Key": key}) as response:
        response.raise_for_status()
        result: dict[str, Any] = await response.json()
        return result


@service.handler()
async def three_steps(ctx: restate.Context, n: int) -> int:
    invocation = ctx.request().id
    for i in range(3):
        await ctx.run_typed(f"s{i}", call_stub, restate.RunOptions(), key=f"{invocation}:s{i}", n=n)
    return n


def main() -> int:
    global _stub
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stub", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    _stub = args.stub
    config = hypercorn.config.Config()
    config.bind = [f"127.0.0.1:{args.port}"]
    # As Restate's own Hypercorn configuration advises: no limit on streams or requests per
    # connection, since the server multiplexes every invocation over a few HTTP/2 connections.
    config.h2_max_concurrent_streams = 2147483647
    config.keep_alive_max_requests = 2147483647
    config.keep_alive_timeout = 2147483647
    config.accesslog = None
    asyncio.run(hypercorn.asyncio.serve(restate.app(services=[service]), config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
