import aiohttp
from aiohttp import web

from proxy.ops import setup_ops
from tests.conftest import StartServer, serve_app
from tokenapi.errors import StoreUnavailable
from tokenapi.keys import store_key
from tokenapi.store import SqliteStore


class UnreachableStore(SqliteStore):
    """A store whose database does not answer (a failed disk, a lock held past busy_timeout)."""

    def __init__(self) -> None:
        pass

    async def ping(self) -> None:
        raise StoreUnavailable("disk I/O error")


async def test_healthz__answers_while_the_store_is_down(start_server: StartServer) -> None:
    server = await start_server(npm_upstream="http://127.0.0.1:9/")
    await server.store.close()
    async with aiohttp.ClientSession() as http, http.get(server.url / "healthz") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ok"}


async def test_readyz__ready_when_the_store_answers(start_server: StartServer) -> None:
    server = await start_server(npm_upstream="http://127.0.0.1:9/")
    async with aiohttp.ClientSession() as http, http.get(server.url / "readyz") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ready"}


async def test_readyz__503_when_the_store_is_unreachable() -> None:
    app = web.Application()
    app[store_key] = UnreachableStore()
    setup_ops(app)
    runner, url = await serve_app(app)
    try:
        async with aiohttp.ClientSession() as http, http.get(url / "readyz") as resp:
            assert resp.status == 503
            assert (await resp.json())["error"] == "store unreachable"
    finally:
        await runner.cleanup()


async def test_serve__refuses_to_start_on_a_damaged_database(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os
    import sqlite3

    from tests.conftest import pkgate_cmd, run
    from tokenapi.issue import ensure_user, issue_token
    from tokenapi.store import Store

    data = tmp_path / "data"
    store = await Store.open(data / "pkgate.db")
    try:
        for n in range(200):
            await issue_token(store, await ensure_user(store, f"u{n}@example.com"), name="t")
    finally:
        await store.close()
    path = data / "pkgate.db"
    with sqlite3.connect(path) as db:
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with path.open("r+b") as fh:  # pages 3-6 overwritten with random bytes
        fh.seek(2 * page_size)
        fh.write(os.urandom(4 * page_size))
    served = await run(
        *pkgate_cmd("serve", "--data-dir", str(data), "--npm-upstream", "http://127.0.0.1:9/"),
        timeout=60,
    )
    assert served.returncode == 1
    assert "pkgate: cannot open database" in served.stderr
    assert "damaged" in served.stderr or "malformed" in served.stderr
    assert "Traceback" not in served.output


async def test_readyz__checks_the_token_lookup_not_just_select_1(start_server: StartServer) -> None:
    server = await start_server(npm_upstream="http://127.0.0.1:9/")
    async with aiohttp.ClientSession() as http, http.get(server.url / "readyz") as resp:
        assert resp.status == 200
    # The tokens table gone (as a damaged page would make it unreadable): not ready.
    async with server.store.transaction() as tx:
        await tx.execute("ALTER TABLE tokens RENAME TO tokens_lost")
    async with aiohttp.ClientSession() as http, http.get(server.url / "readyz") as resp:
        assert resp.status == 503
        assert "tokens" in (await resp.json())["detail"]
