"""Every page, as an admin would see it, on a desktop and on a 375 px phone: one h1, a language,
every control named (labels, not placeholders), nothing wider than the screen, a screenshot."""

from __future__ import annotations

import pytest
from playwright.async_api import Browser

from tests.web.conftest import Site, open_context, shot, sign_in
from tests.web.test_web_downloads import download_npm
from tokenapi.issue import issue_token

PAGES = {
    "tokens": "",
    "downloads": "-/downloads",
    "admin-tokens": "-/admin",
    "admin-downloads": "-/admin/downloads?package=pkg-plain",
    "admin-blocklist": "-/admin/blocklist",
}

# Controls without an accessible name, and the page's basic structure.
AUDIT = """() => {
  const unnamed = [];
  for (const el of document.querySelectorAll("input, select, textarea, button, a[href]")) {
    if (el.closest("template") || el.type === "hidden") continue;
    const labelled = (el.labels && el.labels.length > 0)
      || el.getAttribute("aria-label") || el.getAttribute("aria-labelledby")
      || (el.textContent || "").trim();
    if (!labelled) unnamed.push(el.outerHTML.slice(0, 80));
  }
  return {
    unnamed,
    h1: document.querySelectorAll("h1").length,
    lang: document.documentElement.lang,
    width: document.documentElement.scrollWidth,
    title: document.title,
  };
}"""


@pytest.mark.parametrize("width", [1280, 375])
async def test_pages__named_controls_one_heading_fits_the_screen(
    site: Site, browser: Browser, width: int
) -> None:
    admin = await site.user("admin@example.com", admin=True)
    _, secret = await issue_token(site.server.store, admin, name="laptop")
    await download_npm(site, secret, "pkg-plain", "1.1.0")
    session = await open_context(browser, viewport={"width": width, "height": 800})
    try:
        page = await session.new_page()
        await page.goto(site.url)
        found = await page.evaluate(AUDIT)
        assert found["unnamed"] == [], found["unnamed"]
        assert found["h1"] == 1
        assert found["width"] <= width, found["width"]
        await shot(page, f"page-signin-{width}")
        await sign_in(page, site, "admin@example.com")
        for name, path in PAGES.items():
            response = await page.goto(site.url + path)
            assert response is not None
            assert response.status == 200, name
            found = await page.evaluate(AUDIT)
            assert found["unnamed"] == [], (name, found["unnamed"])
            assert found["h1"] == 1, name
            assert found["lang"] == "en", name
            assert found["title"].endswith(" · pkgate"), name
            assert found["width"] <= width, (name, found["width"])
            await shot(page, f"page-{name}-{width}")
        await session.watch.check(session.pages)
    finally:
        await session.context.close()
