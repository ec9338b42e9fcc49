"""A whole platform for a user's own tests: ``nexus up`` on free ports in a directory of its own.

It starts the platform as ``nexus demo`` does (the same environment, ports and readiness
check: the functions are ``nexus.cli.commands.demo``'s), so what a test runs against is what a
user runs: the embedded nats-server, the relay and the four services as processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from nexus.auth import issue_key
from nexus.bus.embedded import load_credentials
from nexus.cli.commands.demo import demo_environment, free_ports, stop_platform, tail_file, wait_ready
from nexus.config import PlatformSettings
from nexus.eventlog import open_event_log
from nexus.runtime import SERVICES

__all__ = ["PlatformError", "RunningPlatform", "running_platform"]


class PlatformError(Exception):
    """The platform did not start (the message ends with the last lines of its output)."""


@dataclass
class RunningPlatform:
    """A running ``nexus up`` and what a test needs to reach it."""

    process: asyncio.subprocess.Process
    directory: Path
    """Its data directory (the event log, Raw, NATS's store and credentials)."""
    env: dict[str, str]
    """The environment it runs with: ``nexus`` commands given it act on this platform."""
    ports: dict[str, int]
    """``nats``, ``relay`` and each service's HTTP port."""
    output: Path
    """The file its output (every service's JSON log lines) goes to."""
    _keys: dict[str, str] = field(default_factory=dict, repr=False)

    def url(self, service: str) -> str:
        """``http://127.0.0.1:<port>`` of ``kam``, ``workflow``, ``granulator`` or ``studio``."""
        if service not in SERVICES:
            raise KeyError(f"no service {service!r} (the services are {', '.join(SERVICES)})")
        return f"http://127.0.0.1:{self.ports[service]}"

    @property
    def kam_url(self) -> str:
        return self.url("kam")

    @property
    def workflow_url(self) -> str:
        return self.url("workflow")

    @property
    def granulator_url(self) -> str:
        return self.url("granulator")

    @property
    def studio_url(self) -> str:
        return self.url("studio")

    @property
    def admin_password(self) -> str:
        """KAM's bootstrap admin's password (login ``admin``), random for this platform."""
        return self.env["NEXUS_ADMIN_PASSWORD"]

    @property
    def nats_url(self) -> str:
        """The embedded nats-server, with the operator's credentials from the data directory."""
        password = load_credentials(self.directory / "nats")["users"]["operator"]
        return f"nats://operator:{password}@127.0.0.1:{self.ports['nats']}"

    async def client_key(self, client: str = "tests") -> str:
        """An API key of ``client`` (issued once per client, recorded in the platform's log as a hash)."""
        if client not in self._keys:
            log = await open_event_log(PlatformSettings.from_env(self.env).event_log_url)
            try:
                issued = await issue_key(log, "client", client, source="nexus/testing")
            finally:
                await log.close()
            self._keys[client] = issued.secret
        return self._keys[client]

    def output_tail(self, lines: int = 40) -> str:
        """The last lines the platform wrote (for an assertion's message)."""
        return tail_file(self.output, lines)


@contextlib.asynccontextmanager
async def running_platform(
    directory: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    ready_timeout: float = 60.0,
) -> AsyncIterator[RunningPlatform]:
    """Start ``nexus up`` on free ports, wait until every service is ready, stop it on exit.

    None of the caller's ``NEXUS_*`` settings leak in: the platform has its own log, Raw and
    NATS under ``directory``, and a random admin password. It is stopped as Ctrl-C stops it
    (killed if it does not stop within 15 s), also when the test fails.

    Args:
        directory: Its data directory (pytest's ``tmp_path / "nexus"``, say); by default a new
            temporary directory, removed afterwards. A given directory is kept, so a failed
            test leaves the logs to read.
        env: Settings added to its environment: ``NEXUS_SERVICE_<NAME>`` for a service of
            yours that workflow steps call, ``NEXUS_LOG_LEVEL``, any ``NEXUS_*`` setting.
        ready_timeout: Seconds to wait for every service's ``/readyz``.

    Raises:
        PlatformError: it exited or was not ready in time (with the last lines of its output).
    """
    own_directory = directory is None
    data_dir = Path(tempfile.mkdtemp(prefix="nexus-test-")) if directory is None else Path(directory)
    data_dir.mkdir(parents=True, exist_ok=True)
    names = ["nats", "relay", *SERVICES]
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    environment = {**demo_environment(data_dir, ports), **(env or {})}
    output = data_dir / "nexus-up.log"
    process: asyncio.subprocess.Process | None = None
    try:
        with output.open("ab") as sink:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "nexus.cli.main", "up", env=environment, stdout=sink, stderr=sink
            )
        try:
            await wait_ready(process, {name: f"http://127.0.0.1:{ports[name]}" for name in SERVICES}, ready_timeout)
        except Exception as exc:
            raise PlatformError(f"{exc}; its last lines:\n{tail_file(output)}") from None
        yield RunningPlatform(process, data_dir, environment, ports, output)
    finally:
        if process is not None:
            await stop_platform(process)
        if own_directory:
            shutil.rmtree(data_dir, ignore_errors=True)
