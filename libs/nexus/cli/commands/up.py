"""``nexus up``: start NATS, the relay and the four services; supervise them until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time

from nexus.bus.embedded import EmbeddedNats, EmbeddedNatsError, load_credentials
from nexus.config import PlatformSettings
from nexus.fs import make_private_dir
from nexus.obs import setup_logging
from nexus.runtime import SERVICES, ServiceSettings, port_variable
from nexus.runtime._supervisor import ChildSpec, PortInUseError, Supervisor, check_ports

logger = logging.getLogger("nexus.up")

STOP_BUDGET = 5.0
"""Seconds from Ctrl-C until every process is gone."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "up",
        help="start NATS and the four services, supervise them until Ctrl-C",
        description=(
            "Start the embedded nats-server (unless NEXUS_NATS_URL is set), the outbox relay and the "
            "kam, workflow, granulator and studio services; print their URLs once they are ready; restart "
            "any that dies, the nats-server included; stop everything on Ctrl-C or SIGTERM."
        ),
    )
    parser.add_argument(
        "--ready-timeout", type=float, default=60.0, help="seconds to wait for every service to be ready (60)"
    )
    parser.set_defaults(func=run_up)


def run_up(args: argparse.Namespace) -> int:
    platform = PlatformSettings.from_env()
    services = {name: ServiceSettings.from_env(name) for name in (*SERVICES, "relay")}
    setup_logging("nexus-up", platform.log_level)
    wanted = {name: (s.port, port_variable(name)) for name, s in services.items()}
    if not platform.nats_url:
        wanted = {"the embedded nats-server": (platform.nats_port, "NEXUS_NATS_PORT"), **wanted}
    try:
        check_ports(platform.host, wanted)
    except PortInUseError as exc:
        print(f"nexus up: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_up(platform, services, args.ready_timeout))


async def _up(platform: PlatformSettings, services: dict[str, ServiceSettings], ready_timeout: float) -> int:
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop_requested.set)
    make_private_dir(platform.data_dir)
    nats: EmbeddedNats | None = None
    if platform.nats_url:
        nats_url = platform.nats_url
    else:
        nats = EmbeddedNats(
            platform.data_dir / "nats", port=platform.nats_port, sync_always=platform.nats_sync == "always"
        )
        try:
            nats_url = await nats.start()
        except EmbeddedNatsError as exc:
            print(f"nexus up: {exc}", file=sys.stderr)
            return 2

    env = dict(os.environ)
    env.update(
        NEXUS_NATS_URL=nats_url,
        NEXUS_DATA_DIR=str(platform.data_dir.resolve()),
        NEXUS_EVENT_LOG_URL=platform.event_log_url,
        NEXUS_RAW_URL=platform.raw_url,
        PYTHONUNBUFFERED="1",
    )
    passwords = load_credentials(nats.store_dir)["users"] if nats is not None else {}

    def identity(name: str) -> dict[str, str]:
        # Each process connects to the embedded server as itself, its password passed in the
        # environment (never on a command line, which every local user can read).
        if nats is None:
            return env
        return {**env, "NEXUS_NATS_USER": name, "NEXUS_NATS_PASSWORD": passwords[name]}

    children = [
        ChildSpec(
            name=name,
            argv=[sys.executable, "-m", "nexus.relay" if name == "relay" else f"nexus.services.{name}"],
            env=identity(name),
            ready_url=f"http://{_connect_host(s.host)}:{s.port}/readyz",
            url=f"http://{_connect_host(s.host)}:{s.port}",
        )
        for name, s in services.items()
    ]
    if nats is not None:
        # Supervised like the others: after a crash it is started again on the same port and
        # store (EmbeddedNats keeps the port it bound first), and the services reconnect.
        server = nats

        async def relaunch() -> asyncio.subprocess.Process:
            await server.start()
            assert server.process is not None
            return server.process

        children.append(
            ChildSpec(name="nats-server", argv=(), env={}, launch=relaunch, stop_last=True, process=server.process)
        )
    supervisor = Supervisor(children)
    supervisor.start()
    status = 0
    try:
        waiter = asyncio.create_task(supervisor.wait_ready(ready_timeout))
        stopper = asyncio.create_task(stop_requested.wait())
        await asyncio.wait([waiter, stopper], return_when=asyncio.FIRST_COMPLETED)
        if not waiter.done():
            waiter.cancel()
        elif supervisor.failure is None:
            late = waiter.result()
            if late:
                print(f"nexus up: not ready after {ready_timeout:g} s: {', '.join(late)}; stopping", file=sys.stderr)
                status = 1
            else:
                _print_urls(children, nats_url, platform)
                supervisor_stopped = asyncio.create_task(supervisor.stopping.wait())
                await asyncio.wait([stopper, supervisor_stopped], return_when=asyncio.FIRST_COMPLETED)
                supervisor_stopped.cancel()
        stopper.cancel()
        if supervisor.failure:
            print(f"nexus up: {supervisor.failure}; stopping", file=sys.stderr)
            status = 1
    finally:
        started = time.monotonic()
        print("Stopping Nexus…", flush=True)
        # The services first, then the nats-server they use, with what is left of the budget
        # to flush JetStream.
        await supervisor.stop(grace=STOP_BUDGET - 1.5, budget=STOP_BUDGET - 0.3)
        if nats is not None:
            await nats.stop(timeout=max(0.2, STOP_BUDGET - 0.3 - (time.monotonic() - started)))
        print("Nexus stopped.", flush=True)
    return status


def _connect_host(host: str) -> str:
    # A server bound to every address is reached locally through the loopback address.
    return {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(host, host)


def _print_urls(children: list[ChildSpec], nats_url: str, platform: PlatformSettings) -> None:
    lines = ["Nexus is up:"]
    lines += [f"  {child.name:<11} {child.url}" for child in children if child.url]
    lines += [
        f"  {'NATS':<11} {nats_url}",
        f"  {'data dir':<11} {platform.data_dir.resolve()}",
        f"  {'event log':<11} {platform.event_log_url}",
        "Press Ctrl-C to stop.",
    ]
    print("\n".join(lines), flush=True)
