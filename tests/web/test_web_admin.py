"""Admins in a real Chromium: everyone's tokens, search by email, revoking another user's token;
everyone else is kept out."""

from __future__ import annotations

import aiohttp
from playwright.async_api import Page, expect

from tests.web.conftest import Browsing, Site, shot, sign_in
from tokenapi.issue import issue_token


async def npm_status(site: Site, secret: str) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{site.url}npm/pkg-plain", headers={"Authorization": f"Bearer {secret}"}) as r,
    ):
        return r.status


async def test_admin__search_by_email_and_revoke_another_users_token(
    site: Site, page: Page
) -> None:
    await site.user("admin@example.com", admin=True)
    alice = await site.user("alice@example.com")
    bob = await site.user("bob@example.org")
    _, alice_secret = await issue_token(site.server.store, alice, name="alice-laptop")
    _, bob_secret = await issue_token(site.server.store, bob, name="bob-ci")
    await sign_in(page, site, "admin@example.com")
    await page.get_by_role("link", name="Everyone's tokens").click()
    await expect(page.get_by_role("heading", name="Everyone's tokens", level=1)).to_be_visible()
    rows = page.locator("#all-tokens tbody tr")
    await expect(rows).to_have_count(2)
    await expect(page.locator("#all-tokens caption")).to_have_text("2 active tokens, newest first")
    await shot(page, "admin-tokens")

    # Search by (part of) the owner's address, from the keyboard.
    await page.get_by_label("Owner's email contains").fill("BOB@")
    await page.get_by_label("Owner's email contains").press("Enter")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_contain_text("bob@example.org")
    await expect(rows.first).to_contain_text("bob-ci")
    await shot(page, "admin-search")

    await page.get_by_label("Owner's email contains").fill("nobody@")
    await page.get_by_role("button", name="Search").click()
    await expect(
        page.get_by_text("No active token belongs to an address containing")
    ).to_be_visible()
    await page.get_by_role("link", name="show everyone's tokens").click()
    await expect(rows).to_have_count(2)

    await page.get_by_role(
        "button", name=f"Revoke bob-ci ({bob_secret[:8]}) of bob@example.org"
    ).click()
    dialog = page.get_by_role("dialog", name="Revoke this token?")
    await expect(dialog).to_contain_text("of bob@example.org will stop working at once.")
    await dialog.get_by_role("button", name="Revoke").click()
    await expect(page.get_by_role("status").first).to_have_text(
        "Token “bob-ci” revoked. It no longer works anywhere."
    )
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_contain_text("alice@example.com")
    assert await npm_status(site, bob_secret) == 401
    assert await npm_status(site, alice_secret) == 200
    assert [t.name for t in await site.server.store.list_tokens(user_id=bob.id)] == []


async def test_admin__page_refused_to_non_admins(
    site: Site, page: Page, browsing: Browsing
) -> None:
    await site.user("me@example.com")
    await sign_in(page, site, "me@example.com")
    await expect(page.get_by_role("link", name="Everyone's tokens")).to_have_count(0)
    browsing.watch.expect_status(403)
    response = await page.goto(f"{site.url}-/admin")
    assert response is not None
    assert response.status == 403
    await expect(page.get_by_role("heading", name="For administrators only")).to_be_visible()
    await shot(page, "admin-forbidden")


async def test_admin__empty_state_says_what_to_do(site: Site, page: Page) -> None:
    await site.user("admin@example.com", admin=True)
    await sign_in(page, site, "admin@example.com")
    await page.goto(f"{site.url}-/admin")
    await expect(page.get_by_text("Nobody has an active token yet.")).to_be_visible()
