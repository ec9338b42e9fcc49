"""``nexus up``: start NATS, the relay and the four services; supervise them until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable

from nexus.bus.embedded import CLUSTER_SIZES, EmbeddedNats, EmbeddedNatsCluster, EmbeddedNatsError, load_credentials
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
            "any that dies, the nats-server included; stop everything on Ctrl-C or SIGTERM. With "
            "--nats-cluster 3 (or NEXUS_NATS_CLUSTER=3) it starts three nats-servers as one JetStream cluster "
            "on loopback instead (client ports from NEXUS_NATS_PORT, route ports from NEXUS_NATS_CLUSTER_PORT, "
            "each the first of three), whose streams keep three copies; the services connect to all three."
        ),
    )
    parser.add_argument(
        "--nats-cluster",
        type=int,
        choices=CLUSTER_SIZES,
        default=None,
        metavar="N",
        help="embedded nats-servers to start: 1, or 3 as a JetStream cluster (default NEXUS_NATS_CLUSTER, else 1)",
    )
    parser.add_argument(
        "--ready-timeout", type=float, default=60.0, help="seconds to wait for every service to be ready (60)"
    )
    parser.set_defaults(func=run_up)


def run_up(args: argparse.Namespace) -> int:
    platform = PlatformSettings.from_env()
    services = {name: ServiceSettings.from_env(name) for name in (*SERVICES, "relay")}
    setup_logging("nexus-up", platform.log_level)
    size = args.nats_cluster or platform.nats_cluster
    if size > 1 and platform.nats_url:
        print(
            f"nexus up: a NATS cluster of {size} was asked for (--nats-cluster or NEXUS_NATS_CLUSTER) but "
            "NEXUS_NATS_URL names servers to use instead: unset one of them",
            file=sys.stderr,
        )
        return 2
    wanted = {name: (s.port, port_variable(name)) for name, s in services.items()}
    if not platform.nats_url:
        wanted = {**_nats_ports(platform, size), **wanted}
    try:
        check_ports(platform.host, wanted)
    except PortInUseError as exc:
        print(f"nexus up: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_up(platform, services, args.ready_timeout, size))


def _nats_ports(platform: PlatformSettings, size: int) -> dict[str, tuple[int, str]]:
    """The ports the embedded nats-servers will bind (0: chosen at start), checked before anything starts."""
    if size == 1:
        return {"the embedded nats-server": (platform.nats_port, "NEXUS_NATS_PORT")}
    wanted = {}
    for n in range(1, size + 1):
        client = platform.nats_port + n - 1 if platform.nats_port else 0
        route = platform.nats_cluster_port + n - 1 if platform.nats_cluster_port else 0
        wanted[f"nats-server {n} of the cluster"] = (client, "NEXUS_NATS_PORT")
        wanted[f"the routes of nats-server {n}"] = (route, "NEXUS_NATS_CLUSTER_PORT")
    return wanted


async def _up(
    platform: PlatformSettings, services: dict[str, ServiceSettings], ready_timeout: float, size: int = 1
) -> int:
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop_requested.set)
    make_private_dir(platform.data_dir)
    nats: EmbeddedNats | EmbeddedNatsCluster | None = None
    nodes: list[EmbeddedNats] = []
    if platform.nats_url:
        nats_url = platform.nats_url
    else:
        store = platform.data_dir / "nats"
        sync_always = platform.nats_sync == "always"
        if size == 1:
            nats = EmbeddedNats(store, port=platform.nats_port, sync_always=sync_always)
        else:
            nats = EmbeddedNatsCluster(
                store,
                size=size,
                port=platform.nats_port,
                route_port=platform.nats_cluster_port,
                sync_always=sync_always,
            )
        try:
            nats_url = await nats.start()
        except EmbeddedNatsError as exc:
            print(f"nexus up: {exc}", file=sys.stderr)
            return 2
        nodes = nats.nodes if isinstance(nats, EmbeddedNatsCluster) else [nats]

    env = dict(os.environ)
    env.update(
        NEXUS_NATS_URL=nats_url,
        NEXUS_DATA_DIR=str(platform.data_dir.resolve()),
        NEXUS_EVENT_LOG_URL=platform.event_log_url,
        NEXUS_RAW_URL=platform.raw_url,
        PYTHONUNBUFFERED="1",
    )
    # The processes are given the servers' URLs; the cluster setting is this command's own.
    env.pop("NEXUS_NATS_CLUSTER", None)
    if isinstance(nats, EmbeddedNatsCluster):
        # Every stream and bucket with a copy on each node, so that losing one loses nothing.
        env["NEXUS_NATS_REPLICAS"] = str(nats.replicas)
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
    for n, node in enumerate(nodes, start=1):
        # Supervised like the others: after a crash a server is started again on the same ports
        # and store (EmbeddedNats keeps the port it bound first), and the services reconnect (to
        # another node of a cluster meanwhile; the restarted node catches up from the others).
        name = "nats-server" if len(nodes) == 1 else f"nats-server-{n}"
        children.append(
            ChildSpec(name=name, argv=(), env={}, launch=_relauncher(node), stop_last=True, process=node.process)
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


def _relauncher(server: EmbeddedNats) -> Callable[[], Awaitable[asyncio.subprocess.Process]]:
    async def relaunch() -> asyncio.subprocess.Process:
        await server.start()
        assert server.process is not None
        return server.process

    return relaunch


def _connect_host(host: str) -> str:
    # A server bound to every address is reached locally through the loopback address.
    return {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(host, host)


def _print_urls(children: list[ChildSpec], nats_url: str, platform: PlatformSettings) -> None:
    lines = ["Nexus is up:"]
    lines += [f"  {child.name:<11} {child.url}" for child in children if child.url]
    kam = next((child.url for child in children if child.name == "kam" and child.url), None)
    if kam:
        # The web console is KAM's page, on the same origin as its API.
        lines.append(f"  {'console':<11} {kam}/")
    lines += [
        f"  {'NATS':<11} {nats_url}",
        f"  {'data dir':<11} {platform.data_dir.resolve()}",
        f"  {'event log':<11} {platform.event_log_url}",
        "Press Ctrl-C to stop.",
    ]
    print("\n".join(lines), flush=True)
