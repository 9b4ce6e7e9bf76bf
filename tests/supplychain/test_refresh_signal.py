"""Refresh requests through the database (both backends), the CLI, and the admin API."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from proxy.supplychain.blocklist import Blocklist, NewEntry
from proxy.supplychain.service import RefreshWatch, supplychain_key
from tests.conftest import StartServer, pkgate_cmd, run
from tokenapi.issue import ensure_user, issue_token
from tokenapi.store import Store

from .test_engine import mal

# SPEC 15: a running server re-reads its feeds within a second of `pkgate blocklist refresh`.
WITHIN = 1.0


async def test_a_refresh_request_in_the_database_reaches_another_process(
    database_url: str, tmp_path: Path
) -> None:
    feed = tmp_path / "feed.json"
    feed.write_bytes(orjson.dumps([mal("MAL-1", "a")]))
    blocklist = Blocklist([str(feed)], data_dir=tmp_path / "data", refresh=3600)
    arrived: asyncio.Queue[list[NewEntry]] = asyncio.Queue()
    blocklist.new_entry_hooks.append(lambda fresh: arrived.put_nowait(list(fresh)))
    server_store = await Store.open(database_url)
    cli_store = await Store.open(database_url)
    await blocklist.start()
    assert [e.advisory for e in await arrived.get()] == ["MAL-1"]
    watcher = RefreshWatch(server_store, blocklist)
    await watcher.prime()
    watch = asyncio.create_task(watcher.run(interval=0.05))
    try:
        feed.write_bytes(orjson.dumps([mal("MAL-1", "a"), mal("MAL-2", "b")]))
        assert await cli_store.request_blocklist_refresh() == 1
        fresh = await asyncio.wait_for(arrived.get(), WITHIN)
        assert [e.advisory for e in fresh] == ["MAL-2"]
        assert blocklist.verdict("npm", "b", "1.0.0") is not None
        assert await cli_store.request_blocklist_refresh() == 2
    finally:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
        await blocklist.close()
        await server_store.close()
        await cli_store.close()


async def _admin_secret(store: Store) -> str:
    user = await ensure_user(store, "admin@example.com")
    await store.update_user(user.id, is_admin=True)
    _, secret = await issue_token(store, user, name="admin")
    return secret


async def test_admin_api_and_cli_status_and_refresh(
    start_server: StartServer, tmp_path: Path
) -> None:
    feed = tmp_path / "feed.json"
    feed.write_bytes(orjson.dumps([mal("MAL-10", "evil"), {"id": "MAL-11", "affected": 1}]))
    server = await start_server(npm_upstream="http://127.0.0.1:9/", blocklist_feeds=(str(feed),))
    admin = await _admin_secret(server.store)
    user = await server.token("user@example.com")
    async with aiohttp.ClientSession() as http:
        url = server.url / "api" / "admin" / "blocklist"
        async with http.get(url, headers={"Authorization": f"Bearer {user}"}) as resp:
            assert resp.status == 403
        auth = {"Authorization": f"Bearer {admin}"}
        async with http.get(url, headers=auth) as resp:
            assert resp.status == 200
            status: dict[str, Any] = await resp.json()
        assert status["entries"] == 1
        assert status["outcome"] == "ok"
        assert status["sources"][0]["malformed"] == 1
        assert status["last_refresh"].endswith("Z")

        feed.write_bytes(b"{broken")
        async with http.post(url / "refresh", headers=auth) as resp:
            assert resp.status == 200
            status = await resp.json()
        assert status["outcome"] == "error"
        assert status["sources"][0]["serving"] == "last-good"
        assert status["entries"] == 1

        async with http.get(server.url / "api" / "openapi.json") as resp:
            paths = (await resp.json())["paths"]
        assert "get" in paths["/admin/blocklist"]
        assert "post" in paths["/admin/blocklist/refresh"]

        async with http.get(server.url / "metrics") as resp:
            metrics = await resp.text()
        assert 'pkgate_blocklist_entries{ecosystem="npm"} 1.0' in metrics
        assert "pkgate_blocklist_sources_failing 1.0" in metrics

    data_dir = str(server.settings.data_dir)
    shown = await run(*pkgate_cmd("blocklist", "status", "--json", "--data-dir", data_dir))
    assert shown.returncode == 1, shown.stderr  # a source is failing
    assert json.loads(shown.stdout)["sources"][0]["outcome"] == "error"

    feed.write_bytes(orjson.dumps([mal("MAL-10", "evil"), mal("MAL-12", "worse")]))
    refreshed = await run(*pkgate_cmd("blocklist", "refresh", "--data-dir", data_dir))
    assert refreshed.returncode == 0, refreshed.stderr
    assert "2 entries" in refreshed.stdout
    chain = server.app[supplychain_key]
    assert chain.blocklist is not None
    assert chain.blocklist.verdict("npm", "worse", "1.0.0") is not None
