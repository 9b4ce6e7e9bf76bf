"""Fixtures of the web page tests: pkgate with real fake upstreams and a real SMTP server, and the
distribution's Chromium driven by Playwright.

Every page a test opens is watched: a console error, an uncaught exception or a
Content-Security-Policy violation fails the test, except the "Failed to load resource" line
Chromium prints for an API answer the test itself provoked (a wrong password's 401) and declared
with ``expect_status``.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Page, async_playwright

from tests.conftest import TOP, RunningServer, StartServer, upstreams
from tests.smtp import SmtpServer
from tests.upstreams.npm_registry import NpmRegistry
from tests.upstreams.pypi_index import PypiIndex
from tokenapi.passwords import hash_password_async
from tokenapi.store import User

CHROMIUM = Path(os.environ.get("PKGATE_CHROMIUM", "/usr/bin/chromium"))
# What Chromium needs on these machines: no sandbox as root, and no background connections
# (the network is closed; each refused attempt would be noise, or a console error).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = TOP / "tests" / "screenshots"
PASSWORD = "correct horse battery staple"
TIMEZONE = "Asia/Tokyo"  # not the server's (UTC): dates must be converted in the browser

# Collects CSP violations of each document, before any page script runs.
WATCH_SCRIPT = """
window.__pkgateViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__pkgateViolations.push(e.violatedDirective + " " + e.blockedURI);
});
"""
FAILED_LOAD = re.compile(r"Failed to load resource: the server responded with a status of (\d+)")


@dataclass
class Watch:
    """What went wrong in the pages of one browser context."""

    problems: list[str] = field(default_factory=list)
    expected: Counter[int] = field(default_factory=Counter)
    requested: list[str] = field(default_factory=list)

    def expect_status(self, status: int, times: int = 1) -> None:
        """The page will see ``status`` from the API ``times`` times on purpose."""
        self.expected[status] += times

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type not in ("error", "warning"):
            return
        found = FAILED_LOAD.search(message.text)
        if found and self.expected[int(found.group(1))] > 0:
            self.expected[int(found.group(1))] -= 1
            return
        self.problems.append(f"console {message.type}: {message.text} ({message.location})")

    def watch(self, page: Page) -> None:
        page.on("console", self.on_console)
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        page.on("request", lambda request: self.requested.append(request.url))

    async def check(self, pages: list[Page]) -> None:
        for page in pages:
            if page.is_closed():
                continue
            violations = await page.evaluate("window.__pkgateViolations || []")
            self.problems.extend(f"CSP violation on {page.url}: {v}" for v in violations)
        assert not self.problems, self.problems


@dataclass
class Site:
    """pkgate as the browser sees it, with its mail server and upstreams."""

    server: RunningServer
    mail: SmtpServer
    npm: NpmRegistry
    pypi: PypiIndex

    @property
    def url(self) -> str:
        """The public URL with a trailing slash: the start page."""
        return str(self.server.url).rstrip("/") + "/"

    async def user(self, email: str, *, admin: bool = False) -> User:
        return await self.server.store.create_user(
            email, is_admin=admin, password_hash=await hash_password_async(PASSWORD)
        )


@pytest.fixture
def npm_upstream(registry: NpmRegistry) -> NpmRegistry:
    """The shared fake npm registry (tests/conftest.py), under the name the web tests use."""
    return registry


@pytest.fixture
def pypi_upstream(index: PypiIndex) -> PypiIndex:
    """The shared fake PyPI index (tests/conftest.py), under the name the web tests use."""
    return index


@pytest.fixture
async def site(
    start_server: StartServer, mail: SmtpServer, npm_upstream: NpmRegistry, pypi_upstream: PypiIndex
) -> Site:
    server = await start_server(**upstreams(npm_upstream, pypi_upstream), smtp_url=mail.url)
    return Site(server, mail, npm_upstream, pypi_upstream)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: tests/run.sh installs the distribution's chromium")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()


@dataclass
class Browsing:
    """One browser profile (cookies, clipboard) and the pages opened in it."""

    context: BrowserContext
    watch: Watch
    pages: list[Page] = field(default_factory=list)

    async def new_page(self, **_: Any) -> Page:
        page = await self.context.new_page()
        self.watch.watch(page)
        self.pages.append(page)
        return page


async def open_context(browser: Browser, **options: Any) -> Browsing:
    context = await browser.new_context(
        viewport=options.pop("viewport", {"width": 1280, "height": 900}),
        timezone_id=TIMEZONE,
        locale="en-US",
        **options,
    )
    await context.add_init_script(WATCH_SCRIPT)
    return Browsing(context, Watch())


@pytest.fixture
async def browsing(browser: Browser) -> AsyncIterator[Browsing]:
    """A fresh profile; at the end no page of it may have logged an error or a CSP violation."""
    session = await open_context(browser)
    await session.context.grant_permissions(["clipboard-read", "clipboard-write"])
    try:
        yield session
        await session.watch.check(session.pages)
    finally:
        await session.context.close()


@pytest.fixture
async def page(browsing: Browsing) -> Page:
    return await browsing.new_page()


async def shot(page: Page, name: str) -> None:
    """Save a full-page screenshot for review under tests/screenshots/."""
    SCREENSHOTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


async def sign_in(page: Page, site: Site, email: str, password: str = PASSWORD) -> None:
    """Sign in through the start page's form, by keyboard, and wait for the tokens page."""
    await page.goto(site.url)
    form = page.get_by_role("region", name="Sign in")
    await form.get_by_label("Email", exact=True).fill(email)
    await form.get_by_label("Password").fill(password)
    await form.get_by_label("Password").press("Enter")
    await page.get_by_role("heading", name="My tokens", level=1).wait_for()
