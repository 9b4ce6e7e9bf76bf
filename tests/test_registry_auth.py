from base64 import b64encode

import aiohttp
import pytest

from tests.conftest import RunningServer, StartServer
from tests.store_support import record_statements
from tokenapi import tokens

UNREACHABLE = "http://127.0.0.1:9/"


@pytest.fixture
async def server(start_server: StartServer) -> RunningServer:
    return await start_server(npm_upstream=UNREACHABLE, pypi_upstream=UNREACHABLE + "simple/")


async def whoami(server: RunningServer, headers: dict[str, str]) -> aiohttp.ClientResponse:
    async with aiohttp.ClientSession() as http:
        resp = await http.get(server.url / "npm" / "-" / "whoami", headers=headers)
        await resp.read()
        return resp


async def test_auth__bearer_token_passes(server: RunningServer) -> None:
    secret = await server.token("dev@example.com")
    resp = await whoami(server, {"Authorization": f"Bearer {secret}"})
    assert resp.status == 200
    assert await resp.json() == {"username": "dev@example.com"}


async def test_auth__basic_with_token_as_password(server: RunningServer) -> None:
    secret = await server.token()
    cred = b64encode(f"token:{secret}".encode()).decode()
    assert (await whoami(server, {"Authorization": f"Basic {cred}"})).status == 200


async def test_auth__basic_with_token_as_username(server: RunningServer) -> None:
    secret = await server.token()
    cred = b64encode(f"{secret}:".encode()).decode()
    assert (await whoami(server, {"Authorization": f"Basic {cred}"})).status == 200


async def test_auth__missing_is_401_with_bearer_challenge(server: RunningServer) -> None:
    resp = await whoami(server, {})
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="pkgate"'
    assert "error" in await resp.json()


async def test_auth__pypi_routes_use_basic_challenge(server: RunningServer) -> None:
    async with aiohttp.ClientSession() as http, http.get(server.url / "pypi/simple/") as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == 'Basic realm="pkgate"'
        assert "otp" not in resp.headers["WWW-Authenticate"].lower()


@pytest.mark.parametrize(
    "header",
    [
        "Basic %%%",
        "Basic " + b64encode(b"\xff\xfe\xfd:\xff").decode(),
        "Bearer",
        "Basic",
        "Negotiate abc",
        "Bearer " + "x" * 8000,
        "Basic " + b64encode(b"token:" + b"y" * 3000).decode(),
    ],
)
async def test_auth__malformed_header_is_401_json(server: RunningServer, header: str) -> None:
    resp = await whoami(server, {"Authorization": header})
    assert resp.status == 401
    body = await resp.json()
    assert set(body) == {"error"}
    assert "Traceback" not in body["error"]


async def test_auth__wrong_checksum_never_queries_the_store(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tokens.generate()
    forged = secret[:10] + ("A" if secret[10] != "A" else "B") + secret[11:]
    statements = record_statements(server.store, monkeypatch)
    for _ in range(20):
        assert (await whoami(server, {"Authorization": f"Bearer {forged}"})).status == 401
    assert statements == []
    assert server.validator.store_lookups == 0


async def test_auth__revoked_token_is_refused_on_the_next_request(server: RunningServer) -> None:
    secret = await server.token()
    assert (await whoami(server, {"Authorization": f"Bearer {secret}"})).status == 200
    token = await server.store.lookup_digest(tokens.digest(secret))
    assert token is not None
    server.validator.forget(await server.store.revoke_token(token.id))
    resp = await whoami(server, {"Authorization": f"Bearer {secret}"})
    assert resp.status == 401


async def test_auth__one_connection_answers_each_request_for_the_header_it_carries(
    server: RunningServer,
) -> None:
    # The gate reads a connection's Authorization header once while it stays the same: a
    # keep-alive connection (nginx's pool to pkgate carries many clients) that changes it, or
    # keeps it after the token was revoked, is answered for what each request carries.
    alice = await server.token("alice@example.com")
    bob = await server.token("bob@example.com")
    sent = [
        (f"Bearer {alice}", 200, "alice@example.com"),
        (f"Bearer {alice}", 200, "alice@example.com"),
        (f"Bearer {bob}", 200, "bob@example.com"),
        ("Basic %%%", 401, None),
        (None, 401, None),
        ("Basic " + b64encode(f"token:{alice}".encode()).decode(), 200, "alice@example.com"),
        (f"Bearer {alice[:-1]}x", 401, None),
        (f"Bearer {bob}", 200, "bob@example.com"),
    ]
    opened: list[object] = []
    trace = aiohttp.TraceConfig()

    async def on_open(*args: object) -> None:
        opened.append(args)

    trace.on_connection_create_end.append(on_open)
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector, trace_configs=[trace]) as http:
        for header, status, user in sent:
            headers = {"Authorization": header} if header else {}
            async with http.get(server.url / "npm/-/whoami", headers=headers) as resp:
                assert (header, resp.status) == (header, status)
                if user is not None:
                    assert (await resp.json())["username"] == user
        token = await server.store.lookup_digest(tokens.digest(bob))
        assert token is not None
        server.validator.forget(await server.store.revoke_token(token.id))
        async with http.get(
            server.url / "npm/-/whoami", headers={"Authorization": f"Bearer {bob}"}
        ) as resp:
            assert resp.status == 401
    assert len(opened) == 1  # all on one keep-alive connection


async def test_auth__invalid_token_is_401_even_when_anonymous_allowed(
    start_server: StartServer,
) -> None:
    server = await start_server(npm_upstream=UNREACHABLE, anonymous="allow")
    assert (await whoami(server, {"Authorization": "Bearer pkg_bad"})).status == 401
    async with aiohttp.ClientSession() as http, http.get(server.url / "npm/-/ping") as resp:
        assert resp.status == 200


async def test_auth__use_is_recorded_in_memory_per_ecosystem(server: RunningServer) -> None:
    secret = await server.token()
    for _ in range(3):
        await whoami(server, {"Authorization": f"Bearer {secret}"})
    token = await server.store.lookup_digest(tokens.digest(secret))
    assert token is not None
    usage = await server.recorder.usage(token.id)
    assert [(u.ecosystem, u.requests) for u in usage] == [("npm", 3)]


async def test_unknown_path__is_json_404(server: RunningServer) -> None:
    async with aiohttp.ClientSession() as http, http.get(server.url / "nope") as resp:
        assert resp.status == 404
        assert await resp.json() == {"error": "Not found"}
