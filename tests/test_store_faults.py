"""A database that cannot be written (read-only, or full) gives 503 on writes and changes
nothing, while tokens already validated keep working on the registry.  SQLite read-only and full;
PostgreSQL read-only (``default_transaction_read_only``, as a hot standby answers after a
failover)."""

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import aiosqlite
import pytest
from yarl import URL

from tests import pg
from tests.api_support import NPM_UPSTREAM, SNAPSHOT_QUERIES, call, snapshot
from tests.conftest import RunningServer, StartServer
from tokenapi.errors import StoreUnavailable
from tokenapi.issue import issue_token
from tokenapi.store import BUSY_TIMEOUT_MS
from tokenapi.store.postgres import PostgresStore


@asynccontextmanager
async def read_only(server: RunningServer) -> AsyncIterator[None]:
    """The store's writer connection replaced by a read-only one (SQLite ``mode=ro``).

    Tests run as root, for whom file permissions do not stop writes; a read-only open does.
    """
    store = server.store
    writer = store._db
    ro = await aiosqlite.connect(f"file:{store.path}?mode=ro", uri=True, isolation_level=None)
    await ro.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    store._db = ro
    try:
        yield
    finally:
        store._db = writer
        await ro.close()


async def fill(step: Callable[[int], Awaitable[object]]) -> int:
    """Repeat a write until the database is full; returns how many fitted."""
    for n in range(100_000):
        try:
            await step(n)
        except StoreUnavailable as exc:
            if "full" not in str(exc):
                raise
            return n
    raise AssertionError("the database never filled up")


@asynccontextmanager
async def disk_full(server: RunningServer) -> AsyncIterator[int]:
    """The database capped at its current size and packed: token inserts and revocations fail
    with SQLITE_FULL, as on a full disk.  Yields how many fill-up writes it took."""
    store = server.store
    async with store._db.execute("PRAGMA page_count") as cur:
        row = await cur.fetchone()
    assert row is not None
    await store._db.execute(f"PRAGMA max_page_count = {row[0]}")
    try:
        # SQLite fills page by page: pack each table the tested writes append to.
        filled = await fill(lambda n: server.token(f"fill{n}@example.com"))
        user = await store.get_user_by_email("fill0@example.com")
        assert user is not None
        filled += await fill(lambda n: issue_token(store, user, name=f"more{n}"))
        victims = iter([t for t in await store.list_tokens() if t.email.startswith("fill")])
        filled += await fill(lambda n: store.revoke_token(next(victims).id))
        yield filled
    finally:
        await store._db.execute("PRAGMA max_page_count = 1073741823")


@asynccontextmanager
async def pg_read_only(server: RunningServer, postgres: pg.PostgresServer) -> AsyncIterator[None]:
    """The server's PostgreSQL database switched to read-only transactions for new sessions,
    and the pool's connections replaced so every one is such a session."""
    store = server.store
    assert isinstance(store, PostgresStore)
    name = URL(server.settings.database_url).path.lstrip("/")
    postgres.psql(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    await store._pool.expire_connections()
    try:
        yield
    finally:
        postgres.psql(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
        await store._pool.expire_connections()


Fault = Callable[[RunningServer], AbstractAsyncContextManager[object]]


async def stored(server: RunningServer) -> dict[str, list[tuple[Any, ...]]]:
    """What the writes below could change: the SQLite file itself, or PostgreSQL's rows."""
    if not isinstance(server.store, PostgresStore):
        return snapshot(server.settings.db_path)
    return {
        name: [tuple(row) for row in await server.store._fetchall(sql)]
        for name, sql in SNAPSHOT_QUERIES.items()
    }


@pytest.fixture(params=["sqlite", "postgresql"])
async def backend(
    request: pytest.FixtureRequest, start_server: StartServer
) -> tuple[RunningServer, Fault]:
    """A server on each backend, with how to make its database read-only."""
    if request.param == "sqlite":
        return await start_server(npm_upstream=NPM_UPSTREAM), read_only
    postgres: pg.PostgresServer = request.getfixturevalue("postgres")
    server = await start_server(npm_upstream=NPM_UPSTREAM, database_url=postgres.create_database())
    return server, lambda s: pg_read_only(s, postgres)


@pytest.fixture
async def server(start_server: StartServer) -> RunningServer:
    return await start_server(npm_upstream=NPM_UPSTREAM)


async def whoami(server: RunningServer, secret: str) -> int:
    return (await call(server, "GET", "/npm/-/whoami", token=secret)).status


def assert_503(answer: object) -> None:
    status, body, headers = answer.status, answer.body, answer.headers  # type: ignore[attr-defined]
    assert status == 503
    assert set(body) == {"error"}
    assert "unavailable" in body["error"]
    assert headers["Retry-After"].isdigit()


async def test_store_faults__writes_503_change_nothing_and_cached_tokens_keep_working(
    backend: tuple[RunningServer, Fault],
) -> None:
    await writes_refused(*backend)


async def test_store_faults__a_full_sqlite_file_refuses_writes_the_same_way(
    server: RunningServer,
) -> None:
    await writes_refused(server, disk_full)


async def writes_refused(server: RunningServer, fault: Fault) -> None:
    secret = await server.token("dev@example.com")
    assert await whoami(server, secret) == 200  # validated: now in the cache
    async with fault(server):
        before = await stored(server)
        assert_503(await call(server, "POST", "/api/tokens", token=secret, json={"name": "x"}))
        assert_503(await call(server, "POST", "/api/v1/tokens/regenerate", token=secret))
        assert_503(await call(server, "DELETE", "/api/v1/tokens", token=secret))
        assert_503(await call(server, "POST", "/api/v1/tokens", json={"email": "n@example.com"}))
        assert await stored(server) == before
        # The failed revocation and regeneration left the token exactly as valid as before.
        for _ in range(20):
            assert await whoami(server, secret) == 200
        # Reads still work: the token's own status and list.
        assert (await call(server, "GET", "/api/v1/tokens/status", token=secret)).status == 200
        assert (await call(server, "GET", "/api/tokens", token=secret)).status == 200
    # Once the database is writable again, so is the API.
    answer = await call(server, "POST", "/api/tokens", token=secret, json={"name": "after"})
    assert answer.status == 201
    assert await whoami(server, answer.body["token"]) == 200


async def test_store_faults__unvalidated_token_still_resolves_on_a_read_only_store(
    backend: tuple[RunningServer, Fault],
) -> None:
    server, fault = backend
    secret = await server.token()
    async with fault(server):
        assert await whoami(server, secret) == 200


async def test_store_faults__last_used_kept_in_memory_until_the_store_is_writable(
    backend: tuple[RunningServer, Fault],
) -> None:
    server, fault = backend
    secret = await server.token()
    async with fault(server):
        assert await whoami(server, secret) == 200
        with contextlib.suppress(StoreUnavailable):
            await server.recorder.flush()
        (token,) = await server.store.list_tokens()
        assert token.last_used_at is None
    await server.recorder.flush()
    (token,) = await server.store.list_tokens()
    assert token.last_used_at is not None
    usage = await server.store.usage(token.id)
    assert [(u.ecosystem, u.requests) for u in usage] == [("npm", 1)]
