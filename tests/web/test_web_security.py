"""The page's defences: security headers on every page and asset, and, in a real Chromium, a
signed-in browser visiting a hostile page on another origin of the same site (so the SameSite
cookie is sent and only the Origin check stands between it and the API)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import expect

from proxy.web.security import CONTENT_SECURITY_POLICY
from tests.conftest import StartServer, serve_app
from tests.web.conftest import Browsing, Site, shot, sign_in
from tokenapi.issue import issue_token

PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def test_policy__allows_nothing_inline_nor_foreign() -> None:
    directives = dict(d.split(" ", 1) for d in CONTENT_SECURITY_POLICY.split("; "))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in CONTENT_SECURITY_POLICY


async def test_headers__pages_and_assets(site: Site) -> None:
    await site.user("me@example.com")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(site.url) as resp:
            assert resp.status == 200
            assert resp.content_type == "text/html"
            page = await resp.text()
            for name, value in PAGE_HEADERS.items():
                assert resp.headers[name] == value, name
            assert resp.headers["Cache-Control"] == "no-store"
        # Every asset the page names is pkgate's own, under its own path.
        assets = [part.split('"', 1)[0] for part in page.split('="/-/static/')[1:]]
        assert sorted(a.split("?")[0] for a in assets) == ["app.css", "app.js", "favicon.svg"]
        assert "<script>" not in page
        assert " style=" not in page
        assert "http" not in page.split("<body", 1)[0].replace("http-equiv", "")
        for asset in assets:
            async with http.get(f"{site.url}-/static/{asset}") as resp:
                assert resp.status == 200
                assert resp.headers["X-Content-Type-Options"] == "nosniff"
                assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"
                etag = resp.headers["ETag"]
            async with http.get(
                f"{site.url}-/static/{asset.split('?')[0]}", headers={"If-None-Match": etag}
            ) as resp:
                assert resp.status == 304
        for bad in ("nope.js", "..%2Fpages.py", "%2e%2e%2f__init__.py"):
            async with http.get(f"{site.url}-/static/{bad}") as resp:
                assert resp.status == 404, bad

        async with http.post(
            f"{site.url}api/session",
            json={"email": "me@example.com", "password": "correct horse battery staple"},
        ) as resp:
            assert resp.status == 200
        async with http.get(site.url) as resp:
            assert "My tokens" in await resp.text()
            assert resp.headers["Cache-Control"] == "no-store"
            assert resp.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY


ATTACK = """<!doctype html>
<title>cute cats</title>
<form id="mint" method="post" action="{target}api/tokens" enctype="text/plain">
<input name='{{"name":"evil","x":"' value='"}}'>
</form>
<iframe id="frame" src="{target}"></iframe>
<script>
window.results = {{}};
async function attack() {{
  try {{
    await fetch("{target}api/tokens", {{method: "POST", mode: "no-cors", credentials: "include",
      headers: {{"Content-Type": "text/plain"}}, body: '{{"name":"evil-fetch"}}'}});
    window.results.fetchPost = "sent";
  }} catch (e) {{ window.results.fetchPost = "failed"; }}
  try {{
    await fetch("{target}api/tokens/{token_id}", {{method: "DELETE", credentials: "include"}});
    window.results.fetchDelete = "sent";
  }} catch (e) {{ window.results.fetchDelete = "blocked"; }}
  window.results.done = true;
}}
attack();
</script>
"""


@pytest.fixture
async def attacker(site: Site) -> AsyncIterator[dict[str, str]]:
    """A hostile site on another port of the same host: same site, different origin."""
    pages: dict[str, str] = {}

    async def serve(request: web.Request) -> web.Response:
        return web.Response(text=pages["page"], content_type="text/html")

    app = web.Application()
    app.router.add_get("/", serve)
    runner, url = await serve_app(app)
    pages["url"] = str(url) + "/"
    yield pages
    await runner.cleanup()


async def test_csrf__hostile_origin_cannot_create_or_revoke_or_frame(
    site: Site, browsing: Browsing, attacker: dict[str, str]
) -> None:
    user = await site.user("me@example.com")
    token, secret = await issue_token(site.server.store, user, name="laptop")
    mine = await browsing.new_page()
    await sign_in(mine, site, "me@example.com")
    attacker["page"] = ATTACK.format(target=site.url, token_id=token.id)

    # The hostile page is not pkgate's: its own errors (blocked frame, refused fetches) are
    # expected, so it is opened outside the watch.
    evil = await browsing.context.new_page()
    await evil.goto(attacker["url"])
    await evil.wait_for_function("window.results && window.results.done")
    results = await evil.evaluate("window.results")
    assert results["fetchDelete"] == "blocked"  # a DELETE needs a preflight, which fails
    # The page was not framed.
    frame = evil.frame_locator("#frame")
    await expect(frame.get_by_role("heading", name="My tokens")).to_have_count(0)
    # The form post carries the SameSite cookie (same site) but the wrong Origin: refused.
    async with evil.expect_navigation() as navigation:
        await evil.evaluate("document.getElementById('mint').submit()")
    response = await navigation.value
    assert response is not None
    assert response.status == 403
    await expect(evil.locator("body")).to_contain_text("Origin does not match this server")
    await shot(evil, "csrf-refused")

    # Nothing was created or revoked; the user's own page still works.
    tokens = await site.server.store.list_tokens(user_id=user.id)
    assert [t.name for t in tokens] == ["laptop"]
    assert await site.server.validator.validate(secret) is not None
    await mine.reload()
    await expect(mine.locator("#my-tokens tbody tr")).to_have_count(1)


async def test_headers__opener_policy_only_on_https(start_server: StartServer) -> None:
    """COOP is honoured only on trustworthy origins; elsewhere Chromium logs an error for it."""
    server = await start_server(
        npm_upstream="http://127.0.0.1:9/", public_url="https://pkgate.example"
    )
    port = server.runner.addresses[0][1]
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/") as resp:
        assert resp.status == 200
        assert resp.headers["Cross-Origin-Opener-Policy"] == "same-origin"
        assert resp.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    plain = await start_server(npm_upstream="http://127.0.0.1:9/")
    async with aiohttp.ClientSession() as http, http.get(str(plain.url) + "/") as resp:
        assert resp.status == 200
        assert "Cross-Origin-Opener-Policy" not in resp.headers
