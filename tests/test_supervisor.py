"""``pkgate serve --workers N`` under its supervisor: a killed worker is replaced within a second
while the port keeps answering; workers that keep failing at start-up stop the server with a clear
error; SIGTERM drains every worker and flushes their last-used records."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from tests.conftest import free_port, pkgate_cmd, run
from tests.procs import LoggedProcess, serve_args
from tests.test_workers import children_of
from tokenapi.store import Store

pytestmark = pytest.mark.usefixtures("needs_linux")

READY = re.compile(r"worker (\d+) ready \(pid (\d+)\)")


class Supervised(LoggedProcess):
    """``pkgate serve --workers N`` as a subprocess whose log lines are read as they come."""

    def __init__(self, data: Path, *args: str) -> None:
        super().__init__()
        self.port = free_port()
        self.url = URL(f"http://127.0.0.1:{self.port}")
        self.args = serve_args(self.port, data, *args)

    async def start(self) -> None:
        await self.spawn(*pkgate_cmd(*self.args))

    async def wait_for(
        self, pattern: re.Pattern[str], count: int = 1, timeout: float = 30
    ) -> list[re.Match[str]]:
        """The first ``count`` log lines matching ``pattern`` (waiting for them)."""
        async with asyncio.timeout(timeout):
            while True:
                found = [m for line in self.lines if (m := pattern.search(line))]
                if len(found) >= count:
                    return found[:count]
                if (
                    self.proc is not None
                    and self.proc.returncode is not None
                    and self._reader
                    and self._reader.done()
                ):
                    raise AssertionError("\n".join(self.lines[-30:]))
                await self.next_line()

    async def exit_code(self, timeout: float = 60) -> int:
        assert self.proc is not None
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        if self._reader is not None:
            await self._reader
        return code

    async def stop(self) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await self.exit_code()


async def healthy(http: aiohttp.ClientSession, url: URL) -> bool:
    try:
        async with http.get(url / "healthz") as resp:
            return resp.status == 200
    except aiohttp.ClientError:
        return False


async def test_supervisor__killed_worker_is_replaced_within_a_second(tmp_path: Path) -> None:
    server = Supervised(tmp_path / "data", "--workers", "2")
    await server.start()
    try:
        first = await server.wait_for(READY, 2)
        assert server.proc is not None
        workers = children_of(server.proc.pid)
        assert workers == {int(m.group(2)) for m in first}
        victim = min(workers)
        # Fresh connections for every request: each is accepted by whichever worker is alive.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as http:
            assert await healthy(http, server.url)
            os.kill(victim, signal.SIGKILL)
            killed_at = time.monotonic()
            answered = failed = 0
            replaced = asyncio.ensure_future(server.wait_for(READY, 3, timeout=5))
            while not replaced.done():
                if await healthy(http, server.url):
                    answered += 1
                else:
                    failed += 1
            (*_, third) = await replaced
            took = time.monotonic() - killed_at
            assert failed == 0, f"{failed} requests failed while the worker was replaced"
            assert answered > 0
            print(f"replacement ready after {took * 1000:.0f} ms, {answered} answers meanwhile")
            assert took < 1.0, f"replacement ready after {took:.2f} s"
            new_pid = int(third.group(2))
            assert new_pid not in workers
            assert children_of(server.proc.pid) == (workers - {victim}) | {new_pid}
            assert f"(pid {victim}) was killed by SIGKILL; starting a replacement" in server.output
            for _ in range(20):
                assert await healthy(http, server.url)
    finally:
        code = await server.stop()
    assert code == 0, server.output[-3000:]
    assert "Traceback" not in server.output


async def test_supervisor__workers_failing_at_start_up_stop_it_with_a_clear_error(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "cache").write_text("a file where the cache directory must be")
    server = Supervised(data, "--workers", "2")
    await server.start()
    code = await server.exit_code(timeout=60)
    assert code == 3, server.output[-3000:]
    assert "pkgate: workers keep failing at start-up (5 in a row" in server.output
    assert "retrying in" in server.output
    assert server.proc is not None
    assert children_of(server.proc.pid) == set()


async def test_supervisor__sigterm_drains_every_worker_and_flushes_last_used(
    tmp_path: Path, database_url: str
) -> None:
    data = tmp_path / "data"
    created = await run(
        *pkgate_cmd("token", "create", "--email", "w@example.com"),
        "--data-dir",
        str(data),
        "--database-url",
        database_url,
    )
    assert created.returncode == 0, created.output
    secret = created.stdout.strip()
    server = Supervised(
        data, "--workers", "3", "--last-used-flush", "3600", "--database-url", database_url
    )
    await server.start()
    await server.wait_for(READY, 3)
    requests = 90
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        for _ in range(requests):
            async with http.get(
                server.url / "npm" / "-" / "whoami", headers={"Authorization": f"Bearer {secret}"}
            ) as resp:
                assert resp.status == 200
    code = await server.stop()
    assert code == 0, server.output[-3000:]
    assert "Traceback" not in server.output
    store = await Store.open(database_url)
    try:
        (token,) = await store.list_tokens()
        usage = {u.ecosystem: u.requests for u in await store.usage(token.id)}
    finally:
        await store.close()
    assert usage == {"npm": requests}
