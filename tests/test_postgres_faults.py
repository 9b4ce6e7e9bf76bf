"""PostgreSQL stopped under a running server: writes answer 503, cached tokens keep working,
``/readyz`` says what is wrong, the server reconnects by itself when the database is back, and
nothing recorded meanwhile is lost; no log line carries the database password."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import pg
from tests.api_support import NPM_UPSTREAM, call
from tests.conftest import RunningServer, StartServer, pkgate_cmd, run
from tokenapi import tokens


@pytest.fixture
def own_postgres(postgres: pg.PostgresServer) -> Iterator[pg.PostgresServer]:
    """A cluster of this test's own, so stopping it disturbs no other test."""
    server = pg.start_server()
    assert server is not None
    yield server
    server.destroy()


async def whoami(server: RunningServer, secret: str) -> int:
    return (await call(server, "GET", "/npm/-/whoami", token=secret)).status


async def ready(server: RunningServer) -> tuple[int, dict[str, str]]:
    answer = await call(server, "GET", "/readyz")
    return answer.status, answer.body


async def test_postgres_stopped__cached_tokens_work_writes_503_and_it_comes_back(
    start_server: StartServer, own_postgres: pg.PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = own_postgres.create_database()
    server = await start_server(npm_upstream=NPM_UPSTREAM, database_url=url, last_used_flush=0.2)
    kept = await server.token("kept@example.com")
    doomed = await server.token("doomed@example.com")
    never_seen = await server.token("unseen@example.com")
    server.validator.forget(tokens.digest(never_seen))
    assert await whoami(server, kept) == 200
    assert await whoami(server, doomed) == 200
    assert (await ready(server))[0] == 200

    await asyncio.to_thread(own_postgres.stop)
    try:
        for _ in range(5):
            assert await whoami(server, kept) == 200  # validated from memory
        # A write: 503 with a JSON error, nothing half-done.
        revoke = await call(server, "DELETE", "/api/v1/tokens", token=doomed)
        assert revoke.status == 503, revoke.body
        assert revoke.headers["Retry-After"] == "5"
        assert "unavailable" in revoke.body["error"]
        # A token this instance has not cached cannot be checked: 503, not a false 401.
        assert await whoami(server, never_seen) == 503
        status, body = await ready(server)
        assert status == 503
        assert body["error"] == "store unreachable"
        assert body["detail"]
    finally:
        await asyncio.to_thread(own_postgres.start)

    # Back by itself: ready again, writes work, the outage's uses were kept and written.
    back = time.monotonic()
    async with asyncio.timeout(15):
        while (await ready(server))[0] != 200:
            await server.store.wait_for_change(0.1)
    print(f"ready {time.monotonic() - back:.2f} s after PostgreSQL was back")
    assert (await call(server, "DELETE", "/api/v1/tokens", token=doomed)).status == 200
    assert await whoami(server, doomed) == 401
    assert await whoami(server, never_seen) == 200
    await server.recorder.flush()
    token = await server.validator.validate(kept)
    assert token is not None
    async with asyncio.timeout(10):
        while sum(u.requests for u in await server.store.usage(token.id)) < 6:
            await server.recorder.flush()
            await server.store.wait_for_change(0.1)
    assert {u.ecosystem: u.requests for u in await server.store.usage(token.id)} == {"npm": 6}

    assert own_postgres.password not in caplog.text
    assert any("unavailable" in r.getMessage() for r in caplog.records)


async def test_postgres_unreachable_or_refusing_at_start_up__one_line_without_the_password(
    tmp_path: Path, postgres: pg.PostgresServer
) -> None:
    wrong = postgres.url("postgres").replace(postgres.password, "not-the-password-x7")
    closed = "postgresql://pkgate:also-secret-y8@127.0.0.1:9/pkgate"
    for url, secret, why in (
        (wrong, "not-the-password-x7", "password authentication failed"),
        (closed, "also-secret-y8", "cannot open database postgresql://pkgate@127.0.0.1:9/pkgate"),
    ):
        done = await run(
            *pkgate_cmd("serve", "--data-dir", str(tmp_path), "--npm-upstream", NPM_UPSTREAM),
            "--database-url",
            url,
            timeout=60,
        )
        assert done.returncode == 1, done.output
        assert why in done.stderr
        assert secret not in done.output
        assert "Traceback" not in done.output
