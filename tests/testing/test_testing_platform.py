"""``nexus.testing.running_platform``: a whole platform on free ports for a user's own tests."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import nats
import pytest

from nexus.testing import PlatformError, running_platform

pytestmark = [pytest.mark.nats, pytest.mark.slow]


async def test_a_platform_starts_serves_a_client_and_stops(tmp_path: Path) -> None:
    async with running_platform(env={"NEXUS_LOG_LEVEL": "info"}) as nexus:
        directory = nexus.directory
        assert directory.is_dir() and nexus.env["NEXUS_LOG_LEVEL"] == "info"
        # Every service answers on its own free port.
        async with aiohttp.ClientSession() as http:
            for url in (nexus.kam_url, nexus.workflow_url, nexus.granulator_url, nexus.studio_url):
                async with http.get(url + "/readyz") as response:
                    assert response.status == 200, url
            # A client key works on the workflow API; no key is a 401.
            key = await nexus.client_key("acme")
            assert await nexus.client_key("acme") == key
            workflow = {"id": "hello", "steps": [{"id": "s", "service": "granulator", "endpoint": "/healthz"}]}
            async with http.post(nexus.workflow_url + "/workflows", json=workflow, headers={"x-service-key": key}) as r:
                assert r.status == 201, await r.text()
            async with http.get(nexus.workflow_url + "/workflows/hello") as response:
                assert response.status == 401
        # The embedded NATS takes the operator's credentials.
        nc = await nats.connect(nexus.nats_url)
        await nc.close()
        # Its output goes to a file in its directory (JSON log lines at the level asked for).
        assert nexus.output.parent == directory and nexus.output_tail(2000)
        with pytest.raises(KeyError, match="no service 'nope'"):
            nexus.url("nope")
        process = nexus.process
    # Stopped, and its temporary directory removed.
    assert process.returncode is not None
    assert not directory.exists()


async def test_a_given_directory_is_kept_and_a_platform_that_cannot_start_says_why(tmp_path: Path) -> None:
    # A log URL no service can open: they never get ready, and the error carries their last lines.
    with pytest.raises(PlatformError, match="not ready within 8 s") as caught:
        async with running_platform(tmp_path / "bad", env={"NEXUS_EVENT_LOG_URL": "nope://x"}, ready_timeout=8):
            pass
    assert "unknown scheme 'nope'" in str(caught.value)
    assert (tmp_path / "bad" / "nexus-up.log").exists()
