"""Signing in and out, a wrong password, and registering by email, in a real Chromium."""

from __future__ import annotations

from playwright.async_api import Page, expect

from tests.api_support import TOKEN_RE, code_in, tokens_in
from tests.conftest import StartServer
from tests.smtp import SmtpServer
from tests.upstreams.npm_registry import NpmRegistry
from tests.upstreams.pypi_index import PypiIndex
from tests.web.conftest import PASSWORD, Browsing, Site, shot, sign_in


async def test_signin__wrong_password_then_right_then_sign_out(
    site: Site, page: Page, browsing: Browsing
) -> None:
    await site.user("me@example.com")
    await page.goto(site.url)
    await expect(page).to_have_title("Sign in · pkgate")
    await shot(page, "signin")
    form = page.get_by_role("region", name="Sign in")

    browsing.watch.expect_status(401)
    await form.get_by_label("Email", exact=True).fill("me@example.com")
    await form.get_by_label("Password").fill("not the password")
    await form.get_by_role("button", name="Sign in").click()
    alert = form.get_by_role("alert")
    await expect(alert).to_have_text("Invalid email or password.")
    # The password field is emptied and focused for the next try; no cookie was set.
    await expect(form.get_by_label("Password")).to_be_focused()
    await expect(form.get_by_label("Password")).to_have_value("")
    assert await browsing.context.cookies() == []
    await shot(page, "signin-wrong-password")

    await form.get_by_label("Password").fill(PASSWORD)
    await form.get_by_label("Password").press("Enter")
    await expect(page.get_by_role("heading", name="My tokens", level=1)).to_be_visible()
    await expect(page.get_by_role("banner")).to_contain_text("me@example.com")
    (cookie,) = await browsing.context.cookies()
    assert cookie["name"] == "pkgate_session"
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["secure"] is False  # http public URL; Secure under https is an API test
    assert cookie["path"] == "/"
    # The cookie is invisible to scripts.
    assert "pkgate_session" not in await page.evaluate("document.cookie")

    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("heading", name="Welcome to pkgate")).to_be_visible()
    assert await browsing.context.cookies() == []
    # The session is gone on the server too, not only in this browser.
    assert await site.server.store.session_user(cookie["value"]) is None
    await shot(page, "signed-out")


async def test_signin__session_survives_reload_and_unknown_cookie_shows_sign_in(
    site: Site, page: Page, browsing: Browsing
) -> None:
    await site.user("me@example.com")
    await sign_in(page, site, "me@example.com")
    await page.reload()
    await expect(page.get_by_role("heading", name="My tokens", level=1)).to_be_visible()
    await browsing.context.clear_cookies()
    await browsing.context.add_cookies(
        [{"name": "pkgate_session", "value": "forged-value", "url": site.url}]
    )
    await page.reload()
    await expect(page.get_by_role("heading", name="Welcome to pkgate")).to_be_visible()


async def test_register__check_your_inbox_and_the_mailed_token_works(
    site: Site, page: Page
) -> None:
    await page.goto(site.url)
    form = page.get_by_role("region", name="Get a token by email")
    await form.get_by_label("Email", exact=True).fill("new@example.com")
    await form.get_by_label("Language of the email").select_option("ja")
    await form.get_by_role("button", name="Send me a token").click()
    await expect(form.get_by_role("status")).to_contain_text("Check your inbox")
    await shot(page, "register-check-inbox")

    message = site.mail.inbox.only()
    assert message["To"] == "new@example.com"
    (secret,) = set(tokens_in(site.mail.inbox.text()))
    user = await site.server.store.get_user_by_email("new@example.com")
    assert user is not None
    assert user.language == "ja"
    assert await site.server.validator.validate(secret) is not None


async def test_register__bad_address_is_a_sentence(
    site: Site, page: Page, browsing: Browsing
) -> None:
    browsing.watch.expect_status(400)
    await page.goto(site.url)
    form = page.get_by_role("region", name="Get a token by email")
    await form.get_by_label("Email", exact=True).fill("not-an-address")
    await form.get_by_role("button", name="Send me a token").click()
    alert = form.get_by_role("alert")
    await expect(alert).to_have_text("A valid email address is required.")
    assert site.mail.inbox.messages == []


async def test_signin__throttled_logins_are_a_sentence(
    start_server: StartServer,
    mail: SmtpServer,
    npm_upstream: NpmRegistry,
    pypi_upstream: PypiIndex,
    page: Page,
    browsing: Browsing,
) -> None:
    server = await start_server(
        npm_upstream=str(npm_upstream.url) + "/", smtp_url=mail.url, login_limit=2
    )
    site = Site(server, mail, npm_upstream, pypi_upstream)
    await site.user("me@example.com")
    await page.goto(site.url)
    form = page.get_by_role("region", name="Sign in")
    browsing.watch.expect_status(401, times=2)
    browsing.watch.expect_status(429)
    for expected in ("Invalid email or password.",) * 2 + (
        "Too many attempts. Wait a few minutes, then try again.",
    ):
        await form.get_by_label("Email", exact=True).fill("me@example.com")
        await form.get_by_label("Password").fill("wrong password")
        await form.get_by_role("button", name="Sign in").click()
        await expect(form.get_by_role("alert")).to_have_text(expected)
        await expect(form.get_by_label("Password")).to_be_focused()
    # Even the right password waits now.
    browsing.watch.expect_status(429)
    await form.get_by_label("Password").fill(PASSWORD)
    await form.get_by_role("button", name="Sign in").click()
    await expect(form.get_by_role("alert")).to_have_text(
        "Too many attempts. Wait a few minutes, then try again."
    )
    assert await browsing.context.cookies() == []


async def test_register__existing_address_then_reset_code_gives_a_new_token_once(
    site: Site, page: Page, browsing: Browsing
) -> None:
    await page.goto(site.url)
    register = page.get_by_role("region", name="Get a token by email")
    for _ in range(2):
        await register.get_by_label("Email", exact=True).fill("dev@example.com")
        await register.get_by_role("button", name="Send me a token").click()
        await expect(register.get_by_role("status")).to_contain_text("Check your inbox")
    assert len(site.mail.inbox.messages) == 2
    (old,) = set(tokens_in(site.mail.inbox.text(0)))
    code = code_in(site.mail.inbox.text(1))

    reset = page.get_by_role("region", name="Have a reset code?")
    browsing.watch.expect_status(400)
    await reset.get_by_label("Email", exact=True).fill("dev@example.com")
    await reset.get_by_label("Reset code").fill("AAAAAAAA" if code != "AAAAAAAA" else "BBBBBBBB")
    await reset.get_by_role("button", name="Get my new token").click()
    await expect(reset.get_by_role("alert")).to_have_text("Invalid or expired code.")
    await expect(reset.get_by_label("Reset code")).to_be_focused()

    await reset.get_by_label("Reset code").fill(code)
    await reset.get_by_label("Reset code").press("Enter")
    panel = page.get_by_role("region", name="Your new token “email”")
    await expect(panel).to_be_focused()
    new = (await page.locator("#new-secret").text_content() or "").strip()
    assert TOKEN_RE.fullmatch(new)
    assert new != old
    npmrc = await panel.locator("details.snippet").first.locator("pre").inner_text()
    assert new in npmrc
    await shot(page, "reset-new-token")
    assert await site.server.validator.validate(old) is None
    assert await site.server.validator.validate(new) is not None
    assert not [u for u in browsing.watch.requested if new in u or code in u]
    await panel.get_by_role("button", name="I have saved it").click()
    await expect(panel).to_be_hidden()
    assert new not in await page.content()
