"""A process supervisor: start child processes, wait until ready, restart the ones that die."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp

from nexus.obs import SERVICE_RESTARTS
from nexus.runtime._run import EXIT_PORT_IN_USE

logger = logging.getLogger("nexus.supervisor")

DEFAULT_BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
"""Seconds before the 1st, 2nd, … restart of a child that keeps dying."""


class PortInUseError(RuntimeError):
    """A port the platform needs is taken; the message names it and the variable that moves it."""


def check_port_free(host: str, port: int) -> bool:
    """True when nothing listens on ``host:port`` (bind as the servers will, SO_REUSEADDR on)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def check_ports(host: str, wanted: Mapping[str, tuple[int, str]]) -> None:
    """Check every ``{what: (port, variable)}`` before anything starts.

    Raises:
        PortInUseError: a port is taken, or two services were given the same one.
    """
    seen: dict[int, str] = {}
    for what, (port, variable) in wanted.items():
        if port == 0:
            continue
        if port in seen:
            raise PortInUseError(
                f"port {port} is configured for both {seen[port]} and {what}: set {variable} to another port"
            )
        seen[port] = what
        if not check_port_free(host, port):
            raise PortInUseError(
                f"port {port} on {host} is already in use, so {what} cannot start: "
                f"stop the process that holds it or set {variable} to a free port"
            )


@dataclass
class ChildSpec:
    """One supervised process.

    Attributes:
        name: Name in logs and in the ``nexus_service_restarts_total{service=…}`` metric.
        argv: Command line.
        env: Its whole environment.
        ready_url: URL that answers 200 once the child is ready (None: ready once started).
        url: What to show the user (the service's base URL).
        launch: Starts the process instead of ``argv``/``env`` and returns it once it is
            ready (the embedded nats-server, which picks its own config and waits to accept
            connections). A ``process`` already running when the supervisor starts is adopted.
        stop_last: Stopped only once every other child has stopped (the server they all use).
    """

    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    ready_url: str | None = None
    url: str | None = None
    launch: Callable[[], Awaitable[asyncio.subprocess.Process]] | None = field(default=None, repr=False)
    stop_last: bool = False
    restarts: int = 0
    process: asyncio.subprocess.Process | None = field(default=None, repr=False)


class Supervisor:
    """Runs child processes, each in its own process group, and restarts those that die.

    A child that exits while the supervisor is running is started again after a back-off
    (reset once it has stayed up for ``stable_after`` seconds); each restart is logged and
    counted in ``nexus_service_restarts_total``, and the child learns its count through
    ``NEXUS_RESTARTS`` (its own /metrics shows it). A child that exits with EXIT_PORT_IN_USE
    is not restarted: the supervisor reports it and stops everything (``failure`` says why).

    Args:
        children: What to run.
        backoff: Delays before successive restarts.
        stable_after: Uptime in seconds after which the back-off starts over.
    """

    def __init__(
        self,
        children: Sequence[ChildSpec],
        *,
        backoff: Sequence[float] = DEFAULT_BACKOFF,
        stable_after: float = 30.0,
    ) -> None:
        self.children = list(children)
        self.backoff = tuple(backoff)
        self.stable_after = stable_after
        self.failure: str | None = None
        """Why the supervisor gave up, when a child could not run at all."""
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def stopping(self) -> asyncio.Event:
        """Set when ``stop`` was requested (or a child failed for good)."""
        return self._stopping

    def start(self) -> None:
        """Start every child and keep it running until ``stop``."""
        for child in self.children:
            self._tasks.append(asyncio.create_task(self._keep(child), name=f"supervise:{child.name}"))

    async def _spawn(self, child: ChildSpec) -> asyncio.subprocess.Process:
        env = dict(child.env)
        env["NEXUS_RESTARTS"] = str(child.restarts)
        env["NEXUS_SUPERVISOR_PID"] = str(os.getpid())
        # Own session and process group: a Ctrl-C reaches the supervisor only, which stops the
        # children in order; and killing the group as a last resort takes grandchildren too.
        return await asyncio.create_subprocess_exec(
            *child.argv, env=env, stdin=asyncio.subprocess.DEVNULL, start_new_session=True
        )

    async def _keep(self, child: ChildSpec) -> None:
        attempt = 0
        loop = asyncio.get_running_loop()
        adopt = child.process is not None and child.process.returncode is None
        while not self._stopping.is_set():
            started = loop.time()
            status: int | str
            if not adopt:
                try:
                    child.process = await (child.launch() if child.launch else self._spawn(child))
                except Exception as exc:
                    # It could not start (its port still held, say): try again after the back-off.
                    child.process = None
                    status = f"not started: {exc}"
                else:
                    status = await child.process.wait()
            else:
                assert child.process is not None
                status = await child.process.wait()
            adopt = False
            if self._stopping.is_set():
                return
            if status == EXIT_PORT_IN_USE:
                self.failure = f"{child.name} could not bind its port (see its log above)"
                logger.error("%s exited: its port is in use; stopping Nexus", child.name)
                self._stopping.set()
                return
            if loop.time() - started >= self.stable_after:
                attempt = 0
            delay = self.backoff[min(attempt, len(self.backoff) - 1)]
            attempt += 1
            child.restarts += 1
            SERVICE_RESTARTS.labels(service=child.name).inc()
            logger.warning(
                "%s exited with status %s; restarting it in %g s (restart %d)",
                child.name,
                status,
                delay,
                child.restarts,
                extra={"child": child.name, "exit_status": status, "restarts": child.restarts},
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def wait_ready(self, within: float) -> list[str]:
        """Wait until every child's ``ready_url`` answers 200; return the names still not ready."""
        deadline = time.monotonic() + within
        pending = {c.name: c.ready_url for c in self.children if c.ready_url}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while pending and time.monotonic() < deadline and not self._stopping.is_set():
                for name, ready_url in list(pending.items()):
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                        async with session.get(ready_url) as response:
                            if response.status == 200:
                                del pending[name]
                if pending:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), 0.2)
        return sorted(pending)

    def request_stop(self) -> None:
        """Ask the supervisor to stop (safe from a signal handler)."""
        self._stopping.set()

    async def stop(self, grace: float = 3.5, *, budget: float | None = None) -> None:
        """SIGTERM every child, wait up to ``grace`` seconds, then SIGKILL their process groups.

        Children marked ``stop_last`` are stopped afterwards, the same way, with what is left of
        ``budget`` seconds (at least 0.2; default ``grace``).
        """
        started = time.monotonic()
        self._stopping.set()
        # Cancel the keepers first, so none of them starts a replacement while we stop.
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._terminate([c for c in self.children if not c.stop_last], grace)
        left = grace if budget is None else max(0.2, budget - (time.monotonic() - started))
        await self._terminate([c for c in self.children if c.stop_last], left)

    async def _terminate(self, children: Sequence[ChildSpec], grace: float) -> None:
        running = [c.process for c in children if c.process is not None and c.process.returncode is None]
        for process in running:
            _signal_group(process.pid, signal.SIGTERM)
        if running:
            await asyncio.wait([asyncio.create_task(p.wait()) for p in running], timeout=grace)
            for process in running:
                if process.returncode is None:
                    logger.warning("pid %s did not stop within %g s; killing its process group", process.pid, grace)
        # Last resort, and also for grandchildren a child may have left in its group.
        for process in running:
            _signal_group(process.pid, signal.SIGKILL)
        await asyncio.gather(*(p.wait() for p in running), return_exceptions=True)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
