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
