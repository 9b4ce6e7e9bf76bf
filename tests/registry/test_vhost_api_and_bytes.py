"""Issue 15, the two data-path items: the token API answers on the registries' own host names,
and an artifact sent from disk by sendfile is logged with the bytes it really sent."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from proxy.accesslog import AccessLogSink, access_log_class, access_log_key, access_logger
from proxy.app import create_app
from proxy.server import SafeAppRunner
from proxy.settings import Settings
from tests.conftest import StartServer, free_socket
from tests.upstreams.npm_registry import NpmRegistry, serve_registry
from tokenapi.issue import ensure_user, issue_token
from tokenapi.keys import store_key


@pytest.fixture
async def registry() -> AsyncIterator[NpmRegistry]:
    async with serve_registry() as reg:
        yield reg


@pytest.mark.parametrize("host", ["npm.test", "pypi.test"])
async def test_vhosts__token_api_answers_on_registry_hosts(
    start_server: StartServer, registry: NpmRegistry, host: str
) -> None:
    server = await start_server(
        npm_upstream=f"{registry.url}/",
        pypi_upstream="http://127.0.0.1:9/simple/",
        npm_host="npm.test",
        pypi_host="pypi.test",
    )
    secret = await server.token("vhost@example.com")
    headers = {"Authorization": f"Bearer {secret}", "Host": f"{host}:{server.url.port}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(server.url / "api/v1/tokens/status", headers=headers) as resp:
            assert resp.status == 200
            assert set(await resp.json()) >= {"id", "name"}
        async with http.get(server.url / "api/openapi.json", headers=headers) as resp:
            assert resp.status == 200
        if host == "npm.test":
            # The registry keeps its own paths there, a package called "api" included.
            async with http.get(server.url / "pkg-plain", headers=headers) as resp:
                assert resp.status == 200
            async with http.get(server.url / "api", headers=headers) as resp:
                assert resp.status == 404
            assert any(r.path == "/api" for r in registry.requests)


async def test_accesslog__tarball_from_disk_logged_with_its_real_byte_count(
    make_settings: Callable[..., Settings], tmp_path: Path, registry: NpmRegistry
) -> None:
    sock = free_socket()
    port = sock.getsockname()[1]
    settings = make_settings(
        port=port,
        public_url=f"http://127.0.0.1:{port}",
        npm_upstream=f"{registry.url}/",
        access_log_file=tmp_path / "access.log",
    )
    sink = AccessLogSink.for_settings(settings)
    assert sink is not None
    app = create_app(settings)
    app[access_log_key] = sink
    runner = SafeAppRunner(
        app, access_log=access_logger(), access_log_class=access_log_class(settings, sink)
    )
    await runner.setup()
    await web.SockSite(runner, sock).start()
    try:
        user = await ensure_user(app[store_key], "bytes@example.com")
        _, secret = await issue_token(app[store_key], user, name="t")
        tarball = registry.package("pkg-big", "1.0.0").tarball
        path = "/npm/pkg-big/-/pkg-big-1.0.0.tgz"
        url = f"http://127.0.0.1:{port}{path}"
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {secret}"}) as http:
            for state in ("MISS", "HIT"):
                async with http.get(url) as resp:
                    assert resp.headers["X-Cache"] == state
                    assert await resp.read() == tarball
        assert sink.flush()
        lines = [json.loads(line) for line in (tmp_path / "access.log").read_text().splitlines()]
        logged = [line["bytes"] for line in lines if line["path"] == path]
        assert len(logged) == 2
        for sent in logged:
            assert len(tarball) < sent < len(tarball) + 4096
    finally:
        await runner.cleanup()
        sink.close(timeout=0.5)
