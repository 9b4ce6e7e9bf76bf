"""The store's download history and breach notification queue, on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tokenapi import tokens
from tokenapi.lastused import MAX_DOWNLOADS_PER_FLUSH, UsageRecorder
from tokenapi.store import DownloadQuery, NewNotification, Store, Token

NOW = 2_000_000_000.0


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    s = await Store.open(database_url)
    yield s
    await s.close()


async def token_of(
    store: Store, email: str, name: str = "t", expires_at: float | None = None
) -> Token:
    user = await store.get_user_by_email(email) or await store.create_user(email)
    secret = tokens.generate()
    return await store.create_token(
        user.id,
        name=name,
        kind="api",
        digest=tokens.digest(secret),
        prefix=secret[:8],
        expires_at=expires_at,
    )


async def test_history__filters_order_and_cursor(store: Store) -> None:
    alice = await token_of(store, "alice@example.com", "laptop")
    bob = await token_of(store, "bob@example.com", "ci")
    rec = UsageRecorder(store)
    rec.record_download(alice.id, "npm", "left-pad", "1.3.0", "left-pad-1.3.0.tgz", NOW - 30)
    rec.record_download(bob.id, "npm", "left-pad", "1.3.0", "left-pad-1.3.0.tgz", NOW - 20)
    rec.record_download(bob.id, "pypi", "demo-app", "1.0.0", "demo_app-1.0.0.tar.gz", NOW - 20)
    rec.record(alice.id, "npm", NOW - 30)
    assert await rec.flush() == 1  # one token's last use; the downloads rode along
    everything = await store.list_downloads(DownloadQuery())
    assert everything[0].email == "bob@example.com"
    assert len(everything) == 3
    stamps = [(r.download.downloaded_at, r.download.id) for r in everything]
    assert stamps == sorted(stamps, reverse=True)

    by_email = await store.list_downloads(DownloadQuery(email="BOB@example.com"))
    assert sorted(r.download.package for r in by_email) == ["demo-app", "left-pad"]
    assert {r.token_name for r in by_email} == {"ci"}
    exact = await store.list_downloads(DownloadQuery(package="left-pad", version="1.3.0"))
    assert [r.email for r in exact] == ["bob@example.com", "alice@example.com"]
    since = await store.list_downloads(DownloadQuery(since=NOW - 25, ecosystem="npm"))
    assert [r.email for r in since] == ["bob@example.com"]
    mine = await store.list_downloads(DownloadQuery(user_id=alice.user_id))
    assert [r.download.token_id for r in mine] == [alice.id]

    first = await store.list_downloads(DownloadQuery(limit=2))
    last = first[-1].download
    rest = await store.list_downloads(DownloadQuery(after=(last.downloaded_at, last.id)))
    assert [r.download.id for r in first + rest] == [r.download.id for r in everything]

    owners = await store.token_owners([alice.id, bob.id, "unknown"])
    assert owners[alice.id] == ("laptop", alice.prefix, alice.user_id, "alice@example.com")
    assert set(owners) == {alice.id, bob.id}


async def test_history__a_download_written_twice_is_kept_once(store: Store) -> None:
    alice = await token_of(store, "alice@example.com")
    rec = UsageRecorder(store)
    rec.record_download(alice.id, "npm", "a", "1.0.0", "a-1.0.0.tgz", NOW)
    batch = rec.pending_downloads()
    await store.record_usage([], batch)
    await store.record_usage([], batch)  # a flush retried after its commit
    assert len(await store.list_downloads(DownloadQuery())) == 1


async def test_prune__only_what_is_older(store: Store) -> None:
    alice = await token_of(store, "alice@example.com")
    rec = UsageRecorder(store)
    for age in (100, 50, 10):
        rec.record_download(alice.id, "npm", f"p{age}", "1.0.0", "f.tgz", NOW - age)
    await rec.flush()
    assert await store.prune_downloads(NOW - 40) == 2
    assert [r.download.package for r in await store.list_downloads(DownloadQuery())] == ["p10"]


async def test_prune_expired_tokens__only_those_expired_before_with_their_history(
    store: Store,
) -> None:
    old = await token_of(store, "ci@example.com", "oidc:old", expires_at=NOW - 100)
    recent = await token_of(store, "ci@example.com", "oidc:recent", expires_at=NOW - 10)
    forever = await token_of(store, "ci@example.com", "laptop")
    revoked = await token_of(store, "ci@example.com", "revoked")
    await store.revoke_token(revoked.id)
    rec = UsageRecorder(store)
    for token in (old, recent, forever):
        rec.record(token.id, "npm", NOW - 200)
        rec.record_download(token.id, "npm", "a", "1.0.0", "a-1.0.0.tgz", NOW - 200)
    await rec.flush()

    assert await store.prune_expired_tokens(NOW - 50) == 1
    assert await store.get_token(old.id) is None
    for kept in (recent, forever, revoked):
        assert await store.get_token(kept.id) is not None
    assert await store.usage(old.id) == []
    left = await store.list_downloads(DownloadQuery())
    assert sorted(r.download.token_id for r in left) == sorted([recent.id, forever.id])
    assert await store.prune_expired_tokens(NOW - 50) == 0


async def test_package_downloads__only_before_the_time_and_users_with_an_active_token(
    store: Store,
) -> None:
    alice = await token_of(store, "alice@example.com")
    gone = await token_of(store, "gone@example.com")
    rec = UsageRecorder(store)
    rec.record_download(alice.id, "npm", "evil", "1.0.0", "evil-1.0.0.tgz", NOW - 10)
    rec.record_download(alice.id, "npm", "evil", "1.0.1", "evil-1.0.1.tgz", NOW + 10)
    rec.record_download(gone.id, "npm", "evil", "1.0.0", "evil-1.0.0.tgz", NOW - 10)
    await rec.flush()
    await store.revoke_token(gone.id)
    rec.record_download(alice.id, "npm", "evil", "1.0.0", "evil-1.0.0.tgz", NOW - 30)
    await rec.flush()
    found = await store.package_downloads("npm", "evil", before=NOW)
    assert [(a.email, a.version, a.language, a.count) for a in found] == [
        ("alice@example.com", "1.0.0", "en", 2)
    ]
    assert (found[0].first, found[0].last) == (NOW - 30, NOW - 10)
    assert found[0].token_id == alice.id


async def test_notifications__once_per_advisory_and_user_claimed_once(store: Store) -> None:
    alice = await token_of(store, "alice@example.com")
    item = NewNotification("MAL-1", alice.user_id, "bad", NOW - 5, '{"lines": []}')
    assert await store.add_notifications([item], NOW) == 1
    assert await store.add_notifications([item], NOW) == 0
    assert await store.next_notification_due() == NOW

    claimed = await store.claim_notifications(NOW, lease=60)
    assert [(n.advisory_id, n.email, n.active_tokens, n.attempts) for n in claimed] == [
        ("MAL-1", "alice@example.com", 1, 0)
    ]
    assert await store.claim_notifications(NOW + 1, lease=60) == []  # leased
    assert await store.next_notification_due() == NOW + 60

    await store.retry_notification("MAL-1", alice.user_id, at=NOW + 120, error="SMTP down")
    assert await store.claim_notifications(NOW + 100, lease=60) == []
    counts, failing = await store.notification_summary()
    assert counts["pending"] == 1
    assert failing == [("MAL-1", "alice@example.com", 1, "SMTP down")]
    again = await store.claim_notifications(NOW + 120, lease=60)
    assert [n.attempts for n in again] == [1]
    await store.finish_notification("MAL-1", alice.user_id, state="sent", now=NOW + 121)
    counts, failing = await store.notification_summary()
    assert counts == {"pending": 0, "sent": 1, "failed": 0, "skipped": 0}
    assert failing == []
    assert await store.next_notification_due() is None
    assert await store.claim_notifications(NOW + 10_000, lease=60) == []


async def test_backlog__written_in_bounded_flushes_and_all_of_it_at_shutdown(store: Store) -> None:
    alice = await token_of(store, "alice@example.com")
    rec = UsageRecorder(store)
    total = MAX_DOWNLOADS_PER_FLUSH * 2 + 7
    for i in range(total):
        rec.record_download(alice.id, "npm", "p", f"1.0.{i}", "p.tgz", NOW + i)
    await rec.flush()
    assert rec.downloads_written == MAX_DOWNLOADS_PER_FLUSH
    assert len(rec.pending_downloads()) == total - MAX_DOWNLOADS_PER_FLUSH
    async with rec.running():
        pass  # the shutdown flush writes the whole rest
    assert rec.pending_downloads() == []
    assert await store.count_rows("downloads") == total
