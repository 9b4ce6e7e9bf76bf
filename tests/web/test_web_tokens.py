"""My tokens in a real Chromium: create (secret shown once, copy, setup that real npm and pip use),
revoke with a confirmation, keyboard use, a phone-sized screen and dates in the viewer's zone."""

from __future__ import annotations

import json
import re
import shlex
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from playwright.async_api import Browser, Page, expect

from tests.api_support import TOKEN_RE
from tests.conftest import StartServer, isolated_env, run
from tests.smtp import SmtpServer
from tests.upstreams.npm_registry import NpmRegistry
from tests.upstreams.pypi_index import PypiIndex
from tests.web.conftest import TIMEZONE, Browsing, Site, open_context, shot, sign_in
from tokenapi.issue import issue_token

CLIENTS = ("npm", "yarn", "yarn classic", "pnpm", "bun", "pip", "uv", "poetry")


async def registry_status(site: Site, secret: str) -> int:
    """The status of an authenticated npm metadata request with ``secret``."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{site.url}npm/pkg-plain", headers={"Authorization": f"Bearer {secret}"}) as resp,
    ):
        return resp.status


@pytest.mark.clients
async def test_tokens__create_shows_secret_once_with_setup_real_clients_use(
    site: Site, page: Page, browsing: Browsing, tools: Path, tmp_path: Path
) -> None:
    await site.user("me@example.com")
    await sign_in(page, site, "me@example.com")
    await expect(page.get_by_text("You have no active tokens.")).to_be_visible()
    await shot(page, "tokens-empty")

    await page.get_by_label("Name").fill("laptop")
    await page.get_by_label("Name").press("Enter")
    panel = page.get_by_role("region", name="Your new token “laptop”")
    await expect(panel).to_be_focused()
    secret = (await page.locator("#new-secret").text_content() or "").strip()
    assert TOKEN_RE.fullmatch(secret), secret
    await shot(page, "tokens-created")

    await panel.get_by_role("button", name="Copy token").click()
    assert await page.evaluate("navigator.clipboard.readText()") == secret
    await expect(page.get_by_role("status").first).to_have_text("Copied to the clipboard.")

    # One snippet per client, each holding the secret and this server's URL.
    snippets: dict[str, str] = {}
    for details in await panel.locator("details.snippet").all():
        summary = await details.locator("summary").text_content() or ""
        client = summary.split(" —")[0].strip()
        if await details.get_attribute("open") is None:
            await details.locator("summary").click()
        snippets[client] = await details.locator("pre").inner_text()
        await details.get_by_role("button", name=f"Copy {client} setup").click()
        assert await page.evaluate("navigator.clipboard.readText()") == snippets[client]
    assert set(CLIENTS) <= set(snippets), snippets.keys()
    for client in CLIENTS:
        assert secret in snippets[client], client
        assert f"{site.server.url.authority}/" in snippets[client], client

    # The new token is listed (by its prefix, never its secret).
    row = page.locator("#my-tokens tbody tr", has_text="laptop")
    await expect(row).to_contain_text(secret[:8])
    await expect(page.get_by_text("You have no active tokens.")).to_have_count(0)

    # The secret never travelled in a URL, and no page the server sends holds it.
    assert not [u for u in browsing.watch.requested if secret in u]
    await panel.get_by_role("button", name="I have saved it").click()
    await expect(panel).to_be_hidden()
    await page.reload()
    assert secret not in await page.content()
    async with (
        aiohttp.ClientSession() as http,
        http.get(site.url, headers={"Cookie": await cookie_header(browsing)}) as resp,
    ):
        assert resp.headers["Cache-Control"] == "no-store"
        assert secret not in await resp.text()

    # Real npm with the npm setup as shown, real pip with the pip setup as shown.
    project = tmp_path / "npm-project"
    project.mkdir()
    (project / ".npmrc").write_text(snippets["npm"])
    (project / "package.json").write_text(
        json.dumps({"name": "proj", "version": "1.0.0", "private": True})
    )
    npm = await run(
        "npm",
        "install",
        "--no-audit",
        "pkg-plain@1.1.0",
        cwd=project,
        env=isolated_env(tmp_path / "npm-home"),
    )
    assert npm.returncode == 0, npm.output
    assert (project / "node_modules" / "pkg-plain" / "package.json").exists()

    (export,) = [line for line in snippets["pip"].splitlines() if "PIP_INDEX_URL=" in line]
    index_url = shlex.split(export.split("export ", 1)[1])[0].split("=", 1)[1]
    pip = await run(
        tools / "pip",
        "install",
        "--no-cache-dir",
        "--target",
        tmp_path / "site",
        "tinydep",
        env=isolated_env(tmp_path / "pip-home", PIP_INDEX_URL=index_url),
    )
    assert pip.returncode == 0, pip.output
    assert list((tmp_path / "site").glob("tinydep*"))

    # Last use overall and per ecosystem, with counts, shown on the page.
    await page.reload()
    row = page.locator("#my-tokens tbody tr", has_text="laptop")
    usage = row.locator("ul.usage")
    await expect(usage).to_contain_text(re.compile(r"npm: \d+ requests?, last"))
    await expect(usage).to_contain_text(re.compile(r"pypi: \d+ requests?, last"))
    await expect(row.locator("td[data-label='Last used'] > time")).to_have_count(1)
    await shot(page, "tokens-used")


async def cookie_header(browsing: Browsing) -> str:
    return "; ".join(f"{c['name']}={c['value']}" for c in await browsing.context.cookies())


async def test_tokens__revoke_asks_first_then_token_disappears_and_stops_working(
    site: Site, page: Page
) -> None:
    user = await site.user("me@example.com")
    _, keep = await issue_token(site.server.store, user, name="laptop")
    _, doomed = await issue_token(site.server.store, user, name="ci")
    assert await registry_status(site, doomed) == 200
    await sign_in(page, site, "me@example.com")
    rows = page.locator("#my-tokens tbody tr")
    await expect(rows).to_have_count(2)

    button = page.get_by_role("button", name=f"Revoke ci ({doomed[:8]})")
    await button.click()
    dialog = page.get_by_role("dialog", name="Revoke this token?")
    await expect(dialog).to_be_visible()
    await expect(dialog).to_contain_text(f"“ci” ({doomed[:8]}…) will stop working at once.")
    # The safe choice has the focus; Escape cancels and gives the focus back.
    await expect(dialog.get_by_role("button", name="Cancel")).to_be_focused()
    await shot(page, "revoke-dialog")
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    await expect(button).to_be_focused()
    await expect(rows).to_have_count(2)
    assert await registry_status(site, doomed) == 200

    await button.click()
    await dialog.get_by_role("button", name="Revoke").click()
    await expect(page.get_by_role("status").first).to_have_text(
        "Token “ci” revoked. It no longer works anywhere."
    )
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_contain_text("laptop")
    await expect(page.get_by_role("heading", name="Active tokens")).to_be_focused()
    await shot(page, "revoked")
    assert await registry_status(site, doomed) == 401
    assert await registry_status(site, keep) == 200
    # Still gone after a reload: the list is the server's, not the page's memory.
    await page.reload()
    await expect(rows).to_have_count(1)


async def test_tokens__bad_name_is_a_sentence(site: Site, page: Page, browsing: Browsing) -> None:
    await site.user("me@example.com")
    await sign_in(page, site, "me@example.com")
    browsing.watch.expect_status(400)
    await page.get_by_role("button", name="Create token").click()
    await expect(page.get_by_role("alert")).to_have_text("Token name is required.")
    await expect(page.get_by_label("Name")).to_be_focused()
    assert await site.server.store.list_tokens() == []


async def test_tokens__keyboard_order_and_visible_focus(site: Site, page: Page) -> None:
    user = await site.user("me@example.com")
    token, _ = await issue_token(site.server.store, user, name="laptop")
    await sign_in(page, site, "me@example.com")
    await page.goto(site.url)
    order = []
    for _ in range(11):
        await page.keyboard.press("Tab")
        order.append(
            await page.evaluate(
                "(() => { const e = document.activeElement;"
                " return (e.labels && e.labels.length ? e.labels[0].textContent"
                " : e.textContent).trim().replace(/\\s+/g, ' '); })()"
            )
        )
        outline = await page.evaluate(
            "(() => { const s = getComputedStyle(document.activeElement);"
            " return [s.outlineStyle, s.outlineWidth]; })()"
        )
        assert outline[0] != "none", (order[-1], outline)
        assert outline[1] != "0px", (order[-1], outline)
    assert order == [
        "Skip to content",
        "pkgate",
        "My tokens",
        "My downloads",
        "Sign out",
        "Name",
        "Expires",
        "npm registry (npm, yarn, pnpm, bun)",
        "Python index (pip, uv, poetry)",
        "Create token",
        f"Revoke laptop ({token.prefix})",
    ], order

    # Keyboard only: the skip link lands in the content; a name and Enter create a token.
    await page.goto(site.url)
    await page.keyboard.press("Tab")
    await page.keyboard.press("Enter")
    await expect(page.locator("main")).to_be_focused()
    await page.get_by_label("Name").focus()
    await page.keyboard.type("keyboard")
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("region", name="Your new token “keyboard”")).to_be_focused()


async def test_tokens__phone_width_and_dates_in_viewer_time_zone(
    site: Site, browser: Browser
) -> None:
    user = await site.user("me@example.com")
    _, secret = await issue_token(site.server.store, user, name="a-rather-long-token-name-here")
    assert await registry_status(site, secret) == 200
    phone = await open_context(browser, viewport={"width": 375, "height": 800}, is_mobile=True)
    try:
        page = await phone.new_page()
        await sign_in(page, site, "me@example.com")
        row = page.locator("#my-tokens tbody tr").first
        created = row.locator("td[data-label='Created'] time")
        # The server writes UTC; the page shows the viewer's zone (the context's: Tokyo).
        await expect(created).to_contain_text("GMT+9")
        iso = await created.get_attribute("datetime")
        assert iso is not None
        assert iso.endswith("Z")
        local = datetime.fromisoformat(iso).astimezone(ZoneInfo(TIMEZONE))
        text = re.sub(r"\s", " ", await created.text_content() or "")
        assert text == local.strftime("%b %-d, %Y, %I:%M %p GMT+9"), (iso, text)
        await expect(row.locator("ul.usage")).to_contain_text("npm: 1 request, last")
        # Nothing wider than the screen.
        assert await page.evaluate("document.documentElement.scrollWidth") <= 375
        await shot(page, "tokens-375")
        await page.get_by_label("Name").fill("phone")
        await page.get_by_role("button", name="Create token").click()
        await expect(page.locator("#new-secret")).to_have_text(TOKEN_RE)
        assert await page.evaluate("document.documentElement.scrollWidth") <= 375
        await shot(page, "tokens-created-375")
        await phone.watch.check(phone.pages)
    finally:
        await phone.context.close()


async def pypi_status(site: Site, secret: str) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{site.url}pypi/simple/tinydep/",
            headers={"Authorization": aiohttp.encode_basic_auth("token", secret)},
        ) as resp,
    ):
        return resp.status


async def test_tokens__expiry_and_scopes_chosen_in_the_form(
    site: Site, page: Page, browsing: Browsing
) -> None:
    await site.user("me@example.com")
    await sign_in(page, site, "me@example.com")
    await page.get_by_label("Name").fill("npm-only")
    await page.get_by_label("Expires").select_option(label="7 days")
    await page.get_by_label("Python index (pip, uv, poetry)").uncheck()
    await page.get_by_role("button", name="Create token").click()
    panel = page.get_by_role("region", name="Your new token “npm-only”")
    await expect(panel).to_be_visible()
    secret = (await page.locator("#new-secret").text_content() or "").strip()
    await expect(page.locator("#new-scopes")).to_have_text("npm")
    await expect(page.locator("#new-expires time")).to_contain_text("GMT+9")
    # Only the setup of the npm family: the token is no good for pip.
    summaries = await panel.locator("details.snippet summary").all_text_contents()
    clients = [s.split(" —")[0].strip() for s in summaries]
    assert clients[:5] == ["npm", "yarn", "yarn classic", "pnpm", "bun"]
    assert not [s for s in summaries if s.split()[0] in ("pip", "uv", "poetry")]
    (token,) = await site.server.store.list_tokens()
    assert token.scopes == ("npm",)
    assert token.expires_at is not None
    assert abs(token.expires_at - token.created_at - 7 * 86400) < 5
    row = page.locator("#my-tokens tbody tr", has_text="npm-only")
    await expect(row.locator("td[data-label='Scopes']")).to_have_text("npm")
    await expect(row.locator("td[data-label='Expires'] time")).to_have_attribute(
        "datetime", re.compile(r"^\d{4}-\d\d-\d\dT")
    )
    assert await registry_status(site, secret) == 200
    assert await pypi_status(site, secret) == 401
    await panel.get_by_role("button", name="I have saved it").click()

    # A chosen day: the token ends with that day in the viewer's zone (Tokyo).
    await page.get_by_label("Name").fill("until-new-year")
    await page.get_by_label("Expires").select_option(label="On a date…")
    await expect(page.get_by_label("Expiry date")).to_be_visible()
    await page.get_by_label("Expiry date").fill("2099-01-01")
    await page.get_by_role("button", name="Create token").click()
    await expect(page.get_by_role("region", name="Your new token “until-new-year”")).to_be_visible()
    await expect(page.get_by_label("Expiry date")).to_be_hidden()
    (dated,) = [t for t in await site.server.store.list_tokens() if t.name == "until-new-year"]
    assert dated.expires_at is not None
    local = datetime.fromtimestamp(dated.expires_at, ZoneInfo(TIMEZONE))
    assert (local.year, local.month, local.day, local.hour, local.minute) == (2099, 1, 1, 23, 59)
    assert dated.scopes == ("npm", "pypi")

    # No registry ticked: said before anything is sent.
    await page.get_by_role("button", name="I have saved it").click()
    await page.get_by_label("Name").fill("nothing")
    await page.get_by_label("npm registry (npm, yarn, pnpm, bun)").uncheck()
    await page.get_by_label("Python index (pip, uv, poetry)").uncheck()
    await page.get_by_role("button", name="Create token").click()
    await expect(page.get_by_role("alert")).to_have_text(
        "Choose at least one registry the token works for."
    )
    await shot(page, "tokens-scopes-error")
    assert len(await site.server.store.list_tokens()) == 2


async def test_tokens__lifetime_cap_offers_only_shorter_choices(
    start_server: StartServer,
    mail: SmtpServer,
    npm_upstream: NpmRegistry,
    pypi_upstream: PypiIndex,
    page: Page,
    browsing: Browsing,
) -> None:
    server = await start_server(
        npm_upstream=str(npm_upstream.url) + "/", smtp_url=mail.url, token_max_lifetime=30 * 86400
    )
    site = Site(server, mail, npm_upstream, pypi_upstream)
    await site.user("me@example.com")
    await sign_in(page, site, "me@example.com")
    options = await page.get_by_label("Expires").locator("option").all_text_contents()
    assert options == ["Longest allowed (30 days)", "1 day", "7 days", "On a date…"]
    # Only npm is served: only the npm family's setup is offered.
    await page.get_by_label("Name").fill("capped")
    await page.get_by_role("button", name="Create token").click()
    panel = page.get_by_role("region", name="Your new token “capped”")
    await expect(panel).to_be_focused()
    summaries = await panel.locator("details.snippet summary").all_text_contents()
    clients = [s.split(" —")[0].strip() for s in summaries]
    assert clients == ["npm", "yarn", "yarn classic", "pnpm", "bun"]
    (token,) = await server.store.list_tokens()
    assert token.expires_at is not None
    assert abs(token.expires_at - token.created_at - 30 * 86400) < 5
    # Past the cap: the API's refusal, as a sentence.
    await panel.get_by_role("button", name="I have saved it").click()
    browsing.watch.expect_status(400)
    await page.get_by_label("Name").fill("too-long")
    await page.get_by_label("Expires").select_option(label="On a date…")
    await page.get_by_label("Expiry date").fill("2099-01-01")
    await page.get_by_role("button", name="Create token").click()
    await expect(page.get_by_role("alert")).to_have_text(
        "Token lifetime must be at most 30 days (token_max_lifetime)."
    )


async def test_tokens__revoked_elsewhere_disappears_from_a_stale_page(
    site: Site, browsing: Browsing
) -> None:
    user = await site.user("me@example.com")
    await issue_token(site.server.store, user, name="laptop")
    token, _ = await issue_token(site.server.store, user, name="ci")
    first = await browsing.new_page()
    await sign_in(first, site, "me@example.com")
    second = await browsing.new_page()
    await second.goto(site.url)
    await expect(second.locator("#my-tokens tbody tr")).to_have_count(2)

    # Revoked in the first tab; the second still shows it and tries too.
    await first.get_by_role("button", name=f"Revoke ci ({token.prefix})").click()
    await first.get_by_role("dialog").get_by_role("button", name="Revoke").click()
    await expect(first.locator("#my-tokens tbody tr")).to_have_count(1)
    browsing.watch.expect_status(400)
    await second.get_by_role("button", name=f"Revoke ci ({token.prefix})").click()
    await second.get_by_role("dialog").get_by_role("button", name="Revoke").click()
    await expect(second.get_by_role("status").first).to_have_text(
        "Token “ci” was already revoked; the list is up to date."
    )
    await expect(second.locator("#my-tokens tbody tr")).to_have_count(1)
    await expect(second.locator("#my-tokens tbody tr")).to_contain_text("laptop")
