"""Breach notifications (SPEC 16): one mail per (advisory, user), in their language, exactly once.

Downloads go through a real pkgate in front of the fake npm registry; mail goes to a real SMTP
server (aiosmtpd).  Restarts are real: the app is stopped and a new one opened on the same data.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from tests.api_support import call
from tests.conftest import RunningServer, StartServer
from tests.smtp import SmtpServer
from tests.upstreams.npm_registry import NpmRegistry
from tokenapi import tokens
from tokenapi.breach import BreachEntry, BreachNotifier
from tokenapi.config import TokenApiConfig
from tokenapi.issue import issue_token
from tokenapi.keys import breach_key
from tokenapi.lastused import UsageRecorder
from tokenapi.mail import Mailer
from tokenapi.store import Store

ADVISORY = "MAL-2026-0042"
SUMMARY = "Malicious code in pkg-plain: steals environment variables on install"


@pytest.fixture
def start(
    start_server: StartServer, registry: NpmRegistry, mail: SmtpServer, database_url: str
) -> Callable[[], Awaitable[RunningServer]]:
    """A pkgate on the SQLite or the PostgreSQL store; each call is a (re)start on the same one."""

    async def started() -> RunningServer:
        # Downloads stay in memory (flush far away): the notifier must write them out first.
        return await start_server(
            npm_upstream=str(registry.url) + "/",
            smtp_url=mail.url,
            last_used_flush=3600,
            database_url=database_url,
        )

    return started


Start = Callable[[], Awaitable[RunningServer]]


def notifier(server: RunningServer) -> BreachNotifier:
    return server.app[breach_key]


async def download(server: RunningServer, registry: NpmRegistry, secret: str, version: str) -> None:
    path = registry.tarball_path(registry.package("pkg-plain", version))
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            server.url / "npm" / path.lstrip("/"), headers={"Authorization": f"Bearer {secret}"}
        ) as resp,
    ):
        await resp.read()
        assert resp.status == 200


def entry(first_seen: float, versions: tuple[str, ...] = ("1.1.0",)) -> BreachEntry:
    return BreachEntry(ADVISORY, SUMMARY, "npm", "pkg-plain", lambda v: v in versions, first_seen)


def recipients(mail: SmtpServer) -> list[str]:
    return sorted(str(m["To"]) for m in mail.inbox.messages)


async def metric(server: RunningServer, name: str) -> float:
    answer = await call(server, "GET", "/metrics")
    match = re.search(rf"^{name}(?:_total)? (\S+)$", answer.raw.decode(), re.M)
    assert match, name
    return float(match.group(1))


async def test_breach__mails_each_affected_user_once_in_their_language(
    start: Start, registry: NpmRegistry, mail: SmtpServer
) -> None:
    server = await start()
    store = server.store
    await store.create_user("hana@example.com", language="ja")
    alice = await server.token("alice@example.com", name="laptop")
    alice_ci = await server.token("alice@example.com", name="ci")
    hana = await server.token("hana@example.com", name="build")
    safe = await server.token("safe@example.com")  # downloaded an unaffected version
    gone = await server.token("gone@example.com")  # revoked their only token
    late = await server.token("late@example.com")  # downloaded after the advisory was seen

    for secret in (alice, alice_ci, hana, gone):
        await download(server, registry, secret, "1.1.0")
    await download(server, registry, safe, "1.0.0")
    revoked = await call(server, "DELETE", "/api/v1/tokens", token=gone)
    assert revoked.status == 200
    first_seen = time.time()
    await download(server, registry, late, "1.1.0")

    notify = notifier(server)
    notify.entries_added([entry(first_seen)])
    await notify.wait_idle()

    assert recipients(mail) == ["alice@example.com", "hana@example.com"]
    by_to = {str(m["To"]): m for m in mail.inbox.messages}
    english = by_to["alice@example.com"]
    assert ADVISORY in english["Subject"]
    assert "pkg-plain" in english["Subject"]
    text = mail.inbox.text(mail.inbox.messages.index(english))
    assert SUMMARY in text
    assert "pkg-plain 1.1.0 (npm)" in text
    # Both of alice's tokens are named, with their prefixes, in her one mail.
    assert f'token "laptop" ({alice[:8]}…)' in text
    assert f'token "ci" ({alice_ci[:8]}…)' in text
    assert "What to do" in text
    assert "Rotate every secret" in text
    assert alice not in text  # prefixes only, never a secret

    japanese = by_to["hana@example.com"]
    assert "セキュリティ警告" in japanese["Subject"]
    jtext = mail.inbox.text(mail.inbox.messages.index(japanese))
    assert "対応のお願い" in jtext
    assert f"トークン「build」({hana[:8]}…)" in jtext

    # The refresh reporting the same entry again mails no one twice; the advisory widened to
    # 1.0.0 reaches only the one user it newly concerns.
    notify.entries_added([entry(first_seen)])
    await notify.wait_idle()
    assert len(mail.inbox.messages) == 2
    notify.entries_added([entry(first_seen, ("1.0.0", "1.1.0"))])
    await notify.wait_idle()
    assert recipients(mail) == ["alice@example.com", "hana@example.com", "safe@example.com"]
    assert await metric(server, "pkgate_breach_mails_sent") == 3
    status = await notify.status()
    assert status["notifications"]["sent"] == 3
    assert status["send_failures"] == 0


async def test_breach__no_second_mail_after_a_restart(
    start: Start, registry: NpmRegistry, mail: SmtpServer
) -> None:
    server = await start()
    secret = await server.token("alice@example.com")
    await download(server, registry, secret, "1.1.0")
    first_seen = time.time()
    notifier(server).entries_added([entry(first_seen)])
    await notifier(server).wait_idle()
    assert recipients(mail) == ["alice@example.com"]
    await server.close()

    again = await start()  # same data directory
    notifier(again).entries_added([entry(first_seen)])
    await notifier(again).wait_idle()
    assert recipients(mail) == ["alice@example.com"]
    assert (await notifier(again).status())["notifications"]["sent"] == 1


async def test_breach__smtp_failure_is_counted_retried_and_survives_a_restart(
    start: Start, registry: NpmRegistry, mail: SmtpServer
) -> None:
    server = await start()
    secret = await server.token("alice@example.com")
    await download(server, registry, secret, "1.1.0")
    first_seen = time.time()
    mail.inbox.refuse = True
    notify = notifier(server)
    clock = [time.time()]
    notify.clock = lambda: clock[0]
    notify.entries_added([entry(first_seen)])
    await notify.wait_idle()
    assert mail.inbox.messages == []
    assert notify.failures == 1
    assert await metric(server, "pkgate_breach_mail_failures") == 1
    status = await notify.status()
    assert status["notifications"]["pending"] == 1
    assert status["failing"][0]["advisory_id"] == ADVISORY
    assert status["failing"][0]["attempts"] == 1
    assert "SMTP" in status["failing"][0]["error"]

    # Still refused when the retry comes due (after retry_base): a second failure.
    clock[0] += notify.retry_base + 1
    await notify.wait_idle()
    assert notify.failures == 2
    assert mail.inbox.messages == []
    await server.close()

    # A restart keeps the notification; once the backoff has passed it goes out, once.
    mail.inbox.refuse = False
    again = await start()
    later = notifier(again)
    later.clock = lambda: time.time() + 4 * 3600
    await later.wait_idle()
    assert recipients(mail) == ["alice@example.com"]
    notifier(again).entries_added([entry(first_seen)])
    await later.wait_idle()
    assert recipients(mail) == ["alice@example.com"]
    status = await later.status()
    assert status["notifications"] == {"pending": 0, "sent": 1, "failed": 0, "skipped": 0}


async def test_breach__gives_up_after_max_attempts_and_reports_it(
    start: Start, registry: NpmRegistry, mail: SmtpServer
) -> None:
    server = await start()
    secret = await server.token("alice@example.com")
    await download(server, registry, secret, "1.1.0")
    mail.inbox.refuse = True
    notify = notifier(server)
    notify.max_attempts = 2
    clock = [time.time()]
    notify.clock = lambda: clock[0]
    notify.entries_added([entry(time.time())])
    await notify.wait_idle()
    clock[0] += 10 * notify.retry_base
    await notify.wait_idle()
    status = await notify.status()
    assert status["notifications"]["failed"] == 1
    assert status["notifications"]["pending"] == 0
    assert await metric(server, "pkgate_breach_mails_failed") == 1
    mail.inbox.refuse = False
    clock[0] += 100 * notify.retry_base
    await notify.wait_idle()
    assert mail.inbox.messages == []


async def test_breach__user_who_revokes_before_the_send_is_skipped(
    start: Start, registry: NpmRegistry, mail: SmtpServer
) -> None:
    server = await start()
    secret = await server.token("alice@example.com")
    await download(server, registry, secret, "1.1.0")
    mail.inbox.refuse = True
    notify = notifier(server)
    clock = [time.time()]
    notify.clock = lambda: clock[0]
    notify.entries_added([entry(time.time())])
    await notify.wait_idle()
    assert (await call(server, "DELETE", "/api/v1/tokens", token=secret)).status == 200
    mail.inbox.refuse = False
    clock[0] += 10 * notify.retry_base
    await notify.wait_idle()
    assert mail.inbox.messages == []
    assert (await notify.status())["notifications"]["skipped"] == 1


async def test_breach__pypi_names_compare_normalised(
    start: Start, registry: NpmRegistry, mail: SmtpServer
) -> None:
    server = await start()
    secret = await server.token("py@example.com")
    token = await server.validator.validate(secret)
    assert token is not None
    server.recorder.record_download(
        token.id, "pypi", "demo-app", "1.0.0", "demo_app-1.0.0-py3-none-any.whl"
    )
    notify = notifier(server)
    notify.entries_added(
        [BreachEntry("PYSEC-1", "bad", "pypi", "Demo_App", lambda v: v == "1.0.0", time.time())]
    )
    await notify.wait_idle()
    assert recipients(mail) == ["py@example.com"]
    assert "demo-app 1.0.0 (pypi)" in mail.inbox.text()


async def test_breach__two_instances_on_one_database_send_one_mail(
    database_url: str, mail: SmtpServer, tmp_path: Path
) -> None:
    """Every instance hears of the same new entry; the queue and its leases keep it to one mail."""
    config = TokenApiConfig(
        database=database_url,
        public_url=URL("http://pkgate.test"),
        outbox_dir=tmp_path / "outbox",
        smtp_url=mail.url,
    )
    stores = [await Store.open(database_url) for _ in range(2)]
    try:
        user = await stores[0].create_user("alice@example.com")
        _, secret = await issue_token(stores[0], user, name="laptop")
        token = await stores[0].lookup_digest(tokens.digest(secret))
        assert token is not None
        recorders = [UsageRecorder(s) for s in stores]
        recorders[1].record_download(token.id, "npm", "pkg-plain", "1.1.0", "pkg-plain-1.1.0.tgz")
        notifiers = [
            BreachNotifier(s, Mailer(config), config, r)
            for s, r in zip(stores, recorders, strict=True)
        ]
        async with notifiers[0].running(), notifiers[1].running():
            for n in notifiers:
                n.entries_added([entry(time.time() + 1)])
            await asyncio.gather(*(n.wait_idle() for n in notifiers))
        assert recipients(mail) == ["alice@example.com"]
        assert sum(n.sent for n in notifiers) == 1
    finally:
        for s in stores:
            await s.close()


async def test_breach__a_large_feed_looks_up_only_downloaded_packages(
    start: Start, registry: NpmRegistry, mail: SmtpServer
) -> None:
    server = await start()
    secret = await server.token("alice@example.com")
    await download(server, registry, secret, "1.1.0")
    notify = notifier(server)
    first_seen = time.time()
    noise = [
        BreachEntry(f"MAL-{i}", "x", "npm", f"never-downloaded-{i}", lambda v: True, first_seen)
        for i in range(5000)
    ]
    notify.entries_added([*noise, entry(first_seen)])
    await notify.wait_idle()
    assert recipients(mail) == ["alice@example.com"]
    assert notify.lookups == 1
