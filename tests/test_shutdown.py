import asyncio
import hashlib
import json
import os
import signal
import sqlite3
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import serve_app
from tests.procs import ServerProcess
from tokenapi.issue import ensure_user, issue_token
from tokenapi.store import Store

SIZE = 8 * 1024 * 1024
CHUNK = 64 * 1024
TARBALL = "/big/-/big-1.0.0.tgz"


class SlowUpstream:
    """An npm upstream whose one tarball stops half-way until the test lets it go on."""

    def __init__(self) -> None:
        self.body = os.urandom(SIZE)
        self.half_sent = asyncio.Event()
        self.release = asyncio.Event()

    async def tarball(self, request: web.Request) -> web.StreamResponse:
        out = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        out.content_length = SIZE
        await out.prepare(request)
        half = SIZE // 2
        for start in range(0, half, CHUNK):
            await out.write(self.body[start : start + CHUNK])
        self.half_sent.set()
        await self.release.wait()
        for start in range(half, SIZE, CHUNK):
            await out.write(self.body[start : start + CHUNK])
        await out.write_eof()
        return out

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(TARBALL, self.tarball)
        return app


async def accepts_connections(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


async def make_token(data_dir: Path) -> tuple[str, str]:
    store = await Store.open(data_dir / "pkgate.db")
    try:
        user = await ensure_user(store, "ci@example.com")
        token, secret = await issue_token(store, user, name="ci")
    finally:
        await store.close()
    return token.id, secret


@pytest.mark.slow
async def test_shutdown__sigterm_lets_a_download_finish_and_flushes_last_used(
    tmp_path: Path,
) -> None:
    upstream = SlowUpstream()
    runner, upstream_url = await serve_app(upstream.app())
    data_dir = tmp_path / "data"
    token_id, secret = await make_token(data_dir)
    # A flush interval far beyond the test: only the shutdown flush can write last-used.
    server = ServerProcess(
        data_dir,
        ["--npm-upstream", f"{upstream_url}/", "--last-used-flush", "3600"],
    )
    await server.start()
    assert server.proc is not None
    started = time.time()
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                server.url.with_path("/npm" + TARBALL),
                headers={"Authorization": f"Bearer {secret}"},
                params={"npm": "1"},
            ) as resp,
        ):
            assert resp.status == 200
            assert resp.content_length == SIZE
            received = bytearray(await resp.content.readexactly(CHUNK))
            await upstream.half_sent.wait()
            server.proc.send_signal(signal.SIGTERM)
            # Stopped accepting: the listening socket goes away while the download is open.
            async with asyncio.timeout(20):
                while await accepts_connections(server.port):
                    await asyncio.sleep(0.02)
            upstream.release.set()
            received += await resp.read()
        _, err = await asyncio.wait_for(server.proc.communicate(), 60)
    finally:
        upstream.release.set()
        if server.proc.returncode is None:
            server.proc.kill()
            await server.proc.wait()
        await runner.cleanup()

    assert server.proc.returncode == 0
    assert len(received) == SIZE
    assert hashlib.sha256(received).digest() == hashlib.sha256(upstream.body).digest()
    with sqlite3.connect(data_dir / "pkgate.db") as db:
        (last_used,) = db.execute(
            "SELECT last_used_at FROM tokens WHERE id = ?", (token_id,)
        ).fetchone()
    assert last_used is not None
    assert last_used >= started - 1
    # The access log recorded the download by token id, never by secret.
    stderr = err.decode()
    assert secret not in stderr
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    [download] = [line for line in lines if line["path"].startswith("/npm/big/")]
    assert download["token_id"] == token_id
    assert download["status"] == 200
    assert download["bytes"] > SIZE
    assert download["path"] == "/npm/big/-/big-1.0.0.tgz?npm=1"
