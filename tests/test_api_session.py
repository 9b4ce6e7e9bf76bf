from http.cookies import SimpleCookie

import aiohttp
import pytest
from yarl import URL

from tests.api_support import NPM_UPSTREAM, call, snapshot
from tests.conftest import RunningServer, StartServer, replace
from tokenapi.passwords import hash_password_async

PASSWORD = "correct horse battery staple"


@pytest.fixture
async def server(start_server: StartServer) -> RunningServer:
    server = await start_server(npm_upstream=NPM_UPSTREAM)
    await add_user(server, "me@example.com")
    return server


async def add_user(server: RunningServer, email: str, *, admin: bool = False) -> None:
    await server.store.create_user(
        email, is_admin=admin, password_hash=await hash_password_async(PASSWORD)
    )


def origin(server: RunningServer) -> dict[str, str]:
    return {"Origin": str(server.url.origin())}


async def login(
    server: RunningServer, http: aiohttp.ClientSession, email: str = "me@example.com"
) -> None:
    answer = await call(
        server,
        "POST",
        "/api/session",
        json={"email": email, "password": PASSWORD},
        session=http,
        headers=origin(server),
    )
    assert answer.status == 200, answer.body


def browser() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def test_session__login_sets_strict_httponly_cookie(server: RunningServer) -> None:
    answer = await call(
        server, "POST", "/api/session", json={"email": "ME@example.com", "password": PASSWORD}
    )
    assert answer.status == 200
    assert answer.body["user"]["email"] == "me@example.com"
    cookie = SimpleCookie(answer.headers["Set-Cookie"])["pkgate_session"]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Strict"
    assert cookie["path"] == "/"
    assert not cookie["secure"]
    assert len(cookie.value) >= 40
    assert cookie.value not in str(snapshot(server.settings.db_path)["sessions"])


async def test_session__cookie_secure_under_https(start_server: StartServer) -> None:
    server = await start_server(npm_upstream=NPM_UPSTREAM, public_url="https://pkgate.example/reg")
    await add_user(server, "me@example.com")
    # TLS ends at a reverse proxy in front; talk to the listening socket directly.
    port = server.runner.addresses[0][1]
    direct = replace(server, url=URL(f"http://127.0.0.1:{port}"))
    answer = await call(
        direct,
        "POST",
        "/reg/api/session",
        json={"email": "me@example.com", "password": PASSWORD},
        headers={"Origin": "https://pkgate.example"},
    )
    assert answer.status == 200
    cookie = SimpleCookie(answer.headers["Set-Cookie"])["pkgate_session"]
    assert cookie["secure"] is True
    assert cookie["path"] == "/reg/"
    evil = await call(
        direct,
        "POST",
        "/reg/api/session",
        json={"email": "me@example.com", "password": PASSWORD},
        headers={"Origin": f"http://127.0.0.1:{port}"},
    )
    assert evil.status == 403


async def test_session__cookie_authenticates_api(server: RunningServer) -> None:
    async with browser() as http:
        await login(server, http)
        me = await call(server, "GET", "/api/session", session=http)
        assert me.body["user"]["email"] == "me@example.com"
        created = await call(
            server,
            "POST",
            "/api/tokens",
            json={"name": "laptop"},
            session=http,
            headers=origin(server),
        )
        assert created.status == 201
        listed = await call(server, "GET", "/api/tokens", session=http)
        assert [t["name"] for t in listed.body] == ["laptop"]
        gone = await call(
            server,
            "DELETE",
            f"/api/tokens/{created.body['id']}",
            session=http,
            headers=origin(server),
        )
        assert gone.status == 200


async def test_session__cookie_writes_without_matching_origin_403(server: RunningServer) -> None:
    async with browser() as http:
        await login(server, http)
        before = snapshot(server.settings.db_path)
        for headers in ({}, {"Origin": "http://evil.example"}, {"Origin": "null"}):
            create = await call(
                server, "POST", "/api/tokens", json={"name": "x"}, session=http, headers=headers
            )
            assert (create.status, create.body) == (
                403,
                {"error": "Origin does not match this server"},
            )
            logout = await call(server, "DELETE", "/api/session", session=http, headers=headers)
            assert logout.status == 403
        assert snapshot(server.settings.db_path) == before


