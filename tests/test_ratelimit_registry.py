"""Registry rate limits: per token, per client IP, and failed authentications per client IP."""

import asyncio
import ipaddress
import secrets
import time
from base64 import b64encode
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from proxy.ratelimit import RegistryLimits, registry_limits_key
from proxy.settings import Settings, SettingsError, load
from tests.conftest import RunningServer, StartServer
from tokenapi import tokens
from tokenapi.issue import ensure_user, issue_token
from tokenapi.ratelimit import RateLimiter

UNREACHABLE = "http://127.0.0.1:9/"


def random_token() -> str:
    """A token with a valid shape and checksum that nobody was ever given."""
    return tokens.generate()


def bad_checksum_token() -> str:
    good = tokens.generate()
    last = "A" if good[-1] != "A" else "B"
    return good[:-1] + last


async def whoami(
    server: RunningServer,
    secret: str | None = None,
    *,
    headers: dict[str, str] | None = None,
    local_ip: str | None = None,
) -> tuple[int, dict[str, str], Any]:
    hdrs = dict(headers or {})
    if secret is not None:
        hdrs["Authorization"] = f"Bearer {secret}"
    connector = aiohttp.TCPConnector(local_addr=(local_ip, 0) if local_ip else None)
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.get(server.url / "npm" / "-" / "whoami", headers=hdrs) as resp,
    ):
        body = await resp.json() if resp.content_type == "application/json" else None
        return resp.status, dict(resp.headers), body


