import asyncio
import os
import sqlite3
from pathlib import Path

import pytest

from tokenapi import tokens
from tokenapi.errors import Conflict, NotFound, StoreUnavailable
from tokenapi.store import MIGRATIONS, SCHEMA_VERSION, Store, UsageUpdate


@pytest.fixture
async def store(database_url: str):
    s = await Store.open(database_url)
    yield s
    await s.close()


async def test_open__migrates_and_uses_wal(tmp_path: Path) -> None:
    s = await Store.open(tmp_path / "p.db")
    await s.close()
    with sqlite3.connect(tmp_path / "p.db") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_open__twice_is_idempotent(tmp_path: Path) -> None:
    for _ in range(2):
        s = await Store.open(tmp_path / "p.db")
        await s.close()


async def test_create_user__email_unique_case_insensitively(store: Store) -> None:
    await store.create_user("a@example.com")
    with pytest.raises(Conflict):
        await store.create_user("A@EXAMPLE.COM")
    assert (await store.get_user_by_email("A@Example.com")) is not None


async def _token(store: Store, user_id: str, kind: str = "api"):
    secret = tokens.generate()
    t = await store.create_token(
        user_id, name="n", kind=kind, digest=tokens.digest(secret), prefix=secret[:8]
    )
    return t, secret


async def test_lookup_digest__finds_active_not_revoked(store: Store) -> None:
    user = await store.create_user("a@example.com")
    token, secret = await _token(store, user.id)
    found = await store.lookup_digest(tokens.digest(secret))
    assert found is not None
    assert found.id == token.id
    assert found.email == "a@example.com"
    await store.revoke_token(token.id)
    assert await store.lookup_digest(tokens.digest(secret)) is None


async def test_create_token__one_active_email_token_per_user(store: Store) -> None:
    user = await store.create_user("a@example.com")
    await _token(store, user.id, kind="email")
    with pytest.raises(Conflict):
        await _token(store, user.id, kind="email")


async def test_revoke_token__someone_elses_is_not_found(store: Store) -> None:
    a = await store.create_user("a@example.com")
    b = await store.create_user("b@example.com")
    token, _ = await _token(store, a.id)
    with pytest.raises(NotFound):
        await store.revoke_token(token.id, user_id=b.id)
    assert len(await store.list_tokens(user_id=a.id)) == 1


async def test_revoke_token__logs_the_revocation(store: Store) -> None:
    user = await store.create_user("a@example.com")
    token, secret = await _token(store, user.id)
    seq = await store.revocation_seq()
    await store.revoke_token(token.id)
    new_seq, digests = await store.revocations_since(seq)
    assert new_seq > seq
    assert digests == [tokens.digest(secret)]


async def test_replace_token__is_atomic(store: Store) -> None:
    user = await store.create_user("a@example.com")
    old, old_secret = await _token(store, user.id, kind="email")
    other, _ = await _token(store, user.id)
    # A duplicate digest makes the insert fail: the revocation must roll back with it.
    with pytest.raises(Conflict):
        await store.replace_token(
            old.id, user.id, name="n", kind="email", digest=tokens.digest(old_secret), prefix="x"
        )
    assert await store.lookup_digest(tokens.digest(old_secret)) is not None
    assert other.id in {t.id for t in await store.list_tokens(user_id=user.id)}


async def test_record_usage__one_transaction_merges_counts(store: Store) -> None:
    user = await store.create_user("a@example.com")
    token, _ = await _token(store, user.id)
    await store.record_usage([UsageUpdate(token.id, 10.0, {"npm": (3, 10.0), "pypi": (1, 5.0)})])
    await store.record_usage([UsageUpdate(token.id, 20.0, {"npm": (2, 20.0)})])
    usage = {u.ecosystem: (u.requests, u.last_used_at) for u in await store.usage(token.id)}
    assert usage == {"npm": (5, 20.0), "pypi": (1, 5.0)}
    refreshed = await store.get_token(token.id)
    assert refreshed is not None
    assert refreshed.last_used_at == 20.0


async def test_record_usage__ignores_deleted_tokens(store: Store) -> None:
    written = await store.record_usage([UsageUpdate("no-such-id", 1.0, {"npm": (1, 1.0)})])
    assert written == 1
    assert await store.usage("no-such-id") == []


async def test_open__instances_starting_together_migrate_once(database_url: str) -> None:
    stores = await asyncio.gather(*(Store.open(database_url) for _ in range(4)))
    try:
        for s in stores:
            assert await s.schema_version() == SCHEMA_VERSION
        user = await stores[0].create_user("a@example.com")
        assert await stores[3].get_user(user.id) == user
    finally:
        for s in stores:
            await s.close()


async def test_open__every_migration_exists_for_both_backends() -> None:
    for number, migration in enumerate(MIGRATIONS, start=1):
        assert migration.sqlite.strip(), f"migration {number} has no SQLite text"
        assert migration.postgresql.strip(), f"migration {number} has no PostgreSQL text"


async def test_open__both_backends_have_the_same_columns(tmp_path: Path, postgres_url: str) -> None:
    lite = await Store.open(tmp_path / "p.db")
    pg = await Store.open(postgres_url)
    try:
        assert await lite.tables() == await pg.tables()
        with sqlite3.connect(tmp_path / "p.db") as db:
            for table in await lite.tables():
                cols = [r[1] for r in db.execute(f"PRAGMA table_info({table})")]
                pg_cols = [
                    r[0]
                    for r in await pg._fetchall(
                        "SELECT column_name FROM information_schema.columns"
                        " WHERE table_schema = current_schema() AND table_name = ?"
                        " ORDER BY ordinal_position",
                        (table,),
                    )
                ]
                assert cols == pg_cols, table
    finally:
        await lite.close()
        await pg.close()


async def test_open__a_damaged_file_stops_start_up(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    s = await Store.open(path)
    user = await s.create_user("a@example.com")
    for n in range(200):
        await _token(s, user.id)
        await s.create_user(f"u{n}@example.com")
    await s.close()
    with sqlite3.connect(path) as db:
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        assert db.execute("PRAGMA page_count").fetchone()[0] > 6
    with path.open("r+b") as fh:  # pages 3-6 overwritten with random bytes
        fh.seek(2 * page_size)
        fh.write(os.urandom(4 * page_size))
    with pytest.raises(StoreUnavailable, match="damaged"):
        await Store.open(path)


async def test_close__twice_is_harmless(database_url: str) -> None:
    s = await Store.open(database_url)
    await s.close()
    await s.close()
    with pytest.raises(StoreUnavailable):
        await s.get_user("x")


async def test_close__under_an_open_transaction_fails_its_statements_as_unavailable(
    tmp_path: Path,
) -> None:
    s = await Store.open(tmp_path / "p.db")
    user = await s.create_user("a@example.com")

    async def closed_under_a_write() -> None:
        async with s.transaction() as tx:
            await s.close()  # shutdown under a background job's write (the pruning loop's)
            await tx.execute("DELETE FROM downloads WHERE downloaded_at < ?", (0,))

    with pytest.raises(StoreUnavailable):
        await closed_under_a_write()
    with pytest.raises(StoreUnavailable):
        await s.prune_downloads(0)
    s = await Store.open(tmp_path / "p.db")
    try:
        assert await s.get_user(user.id) is not None
    finally:
        await s.close()
