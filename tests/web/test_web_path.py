"""The page under a public URL with a path and a host name of its own (http://pkgate.test/reg),
as behind a reverse proxy: Chromium maps the name to the test server, so every URL the page,
its script and its cookie use must be built from the public URL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.conftest import RunningServer, StartServer
from tests.smtp import SmtpServer
from tests.upstreams.npm_registry import NpmRegistry
from tests.web.conftest import (
    CHROMIUM,
    CHROMIUM_ARGS,
    PASSWORD,
    Browsing,
    open_context,
    shot,
)
from tokenapi.passwords import hash_password_async

PUBLIC = "http://pkgate.test/reg"


@pytest.fixture
async def server(
    start_server: StartServer, mail: SmtpServer, npm_upstream: NpmRegistry
) -> RunningServer:
    return await start_server(
        npm_upstream=str(npm_upstream.url) + "/", smtp_url=mail.url, public_url=PUBLIC
    )


@pytest.fixture
async def mapped(server: RunningServer) -> AsyncIterator[Browser]:
    """Chromium resolving pkgate.test to the test server's port."""
    port = server.runner.addresses[0][1]
    rule = f"--host-resolver-rules=MAP pkgate.test 127.0.0.1:{port}"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=[*CHROMIUM_ARGS, rule], headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()


async def test_path__sign_in_create_copy_revoke_sign_out_under_reg(
    server: RunningServer, mapped: Browser
) -> None:
    await server.store.create_user(
        "me@example.com", password_hash=await hash_password_async(PASSWORD)
    )
    session: Browsing = await open_context(mapped)
    try:
        page: Page = await session.new_page()
        await page.goto(f"{PUBLIC}/")
        form = page.get_by_role("region", name="Sign in")
        await form.get_by_label("Email", exact=True).fill("me@example.com")
        await form.get_by_label("Password").fill(PASSWORD)
        await form.get_by_role("button", name="Sign in").click()
        await expect(page.get_by_role("heading", name="My tokens", level=1)).to_be_visible()
        (cookie,) = await session.context.cookies()
        assert cookie["path"] == "/reg/"
        assert cookie["domain"] == "pkgate.test"

        await page.get_by_label("Name").fill("laptop")
        await page.get_by_role("button", name="Create token").click()
        panel = page.get_by_role("region", name="Your new token “laptop”")
        await expect(panel).to_be_focused()
        npmrc = await panel.locator("details.snippet").first.locator("pre").inner_text()
        assert npmrc.startswith(f"registry={PUBLIC}/npm/\n//pkgate.test/reg/npm/:_authToken=pkg_")
        # Not a secure context (plain http, not loopback): the copy falls back to a selection.
        assert await page.evaluate("window.isSecureContext") is False
        await panel.get_by_role("button", name="Copy token").click()
        await expect(page.get_by_role("status").first).to_have_text("Copied to the clipboard.")
        await shot(page, "path-created")
        await panel.get_by_role("button", name="I have saved it").click()

        await page.get_by_role("button", name="Revoke laptop").click()
        await page.get_by_role("dialog").get_by_role("button", name="Revoke").click()
        await expect(page.locator("#my-tokens tbody tr")).to_have_count(0)
        assert await server.store.list_tokens() == []
        await page.get_by_role("button", name="Sign out").click()
        await expect(page.get_by_role("heading", name="Welcome to pkgate")).to_be_visible()
        assert page.url == f"{PUBLIC}/"
        assert not [u for u in session.watch.requested if not u.startswith(f"{PUBLIC}/")]
        await session.watch.check(session.pages)
    finally:
        await session.context.close()
