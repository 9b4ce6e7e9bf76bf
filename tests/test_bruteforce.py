"""Guessing is bounded by the throttles, sequentially and in concurrent bursts: login passwords,
reset codes and registry tokens each get no more evaluated guesses than the configured limits."""

import asyncio
import sqlite3
from collections import Counter

import aiohttp
import pytest

from tests.api_support import NPM_UPSTREAM, call, code_in
from tests.conftest import RunningServer, StartServer
from tokenapi import tokens
from tokenapi.email_api import RESET_MAX_ATTEMPTS, new_reset_code
from tokenapi.passwords import hash_password_async

PASSWORD = "the-real-password"
LOGIN_LIMIT = 4


@pytest.fixture
async def server(start_server: StartServer) -> RunningServer:
    # Reset attempts are limited too (see test_api_reset.py); here the codes' own bound is tested.
    server = await start_server(
        npm_upstream=NPM_UPSTREAM,
        login_limit=LOGIN_LIMIT,
        registry_auth_failures=8,
        reset_limit_email=1000,
        reset_limit_ip=1000,
    )
    await server.store.create_user(
        "victim@example.com", password_hash=await hash_password_async(PASSWORD)
    )
    return server


async def login(
    server: RunningServer, password: str, email: str = "victim@example.com", **kw: str
) -> int:
    answer = await call(
        server,
        "POST",
        "/api/session",
        json={"email": email, "password": password},
        headers=kw or None,
    )
    if answer.status == 429:
        assert answer.headers["Retry-After"].isdigit()
    return answer.status


async def test_bruteforce__login_guesses_bounded_sequentially(server: RunningServer) -> None:
    statuses = Counter([await login(server, f"guess-{i}") for i in range(30)])
    assert statuses == {401: LOGIN_LIMIT, 429: 30 - LOGIN_LIMIT}
    # Over the limit the real password is not even checked: it would tell the attacker.
    assert await login(server, PASSWORD) == 429


async def test_bruteforce__login_guesses_bounded_in_a_concurrent_burst(
    server: RunningServer,
) -> None:
    statuses = Counter(await asyncio.gather(*(login(server, f"guess-{i}") for i in range(40))))
    # Every guess that got an answer other than 429 had its password checked.
    assert statuses[401] <= LOGIN_LIMIT
    assert statuses[401] + statuses[429] == 40
    assert await login(server, PASSWORD) == 429


async def test_bruteforce__login_guesses_across_addresses_limited_per_ip(
    server: RunningServer,
) -> None:
    for i in range(LOGIN_LIMIT + 3):
        await server.store.create_user(f"user{i}@example.com")
    statuses = Counter(
        [await login(server, "guess", email=f"user{i}@example.com") for i in range(LOGIN_LIMIT + 3)]
    )
    assert statuses == {401: LOGIN_LIMIT, 429: 3}


async def test_bruteforce__successful_logins_do_not_use_up_the_budget(
    server: RunningServer,
) -> None:
    assert [await login(server, PASSWORD) for _ in range(LOGIN_LIMIT * 3)] == [200] * (
        LOGIN_LIMIT * 3
    )
    assert await login(server, "wrong") == 401


async def reset_code(server: RunningServer, email: str) -> str:
    """Register twice: the second answer mails a reset code (read from the outbox)."""
    for _ in range(2):
        assert (await call(server, "POST", "/api/v1/tokens", json={"email": email})).status == 202
    newest = max(server.settings.outbox_dir.glob("*.eml"), key=lambda p: p.stat().st_mtime_ns)
    import email as emaillib
    import email.policy

    message = emaillib.message_from_bytes(newest.read_bytes(), policy=email.policy.default)
    body = message.get_body(("plain",))  # type: ignore[attr-defined]
    assert body is not None
    return code_in(body.get_content().replace("\r\n", "\n"))


def wrong_code(real: str) -> str:
    while True:
        guess = new_reset_code()
        if guess != real:
            return guess


async def redeem(server: RunningServer, code: str, email: str = "r@example.com") -> int:
    answer = await call(server, "POST", "/api/v1/tokens/reset", json={"email": email, "code": code})
    return answer.status


async def test_bruteforce__reset_code_dies_after_the_allowed_wrong_guesses(
    server: RunningServer,
) -> None:
    real = await reset_code(server, "r@example.com")
    statuses = [await redeem(server, wrong_code(real)) for _ in range(RESET_MAX_ATTEMPTS)]
    assert statuses == [400] * RESET_MAX_ATTEMPTS
    # The sixth guess would be right, but the code is dead.
    assert await redeem(server, real) == 400


async def test_bruteforce__reset_code_concurrent_guesses_counted_exactly(
    server: RunningServer,
) -> None:
    real = await reset_code(server, "r@example.com")
    statuses = await asyncio.gather(*(redeem(server, wrong_code(real)) for _ in range(40)))
    assert set(statuses) == {400}
    with sqlite3.connect(server.settings.db_path) as db:
        (attempts,) = db.execute("SELECT max(failed_attempts) FROM reset_codes").fetchone()
    assert attempts == RESET_MAX_ATTEMPTS
    assert await redeem(server, real) == 400


async def test_bruteforce__reset_guesses_per_hour_bounded_by_code_requests(
    start_server: StartServer,
) -> None:
    server = await start_server(
        npm_upstream=NPM_UPSTREAM,
        register_limit_email=3,
        reset_limit_email=1000,
        reset_limit_ip=1000,
    )
    email = "r@example.com"
    assert (await call(server, "POST", "/api/v1/tokens", json={"email": email})).status == 202
    codes_mailed = 0
    while (await call(server, "POST", "/api/v1/tokens", json={"email": email})).status == 202:
        codes_mailed += 1
    # The first registration mailed the token; each further one a code, up to the limit.
    assert codes_mailed == 3 - 1
    for _ in range(50):
        assert await redeem(server, new_reset_code(), email) == 400
    # Every mailed code stays live (each one works), and every wrong guess counts against all
    # of them: after RESET_MAX_ATTEMPTS guesses they are all dead, so the bound per hour is
    # limit x attempts guesses, here 5 against 2 codes of 31^8.
    with sqlite3.connect(server.settings.db_path) as db:
        rows = db.execute("SELECT failed_attempts FROM reset_codes").fetchall()
    assert [r[0] for r in rows] == [RESET_MAX_ATTEMPTS] * codes_mailed


async def registry_guess(server: RunningServer, http: aiohttp.ClientSession) -> int:
    headers = {"Authorization": f"Bearer {tokens.generate()}"}
    async with http.get(server.url / "npm" / "-" / "whoami", headers=headers) as resp:
        await resp.read()
        return resp.status


async def test_bruteforce__registry_token_burst_bounded_by_failure_limit(
    server: RunningServer,
) -> None:
    lookups_before = server.validator.store_lookups
    async with aiohttp.ClientSession() as http:
        statuses = Counter(
            await asyncio.gather(*(registry_guess(server, http) for _ in range(200)))
        )
    assert statuses[401] <= 8
    assert statuses[401] + statuses[429] == 200
    # Each guess may be a valid token, so each costs one indexed lookup (none is repeated).
    assert server.validator.store_lookups - lookups_before <= 200
