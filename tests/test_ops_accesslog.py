import asyncio
import io
import json
import logging
from base64 import b64encode
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from ipaddress import ip_network
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from proxy.accesslog import (
    LOGGER_NAME,
    JsonAccessLogger,
    access_log_class,
    access_logger,
    safe_path,
)
from proxy.app import create_app
from proxy.keys import REQUEST_CACHE
from proxy.settings import Settings
from tests.conftest import free_socket
from tokenapi.issue import ensure_user, issue_token
from tokenapi.keys import store_key

UNREACHABLE = "http://127.0.0.1:9/"


@dataclass
class Logged:
    url: URL
    app: web.Application
    stream: io.StringIO

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]

    def text(self) -> str:
        return self.stream.getvalue()

    async def token(self, email: str = "dev@example.com") -> tuple[str, str]:
        user = await ensure_user(self.app[store_key], email)
        token, secret = await issue_token(self.app[store_key], user, name="t")
        return token.id, secret


Start = Callable[..., Awaitable[Logged]]


@pytest.fixture
async def logged(make_settings: Callable[..., Settings]) -> AsyncIterator[Start]:
    """A pkgate server whose access log goes to a string buffer."""
    runners: list[web.AppRunner] = []
    stream = io.StringIO()
    logger = access_logger(stream)

    async def start(**overrides: Any) -> Logged:
        sock = free_socket()
        port = sock.getsockname()[1]
        settings = make_settings(
            port=port, public_url=f"http://127.0.0.1:{port}", npm_upstream=UNREACHABLE, **overrides
        )
        app = create_app(settings)
        runner = web.AppRunner(
            app,
            access_log=logger,
            access_log_class=access_log_class(settings),
            handle_signals=False,
        )
        await runner.setup()
        await web.SockSite(runner, sock).start()
        runners.append(runner)
        return Logged(URL(f"http://127.0.0.1:{port}"), app, stream)

    yield start
    for runner in runners:
        await runner.cleanup()
    for handler in list(logger.handlers):
        logger.removeHandler(handler)


async def get(url: URL, **kwargs: Any) -> int:
    async with aiohttp.ClientSession() as http, http.get(url, **kwargs) as resp:
        await resp.read()
        return resp.status


async def raw_request(url: URL, request: bytes) -> bytes:
    """Send bytes aiohttp's client would refuse to send, and read the answer."""
    assert url.host is not None
    assert url.port is not None
    reader, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(request)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    return answer


async def test_accesslog__one_json_line_with_token_id_and_ecosystem(logged: Start) -> None:
    server = await logged()
    token_id, secret = await server.token()
    headers = {"Authorization": f"Bearer {secret}", "User-Agent": "npm/10.8.0 node/v20"}
    assert await get(server.url / "npm/-/whoami", headers=headers) == 200
    [line] = server.lines()
    assert line["method"] == "GET"
    assert line["path"] == "/npm/-/whoami"
    assert line["status"] == 200
    # Bytes sent on the wire: the status line and headers, then the body.
    assert line["bytes"] > len(b'{"username": "dev@example.com"}') + len(b"HTTP/1.1 200 OK\r\n")
    assert line["token_id"] == token_id
    assert line["ecosystem"] == "npm"
    assert line["client_ip"] == "127.0.0.1"
    assert line["user_agent"] == "npm/10.8.0 node/v20"
    assert line["duration_ms"] >= 0
    assert line["time"].endswith("Z")
    assert secret not in server.text()


