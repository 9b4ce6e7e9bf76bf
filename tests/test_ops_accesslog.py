import asyncio
import fcntl
import json
import os
import signal
from base64 import b64encode
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from proxy.accesslog import (
    AccessLogSink,
    access_log_class,
    access_log_key,
    access_logger,
    safe_path,
)
from proxy.app import create_app
from proxy.keys import REQUEST_FACTS, RegistryFacts, note_cache
from proxy.server import SafeAppRunner
from proxy.settings import Settings
from tests.conftest import free_socket
from tests.procs import ServerProcess
from tests.test_shutdown import make_token
from tokenapi.issue import ensure_user, issue_token
from tokenapi.keys import store_key

UNREACHABLE = "http://127.0.0.1:9/"


@dataclass
class Logged:
    url: URL
    app: web.Application
    sink: AccessLogSink
    path: Path

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text().splitlines()]

    def text(self) -> str:
        assert self.sink.flush()
        return self.path.read_text()

    async def token(self, email: str = "dev@example.com") -> tuple[str, str]:
        user = await ensure_user(self.app[store_key], email)
        token, secret = await issue_token(self.app[store_key], user, name="t")
        return token.id, secret


Start = Callable[..., Awaitable[Logged]]


@pytest.fixture
async def logged(make_settings: Callable[..., Settings], tmp_path: Path) -> AsyncIterator[Start]:
    """A pkgate server whose access log goes to a file (or to the sink given)."""
    runners: list[web.AppRunner] = []
    sinks: list[AccessLogSink] = []

    async def start(sink: AccessLogSink | None = None, **overrides: Any) -> Logged:
        sock = free_socket()
        port = sock.getsockname()[1]
        path = tmp_path / f"access-{port}.log"
        settings = make_settings(
            port=port,
            public_url=f"http://127.0.0.1:{port}",
            npm_upstream=UNREACHABLE,
            access_log_file=path,
            **overrides,
        )
        sink = sink or AccessLogSink.for_settings(settings)
        assert sink is not None
        sinks.append(sink)
        app = create_app(settings)
        app[access_log_key] = sink
        runner = SafeAppRunner(
            app,
            access_log=access_logger(),
            access_log_class=access_log_class(settings, sink),
            handle_signals=False,
        )
        await runner.setup()
        await web.SockSite(runner, sock).start()
        runners.append(runner)
        return Logged(URL(f"http://127.0.0.1:{port}"), app, sink, path)

    yield start
    for runner in runners:
        await runner.cleanup()
    for sink in sinks:
        sink.close(timeout=0.5)


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


async def test_accesslog__each_request_of_one_connection_logged_with_its_own_fields(
    logged: Start,
) -> None:
    # What a connection's requests share is encoded once per connection while it stays the
    # same: requests on one keep-alive connection that change token, user agent or path
    # must each be logged with their own.
    server = await logged()
    first_id, first = await server.token()
    second_id, second = await server.token()
    asks = [
        (first, "npm/10.8.0 node/v20", "npm/-/whoami"),
        (first, "npm/10.8.0 node/v20", "npm/-/ping"),
        (first, "yarn/1.22.22", "npm/-/ping"),
        (second, 'pnpm/9 "quoted" \\ agent', "npm/-/whoami"),
        (None, "curl/8", "npm/-/whoami"),
        (first, "npm/10.8.0 node/v20", "npm/-/whoami"),
    ]
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as http:
        for secret, agent, path in asks:
            headers = {"User-Agent": agent}
            if secret is not None:
                headers["Authorization"] = f"Bearer {secret}"
            async with http.get(server.url / path, headers=headers) as resp:
                await resp.read()
    lines = server.lines()
    assert [(line["token_id"], line["user_agent"], line["path"]) for line in lines] == [
        (first_id, "npm/10.8.0 node/v20", "/npm/-/whoami"),
        (first_id, "npm/10.8.0 node/v20", "/npm/-/ping"),
        (first_id, "yarn/1.22.22", "/npm/-/ping"),
        (second_id, 'pnpm/9 "quoted" \\ agent', "/npm/-/whoami"),
        (None, "curl/8", "/npm/-/whoami"),
        (first_id, "npm/10.8.0 node/v20", "/npm/-/whoami"),
    ]
    assert [line["status"] for line in lines] == [200, 200, 200, 200, 401, 200]


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


