"""Request coalescing end to end, for both registries: concurrent misses of one metadata document
wait for one upstream request and all get its answer (the shared step is
``proxy/registry/metacache.py``; its unit tests are in test_metacache.py, the artifact side's in
test_artifacts.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import aiohttp
import pytest
from aiohttp import web

from proxy.metrics import metrics_key
from tests.conftest import RunningServer, StartServer
from tests.upstreams.npm_registry import serve_registry
from tests.upstreams.pypi_index import JSON_TYPE, serve_index

# The server, a session with a valid token, the document's URL, the request headers, and how many
# upstream requests the document has cost so far.
Held = tuple[RunningServer, aiohttp.ClientSession, str, dict[str, str], Callable[[], int]]
Holder = Callable[[StartServer, asyncio.Event], AbstractAsyncContextManager[Held]]


@asynccontextmanager
async def npm_held(start_server: StartServer, gate: asyncio.Event) -> AsyncIterator[Held]:
    """A pkgate in front of an npm registry whose packument answer waits for ``gate``."""
    async with serve_registry() as registry:
        normal = registry._dispatch

        async def held(request: web.Request) -> web.StreamResponse:
            await gate.wait()
            del registry.overrides["/pkg-plain"]
            return await normal(request)

        registry.overrides["/pkg-plain"] = held
        server = await start_server(npm_upstream=str(registry.url) + "/")
        token = await server.token()
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
            yield (
                server,
                http,
                f"{server.url}/npm/pkg-plain",
                {},
                lambda: len([r for r in registry.requests if r.path == "/pkg-plain"]),
            )


@asynccontextmanager
async def pypi_held(start_server: StartServer, gate: asyncio.Event) -> AsyncIterator[Held]:
    """A pkgate in front of a PyPI index whose project page waits for ``gate``."""
    async with serve_index() as index:

        async def slow_page(request: web.Request) -> web.StreamResponse:
            await gate.wait()
            body = json.dumps(index.project_json("tinydep")).encode()
            return web.Response(body=body, headers={"Content-Type": JSON_TYPE})

        index.overrides[("index", "/simple/tinydep/")] = slow_page
        server = await start_server(
            pypi_upstream=str(index.index_url), pypi_files_upstream=(str(index.files_url) + "/",)
        )
        auth = aiohttp.encode_basic_auth("token", await server.token())
        async with aiohttp.ClientSession(headers={"Authorization": auth}) as http:
            yield (
                server,
                http,
                f"{server.url}/pypi/simple/tinydep/",
                {"Accept": JSON_TYPE},
                lambda: len(index.page_requests("/simple/tinydep/")),
            )


# Merged: tests/npm/test_npm_cache.py::test_packument__concurrent_misses_make_one_upstream_request
# (8 clients) and tests/pypi/test_pypi_cache.py::test_pypi_cache__concurrent_misses_make_one_
# upstream_request (20 clients): the same assertions, for both, with 20 clients each.
@pytest.mark.parametrize("held", [npm_held, pypi_held], ids=["npm", "pypi"])
async def test_coalescing__concurrent_misses_make_one_upstream_request(
    start_server: StartServer, held: Holder
) -> None:
    gate = asyncio.Event()
    async with held(start_server, gate) as (server, http, url, headers, upstream_requests):

        async def fetch() -> tuple[int, bytes]:
            async with http.get(url, headers=headers) as resp:
                return resp.status, await resp.read()

        waiting = [asyncio.ensure_future(fetch()) for _ in range(20)]
        metrics = server.app[metrics_key]
        async with asyncio.timeout(10):
            while metrics.in_flight < 20:
                await asyncio.sleep(0.005)
        gate.set()
        answers = await asyncio.gather(*waiting)
        assert {status for status, _ in answers} == {200}
        assert len({body for _, body in answers}) == 1
        assert upstream_requests() == 1
