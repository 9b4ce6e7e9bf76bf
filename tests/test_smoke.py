from tests.conftest import StartServer


async def test_healthz__answers_ok(start_server: StartServer) -> None:
    import aiohttp

    server = await start_server(npm_upstream="http://127.0.0.1:9/")
    async with aiohttp.ClientSession() as http, http.get(server.url / "healthz") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ok"}