async def test_accesslog__no_secret_from_headers_or_userinfo_in_logs_or_metrics(
    logged: Start,
) -> None:
    server = await logged()
    _, secret = await server.token()
    _, revoked = await server.token("gone@example.com")
    await server.app[store_key].revoke_token(
        (await server.app[store_key].list_tokens(email="gone@example.com"))[0].id
    )
    base = server.url / "npm/-/whoami"
    basic = b64encode(f"token:{secret}".encode()).decode()
    assert await get(base, headers={"Authorization": f"Bearer {secret}"}) == 200
    assert await get(base, headers={"Authorization": f"Basic {basic}"}) == 200
    assert await get(base, headers={"Authorization": f"Bearer {revoked}"}) == 401
    assert await get(base, headers={"Authorization": f"Bearer {secret}x"}) == 401
    # pip and uv put the token in the URL's userinfo; aiohttp turns it into Basic auth.
    assert await get(base.with_user("token").with_password(secret)) == 200
    assert await get(base.with_user(secret)) == 200
    # A client sending the absolute form, userinfo included, in the request line itself.
    target = f"http://token:{secret}@127.0.0.1:{server.url.port}/npm/-/whoami"
    await raw_request(
        server.url,
        f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(),
    )
    # The token in the query string and in the path.
    assert await get(base.with_query(token=secret, page="1")) == 401
    assert await get(server.url / "npm" / secret) == 401
    async with aiohttp.ClientSession() as http, http.get(server.url / "metrics") as resp:
        metrics = await resp.text()
    logs = server.text()
    assert len(server.lines()) == 10
    for secret_value in (secret, revoked, basic, secret[4:]):
        assert secret_value not in logs
        assert secret_value not in metrics
    assert "Bearer" not in logs


async def test_accesslog__secret_query_values_are_masked(logged: Start) -> None:
    server = await logged()
    url = server.url.with_path("/npm/-/whoami").with_query(
        {"password": "hunter2", "api_key": "abc", "q": "left-pad", "x": "pkg_" + "A" * 36}
    )
    assert await get(url) == 401
    [line] = server.lines()
    assert line["path"] == "/npm/-/whoami?password=***&api_key=***&q=left-pad&x=***"
    assert "hunter2" not in server.text()


def test_accesslog__safe_path_masks_token_shapes_and_caps_length() -> None:
    secret = "pkg_" + "b" * 36
    assert safe_path(URL(f"/npm/{secret}/x")) == "/npm/pkg_***/x"
    assert len(safe_path(URL("/" + "a" * 10_000))) == 2048


async def test_accesslog__forwarded_for_believed_only_from_trusted_proxies(
    logged: Start,
) -> None:
    untrusting = await logged()
    trusting = await logged(trusted_proxies=(ip_network("127.0.0.1/32"),))
    headers = {"X-Forwarded-For": "203.0.113.9"}
    assert await get(untrusting.url / "healthz", headers=headers) == 200
    assert untrusting.lines()[-1]["client_ip"] == "127.0.0.1"
    assert await get(trusting.url / "healthz", headers=headers) == 200
    assert trusting.lines()[-1]["client_ip"] == "203.0.113.9"


async def test_accesslog__hostile_user_agent_stays_inside_one_json_value(logged: Start) -> None:
    server = await logged()
    agent = '"}, {"status": 200, "token_id": "forged"} \\ caf\xe9 ' + "pkg_" + "C" * 36 + "z" * 500
    await raw_request(
        server.url,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nUser-Agent: "
        + agent.encode("latin-1")
        + b"\r\n\r\n",
    )
    [line] = server.lines()
    assert line["token_id"] is None
    assert line["user_agent"].startswith('"}, {"status": 200, "token_id": "forged"}')
    assert "pkg_" + "C" * 36 not in line["user_agent"]
    assert len(line["user_agent"]) <= 256


async def test_accesslog__cache_outcome_from_the_handler() -> None:
    stream = io.StringIO()
    logger = logging.getLogger(LOGGER_NAME + ".test")
    logger.addHandler(logging.StreamHandler(stream))
    logger.setLevel(logging.INFO)
    logger.propagate = False

    async def cached(request: web.Request) -> web.Response:
        request[REQUEST_CACHE] = "stale"
        return web.Response(body=b"12345")

    app = web.Application()
    app.router.add_get("/x", cached)
    runner = web.AppRunner(
        app, access_log=logger, access_log_class=JsonAccessLogger, handle_signals=False
    )
    await runner.setup()
    sock = free_socket()
    await web.SockSite(runner, sock).start()
    try:
        assert await get(URL(f"http://127.0.0.1:{sock.getsockname()[1]}/x")) == 200
    finally:
        await runner.cleanup()
    [line] = [json.loads(s) for s in stream.getvalue().splitlines()]
    assert line["cache"] == "stale"
    assert line["bytes"] > 5
    assert line["ecosystem"] is None
