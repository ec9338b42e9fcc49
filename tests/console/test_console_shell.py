"""The console's shell in a real browser: sign-in, the role's navigation, sign-out ending access,
an unknown page, and the security headers the page is served with."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import Console, shot

pytestmark = [pytest.mark.nats, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


async def test_a_client_signs_in_sees_its_dashboard_and_signing_out_ends_access(
    console: Console, pages: list[Any]
) -> None:
    username, password = await console.client_user("acme")
    page = await console.page()
    pages.append(page)
    await page.goto(console.url + "/")
    await page.get_by_role("heading", name="Sign in").wait_for()
    await shot(page, "login")
    await console.sign_in(page, username, password)
    await page.get_by_role("heading", name="Dashboard").wait_for()
    assert await page.get_by_role("navigation", name="Main").get_by_role("link", name="Dashboard").count() == 1
    cookies = {c["name"]: c for c in await page.context.cookies()}
    assert cookies["nexus_session"]["httpOnly"] and cookies["nexus_session"]["sameSite"] == "Strict"
    assert not cookies["nexus_csrf"]["httpOnly"] and cookies["nexus_csrf"]["sameSite"] == "Strict"
    # The page's scripts cannot read the session cookie.
    assert "nexus_session" not in await page.evaluate("document.cookie")

    await page.get_by_role("button", name="Sign out").click()
    await page.get_by_role("heading", name="Sign in").wait_for()
    # The old cookie is gone from the browser, and the session is closed on the platform.
    status = await page.evaluate("fetch('/api/auth/session').then(r => r.status)")
    assert status == 401


async def test_a_wrong_password_is_said_on_the_page(console: Console, pages: list[Any]) -> None:
    username, _ = await console.client_user("acme")
    page = await console.page()
    pages.append(page)
    await page.goto(console.url + "/")
    await page.get_by_label("User name").fill(username)
    await page.get_by_label("Password").fill("not the password")
    await page.get_by_role("button", name="Sign in").click()
    alert = page.get_by_role("alert")
    await alert.wait_for()
    assert "wrong password" in (await alert.inner_text())


async def test_an_unknown_page_says_not_found(console: Console, pages: list[Any]) -> None:
    username, password = await console.client_user("acme")
    page = await console.page()
    pages.append(page)
    await console.sign_in(page, username, password)
    await page.goto(console.url + "/#/no/such/page")
    await page.get_by_role("heading", name="Not found").wait_for()


async def test_the_page_is_served_with_a_strict_content_security_policy(console: Console, pages: list[Any]) -> None:
    page = await console.page()
    pages.append(page)
    response = await page.goto(console.url + "/")
    assert response is not None and response.status == 200
    headers = await response.all_headers()
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
