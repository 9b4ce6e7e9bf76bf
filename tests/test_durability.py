"""Durability: kill -9 of a real server during a burst of token creations loses no token whose
creation was answered 201, and the database opens cleanly afterwards."""

import asyncio
import os
import signal
import sqlite3
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import pkgate_cmd, run
from tests.procs import ServerProcess
from tokenapi.store import Store, sqlite_path

PASSWORD = "durable-password"
CLIENTS = 24
KILL_AFTER = 60  # answered creations before the kill


@pytest.mark.slow
async def test_durability__kill_9_mid_burst_keeps_every_answered_token(
    tmp_path: Path, database_url: str
) -> None:
    data = tmp_path / "data"
    created = await run(
        *pkgate_cmd("user", "create", "--email", "d@example.com", "--password-stdin"),
        "--data-dir",
        str(data),
        "--database-url",
        database_url,
        input=PASSWORD.encode() + b"\n",
    )
    assert created.returncode == 0, created.output
    server = ServerProcess(
        data,
        [
            "--npm-upstream",
            "http://127.0.0.1:9/",
            "--token-create-limit",
            "100000",
            "--database-url",
            database_url,
        ],
    )
    await server.start()
    answered: list[str] = []
    refused_or_cut = 0
    killed = asyncio.Event()
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            origin = {"Origin": str(server.url)}
            async with http.post(
                server.url / "api" / "session",
                json={"email": "d@example.com", "password": PASSWORD},
                headers=origin,
            ) as resp:
                assert resp.status == 200, await resp.text()

            async def creator(n: int) -> None:
                nonlocal refused_or_cut
                i = 0
                while not killed.is_set():
                    i += 1
                    try:
                        async with http.post(
                            server.url / "api" / "tokens",
                            json={"name": f"c{n}-{i}"},
                            headers=origin,
                        ) as resp:
                            body = await resp.json()
                            assert resp.status == 201, body
                            answered.append(body["id"])
                    except (aiohttp.ClientError, ConnectionError):
                        refused_or_cut += 1
                        return
                    if len(answered) >= KILL_AFTER and not killed.is_set():
                        killed.set()
                        assert server.proc is not None
                        server.proc.send_signal(signal.SIGKILL)

            await asyncio.gather(*(creator(n) for n in range(CLIENTS)))
    finally:
        code = await server.stop(signal.SIGKILL)
    # asyncio's thread-based child watcher reports 255 when it loses the race to reap the child;
    # either way the process is gone, which is what matters here.
    assert code in (-signal.SIGKILL, 255)
    assert server.proc is not None
    with pytest.raises(ProcessLookupError):
        os.kill(server.proc.pid, 0)
    assert len(answered) >= KILL_AFTER

    # The store opens (recovering the WAL) and the file is sound.
    store = await Store.open(database_url)
    try:
        stored = {t.id for t in await store.list_tokens()}
    finally:
        await store.close()
    missing = set(answered) - stored
    assert missing == set(), f"{len(missing)} of {len(answered)} answered tokens lost"
    db_path = sqlite_path(database_url)
    if db_path is not None:
        with sqlite3.connect(db_path) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    print(f"answered 201: {len(answered)}, stored: {len(stored)}, cut by kill: {refused_or_cut}")
