"""Requests aiohttp's parser rejects get a JSON 4xx that echoes nothing, and no log line holds
the secret they carried (aiohttp's default answer quotes the raw header line and logs it)."""

import asyncio
import json
import logging
from pathlib import Path

import pytest

from tests.api_support import NPM_UPSTREAM, PYPI_UPSTREAM
from tests.conftest import RunningServer, StartServer
from tests.procs import ServerProcess
from tests.test_shutdown import make_token


@pytest.fixture
async def server(start_server: StartServer) -> RunningServer:
    return await start_server(npm_upstream=NPM_UPSTREAM, pypi_upstream=PYPI_UPSTREAM)


def shapes(secret: str) -> dict[str, bytes]:
    """Raw requests carrying ``secret`` that an HTTP/1.1 parser must refuse."""
    host = b"Host: 127.0.0.1\r\n"
    s = secret.encode()
    return {
        "control character in the value": b"GET /npm/-/whoami HTTP/1.1\r\n"
        + host
        + b"Authorization: Bearer "
        + s
        + b"\x01\r\n\r\n",
        "space before the colon": b"GET /npm/-/whoami HTTP/1.1\r\n"
        + host
        + b"Authorization : Bearer "
        + s
        + b"\r\n\r\n",
        "space in the path": b"GET /npm/" + s + b" x HTTP/1.1\r\n" + host + b"\r\n",
        "secret in the path with a NUL": b"GET /pypi/simple/"
        + s
        + b"\x00/ HTTP/1.1\r\n"
        + host
        + b"\r\n",
        "header line without a colon": b"GET /npm/-/whoami HTTP/1.1\r\n"
        + host
        + b"Bearer "
        + s
        + b"\r\n\r\n",
        "bad character in the header name": b"GET /npm/-/whoami HTTP/1.1\r\n"
        + host
        + b"Author\x7fization: Bearer "
        + s
        + b"\r\n\r\n",
        "header line too long": b"GET /npm/-/whoami HTTP/1.1\r\n"
        + host
        + b"Authorization: Bearer "
        + s
        + b"x" * 10_000
        + b"\r\n\r\n",
        "secret as the method": s + b" /npm/-/whoami HTTP/1.1\r\n" + host + b"\r\n",
        "secret as the version": b"GET /npm/-/whoami " + s + b"\r\n" + host + b"\r\n",
        "bare newline after the header": b"GET /npm/-/whoami HTTP/1.1\r\n"
        + host
        + b"Authorization: Bearer "
        + s
        + b"\n\rX: y\r\n\r\n",
    }


async def exchange(server: RunningServer, raw: bytes) -> bytes:
    """Send ``raw`` on a fresh connection and read until the server closes it."""
    assert server.url.port is not None
    return await exchange_at(server.url.port, raw)


async def exchange_at(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        async with asyncio.timeout(10):
            return await reader.read(-1)
    finally:
        writer.close()


def split(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


@pytest.mark.parametrize("shape", list(shapes("pkg_x")))
async def test_malformed__answer_is_json_4xx_without_the_secret(
    server: RunningServer, shape: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = await server.token()
    answer = await exchange(server, shapes(secret)[shape])
    status, headers, body = split(answer)
    assert 400 <= status < 500, answer
    assert headers["content-type"].startswith("application/json"), answer
    assert set(json.loads(body)) == {"error"}
    assert secret.encode() not in answer
    assert secret[4:].encode() not in answer
    logged = "\n".join(
        f"{r.name} {r.getMessage()} {r.exc_text or ''} {r.exc_info!r}" for r in caplog.records
    )
    assert secret[4:] not in logged
    assert any(r.name == "pkgate.server" for r in caplog.records)


async def test_malformed__well_formed_request_after_a_bad_one_still_served(
    server: RunningServer,
) -> None:
    secret = await server.token()
    await exchange(server, shapes(secret)["space before the colon"])
    answer = await exchange(
        server,
        b"GET /api/v1/tokens/status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Authorization: Bearer " + secret.encode() + b"\r\n\r\n",
    )
    status, _, body = split(answer)
    assert status == 200, answer
    assert json.loads(body)


async def test_malformed__served_process_answers_json_and_logs_no_secret(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    _, secret = await make_token(data_dir)
    server = ServerProcess(data_dir, ["--npm-upstream", NPM_UPSTREAM, "--log-level", "debug"])
    await server.start()
    try:
        answers = [await exchange_at(server.port, raw) for raw in shapes(secret).values()]
    finally:
        assert await server.stop() == 0
    for answer in answers:
        status, headers, _ = split(answer)
        assert 400 <= status < 500, answer
        assert headers["content-type"].startswith("application/json"), answer
        assert secret[4:].encode() not in answer
    assert server.stderr.count(b"unusable request") == len(answers)
    assert secret[4:].encode() not in server.stderr
