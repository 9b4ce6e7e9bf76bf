"""The mail queue: a registration's token and mail are written together; a mail whose sender
died is delivered by the background sender (and its token works); failures retry with a delay
and a failed first send takes the whole registration back (503)."""

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest
from yarl import URL

from tests.api_support import NPM_UPSTREAM, TOKEN_RE, call
from tests.conftest import StartServer
from tests.smtp import SmtpServer
from tokenapi import mailqueue, tokens
from tokenapi.config import TokenApiConfig
from tokenapi.keys import config_key
from tokenapi.mail import Mailer, welcome_message
from tokenapi.store import Store, registration
from tokenapi.store import mailqueue as queue


async def crashed_registration(store: Store, config: TokenApiConfig, email: str) -> str:
    """What a worker that died right after committing a registration leaves behind."""
    secret = tokens.generate()
    await registration.register(
        store,
        email,
        language="en",
        language_given=False,
        token_name="email",
        digest=tokens.digest(secret),
        prefix=tokens.display_prefix(secret),
        welcome=lambda to, lang: mailqueue.serialize(welcome_message(config, to, lang, secret)),
        reset=lambda to, lang: "unused",
        code_digest=lambda user_id: "unused",
        code_ttl=3600,
        lease=0.0,  # its lease ran out at once
    )
    return secret


async def test_mailqueue__mail_of_a_dead_sender_is_delivered_and_its_token_works(
    start_server: StartServer, mail: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mailqueue, "POLL_INTERVAL", 0.05)
    server = await start_server(npm_upstream=NPM_UPSTREAM, smtp_url=mail.url)
    config = server.app[config_key]
    secret = await crashed_registration(server.store, config, "late@example.com")
    deadline = time.monotonic() + 30
    while not mail.inbox.messages and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    delivered = mail.inbox.only()
    assert delivered["To"] == "late@example.com"
    assert set(TOKEN_RE.findall(mail.inbox.text())) == {secret}
    whoami = await call(server, "GET", "/npm/-/whoami", token=secret)
    assert whoami.status == 200
    # Sent mail (and its secret) leaves the store: the sender deletes the row once the SMTP server
    # has answered, which may come just after the message reached the inbox.
    while await queue.pending(server.store) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert await queue.pending(server.store) == 0
    async with server.store.transaction() as db:
        await db.execute("UPDATE users SET language = language")  # one more commit
    db_file = server.settings.data_dir / "pkgate.db"
    with sqlite3.connect(db_file) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert secret.encode() not in db_file.read_bytes()  # zeroed on delete, not left in a page


async def test_mailqueue__failed_deliveries_are_retried_later_then_sent(
    tmp_path: Path, mail: SmtpServer
) -> None:
    store = await Store.open(tmp_path / "pkgate.db")
    try:
        config = TokenApiConfig(
            database=tmp_path / "pkgate.db",
            public_url=URL("http://127.0.0.1:1"),
            outbox_dir=tmp_path / "outbox",
            smtp_url=mail.url,
            smtp_timeout=5,
        )
        mailer = Mailer(config)
        await crashed_registration(store, config, "retry@example.com")
        mail.inbox.refuse = True
        assert await mailqueue.deliver_due(store, mailer, lease=60) == 0
        rows = await store._fetchall(
            "SELECT attempts, next_attempt_at, last_error FROM mail_outbox"
        )
        assert len(rows) == 1
        attempts, next_at, error = rows[0]
        assert attempts == 2  # the registration's own attempt, then this one
        assert next_at > time.time() + mailqueue.FIRST_RETRY
        assert error
        assert await mailqueue.deliver_due(store, mailer, lease=60) == 0  # not due yet
        mail.inbox.refuse = False
        async with store.transaction() as db:
            await db.execute("UPDATE mail_outbox SET next_attempt_at = 0")
        assert await mailqueue.deliver_due(store, mailer, lease=60) == 1
        assert mail.inbox.only()["To"] == "retry@example.com"
        assert await queue.pending(store) == 0
    finally:
        await store.close()


async def test_mailqueue__a_refused_first_send_takes_everything_back(
    start_server: StartServer, mail: SmtpServer
) -> None:
    server = await start_server(npm_upstream=NPM_UPSTREAM, smtp_url=mail.url)
    mail.inbox.refuse = True
    answer = await call(server, "POST", "/api/v1/tokens", json={"email": "no@example.com"})
    assert answer.status == 503
    counts = await server.store.table_counts()
    for table in ("users", "tokens", "reset_codes", "mail_outbox"):
        assert counts[table] == 0, table
    mail.inbox.refuse = False
    answer = await call(server, "POST", "/api/v1/tokens", json={"email": "no@example.com"})
    assert answer.status == 202
    assert mail.inbox.only()["Subject"] == "Your pkgate token"  # a welcome, not a reset
    assert (await server.store.table_counts())["mail_outbox"] == 0
