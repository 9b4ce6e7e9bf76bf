"""The admin's blocklist page in a real Chromium: counts, sources, errors, a refresh from the page
and the breach mails it causes; the empty state when no blocklist is configured."""

from __future__ import annotations

from pathlib import Path

import orjson
from playwright.async_api import Page, expect

from tests.conftest import StartServer
from tests.smtp import SmtpServer
from tests.supplychain.test_engine import mal
from tests.upstreams.npm_registry import NpmRegistry
from tests.upstreams.pypi_index import PypiIndex
from tests.web.conftest import Browsing, Site, shot, sign_in
from tests.web.test_web_downloads import download_npm
from tokenapi.issue import issue_token
from tokenapi.keys import breach_key


async def test_blocklist__status_withheld_versions_and_refresh(
    start_server: StartServer,
    mail: SmtpServer,
    npm_upstream: NpmRegistry,
    pypi_upstream: PypiIndex,
    page: Page,
    tmp_path: Path,
) -> None:
    feed = tmp_path / "feed.json"
    feed.write_bytes(orjson.dumps([mal("MAL-2026-1", "evil-pkg", versions=["6.6.6"])]))
    broken = tmp_path / "missing-feed.json"
    server = await start_server(
        npm_upstream=str(npm_upstream.url) + "/",
        smtp_url=mail.url,
        blocklist_feeds=(str(feed), str(broken)),
    )
    site = Site(server, mail, npm_upstream, pypi_upstream)
    await site.user("admin@example.com", admin=True)
    dev = await site.user("dev@example.com")
    _, secret = await issue_token(server.store, dev, name="laptop")
    await download_npm(site, secret, "pkg-plain", "1.1.0")
    await sign_in(page, site, "admin@example.com")
    await page.get_by_role("link", name="Blocklist").click()
    await expect(page.get_by_role("heading", name="Blocklist", level=1)).to_be_visible()
    facts = page.locator("#blocklist dl.facts")
    await expect(facts).to_contain_text("1 on 1 package (npm: 1)")
    await expect(facts).to_contain_text("some sources failed")
    await expect(page.locator("#blocklist ul.errors")).to_contain_text(str(broken))
    sources = page.locator("#blocklist table").first.locator("tbody tr")
    await expect(sources).to_have_count(2)
    await expect(sources.filter(has_text=str(feed))).to_contain_text("ok")
    await expect(page.locator("#blocklist")).to_contain_text("0 sent, 0 waiting, 0 given up")

    # A version someone already downloaded is blocked; the page's refresh picks it up and the
    # downloader is mailed (through the real SMTP server), as the page then shows.
    feed.write_bytes(
        orjson.dumps(
            [
                mal("MAL-2026-1", "evil-pkg", versions=["6.6.6"]),
                mal("MAL-2026-2", "pkg-plain", versions=["1.1.0"]),
            ]
        )
    )
    await page.get_by_role("button", name="Refresh now").click()
    await expect(page.get_by_role("status").first).to_have_text("Blocklist refreshed.")
    await expect(facts).to_contain_text("2 on 2 packages (npm: 2)")
    await expect(page.get_by_role("heading", name="Status")).to_be_focused()
    await server.app[breach_key].wait_idle()
    assert [str(m["To"]) for m in mail.inbox.messages] == ["dev@example.com"]
    assert "MAL-2026-2" in mail.inbox.messages[0]["Subject"]
    await page.reload()
    await expect(page.locator("#blocklist")).to_contain_text("1 sent, 0 waiting, 0 given up")
    await shot(page, "blocklist")


async def test_blocklist__not_configured_says_how(
    site: Site, page: Page, browsing: Browsing
) -> None:
    await site.user("admin@example.com", admin=True)
    await sign_in(page, site, "admin@example.com")
    await page.goto(f"{site.url}-/admin/blocklist")
    await expect(page.get_by_text("No blocklist is configured.")).to_be_visible()
    await expect(
        page.get_by_text("No version has been withheld since this server started.")
    ).to_be_visible()
    await expect(page.get_by_role("button", name="Refresh now")).to_have_count(0)
    await shot(page, "blocklist-off")
