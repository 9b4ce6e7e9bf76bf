"""A database that cannot be written (read-only, or full) gives 503 on writes and changes
nothing, while tokens already validated keep working on the registry."""

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiosqlite
import pytest

from tests.api_support import NPM_UPSTREAM, call, snapshot
from tests.conftest import RunningServer, StartServer
from tokenapi.errors import StoreUnavailable
from tokenapi.issue import issue_token
from tokenapi.store import BUSY_TIMEOUT_MS


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


Fault = type(read_only)


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


@pytest.mark.parametrize("fault", [read_only, disk_full], ids=["read_only", "full"])
async def test_store_faults__writes_503_change_nothing_and_cached_tokens_keep_working(
    server: RunningServer, fault: Fault
) -> None:
    secret = await server.token("dev@example.com")
    assert await whoami(server, secret) == 200  # validated: now in the cache
    async with fault(server):
        before = snapshot(server.settings.db_path)
        assert_503(await call(server, "POST", "/api/tokens", token=secret, json={"name": "x"}))
        assert_503(await call(server, "POST", "/api/v1/tokens/regenerate", token=secret))
        assert_503(await call(server, "DELETE", "/api/v1/tokens", token=secret))
        assert_503(await call(server, "POST", "/api/v1/tokens", json={"email": "n@example.com"}))
        assert snapshot(server.settings.db_path) == before
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
    server: RunningServer,
) -> None:
    secret = await server.token()
    async with read_only(server):
        assert await whoami(server, secret) == 200


async def test_store_faults__last_used_kept_in_memory_until_the_store_is_writable(
    server: RunningServer,
) -> None:
    secret = await server.token()
    async with read_only(server):
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
