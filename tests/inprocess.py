"""The four services in the test's own process, each built by its own bootstrap.

Shared by the tests that drive every service's HTTP API (the resilience, hostile-input,
schemathesis and authorization suites): one way to build a service, so a change to a bootstrap
is made once. The log, the bus and Raw are the in-memory adapters unless the caller passes its
own (several services may share one log and bus, as on one platform)::

    service = await build("workflow", tmp_path, NEXUS_WORKFLOW_BUNDLED="none")
    await service.start()
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import aiohttp

from nexus.bus.memory import MemoryBus
from nexus.eventlog import EventLog
from nexus.eventlog.memory import MemoryEventLog
from nexus.raw.memory import MemoryRaw
from nexus.runtime import Service

SERVICES = ("kam", "workflow", "granulator", "studio")


class SharedLog(MemoryEventLog):
    """A platform's log shared by several services: one that stops (a replica restarting) leaves
    it open for the others; the test owns it."""

    async def close(self) -> None:
        return None


class SharedBus(MemoryBus):
    """A platform's bus shared by several services, left open when one of them stops."""

    async def close(self) -> None:
        return None


class SharedRaw(MemoryRaw):
    """A platform's Raw shared by several services, left open when one of them stops."""

    async def close(self) -> None:
        return None


async def memory_bus() -> MemoryBus:
    """An in-memory bus with the platform's streams."""
    bus = MemoryBus()
    await bus.ensure_streams()
    return bus


def service_env(tmp_path: Path, name: str, **extra: str) -> dict[str, str]:
    """The environment of service ``name``: a data directory of its own and a free port."""
    return {"NEXUS_DATA_DIR": str(tmp_path / name), f"NEXUS_{name.upper()}_PORT": "0", **extra}


async def build(
    name: str,
    tmp_path: Path,
    *,
    log: EventLog | None = None,
    bus: Any = None,
    raw: Any = None,
    **env: str,
) -> Service:
    """Service ``name`` built by its bootstrap (not started), with ``env`` added to its environment.

    The workflow service gets its optional modules (job API, uploads, triggers, phases, live).
    """
    log = log if log is not None else MemoryEventLog()
    bus = bus if bus is not None else await memory_bus()
    raw = raw if raw is not None else MemoryRaw()
    if name == "kam":
        env = {"NEXUS_ADMIN_USER": KAM_ADMIN[0], "NEXUS_ADMIN_PASSWORD": KAM_ADMIN[1], **env}
    settings_env = service_env(tmp_path, name, **env)
    if name == "kam":
        from nexus.services.kam.bootstrap import bootstrap as kam
        from nexus.services.kam.settings import load_settings as kam_settings

        return await kam(kam_settings(settings_env), log=log, bus=bus, raw=raw)
    if name == "workflow":
        from nexus.services.workflow.bootstrap import bootstrap as workflow
        from nexus.services.workflow.settings import load_settings as workflow_settings

        return await workflow(workflow_settings(settings_env), log=log, bus=bus, raw=raw, optional_modules=True)
    if name == "granulator":
        from nexus.services.granulator import bootstrap as granulator
        from nexus.services.granulator import load_settings as granulator_settings

        return await granulator(granulator_settings(settings_env), log=log, bus=bus, raw=raw)
    if name == "studio":
        from nexus.services.studio.bootstrap import bootstrap as studio
        from nexus.services.studio.settings import load_settings as studio_settings

        return await studio(studio_settings(settings_env), log=log, bus=bus, raw=raw)
    raise ValueError(f"no service {name!r}: one of {', '.join(SERVICES)}")


KAM_ADMIN = ("root", secrets.token_urlsafe(16))
"""The bootstrap admin ``build("kam", …)`` gives KAM unless the environment names another."""

GRANULATOR_HANDSHAKE = {
    "stage": "content_granulation",
    "execution_id": "exec_valid",
    "input": {"topic": "Tea", "structure_type": "research_report"},
    "requirements": {"memory_mb": 128, "timeout_ms": 60000},
}


async def check_a_valid_request(name: str, http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> None:
    """Send service ``name`` one ordinary, valid request and check it is served (after abuse)."""
    if name == "kam":
        user, password = KAM_ADMIN
        async with http.post(url + "/v1/login", json={"user": user, "password": password}) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["role"] == "admin"
    elif name == "workflow":
        definition = {"id": "noop", "steps": [{"id": "w", "type": "wait_event", "event": "x.y", "timeout_seconds": 60}]}
        async with http.post(url + "/workflows", data=json.dumps(definition), headers=headers) as resp:
            assert resp.status == 201, await resp.text()
        async with http.post(url + "/executions", json={"workflow_id": "noop", "input": {}}, headers=headers) as resp:
            assert resp.status == 202, await resp.text()
            assert (await resp.json())["id"]
    elif name == "granulator":
        async with http.post(url + "/api/handshake", json=GRANULATOR_HANDSHAKE, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["accepted"] is True
    else:
        # A blob written, then read back: the studio still serves after what came before.
        blob = {"content": {"still": "serving"}, "content_type": "application/json"}
        async with http.post(url + "/blobs", json=blob, headers=headers) as resp:
            assert resp.status == 201, await resp.text()
            blob_id = (await resp.json())["id"]
        async with http.get(f"{url}/blobs/{blob_id}", headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["content"] == {"still": "serving"}