async def test_accesslog__hostile_raw_paths_stay_inside_one_json_value(logged: Start) -> None:
    server = await logged()
    secret = "pkg_" + "D" * 36
    paths = [
        b'/npm/a"},{"status":200',  # a quote would end the value
        b"/npm/back\\slash",
        b"/npm/caf\xc3\xa9",  # not ASCII: aiohttp refuses the request line, logged as "/"
        b"/npm/" + secret.encode(),
        b"/npm/" + b"a" * 3000,  # over the cap
        b"/npm/plain-name",
    ]
    for path in paths:
        await raw_request(
            server.url, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
    logged_paths = [line["path"] for line in server.lines()]
    assert len(logged_paths) == len(paths)
    assert logged_paths[0] == '/npm/a"},{"status":200'
    assert logged_paths[1] == "/npm/back\\slash"
    assert logged_paths[2] == "/"
    assert logged_paths[3] == "/npm/pkg_***"
    assert len(logged_paths[4]) == 2048
    assert logged_paths[5] == "/npm/plain-name"
    assert secret not in server.text()


async def test_accesslog__cache_outcome_from_the_handler(tmp_path: Path) -> None:
    sink = AccessLogSink(path=tmp_path / "access.log")

    async def cached(request: web.Request) -> web.Response:
        request[REQUEST_FACTS] = RegistryFacts.of("npm")  # what a registry gate puts on requests
        note_cache(request, "stale")
        return web.Response(body=b"12345")

    app = web.Application()
    app.router.add_get("/x", cached)
    runner = SafeAppRunner(
        app,
        access_log=access_logger(),
        access_log_class=access_log_class(Settings(), sink),
        handle_signals=False,
    )
    await runner.setup()
    sock = free_socket()
    await web.SockSite(runner, sock).start()
    try:
        assert await get(URL(f"http://127.0.0.1:{sock.getsockname()[1]}/x")) == 200
    finally:
        await runner.cleanup()
        sink.close()
    [line] = [json.loads(s) for s in (tmp_path / "access.log").read_text().splitlines()]
    assert line["cache"] == "stale"
    assert line["bytes"] > 5
    assert line["ecosystem"] == "npm"


# ------------------------------------------------------------------ batching and durability


async def whoami_burst(url: URL, secret: str, count: int, agent: str = "npm/11") -> list[int]:
    """``count`` concurrent requests, each with its own ``?n=`` so every line is identifiable."""
    headers = {"Authorization": f"Bearer {secret}", "User-Agent": agent}
    async with aiohttp.ClientSession() as http:

        async def one(n: int) -> int:
            async with http.get(url / "npm/-/whoami" % {"n": str(n)}, headers=headers) as r:
                await r.read()
                return r.status

        return list(await asyncio.gather(*(one(n) for n in range(count))))


async def test_accesslog__every_request_of_a_burst_is_written_once(logged: Start) -> None:
    server = await logged()
    token_id, secret = await server.token()
    statuses = await whoami_burst(server.url, secret, 400)
    assert statuses == [200] * 400
    lines = server.lines()
    assert sorted(line["path"] for line in lines) == sorted(
        f"/npm/-/whoami?n={n}" for n in range(400)
    )
    assert {line["token_id"] for line in lines} == {token_id}
    assert server.sink.lines_written == 400
    assert server.sink.lines_dropped == 0


async def test_accesslog__lines_are_batched_not_written_per_request(logged: Start) -> None:
    # A flush interval far beyond the test: nothing reaches the file until a flush asks for it.
    server = await logged(access_log_flush=3600.0)
    _, secret = await server.token()
    assert await whoami_burst(server.url, secret, 50) == [200] * 50
    assert server.path.read_text() == ""
    assert server.sink.pending_bytes > 0
    assert len(server.lines()) == 50


async def test_accesslog__a_rotated_file_is_reopened(logged: Start) -> None:
    server = await logged()
    _, secret = await server.token()
    assert await whoami_burst(server.url, secret, 3) == [200] * 3
    assert len(server.lines()) == 3
    server.path.rename(server.path.with_suffix(".1"))
    assert await whoami_burst(server.url, secret, 2) == [200] * 2
    assert len(server.lines()) == 2
    assert len(server.path.with_suffix(".1").read_text().splitlines()) == 3


async def test_accesslog__a_stalled_pipe_neither_blocks_requests_nor_loses_lines_silently(
    logged: Start,
) -> None:
    """Nobody reads the log for a while: requests go on, lines past the bound are counted and the
    log itself says how many are missing once it can be written again."""
    read_fd, write_fd = os.pipe()
    fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, 4096)
    sink = AccessLogSink(fd=write_fd, max_pending=16 * 1024, flush_interval=0.05)
    server = await logged(sink=sink)
    _, secret = await server.token()
    # Each line is ~600 bytes (a long user agent): 300 of them are far beyond pipe + buffer.
    statuses = await whoami_burst(server.url, secret, 300, agent="a" * 250)
    assert statuses == [200] * 300
    dropped_so_far = sink.lines_dropped
    assert dropped_so_far > 0
    async with aiohttp.ClientSession() as http, http.get(server.url / "metrics") as resp:
        metrics = await resp.text()
    # (The /metrics request's own line comes after its answer.)
    assert f"pkgate_access_log_lines_dropped_total {float(dropped_so_far)}" in metrics

    # The reader comes back: everything kept is written, followed by the overflow marker.
    chunks: list[bytes] = []
    reader = asyncio.get_running_loop().run_in_executor(None, _read_all, read_fd, chunks)
    assert await asyncio.to_thread(sink.flush, 10.0)
    sink.close()
    os.close(write_fd)
    await reader
    os.close(read_fd)
    lines = [json.loads(line) for line in b"".join(chunks).splitlines()]
    requests = [line for line in lines if "event" not in line]
    markers = [line for line in lines if line.get("event") == "access_log_overflow"]
    assert markers
    dropped = sum(marker["dropped"] for marker in markers)
    assert dropped == sink.lines_dropped
    # /metrics itself is one more request: every one of them is a line or counted in a marker.
    assert len(requests) + dropped == 301
    assert sink.lines_written == len(requests)


