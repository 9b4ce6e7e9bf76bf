"""Fixtures of the npm endpoint tests: the fake upstream registry and a pkgate in front of it."""

from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.conftest import RunningServer, StartServer
from tests.upstreams.npm_registry import NpmRegistry, serve_registry


@pytest.fixture
async def registry() -> AsyncIterator[NpmRegistry]:
    async with serve_registry() as reg:
        yield reg


@pytest.fixture
async def server(start_server: StartServer, registry: NpmRegistry) -> RunningServer:
    return await start_server(npm_upstream=str(registry.url) + "/")


@pytest.fixture
async def http(server: RunningServer) -> AsyncIterator[aiohttp.ClientSession]:
    """A session that sends a valid token on every request to the server."""
    token = await server.token()
    async with aiohttp.ClientSession(
        base_url=server.url, headers={"Authorization": f"Bearer {token}"}
    ) as session:
        yield session
