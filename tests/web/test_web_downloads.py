"""Download history pages in a real Chromium: my downloads (only mine, filtered, empty state) and,
for admins, "who downloaded <package> <version>" with owner, token and paging."""

from __future__ import annotations

import re

import aiohttp
from playwright.async_api import Page, expect

from tests.web.conftest import Browsing, Site, shot, sign_in
from tokenapi.issue import issue_token


async def download_npm(site: Site, secret: str, name: str, version: str) -> None:
    """What npm does for one package: the packument, then the tarball."""
    auth = {"Authorization": f"Bearer {secret}"}
    async with aiohttp.ClientSession(headers=auth) as http:
        async with http.get(f"{site.url}npm/{name}") as resp:
            assert resp.status == 200
        async with http.get(f"{site.url}npm/{name}/-/{name}-{version}.tgz") as resp:
            assert resp.status == 200
            await resp.read()


async def download_wheel(site: Site, secret: str, project: str) -> None:
    """What pip does: the project page, then the wheel it links to."""
    auth = {"Authorization": aiohttp.encode_basic_auth("token", secret)}
    async with aiohttp.ClientSession(headers=auth) as http:
        async with http.get(f"{site.url}pypi/simple/{project}/") as resp:
            assert resp.status == 200
            page = await resp.text()
        (wheel,) = [h for h in re.findall(r'href="([^"#]+)', page) if h.endswith(".whl")]
        async with http.get(wheel) as resp:
            assert resp.status == 200
            await resp.read()


async def test_downloads__mine_only_filtered_and_empty_state(site: Site, page: Page) -> None:
    alice = await site.user("alice@example.com")
    bob = await site.user("bob@example.com")
    _, laptop = await issue_token(site.server.store, alice, name="laptop")
    _, bobs = await issue_token(site.server.store, bob, name="bob-ci")
    await download_npm(site, laptop, "pkg-plain", "1.1.0")
    await download_wheel(site, laptop, "tinydep")
    await download_npm(site, bobs, "pkg-plain", "1.0.0")

    await sign_in(page, site, "bob@example.com")
    await page.get_by_role("link", name="My downloads").click()
    rows = page.locator("#downloads tbody tr")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_contain_text("pkg-plain")
    await expect(rows.first).to_contain_text("1.0.0")
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("heading", name="Welcome to pkgate")).to_be_visible()

    await sign_in(page, site, "alice@example.com")
    await page.get_by_role("link", name="My downloads").click()
    await expect(page.get_by_role("heading", name="My downloads", level=1)).to_be_visible()
    await expect(rows).to_have_count(2)
    # Newest first, with the token that did it; times in the viewer's zone.
    await expect(rows.nth(0)).to_contain_text("tinydep")
    await expect(rows.nth(0)).to_contain_text("tinydep-1.0.0-py3-none-any.whl")
    await expect(rows.nth(1)).to_contain_text("pkg-plain-1.1.0.tgz")
    await expect(rows.nth(1).locator("td[data-label='Token']")).to_contain_text(
        f"laptop {laptop[:8]}…"
    )
    await expect(rows.nth(1).locator("time")).to_contain_text("GMT+9")
    await shot(page, "downloads")

    await page.get_by_label("Package").fill("pkg-plain")
    await page.get_by_label("Package").press("Enter")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_contain_text("1.1.0")
    await expect(page.get_by_label("Package")).to_have_value("pkg-plain")
    await page.get_by_label("Ecosystem").select_option("pypi")
    await page.get_by_role("button", name="Show").click()
    await expect(page.get_by_text("Nothing matches these filters.")).to_be_visible()
    await page.get_by_role("link", name="Clear filters").click()
    await expect(rows).to_have_count(2)


async def test_downloads__empty_and_bad_filter_are_sentences(
    site: Site, page: Page, browsing: Browsing
) -> None:
    await site.user("me@example.com")
    await sign_in(page, site, "me@example.com")
    await page.goto(f"{site.url}-/downloads")
    await expect(
        page.get_by_text("Your tokens have not downloaded anything in the last 90 days.")
    ).to_be_visible()
    await shot(page, "downloads-empty")
    browsing.watch.expect_status(400)
    await page.goto(f"{site.url}-/downloads?ecosystem=cargo")
    await expect(page.get_by_role("alert")).to_have_text(
        "ecosystem must be one of: npm, pypi. Change the filter and try again."
    )


async def test_admin_downloads__who_downloaded_a_version_with_paging(
    site: Site, page: Page, browsing: Browsing
) -> None:
    await site.user("admin@example.com", admin=True)
    alice = await site.user("alice@example.com")
    bob = await site.user("bob@example.com")
    _, laptop = await issue_token(site.server.store, alice, name="laptop")
    _, ci = await issue_token(site.server.store, bob, name="ci")
    await download_npm(site, laptop, "pkg-plain", "1.1.0")
    await download_npm(site, ci, "pkg-plain", "1.1.0")
    await download_npm(site, ci, "pkg-plain", "1.0.0")

    await sign_in(page, site, "admin@example.com")
    await page.get_by_role("link", name="Who downloaded").click()
    await expect(page.get_by_role("heading", name="Who downloaded what", level=1)).to_be_visible()
    rows = page.locator("#downloads tbody tr")
    await expect(rows).to_have_count(3)
    await page.get_by_label("Package").fill("pkg-plain")
    await page.get_by_label("Version").fill("1.1.0")
    await page.get_by_role("button", name="Show").click()
    await expect(
        page.get_by_role("heading", name="Who downloaded pkg-plain 1.1.0", level=1)
    ).to_be_visible()
    await expect(rows).to_have_count(2)
    owners = await rows.locator("td[data-label='Owner']").all_text_contents()
    assert sorted(owners) == ["alice@example.com", "bob@example.com"]
    await shot(page, "admin-downloads")

    await page.get_by_label("Owner's email").fill("ALICE@example.com")
    await page.get_by_role("button", name="Show").click()
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_contain_text("laptop")

    # Paging: one row a page, "Older downloads" until the last.
    await page.goto(f"{site.url}-/admin/downloads?package=pkg-plain&limit=1")
    seen = []
    for _ in range(3):
        await expect(rows).to_have_count(1)
        seen.append(await rows.first.locator("td[data-label='Version']").text_content())
        older = page.get_by_role("link", name="Older downloads")
        if not await older.count():
            break
        await older.click()
    assert seen == ["1.0.0", "1.1.0", "1.1.0"]
    await expect(page.get_by_role("link", name="Older downloads")).to_have_count(0)


async def test_admin_downloads__refused_to_non_admins(
    site: Site, page: Page, browsing: Browsing
) -> None:
    await site.user("me@example.com")
    await sign_in(page, site, "me@example.com")
    await expect(page.get_by_role("link", name="Who downloaded")).to_have_count(0)
    browsing.watch.expect_status(403)
    response = await page.goto(f"{site.url}-/admin/downloads?package=pkg-plain")
    assert response is not None
    assert response.status == 403
