import aiohttp
import pytest
from aiohttp import hdrs, web
from yarl import URL

from proxy import settings as settings_mod
from proxy.auth import NPM_CHALLENGE
from proxy.keys import settings_key
from proxy.settings import Settings, SettingsError
from proxy.vhosts import RegistryMount, mount_registry
from tests.conftest import RunningServer, StartServer, serve_app

UNREACHABLE = "http://127.0.0.1:9/"


@pytest.fixture
async def server(start_server: StartServer) -> RunningServer:
    return await start_server(
        npm_upstream=UNREACHABLE,
        pypi_upstream=UNREACHABLE + "simple/",
        npm_host="npm.test",
        pypi_host="pypi.test",
    )


async def get(url: URL, host: str | None = None, **headers: str) -> aiohttp.ClientResponse:
    if host is not None:
        headers["Host"] = host
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
        await resp.read()
        return resp


async def test_vhosts__npm_host_serves_the_npm_registry_at_its_root(
    server: RunningServer,
) -> None:
    resp = await get(server.url / "left-pad", host="npm.test")
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="pkgate"'


async def test_vhosts__pypi_host_serves_the_index_at_simple(server: RunningServer) -> None:
    resp = await get(server.url / "simple/", host="pypi.test:443")
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == 'Basic realm="pkgate"'


async def test_vhosts__token_api_and_ops_answer_on_every_host(server: RunningServer) -> None:
    for host in ("npm.test", "pypi.test", None):
        assert (await get(server.url / "healthz", host=host)).status == 200
        assert (await get(server.url / "metrics", host=host)).status == 200


async def test_vhosts__other_hosts_keep_the_path_layout(server: RunningServer) -> None:
    secret = await server.token()
    resp = await get(server.url / "npm/-/whoami", Authorization=f"Bearer {secret}")
    assert resp.status == 200
    assert (await get(server.url / "simple/", host="elsewhere.test")).status == 404


async def test_vhosts__off_by_default(start_server: StartServer) -> None:
    server = await start_server(npm_upstream=UNREACHABLE)
    assert (await get(server.url / "left-pad", host="npm.test")).status == 404


async def test_vhosts__each_mount_knows_its_public_base() -> None:
    settings = Settings(
        public_url="https://pkgate.example.com:8443/base",
        npm_upstream=UNREACHABLE,
        anonymous="allow",
    )

    def routes(mount: RegistryMount, _settings: Settings) -> None:
        async def base(request: web.Request) -> web.Response:
            return web.Response(text=str(mount.base))

        mount.add(hdrs.METH_GET, "/where", base)

    app = web.Application()
    app[settings_key] = settings
    mount_registry(
        app, settings, name="npm", challenge=NPM_CHALLENGE, setup_routes=routes, host="npm.test"
    )
    runner, url = await serve_app(app)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(url / "base/npm/where") as resp:
                assert await resp.text() == "https://pkgate.example.com:8443/base/npm/"
            async with http.get(url / "where", headers={"Host": "npm.test"}) as resp:
                assert await resp.text() == "https://npm.test:8443/"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("value", ["npm.example.com:8080", "https://npm.example.com", "-bad-.io"])
def test_vhosts__host_setting_must_be_a_bare_host_name(value: str) -> None:
    with pytest.raises(SettingsError, match="npm_host"):
        settings_mod.load({"npm_host": value}, env={})