def _read_all(fd: int, into: list[bytes]) -> None:
    while chunk := os.read(fd, 65536):
        into.append(chunk)


async def test_accesslog__a_full_disk_does_not_block_requests_and_is_reported(
    logged: Start, caplog: pytest.LogCaptureFixture
) -> None:
    sink = AccessLogSink(path=Path("/dev/full"), max_pending=8 * 1024, flush_interval=0.05)
    server = await logged(sink=sink)
    _, secret = await server.token()
    assert await whoami_burst(server.url, secret, 100) == [200] * 100
    assert sink.lines_written == 0
    assert sink.lines_dropped > 0
    assert "keeping lines in memory" in caplog.text
    assert "further lines are counted as dropped" in caplog.text
    # Shutdown gives up on the disk after its timeout and says how many lines are lost.
    await asyncio.to_thread(sink.close, 0.2)
    assert sink.lines_lost + sink.lines_dropped == 100
    assert f"{sink.lines_lost} line(s) could not be written" in caplog.text


@pytest.mark.slow
async def test_accesslog__sigterm_writes_every_pending_line(tmp_path: Path) -> None:
    """A real server with an hour-long flush interval: only the shutdown flush can write."""
    data_dir = tmp_path / "data"
    token_id, secret = await make_token(data_dir)
    log_path = tmp_path / "access.log"
    server = ServerProcess(
        data_dir,
        [
            "--npm-upstream", UNREACHABLE,
            "--access-log-file", str(log_path),
            "--access-log-flush", "3600",
        ],
    )  # fmt: skip
    await server.start()
    try:
        assert await whoami_burst(server.url, secret, 200) == [200] * 200
        assert "whoami" not in log_path.read_text()
    finally:
        assert await server.stop(signal.SIGTERM) == 0
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    whoami = sorted(line["path"] for line in lines if line["path"].startswith("/npm/"))
    assert whoami == sorted(f"/npm/-/whoami?n={n}" for n in range(200))
    assert {line["token_id"] for line in lines if line["path"].startswith("/npm/")} == {token_id}
