"""``nexus up`` end to end: NATS, relay and four services; restarts; Ctrl-C; ports in use."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from processes import alive, descendants, free_port, listening

from nexus.bus.embedded import load_credentials

pytestmark = [pytest.mark.nats, pytest.mark.slow]

SERVICES = ("kam", "workflow", "granulator", "studio")


async def read_until(stream: asyncio.StreamReader, needle: str, within: float, seen: list[str]) -> None:
    async def scan() -> None:
        while True:
            line = await stream.readline()
            if not line:
                raise AssertionError(f"output ended before {needle!r}:\n{''.join(seen)}")
            seen.append(line.decode(errors="replace"))
            if needle in seen[-1]:
                return

    try:
        await asyncio.wait_for(scan(), within)
    except TimeoutError:
        raise AssertionError(f"no {needle!r} within {within} s:\n{''.join(seen)}") from None


async def metric(http: aiohttp.ClientSession, url: str, sample: str) -> str | None:
    async with http.get(url) as response:
        text = await response.text()
    return next((line for line in text.splitlines() if line.startswith(sample)), None)


async def test_nexus_up_runs_everything_restarts_a_dead_service_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    ports = {name: free_port() for name in SERVICES}
    env = {
        **os.environ,
        "NEXUS_DATA_DIR": str(tmp_path / "data"),
        "NEXUS_NATS_PORT": str(free_port()),
        "NEXUS_ADMIN_PASSWORD": "correct horse battery",
        **{f"NEXUS_{name.upper()}_PORT": str(port) for name, port in ports.items()},
    }
    env.pop("NEXUS_NATS_URL", None)
    up = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nexus.cli.main",
        "up",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert up.stdout is not None
    seen: list[str] = []
    try:
        # Everything ready, URLs printed.
        await read_until(up.stdout, "Press Ctrl-C to stop.", 45, seen)
        output = "".join(seen)
        for name, port in ports.items():
            assert f"{name} " in output and f"http://127.0.0.1:{port}" in output, output
        assert f"nats://127.0.0.1:{env['NEXUS_NATS_PORT']}" in output
        assert f"console     http://127.0.0.1:{ports['kam']}/" in output, output
        assert str(tmp_path / "data") in output
        # NATS refuses strangers: every identity has a password, kept 0600, printed nowhere.
        store = tmp_path / "data" / "nats"
        assert (store / "credentials.json").stat().st_mode & 0o777 == 0o600
        assert store.stat().st_mode & 0o777 == 0o700
        for password in load_credentials(store)["users"].values():
            assert password not in output

        # Drain the rest of the output in the background so the pipe never blocks the children.
        async def drain() -> None:
            while line := await up.stdout.readline():  # type: ignore[union-attr]
                seen.append(line.decode(errors="replace"))

        drainer = asyncio.create_task(drain())
        processes = descendants(up.pid)
        commands = " | ".join(processes.values())
        for name in SERVICES:
            assert f"nexus.services.{name}" in commands
        assert "nexus.relay" in commands and "nats-server" in commands

        async with aiohttp.ClientSession() as http:
            for name, port in ports.items():
                async with http.get(f"http://127.0.0.1:{port}/readyz") as r:
                    assert r.status == 200, name
            # The console is the page the printed address serves.
            async with http.get(f"http://127.0.0.1:{ports['kam']}/") as r:
                assert r.status == 200 and "Nexus console" in await r.text()

            # kill -9 KAM: the supervisor restarts it and counts the restart.
            [kam_pid] = [pid for pid, cmd in processes.items() if "nexus.services.kam" in cmd]
            os.kill(kam_pid, signal.SIGKILL)
            kam = f"http://127.0.0.1:{ports['kam']}"
            deadline = time.monotonic() + 20
            restarted = None
            while time.monotonic() < deadline:
                try:
                    restarted = await metric(http, f"{kam}/metrics", 'nexus_service_restarts_total{service="kam"}')
                    if restarted:
                        break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
            assert restarted is not None and restarted.endswith(" 1.0"), "".join(seen)
            async with http.get(f"{kam}/readyz") as r:
                assert r.status == 200
        assert any("kam exited with status -9; restarting it" in line for line in seen)
        processes = descendants(up.pid)
        assert kam_pid not in processes

        # kill -9 nats-server: it is started again on the same port and store, and every service
        # (each connected as its own NATS identity) reconnects and is ready again.
        nats_port = int(env["NEXUS_NATS_PORT"])
        [nats_pid] = [pid for pid, cmd in processes.items() if "nats-server" in cmd]
        os.kill(nats_pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            again = [pid for pid, cmd in descendants(up.pid).items() if "nats-server" in cmd and pid != nats_pid]
            if again and listening(nats_port):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("nats-server was not restarted:\n" + "".join(seen))
        async with aiohttp.ClientSession() as http:
            for name, port in ports.items():
                while True:
                    async with http.get(f"http://127.0.0.1:{port}/readyz") as r:
                        if r.status == 200:
                            break
                    assert time.monotonic() < deadline, f"{name} not ready after NATS came back"
                    await asyncio.sleep(0.2)
        assert any("nats-server exited with status -9; restarting it" in line for line in seen)
        processes = descendants(up.pid)

        # Ctrl-C: everything stops within 5 seconds, nothing is left behind.
        started = time.monotonic()
        up.send_signal(signal.SIGINT)
        status = await asyncio.wait_for(up.wait(), 6)
        elapsed = time.monotonic() - started
        await drainer
        assert status == 0, "".join(seen)
        assert elapsed < 5.0
        assert "Nexus stopped." in "".join(seen)
        left = [pid for pid in processes if alive(pid)]
        assert left == [], {pid: processes[pid] for pid in left}
    finally:
        if up.returncode is None:
            # A failed assertion must not leave the platform running: kill what it started, then it.
            for pid in descendants(up.pid):
                os.kill(pid, signal.SIGKILL)
            up.kill()
            await up.wait()


async def test_nexus_up_names_the_port_in_use_and_the_variable_that_moves_it(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            **os.environ,
            "NEXUS_DATA_DIR": str(tmp_path / "data"),
            "NEXUS_NATS_PORT": str(free_port()),
            "NEXUS_KAM_PORT": str(free_port()),
            "NEXUS_WORKFLOW_PORT": str(port),
            "NEXUS_GRANULATOR_PORT": str(free_port()),
            "NEXUS_STUDIO_PORT": str(free_port()),
        }
        up = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "nexus.cli.main", "up", env=env, stderr=asyncio.subprocess.PIPE
        )
        _, stderr = await asyncio.wait_for(up.communicate(), 20)
    assert up.returncode == 2
    message = stderr.decode()
    assert f"port {port}" in message and "NEXUS_WORKFLOW_PORT" in message and "in use" in message
    # Nothing was started: no data directory, no NATS store.
    assert not (tmp_path / "data" / "nats").exists()
