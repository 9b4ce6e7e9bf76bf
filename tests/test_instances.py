"""Several pkgate instances on one PostgreSQL database (SPEC §17): tokens, revocations, usage,
sessions and reset codes work across them; a revocation reaches every instance within 1 s, also
after the instance's notification connection was cut."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import asyncpg
import pytest

from tests.api_support import NPM_UPSTREAM, PYPI_UPSTREAM, call, code_in, tokens_in
from tests.conftest import RunningServer, StartServer, pkgate_cmd, run
from tests.pg import PostgresServer
from tests.smtp import SmtpServer
from tests.upstreams.npm_registry import serve_registry
from tokenapi import tokens
from tokenapi.passwords import hash_password_async
from tokenapi.store import Store
from tokenapi.store.base import DownloadQuery
from tokenapi.store.postgres import PostgresStore

PASSWORD = "correct horse battery staple"


@pytest.fixture
async def pair(
    start_server: StartServer, postgres_url: str, mail: SmtpServer
) -> tuple[RunningServer, RunningServer]:
    a = await start_server(
        npm_upstream=NPM_UPSTREAM,
        pypi_upstream=PYPI_UPSTREAM,
        database_url=postgres_url,
        smtp_url=mail.url,
    )
    b = await start_server(
        npm_upstream=NPM_UPSTREAM,
        pypi_upstream=PYPI_UPSTREAM,
        database_url=postgres_url,
        smtp_url=mail.url,
    )
    for s in (a, b):  # both listening for revocations before the test starts
        store = s.store
        assert isinstance(store, PostgresStore)
        await asyncio.wait_for(store.listening.wait(), 10)
    return a, b


async def whoami(server: RunningServer, secret: str) -> int:
    return (await call(server, "GET", "/npm/-/whoami", token=secret)).status


async def refused_within(server: RunningServer, secret: str, seconds: float = 1.0) -> float:
    """How long until ``server`` answers 401 for ``secret``; fails after ``seconds``."""
    start = time.monotonic()
    async with asyncio.timeout(seconds):
        while await whoami(server, secret) != 401:
            await server.store.wait_for_change(0.05)
    return time.monotonic() - start


async def test_instances__token_from_one_works_on_the_other(
    pair: tuple[RunningServer, RunningServer],
) -> None:
    a, b = pair
    secret = await a.token("x@example.com")
    assert await whoami(b, secret) == 200
    assert await whoami(a, secret) == 200


async def test_instances__api_revocation_on_one_is_refused_by_the_other_within_1s(
    pair: tuple[RunningServer, RunningServer],
) -> None:
    a, b = pair
    secret = await a.token("x@example.com")
    assert await whoami(b, secret) == 200  # now cached on b
    status = await call(a, "GET", "/api/v1/tokens/status", token=secret)
    revoked = await call(a, "DELETE", "/api/v1/tokens", token=secret)
    assert status.status == 200
    assert revoked.status == 200, revoked.body
    await refused_within(b, secret)
    assert await whoami(a, secret) == 401


async def test_instances__cli_revocation_is_refused_by_every_instance_within_1s(
    pair: tuple[RunningServer, RunningServer], postgres_url: str
) -> None:
    a, b = pair
    secret = await a.token("x@example.com")
    token = await a.validator.validate(secret)
    assert token is not None
    assert await whoami(a, secret) == 200
    assert await whoami(b, secret) == 200
    done = await run(*pkgate_cmd("token", "revoke", token.id, "--database-url", postgres_url))
    assert done.returncode == 0, done.output
    await asyncio.gather(refused_within(a, secret), refused_within(b, secret))


async def test_instances__revocation_while_cut_off_is_found_after_reconnecting(
    pair: tuple[RunningServer, RunningServer], postgres_url: str, postgres: PostgresServer
) -> None:
    a, b = pair
    store = b.store
    assert isinstance(store, PostgresStore)
    secret = await a.token("x@example.com")
    token = await a.validator.validate(secret)
    assert token is not None
    assert await whoami(b, secret) == 200
    admin = await asyncpg.connect(postgres_url)
    cluster = await asyncpg.connect(postgres.url("postgres"))
    try:
        dbname = await admin.fetchval("SELECT current_database()")
        # No new connection may reach the database while b's listener is cut off ...
        await cluster.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
        try:
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = 'pkgate-listen' AND datname = $1",
                dbname,
            )
            assert killed == 2  # one listener per instance
            async with asyncio.timeout(10):
                while store.listen_problem is None:
                    await store.wait_for_change(0.05)
            # Not ready, and saying why (which connection; never the password).
            ready = await call(b, "GET", "/readyz")
            assert ready.status == 503
            assert "not currently accepting connections" in ready.body["detail"] or (
                "revocation listener disconnected" in ready.body["detail"]
            )
            assert postgres.password not in ready.raw.decode()
            # ... and the revocation is written without any notification: only re-reading the
            # log from the last entry seen can find it.
            async with admin.transaction():
                now = time.time()
                digest = await admin.fetchval(
                    "UPDATE tokens SET revoked_at = $1 WHERE id = $2 RETURNING digest",
                    now,
                    token.id,
                )
                await admin.execute(
                    "INSERT INTO revocations (digest, revoked_at) VALUES ($1, $2)", digest, now
                )
        finally:
            await cluster.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
    finally:
        await admin.close()
        await cluster.close()
    await refused_within(b, secret, seconds=3.0)  # reconnect back-off included
    await asyncio.wait_for(store.listening.wait(), 5)
    assert (await call(b, "GET", "/readyz")).status == 200
    # Notifications work again after the reconnection.
    other = await a.token("y@example.com")
    assert await whoami(b, other) == 200
    assert (await call(a, "DELETE", "/api/v1/tokens", token=other)).status == 200
    await refused_within(b, other)


async def test_instances__usage_from_both_adds_up(
    pair: tuple[RunningServer, RunningServer], postgres_url: str
) -> None:
    a, b = pair
    secret = await a.token("x@example.com")
    for _ in range(7):
        assert await whoami(a, secret) == 200
    for _ in range(5):
        assert await whoami(b, secret) == 200
    token = await a.validator.validate(secret)
    assert token is not None
    # Both shut down (each flushes what it still holds); the database has the sum.
    await asyncio.gather(a.close(), b.close())
    store = await Store.open(postgres_url)
    try:
        usage = {u.ecosystem: u.requests for u in await store.usage(token.id)}
        stored = await store.get_token(token.id)
    finally:
        await store.close()
    assert usage == {"npm": 12}
    assert stored is not None
    assert stored.last_used_at is not None


async def test_instances__session_from_one_is_accepted_by_the_other(
    pair: tuple[RunningServer, RunningServer],
) -> None:
    a, b = pair
    await a.store.create_user("me@example.com", password_hash=await hash_password_async(PASSWORD))
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        login = await call(
            a,
            "POST",
            "/api/session",
            json={"email": "me@example.com", "password": PASSWORD},
            session=http,
            headers={"Origin": str(a.url.origin())},
        )
        assert login.status == 200, login.body
        me = await call(b, "GET", "/api/session", session=http)
        assert me.status == 200, me.body
        assert me.body["user"]["email"] == "me@example.com"
        out = await call(
            b, "DELETE", "/api/session", session=http, headers={"Origin": str(b.url.origin())}
        )
        assert out.status in (200, 204), out.body
        assert (await call(a, "GET", "/api/session", session=http)).status == 401


async def test_instances__reset_code_from_one_is_redeemed_on_the_other(
    pair: tuple[RunningServer, RunningServer], mail: SmtpServer
) -> None:
    a, b = pair
    assert (
        await call(a, "POST", "/api/v1/tokens", json={"email": "dev@example.com"})
    ).status == 202
    (old,) = set(tokens_in(mail.inbox.text()))
    assert await whoami(b, old) == 200
    assert (
        await call(a, "POST", "/api/v1/tokens", json={"email": "dev@example.com"})
    ).status == 202
    code = code_in(mail.inbox.text())
    answer = await call(
        b, "POST", "/api/v1/tokens/reset", json={"email": "dev@example.com", "code": code}
    )
    assert answer.status == 200, answer.body
    assert await whoami(b, answer.body["token"]) == 200
    assert await whoami(b, old) == 401
    await refused_within(a, old)
    assert await whoami(a, answer.body["token"]) == 200


async def test_instances__download_history_from_both_adds_up(
    start_server: StartServer, postgres_url: str
) -> None:
    async with serve_registry() as registry:
        a, b = [
            await start_server(
                npm_upstream=f"{registry.url}/", database_url=postgres_url, last_used_flush=3600
            )
            for _ in range(2)
        ]
        secret = await a.token("x@example.com")
        path = "/npm" + registry.tarball_path(registry.package("pkg-plain", "1.1.0"))
        for server, times in ((a, 2), (b, 3)):
            for _ in range(times):
                answer = await call(server, "GET", path, token=secret)
                assert answer.status == 200
        token = await a.validator.validate(secret)
        assert token is not None
        await asyncio.gather(a.close(), b.close())  # each writes what it holds at shutdown
    store = await Store.open(postgres_url)
    try:
        rows = await store.list_downloads(DownloadQuery(token_id=token.id))
        usage = {u.ecosystem: u.requests for u in await store.usage(token.id)}
    finally:
        await store.close()
    assert [(r.download.package, r.download.version) for r in rows] == [("pkg-plain", "1.1.0")] * 5
    assert usage == {"npm": 5}


async def test_database_pool_size__bounds_each_process_connections(
    start_server: StartServer, postgres_url: str
) -> None:
    server = await start_server(
        npm_upstream=NPM_UPSTREAM, database_url=postgres_url, database_pool_size=3
    )
    secrets = [await server.token(f"u{n}@example.com") for n in range(40)]
    for secret in secrets:
        server.validator.forget(tokens.digest(secret))
    statuses = await asyncio.gather(*(whoami(server, s) for s in secrets))
    assert set(statuses) == {200}
    admin = await asyncpg.connect(postgres_url)
    try:
        count = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = 'pkgate'"
        )
    finally:
        await admin.close()
    assert 1 <= count <= 3
