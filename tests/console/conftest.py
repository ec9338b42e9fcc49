"""The console's browser tests: ``nexus up`` as processes, driven by a real headless Chromium.

The browser is Debian's ``chromium`` package, driven through Playwright's Python API with
``executable_path`` (Playwright's own browser downloads are never used). Where the browser is
missing, the set-up installs it with ``apt-get install chromium`` when it may (as root, as CI
runs), and says so; where it cannot, the tests are skipped with the reason. ``NEXUS_TEST_CHROMIUM``
names another Chromium binary.

One platform and one browser serve a test module (starting them is most of the time); each test
gets its own browser context, so cookies never leak between tests. Every test may save named
screenshots (``shot``); a failing test saves one of the page as it was. They are written to
``build/console-screens/`` (the closing note of the console issue lists them).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from platform_process import Up, running_platform

from nexus.client import KamApiError, KamClient

SCREENS = Path(__file__).resolve().parents[2] / "build" / "console-screens"
"""Where the tests write their screenshots."""
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    # The machine's network is closed: no background calls to the browser's vendor.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def find_chromium() -> str | None:
    """The Chromium binary to drive, or None."""
    named = os.environ.get("NEXUS_TEST_CHROMIUM")
    if named:
        return named if Path(named).exists() else None
    for candidate in ("chromium", "chromium-browser"):
        found = shutil.which(candidate)
        if found:
            return found
    return None


def install_chromium() -> str | None:
    """Install Debian's chromium where the test set-up may (root with apt-get); the binary or None."""
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None
    print("console tests: installing Debian's chromium package (apt-get install chromium)", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
    if subprocess.run(command, env=env, capture_output=True, timeout=900).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
        subprocess.run(command, env=env, capture_output=True, timeout=900)
    return find_chromium()


@pytest.fixture(scope="session")
def chromium() -> str:
    """The path of a Chromium binary (installed if missing and allowed), else the test is skipped."""
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        pytest.skip("playwright is not installed (it is in requirements.lock: run make install)")
    found = find_chromium() or install_chromium()
    if found is None:
        pytest.skip(
            "no Chromium here and it cannot be installed (needs root and apt-get: apt-get install chromium, "
            "or set NEXUS_TEST_CHROMIUM)"
        )
    return found


@dataclass
class Console:
    """A running platform, a browser, and what a test needs to sign people in."""

    up: Up
    browser: Any
    """playwright.async_api.Browser"""
    url: str
    """The console's address (KAM's base URL)."""
    admin: KamClient
    """Signed in as the bootstrap admin (API calls for setting things up)."""
    users: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    """Users made by ``client_user``: name → (client id, user name, password)."""

    async def client_user(self, client_id: str) -> tuple[str, str]:
        """A client ``client_id`` (made once) with a user; answers (user name, password)."""
        if client_id not in self.users:
            try:
                await self.admin.create_client(client_id, name=client_id.title())
            except KamApiError as exc:  # made by an earlier test of the module
                if exc.status != 409:
                    raise
            username, password = f"user@{client_id}.example", secrets.token_urlsafe(16)
            await self.admin.create_user(client_id, username, password)
            self.users[client_id] = (client_id, username, password)
        _, username, password = self.users[client_id]
        return username, password

    async def page(self) -> Any:
        """A new page in a new browser context (its own cookies)."""
        context = await self.browser.new_context(base_url=self.url, viewport={"width": 1280, "height": 860})
        context.set_default_timeout(15_000)
        return await context.new_page()

    async def sign_in(self, page: Any, username: str, password: str, *, admin: bool = False) -> None:
        """Sign in through the login page, as a person would, and wait for the first page."""
        await page.goto(self.url + "/")
        await page.get_by_label("User name").fill(username)
        await page.get_by_label("Password").fill(password)
        if admin:
            await page.get_by_label("Administrator").check()
        await page.get_by_role("button", name="Sign in").click()
        await page.get_by_role("button", name="Sign out").wait_for()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def console(chromium: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Console]:
    """``nexus up`` and a headless Chromium for the test module."""
    from playwright.async_api import async_playwright

    async with running_platform(tmp_path_factory.mktemp("console")) as up:
        admin = KamClient(up.kam_url)
        await admin.login("admin", up.admin_password, login_type="admin")
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
            try:
                yield Console(up=up, browser=browser, url=up.kam_url, admin=admin)
            finally:
                await browser.close()
                await admin.close()


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Remember each phase's outcome on the item, so ``pages`` knows whether the test failed."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"report_{report.when}", report)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:120]


@pytest_asyncio.fixture(loop_scope="module")
async def pages(console: Console, request: pytest.FixtureRequest) -> AsyncIterator[list[Any]]:
    """A list the test appends its pages to; a failing test leaves a screenshot of each."""
    opened: list[Any] = []
    yield opened
    report = getattr(request.node, "report_call", None)
    failed = report is not None and report.failed
    for index, page in enumerate(opened):
        if failed and not page.is_closed():
            folder = SCREENS / "failures"
            folder.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(folder / f"{_slug(request.node.name)}-{index}.png"), full_page=True)
        await page.context.close()


async def shot(page: Any, name: str) -> Path:
    """Save a screenshot of the whole page as ``build/console-screens/<name>.png``."""
    SCREENS.mkdir(parents=True, exist_ok=True)
    path = SCREENS / f"{_slug(name)}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path
