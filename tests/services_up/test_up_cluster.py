"""``nexus up --nats-cluster 3`` as a user runs it: three nats-servers as one JetStream cluster, R3
streams, every process given all three URLs, a workflow run before and after a node is killed
with SIGKILL (and restarted by the supervisor), then Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
from aiohttp.test_utils import TestServer
from e2e_platform import SCHEMA, WORKFLOW, stub_app, within
from platform_process import nexus
from processes import alive, descendants, free_port

from nexus.bus.embedded import load_credentials
from nexus.config import ConfigError, PlatformSettings
from nexus.runtime._supervisor import check_port_free

pytestmark = [pytest.mark.nats, pytest.mark.slow]

SERVICES = ("kam", "workflow", "granulator", "studio")
NODES = {"nexus-1", "nexus-2", "nexus-3"}


def test_the_cluster_size_is_one_or_three() -> None:
    assert PlatformSettings.from_env({}).nats_cluster == 1
    assert PlatformSettings.from_env({"NEXUS_NATS_CLUSTER": "3"}).nats_cluster == 3
    with pytest.raises(ConfigError, match=r"NEXUS_NATS_CLUSTER=2: use 1 .* or 3"):
        PlatformSettings.from_env({"NEXUS_NATS_CLUSTER": "2"})
    assert PlatformSettings.from_env({}).nats_replicas is None
    assert PlatformSettings.from_env({"NEXUS_NATS_REPLICAS": "3"}).nats_replicas == 3
    with pytest.raises(ConfigError, match="NEXUS_NATS_REPLICAS=7 is out of range"):
        PlatformSettings.from_env({"NEXUS_NATS_REPLICAS": "7"})


async def test_a_cluster_with_nexus_nats_url_set_is_refused_before_anything_starts(tmp_path: Path) -> None:
    env = {**os.environ, "NEXUS_DATA_DIR": str(tmp_path), "NEXUS_NATS_URL": "nats://127.0.0.1:1"}
    code, out, err = await nexus("up", "--nats-cluster", "3", env=env)
    assert code == 2 and "NEXUS_NATS_URL" in err and "--nats-cluster" in err, out + err
    assert not (tmp_path / "nats").exists()


def _taken_after_a_free_one() -> tuple[socket.socket, int]:
    """A listening socket on port p whose port p - 1 is free (node 1 can bind it, node 2 cannot)."""
    for _ in range(50):
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        port = int(taken.getsockname()[1])
        if check_port_free("127.0.0.1", port - 1):
            taken.listen()
            return taken, port
        taken.close()
    raise AssertionError("no port p with p - 1 free")


async def test_a_cluster_port_in_use_is_named_before_anything_starts(tmp_path: Path) -> None:
    # The cluster's client ports follow NEXUS_NATS_PORT, its route ports NEXUS_NATS_CLUSTER_PORT:
    # a taken one is named with the variable that moves it.
    for variable, what in (
        ("NEXUS_NATS_PORT", "nats-server 2 of the cluster"),
        ("NEXUS_NATS_CLUSTER_PORT", "the routes of nats-server 2"),
    ):
        taken, port = _taken_after_a_free_one()
        with taken:
            env = {
                **os.environ,
                "NEXUS_DATA_DIR": str(tmp_path),
                "NEXUS_NATS_PORT": "0",
                "NEXUS_NATS_CLUSTER_PORT": "0",
            }
            env.pop("NEXUS_NATS_URL", None)
            env[variable] = str(port - 1)
            code, out, err = await nexus("up", "--nats-cluster", "3", env=env)
        assert code == 2, out + err
        assert f"port {port} on 127.0.0.1 is already in use, so {what} cannot start" in err, err
        assert variable in err
    assert not (tmp_path / "nats").exists()


def _environ(pid: int) -> dict[str, str]:
    raw = (Path("/proc") / str(pid) / "environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


async def _run_workflow(env: dict[str, str], title: str) -> str:
    payload = {"title": title, "confidence": 0.9, "region": "tohoku"}
    code, out, err = await nexus("workflow", "run", "anomaly_job", "--input", json.dumps(payload), "--wait", env=env)
    assert code == 0, out + err
    assert "  status     COMPLETED" in out.splitlines(), out
    assert f'"verdict": "confirmed: {title}"' in out
    return out.splitlines()[0].strip()


async def test_nexus_up_with_a_three_node_cluster_runs_workflows_through_a_node_killed_and_restarted(
    tmp_path: Path,
) -> None:
    calls: list[dict[str, Any]] = []
    async with TestServer(await stub_app(calls), host="127.0.0.1", port=0) as stub:
        ports = {name: free_port() for name in SERVICES}
        env = {
            **os.environ,
            "NEXUS_DATA_DIR": str(tmp_path / "data"),
            # Client and route ports chosen free by nexus up itself.
            "NEXUS_NATS_PORT": "0",
            "NEXUS_NATS_CLUSTER_PORT": "0",
            "NEXUS_ADMIN_PASSWORD": secrets.token_urlsafe(16),
            "NEXUS_SERVICE_GAIA": str(stub.make_url("")).rstrip("/"),
            **{f"NEXUS_{name.upper()}_PORT": str(port) for name, port in ports.items()},
            "NEXUS_RELAY_PORT": str(free_port()),
        }
        for variable in ("NEXUS_NATS_URL", "NEXUS_EVENT_LOG_URL", "NEXUS_RAW_URL", "NEXUS_WORKFLOW_URL"):
            env.pop(variable, None)
        up = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "nexus.cli.main",
            "up",
            "--nats-cluster",
            "3",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert up.stdout is not None
        stdout = up.stdout
        seen: list[str] = []

        async def until(needle: str) -> None:
            while line := await stdout.readline():
                seen.append(line.decode(errors="replace"))
                if needle in seen[-1]:
                    return
            raise AssertionError(f"nexus up ended before {needle!r}:\n" + "".join(seen))

        try:
            await within(until("Press Ctrl-C to stop."), "nexus up --nats-cluster 3 ready", 60)
            output = "".join(seen)
            assert "Nexus is up:" in output
            [nats_line] = [line for line in seen if line.strip().startswith("NATS ")]
            urls = nats_line.split()[1].split(",")
            assert len(urls) == 3 and all(re.fullmatch(r"nats://127\.0\.0\.1:\d+", url) for url in urls), nats_line

            async def drain() -> None:
                while line := await stdout.readline():
                    seen.append(line.decode(errors="replace"))

            drainer = asyncio.create_task(drain())

            # Three nats-servers, each on its own store; every process was given all three URLs
            # and three replicas.
            processes = descendants(up.pid)
            servers = {pid: cmd for pid, cmd in processes.items() if "nats-server" in cmd.split()[0]}
            assert len(servers) == 3, processes
            for n in (1, 2, 3):
                assert sum(f"node-{n}" in cmd for cmd in servers.values()) == 1
            for pid, cmd in processes.items():
                if "nexus.services." in cmd or "nexus.relay" in cmd:
                    child_env = _environ(pid)
                    assert child_env["NEXUS_NATS_URL"] == ",".join(urls), cmd
                    assert child_env["NEXUS_NATS_REPLICAS"] == "3", cmd
                    assert "NEXUS_NATS_CLUSTER" not in child_env

            # JetStream reports one cluster with a leader, and the Nexus streams and the relay's
            # buckets on all three nodes.
            password = load_credentials(tmp_path / "data" / "nats")["users"]["operator"]
            nc = await nats.connect(servers=urls, user="operator", password=password)
            try:
                js = nc.jetstream()
                names = await js.streams_info()
                assert {"NEXUS_EVT", "NEXUS_CMD", "NEXUS_EXT", "NEXUS_DLQ"} <= {s.config.name for s in names}
                assert any((s.config.name or "").startswith("KV_") for s in names), [s.config.name for s in names]
                for info in names:
                    assert info.config.num_replicas == 3, info.config.name
                    assert info.cluster is not None and info.cluster.leader in NODES
            finally:
                await nc.close()

            # A workflow runs end to end (HTTP, NATS commands and events, the stub's step).
            key_code, key_out, key_err = await nexus("keys", "create", "--client", "e2e", env=env)
            assert key_code == 0, key_err
            key = key_out.splitlines()[1].strip()
            async with aiohttp.ClientSession(headers={"x-service-key": key}) as http:
                for path, document in (("/schemas", SCHEMA), ("/workflows", WORKFLOW)):
                    async with http.post(f"http://127.0.0.1:{ports['workflow']}{path}", data=document) as response:
                        assert response.status == 201, await response.text()
            run_env = {**env, "NEXUS_SERVICE_KEY": key}
            await _run_workflow(run_env, "Before")

            # kill -9 the node that leads NEXUS_EVT: the others take over, the supervisor starts
            # it again on its ports and store, and a workflow still runs.
            nc = await nats.connect(servers=urls, user="operator", password=password)
            try:
                leader = (await nc.jetstream().stream_info("NEXUS_EVT")).cluster.leader  # type: ignore[union-attr]
            finally:
                await nc.close()
            assert leader in NODES
            n = leader.rsplit("-", 1)[1]
            [victim] = [pid for pid, cmd in servers.items() if f"node-{n}" in cmd]
            os.kill(victim, signal.SIGKILL)
            await _run_workflow(run_env, "During")
            deadline = time.monotonic() + 30
            while not any(f"nats-server-{n} exited with status -9; restarting it" in line for line in seen):
                assert time.monotonic() < deadline, "".join(seen)
                await asyncio.sleep(0.1)
            while True:
                again = [pid for pid, cmd in descendants(up.pid).items() if "nats-server" in cmd and f"node-{n}" in cmd]
                if again and again != [victim]:
                    break
                assert time.monotonic() < deadline, "nats-server was not restarted:\n" + "".join(seen)
                await asyncio.sleep(0.1)
            await _run_workflow(run_env, "After")
            assert [call["title"] for call in calls] == ["Before", "During", "After"]
            async with aiohttp.ClientSession() as http:
                for name, port in ports.items():
                    async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
                        assert response.status == 200, name

            # Ctrl-C: everything stops, the three servers included.
            started = set(descendants(up.pid))
            stop_started = time.monotonic()
            up.send_signal(signal.SIGINT)
            status = await within(up.wait(), "nexus up stopping after SIGINT", 10)
            elapsed = time.monotonic() - stop_started
            await within(drainer, "the end of nexus up's output", 5)
            assert status == 0, "".join(seen)
            assert elapsed < 5.0, "".join(seen)
            assert "Nexus stopped." in "".join(seen)
            assert [pid for pid in started if alive(pid)] == []
        finally:
            if up.returncode is None:
                for pid in set(descendants(up.pid)):
                    os.kill(pid, signal.SIGKILL)
                up.kill()
                await up.wait()
