"""A SIGTERM always ends ``pkgate serve`` (issue 11, item 12): idle, with a request in flight,
in the middle of a last-used flush, in the middle of a revocation poll, and when closing a
database connection fails (its non-daemon thread must not keep the process alive)."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import TOP, free_port, pkgate_cmd, run, serve_app
from tests.procs import LoggedProcess, serve_args
from tokenapi.store import Store

pytestmark = pytest.mark.slow

EXIT_DEADLINE = 20.0  # seconds from SIGTERM to exit, generous for a loaded machine


class Launched(LoggedProcess):
    def __init__(self, fault: str, data: Path, upstream: str, *args: str) -> None:
        super().__init__()
        self.port = free_port()
        self.cmd = [
            sys.executable,
            str(TOP / "tests" / "exit_launcher.py"),
            fault,
            *serve_args(self.port, data, *args, upstream=upstream),
        ]

    async def start(self) -> None:
        await self.spawn(*self.cmd, cwd=TOP)
        await self.wait_for("pkgate listening")
        async with aiohttp.ClientSession() as http, asyncio.timeout(20):
            while True:
                try:
                    async with http.get(f"http://127.0.0.1:{self.port}/readyz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.05)

    async def wait_for(self, text: str, timeout: float = 20) -> None:
        async with asyncio.timeout(timeout):
            while not any(text in line for line in self.lines):
                assert self._reader is not None
                if self._reader.done():
                    raise AssertionError("\n".join(self.lines[-30:]))
                await self.next_line()

    async def terminate(self) -> int:
        """SIGTERM, then the exit status; fails if the process is still there after the deadline."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.proc.wait(), EXIT_DEADLINE)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError(
                "pkgate did not exit after SIGTERM:\n" + "\n".join(self.lines[-30:])
            ) from None
        assert self._reader is not None
        await self._reader
        return code


@pytest.fixture
async def hanging_upstream() -> AsyncIterator[tuple[str, asyncio.Event]]:
    """An npm upstream that never answers (a request to it stays in flight)."""
    entered = asyncio.Event()
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        entered.set()
        await release.wait()
        return web.Response(status=504)

    app = web.Application()
    app.router.add_get("/{tail:.*}", hang)
    runner, url = await serve_app(app)
    try:
        yield f"{url}/", entered
    finally:
        release.set()
        await runner.cleanup()


async def token(data: Path) -> tuple[str, str]:
    done = await run(
        *pkgate_cmd("token", "create", "--email", "x@example.com"), "--data-dir", str(data)
    )
    assert done.returncode == 0, done.output
    store = await Store.open(data / "pkgate.db")
    try:
        (t,) = await store.list_tokens()
    finally:
        await store.close()
    return t.id, done.stdout.strip()


async def test_exit__idle(tmp_path: Path) -> None:
    server = Launched("none", tmp_path / "data", "http://127.0.0.1:9/")
    await server.start()
    assert await server.terminate() == 0, server.output


async def test_exit__mid_request(
    tmp_path: Path, hanging_upstream: tuple[str, asyncio.Event]
) -> None:
    upstream, entered = hanging_upstream
    data = tmp_path / "data"
    _, secret = await token(data)
    server = Launched("none", data, upstream, "--shutdown-grace", "1")
    await server.start()
    async with aiohttp.ClientSession() as http:
        request = asyncio.ensure_future(
            http.get(
                f"http://127.0.0.1:{server.port}/npm/some-package",
                headers={"Authorization": f"Bearer {secret}"},
            )
        )
        await asyncio.wait_for(entered.wait(), 20)  # in flight: pkgate waits on the upstream
        assert not request.done()
        code = await server.terminate()
        request.cancel()
        with pytest.raises((asyncio.CancelledError, aiohttp.ClientError)):
            await request
    assert code == 0, server.output


async def test_exit__mid_flush(tmp_path: Path) -> None:
    data = tmp_path / "data"
    token_id, secret = await token(data)
    server = Launched("slow-flush", data, "http://127.0.0.1:9/", "--last-used-flush", "0.2")
    await server.start()
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"http://127.0.0.1:{server.port}/npm/-/whoami",
            headers={"Authorization": f"Bearer {secret}"},
        ) as resp,
    ):
        assert resp.status == 200
    await server.wait_for("FAULT: flush started")
    assert await server.terminate() == 0, server.output
    store = await Store.open(data / "pkgate.db")
    try:
        assert [(u.ecosystem, u.requests) for u in await store.usage(token_id)] == [("npm", 1)]
    finally:
        await store.close()


async def test_exit__mid_revocation_poll(tmp_path: Path) -> None:
    server = Launched("slow-poll", tmp_path / "data", "http://127.0.0.1:9/")
    await server.start()
    await server.wait_for("FAULT: poll started")
    assert await server.terminate() == 0, server.output


@pytest.mark.parametrize("nth", [3, 4])
async def test_exit__when_a_connection_close_fails(tmp_path: Path, nth: int) -> None:
    server = Launched(f"failing-close:{nth}", tmp_path / "data", "http://127.0.0.1:9/")
    await server.start()
    await server.terminate()  # fails the test if the process stays
    assert "FAULT: close fails" in server.output
    assert "injected close failure" in server.output


async def test_exit__when_a_close_fails_at_start_up(tmp_path: Path) -> None:
    server = Launched("failing-close:1", tmp_path / "data", "http://127.0.0.1:9/")
    assert server.proc is None
    server.proc = await asyncio.create_subprocess_exec(
        *server.cmd, cwd=TOP, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    try:
        _, err = await asyncio.wait_for(server.proc.communicate(), EXIT_DEADLINE)
    except TimeoutError:
        server.proc.kill()
        await server.proc.wait()
        raise AssertionError("pkgate did not exit after a failed close at start-up") from None
    assert server.proc.returncode != 0
    assert b"injected close failure" in err