def count_store_calls(server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count the store lookups authentication can make (validation and failure metrics)."""
    calls = {"lookup_digest": 0, "digest_revoked": 0}
    store = server.store
    for name in calls:
        original: Callable[..., Awaitable[Any]] = getattr(store, name)

        async def counted(*args: Any, _name: str = name, _orig: Any = original) -> Any:
            calls[_name] += 1
            return await _orig(*args)

        monkeypatch.setattr(store, name, counted)
    return calls


def assert_429(status: int, headers: dict[str, str], body: Any) -> int:
    assert status == 429
    assert body["error"]
    retry = headers["Retry-After"]
    assert retry.isdigit(), retry
    assert int(retry) >= 1
    return int(retry)


async def test_registry_limits__random_tokens_trip_the_failure_limit(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await start_server(npm_upstream=UNREACHABLE, registry_auth_failures=5)
    calls = count_store_calls(server, monkeypatch)
    statuses = []
    for _ in range(40):
        status, headers, body = await whoami(server, random_token())
        statuses.append(status)
        if status == 429:
            assert_429(status, headers, body)
    assert statuses[:5] == [401] * 5
    assert statuses[5:] == [429] * 35
    # Each guess costs its one indexed lookup (it might have been a valid token), never more.
    assert calls["lookup_digest"] == 40
    assert server.validator.store_lookups == 40


async def test_registry_limits__bad_checksums_never_reach_the_store(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await start_server(npm_upstream=UNREACHABLE, registry_auth_failures=10)
    calls = count_store_calls(server, monkeypatch)
    statuses = [(await whoami(server, bad_checksum_token()))[0] for _ in range(30)]
    assert statuses == [401] * 10 + [429] * 20
    assert calls == {"lookup_digest": 0, "digest_revoked": 0}
    assert server.validator.store_lookups == 0


@pytest.mark.parametrize(
    "header",
    ["Bearer", "Basic %%%", "Digest abc", "Bearer " + "x" * 5000, "Basic dG9rZW4="],
)
async def test_registry_limits__malformed_credentials_count_as_failures(
    start_server: StartServer, header: str
) -> None:
    server = await start_server(npm_upstream=UNREACHABLE, registry_auth_failures=3)
    statuses = [(await whoami(server, headers={"Authorization": header}))[0] for _ in range(5)]
    assert statuses == [401, 401, 401, 429, 429]


async def test_registry_limits__missing_credentials_do_not_count(
    start_server: StartServer,
) -> None:
    server = await start_server(npm_upstream=UNREACHABLE, registry_auth_failures=2)
    assert [(await whoami(server))[0] for _ in range(10)] == [401] * 10
    secret = await server.token()
    assert (await whoami(server, secret))[0] == 200


async def test_registry_limits__other_addresses_unaffected_by_a_blocked_one(
    start_server: StartServer,
) -> None:
    server = await start_server(npm_upstream=UNREACHABLE, registry_auth_failures=3)
    for _ in range(6):
        await whoami(server, random_token(), local_ip="127.0.0.2")
    assert (await whoami(server, random_token(), local_ip="127.0.0.2"))[0] == 429
    secret = await server.token()
    status, _, body = await whoami(server, secret, local_ip="127.0.0.3")
    assert (status, body) == (200, {"username": "dev@example.com"})
    # Another address still gets honest 401s for its own mistakes.
    assert (await whoami(server, random_token(), local_ip="127.0.0.3"))[0] == 401


async def test_registry_limits__known_token_passes_from_a_blocked_address(
    start_server: StartServer,
) -> None:
    server = await start_server(npm_upstream=UNREACHABLE, registry_auth_failures=3)
    secret = await server.token()
    assert (await whoami(server, secret))[0] == 200  # now a validation-cache hit
    for _ in range(5):
        await whoami(server, random_token())
    assert (await whoami(server, random_token()))[0] == 429
    assert (await whoami(server, secret))[0] == 200
    # A valid token not yet validated is served too: other tokens' failures never refuse it.
    cold = await server.token("other@example.com")
    status, _, body = await whoami(server, cold)
    assert (status, body) == (200, {"username": "other@example.com"})
    assert (await whoami(server, random_token()))[0] == 429  # guesses stay refused


async def test_registry_limits__many_valid_cold_tokens_from_a_blocked_address_all_pass(
    start_server: StartServer,
) -> None:
    # A shared CI runner: one job guesses, fifty others start with fresh (uncached) tokens.
    server = await start_server(npm_upstream=UNREACHABLE, registry_auth_failures=2)
    secrets_ = [await server.token(f"ci{i}@example.com") for i in range(50)]
    async with aiohttp.ClientSession() as http:

        async def one(secret: str) -> int:
            headers = {"Authorization": f"Bearer {secret}"}
            async with http.get(server.url / "npm" / "-" / "whoami", headers=headers) as resp:
                await resp.read()
                return resp.status

        guesses = await asyncio.gather(*(one(random_token()) for _ in range(20)))
        assert guesses.count(429) == 18
        statuses = await asyncio.gather(*(one(s) for s in secrets_), one(random_token()))
    assert statuses == [200] * 50 + [429]


async def test_registry_limits__revoked_token_always_gets_a_fast_401_and_spends_nothing(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # npm retries 429s for minutes (10 s / 60 s) and gives up at once on a 401.
    server = await start_server(npm_upstream=UNREACHABLE, registry_auth_failures=2)
    secret = await server.token()
    assert (await whoami(server, secret))[0] == 200
    (token,) = await server.store.list_tokens()
    await server.store.revoke_token(token.id)
    server.validator.forget(tokens.digest(secret))
    calls = count_store_calls(server, monkeypatch)
    statuses = [(await whoami(server, secret))[0] for _ in range(100)]
    assert statuses == [401] * 100
    # Known dead: one check that it was revoked, then answered from memory.
    assert calls["digest_revoked"] == 1
    # The address's budget for guesses is untouched.
    assert [(await whoami(server, random_token()))[0] for _ in range(3)] == [401, 401, 429]
    # And once guesses used it up, the revoked token still gets 401, never 429.
    assert [(await whoami(server, secret))[0] for _ in range(5)] == [401] * 5


async def test_registry_limits__revoked_while_cached_gets_401_not_429(
    start_server: StartServer,
) -> None:
    server = await start_server(npm_upstream=UNREACHABLE, registry_auth_failures=1)
    secret = await server.token()
    assert (await whoami(server, secret))[0] == 200  # cached
    await whoami(server, random_token())
    assert (await whoami(server, random_token()))[0] == 429  # budget gone
    (token,) = await server.store.list_tokens()
    await server.store.revoke_token(token.id)
    server.validator.forget(tokens.digest(secret))
    assert [(await whoami(server, secret))[0] for _ in range(5)] == [401] * 5


async def test_registry_limits__per_token_rate(start_server: StartServer) -> None:
    server = await start_server(
        npm_upstream=UNREACHABLE,
        registry_rate_per_token=1,
        registry_rate_burst=3,
        registry_rate_per_ip=0,
    )
    busy = await server.token("busy@example.com")
    calm = await server.token("calm@example.com")
    answers = [await whoami(server, busy) for _ in range(5)]
    assert [a[0] for a in answers] == [200, 200, 200, 429, 429]
    assert_429(*answers[3])
    assert (await whoami(server, calm))[0] == 200


async def test_registry_limits__per_token_rate_shared_across_ecosystems(
    start_server: StartServer,
) -> None:
    server = await start_server(
        npm_upstream=UNREACHABLE,
        pypi_upstream=UNREACHABLE + "simple/",
        registry_rate_per_token=1,
        registry_rate_burst=2,
        registry_rate_per_ip=0,
    )
    secret = await server.token()
    assert (await whoami(server, secret))[0] == 200
    assert (await whoami(server, secret))[0] == 200
    auth = {"Authorization": "Basic " + b64encode(f"token:{secret}".encode()).decode()}
    async with (
        aiohttp.ClientSession() as http,
        http.get(server.url / "pypi" / "simple" / "x" / "", headers=auth) as resp,
    ):
        assert resp.status == 429
        assert resp.headers["Retry-After"].isdigit()


async def test_registry_limits__per_ip_rate(start_server: StartServer) -> None:
    server = await start_server(
        npm_upstream=UNREACHABLE,
        registry_rate_per_ip=1,
        registry_rate_burst=4,
        registry_rate_per_token=0,
    )
    secret = await server.token()
    answers = [await whoami(server, secret, local_ip="127.0.0.2") for _ in range(6)]
    assert [a[0] for a in answers] == [200] * 4 + [429] * 2
    assert_429(*answers[4])
    # Unauthenticated requests spend the same address budget.
    assert (await whoami(server, local_ip="127.0.0.2"))[0] == 429
    assert (await whoami(server, secret, local_ip="127.0.0.3"))[0] == 200


async def test_registry_limits__zero_switches_each_limit_off(start_server: StartServer) -> None:
    server = await start_server(
        npm_upstream=UNREACHABLE,
        registry_rate_per_ip=0,
        registry_rate_per_token=0,
        registry_rate_burst=1,
        registry_auth_failures=0,
    )
    secret = await server.token()
    assert [(await whoami(server, random_token()))[0] for _ in range(60)] == [401] * 60
    assert [(await whoami(server, secret))[0] for _ in range(20)] == [200] * 20


async def test_registry_limits__forwarded_for_ignored_from_untrusted_peer(
    start_server: StartServer,
) -> None:
    server = await start_server(npm_upstream=UNREACHABLE, registry_auth_failures=3)
    statuses = [
        (await whoami(server, random_token(), headers={"X-Forwarded-For": f"198.51.100.{i}"}))[0]
        for i in range(6)
    ]
    # Each request claims another address, but the peer is not a trusted proxy: one budget.
    assert statuses == [401, 401, 401, 429, 429, 429]


async def test_registry_limits__forwarded_for_honoured_from_trusted_proxy(
    start_server: StartServer,
) -> None:
    server = await start_server(
        npm_upstream=UNREACHABLE,
        registry_auth_failures=3,
        trusted_proxies=(ipaddress.ip_network("127.0.0.1/32"),),
    )
    attacker = {"X-Forwarded-For": "198.51.100.66"}
    for _ in range(3):
        assert (await whoami(server, random_token(), headers=attacker))[0] == 401
    assert (await whoami(server, random_token(), headers=attacker))[0] == 429
    # A different client behind the same proxy keeps its own budget.
    other = {"X-Forwarded-For": "198.51.100.7"}
    assert (await whoami(server, random_token(), headers=other))[0] == 401
    # Prepending a fake hop does not move the attacker to a fresh budget.
    spoof = {"X-Forwarded-For": "203.0.113.1, 198.51.100.66"}
    assert (await whoami(server, random_token(), headers=spoof))[0] == 429


def test_registry_limits__defaults_allow_a_large_install_burst() -> None:
    limits = RegistryLimits.from_settings(Settings())
    assert limits.per_ip is not None
    assert limits.per_token is not None
    # A cold install of ~1000 packages: a packument and a tarball each, all at once.
    assert all(limits.per_token.hit("token") is None for _ in range(2000))
    assert all(limits.per_ip.hit("ip") is None for _ in range(2000))
    assert limits.auth_failures is not None
    assert limits.auth_failures.limit >= 10


def test_registry_limits__settings_from_environment() -> None:
    s = load(
        env={
            "PKGATE_REGISTRY_RATE_PER_TOKEN": "0",
            "PKGATE_REGISTRY_RATE_PER_IP": "50",
            "PKGATE_REGISTRY_RATE_BURST": "100",
            "PKGATE_REGISTRY_AUTH_FAILURES": "7",
        }
    )
    limits = RegistryLimits.from_settings(s)
    assert limits.per_token is None
    assert limits.per_ip is not None
    assert (limits.per_ip.limit, limits.per_ip.period) == (100, 2.0)
    assert limits.auth_failures is not None
    assert limits.auth_failures.limit == 7


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("registry_rate_per_ip", "-1"),
        ("registry_rate_per_token", "many"),
        ("registry_rate_burst", "0"),
        ("registry_auth_failures", "-5"),
    ],
)
def test_registry_limits__bad_setting_names_itself(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        load(env={f"PKGATE_{name.upper()}": value})


async def test_registry_limits__random_burst_uses_one_key_per_address(
    start_server: StartServer,
) -> None:
    server = await start_server(npm_upstream=UNREACHABLE, registry_auth_failures=1000)
    for _ in range(50):
        await whoami(server, secrets.token_urlsafe(20))
    limits = server.app[registry_limits_key]
    assert limits.auth_failures is not None
    assert len(limits.auth_failures) == 1
    # Unreadable secrets get no per-token bucket, so garbage cannot crowd out real tokens.
    assert limits.per_token is not None
    assert len(limits.per_token) == 0


async def test_registry_limits__concurrent_burst_with_one_cold_token_is_not_throttled(
    start_server: StartServer,
) -> None:
    server = await start_server(npm_upstream=UNREACHABLE, registry_auth_failures=2)
    secret = await server.token()
    headers = {"Authorization": f"Bearer {secret}"}
    async with aiohttp.ClientSession() as http:

        async def one() -> int:
            async with http.get(server.url / "npm" / "-" / "whoami", headers=headers) as resp:
                await resp.read()
                return resp.status

        statuses = await asyncio.gather(*(one() for _ in range(50)))
    assert statuses == [200] * 50
    # Nothing was kept against the address: guesses still get their full allowance.
    assert [(await whoami(server, random_token()))[0] for _ in range(3)] == [401, 401, 429]


def test_ratelimit__refund_gives_back_one_event() -> None:
    limiter = RateLimiter(2, 60)
    assert limiter.hit("a") is None
    assert limiter.hit("a") is None
    assert limiter.hit("a") is not None
    limiter.refund("a")
    assert limiter.hit("a") is None
    assert limiter.hit("a") is not None
    limiter.refund("a")
    limiter.refund("a")
    limiter.refund("a")
    assert len(limiter) == 0
    limiter.refund("never-seen")
    assert [limiter.hit("a"), limiter.hit("a")] == [None, None]


async def test_registry_limits__expired_token_gets_401_never_429(
    start_server: StartServer,
) -> None:
    server = await start_server(npm_upstream=UNREACHABLE, registry_auth_failures=1)
    user = await ensure_user(server.store, "late@example.com")
    _, secret = await issue_token(server.store, user, name="old", expires_at=time.time() - 10)
    await whoami(server, random_token())
    assert (await whoami(server, random_token()))[0] == 429  # the guess budget is spent
    answers = [await whoami(server, secret) for _ in range(5)]
    assert [status for status, _, _ in answers] == [401] * 5
    assert answers[0][2] == {"error": "token expired"}
