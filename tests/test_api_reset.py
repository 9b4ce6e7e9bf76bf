"""``POST /api/v1/tokens/reset`` does the same work whether or not the address exists (so its
timing cannot tell), and is limited per address and per client IP (across workers: the counts
are in the store)."""

import ipaddress
from typing import Any

import pytest

from tests.api_support import NPM_UPSTREAM, call, code_in
from tests.conftest import RunningServer, StartServer
from tests.smtp import SmtpServer
from tests.store_support import record_statements


async def reset(server: RunningServer, email: str, code: str, ip: str = "") -> Any:
    headers = {"X-Forwarded-For": ip} if ip else None
    return await call(
        server, "POST", "/api/v1/tokens/reset", json={"email": email, "code": code}, headers=headers
    )


async def test_reset__known_and_unknown_addresses_run_the_same_statements(
    start_server: StartServer, mail: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await start_server(npm_upstream=NPM_UPSTREAM, smtp_url=mail.url)
    for email in ("coded@example.com", "coded@example.com"):  # a token, then a live code
        assert (await call(server, "POST", "/api/v1/tokens", json={"email": email})).status == 202
    real = code_in(mail.inbox.text())
    wrong = "A" * 8 if real != "A" * 8 else "B" * 8
    await server.token("nocode@example.com")
    seen = record_statements(server.store, monkeypatch)
    work: dict[str, list[str]] = {}
    answers = {}
    for email in ("unknown@example.com", "coded@example.com", "nocode@example.com"):
        seen.clear()
        answer = await reset(server, email, wrong)
        answers[email] = (answer.status, answer.body)
        work[email] = list(seen)
    assert all(a == (400, {"error": "Invalid or expired code"}) for a in answers.values())
    assert work["unknown@example.com"] == work["coded@example.com"] == work["nocode@example.com"]
    # The attempt is written every time (the limit's count), so every request commits a change.
    assert any(s.startswith("UPDATE limit_counters") for s in work["unknown@example.com"])
    assert "COMMIT" in work["unknown@example.com"]
    # The wrong guess counted against the live code only.
    rows = await server.store._fetchall("SELECT failed_attempts FROM reset_codes")
    assert [r[0] for r in rows] == [1]
    assert (await reset(server, "coded@example.com", real)).status == 200


async def test_reset__limited_per_address(start_server: StartServer) -> None:
    server = await start_server(npm_upstream=NPM_UPSTREAM, reset_limit_email=3)
    statuses = [(await reset(server, "a@example.com", "AAAAAAAA")).status for _ in range(5)]
    assert statuses == [400, 400, 400, 429, 429]
    limited = await reset(server, "A@EXAMPLE.com", "AAAAAAAA")  # the same address
    assert limited.status == 429
    assert int(limited.headers["Retry-After"]) >= 1
    assert limited.body["error"]
    # Another address from the same client is not affected.
    assert (await reset(server, "b@example.com", "AAAAAAAA")).status == 400


async def test_reset__limited_per_client_ip(start_server: StartServer) -> None:
    server = await start_server(
        npm_upstream=NPM_UPSTREAM,
        reset_limit_ip=4,
        trusted_proxies=(ipaddress.ip_network("127.0.0.0/8"),),
    )
    statuses = [
        (await reset(server, f"u{i}@example.com", "AAAAAAAA", ip="198.51.100.7")).status
        for i in range(6)
    ]
    assert statuses == [400] * 4 + [429] * 2
    assert (await reset(server, "z@example.com", "AAAAAAAA", ip="198.51.100.8")).status == 400


async def test_reset__limits_hold_across_two_servers_on_one_database(
    start_server: StartServer,
) -> None:
    # Two workers share the database: the per-address count is one, not one each.
    one = await start_server(npm_upstream=NPM_UPSTREAM, reset_limit_email=4)
    two = await start_server(
        npm_upstream=NPM_UPSTREAM, reset_limit_email=4, data_dir=one.settings.data_dir
    )
    statuses = [
        (await reset(server, "a@example.com", "AAAAAAAA")).status for server in [one, two] * 4
    ]
    assert statuses == [400] * 4 + [429] * 4