async def test_session__bearer_needs_no_origin(server: RunningServer) -> None:
    token = await server.token("me@example.com")
    answer = await call(
        server,
        "POST",
        "/api/tokens",
        json={"name": "x"},
        token=token,
        headers={"Origin": "http://evil.example"},
    )
    assert answer.status == 201


async def test_session__logout_ends_session(server: RunningServer) -> None:
    async with browser() as http:
        await login(server, http)
        cookies = {c.key: c.value for c in http.cookie_jar}
        out = await call(server, "DELETE", "/api/session", session=http, headers=origin(server))
        assert (out.status, out.body) == (200, {"message": "Logged out"})
    # Replaying the old cookie value after logout fails.
    replay = await call(
        server,
        "GET",
        "/api/session",
        headers={"Cookie": f"pkgate_session={cookies['pkgate_session']}"},
    )
    assert replay.status == 401


async def test_session__wrong_password_401_same_as_unknown_user(server: RunningServer) -> None:
    wrong = await call(
        server, "POST", "/api/session", json={"email": "me@example.com", "password": "nope"}
    )
    unknown = await call(
        server, "POST", "/api/session", json={"email": "who@example.com", "password": "nope"}
    )
    assert wrong.status == unknown.status == 401
    assert wrong.raw == unknown.raw
    assert "Set-Cookie" not in wrong.headers


async def test_session__failed_logins_throttled(start_server: StartServer) -> None:
    server = await start_server(npm_upstream=NPM_UPSTREAM, login_limit=3)
    await add_user(server, "me@example.com")
    for _ in range(3):
        answer = await call(
            server, "POST", "/api/session", json={"email": "me@example.com", "password": "x"}
        )
        assert answer.status == 401
    right = await call(
        server, "POST", "/api/session", json={"email": "me@example.com", "password": PASSWORD}
    )
    assert right.status == 429
    assert int(right.headers["Retry-After"]) >= 1
    assert "Set-Cookie" not in right.headers


async def test_session__expired_session_refused(server: RunningServer) -> None:
    from tests.api_support import execute

    async with browser() as http:
        await login(server, http)
        execute(server.settings.db_path, "UPDATE sessions SET expires_at = 0")
        assert (await call(server, "GET", "/api/session", session=http)).status == 401


async def test_admin__non_admin_403(server: RunningServer) -> None:
    token = await server.token("me@example.com")
    other = await server.token("other@example.com")
    listed = await call(server, "GET", "/api/admin/tokens", token=token)
    assert (listed.status, listed.body) == (403, {"error": "Administrator rights are required"})
    other_id = (await call(server, "GET", "/api/tokens", token=other)).body[0]["id"]
    revoke = await call(server, "DELETE", f"/api/admin/tokens/{other_id}", token=token)
    assert revoke.status == 403
    assert (await call(server, "GET", "/npm/-/whoami", token=other)).status == 200
    async with browser() as http:
        await login(server, http)
        assert (await call(server, "GET", "/api/admin/tokens", session=http)).status == 403


async def test_admin__lists_and_revokes_anyones_tokens(server: RunningServer) -> None:
    await add_user(server, "root@example.com", admin=True)
    other = await server.token("other@example.com", name="theirs")
    async with browser() as http:
        await login(server, http, "root@example.com")
        everyone = await call(server, "GET", "/api/admin/tokens", session=http)
        assert everyone.status == 200
        assert [(t["email"], t["name"]) for t in everyone.body] == [("other@example.com", "theirs")]
        filtered = await call(
            server, "GET", "/api/admin/tokens?email=nobody@example.com", session=http
        )
        assert filtered.body == []
        revoke = await call(
            server,
            "DELETE",
            f"/api/admin/tokens/{everyone.body[0]['id']}",
            session=http,
            headers=origin(server),
        )
        assert (revoke.status, revoke.body) == (200, {"message": "Token revoked"})
        again = await call(
            server,
            "DELETE",
            f"/api/admin/tokens/{everyone.body[0]['id']}",
            session=http,
            headers=origin(server),
        )
        assert again.status == 404
    assert (await call(server, "GET", "/npm/-/whoami", token=other)).status == 401
