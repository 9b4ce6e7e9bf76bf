"""Fixtures of the npm endpoint tests: the fake upstream registry and a pkgate in front of it.

``server`` and ``http`` are the default pkgate and a session with a valid token; ``npm_session``
opens the same with settings overridden (``await npm_session(metadata_ttl=0)``) or in front of
another registry (``registry=...``), closing every session it opened.
"""

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from tests.conftest import RunningServer, StartServer
from tests.upstreams.npm_registry import NpmRegistry, serve_registry


@pytest.fixture
async def registry() -> AsyncIterator[NpmRegistry]:
    async with serve_registry() as reg:
        yield reg


# What npm offers (aiohttp's own default also offers zstd, which pkgate sends to bun and uv once
# made: the zstd tests ask for it themselves).
NPM_CODINGS = {"Accept-Encoding": "gzip,deflate"}


@pytest.fixture
async def server(start_server: StartServer, registry: NpmRegistry) -> RunningServer:
    return await start_server(npm_upstream=str(registry.url) + "/")


@pytest.fixture
async def http(server: RunningServer) -> AsyncIterator[aiohttp.ClientSession]:
    """A session that sends a valid token on every request to the server."""
    token = await server.token()
    async with aiohttp.ClientSession(
        base_url=server.url, headers={"Authorization": f"Bearer {token}", **NPM_CODINGS}
    ) as session:
        yield session


NpmSession = Callable[..., Awaitable[tuple[RunningServer, aiohttp.ClientSession]]]


@pytest.fixture
async def npm_session(
    start_server: StartServer, registry: NpmRegistry
) -> AsyncIterator[NpmSession]:
    """A factory: a pkgate (settings overridden) and a session sending a valid token to it."""
    async with contextlib.AsyncExitStack() as stack:

        async def open_session(
            *, upstream: NpmRegistry | None = None, **overrides: Any
        ) -> tuple[RunningServer, aiohttp.ClientSession]:
            target = upstream or registry
            server = await start_server(npm_upstream=str(target.url) + "/", **overrides)
            token = await server.token()
            session = await stack.enter_async_context(
                aiohttp.ClientSession(
                    base_url=server.url, headers={"Authorization": f"Bearer {token}", **NPM_CODINGS}
                )
            )
            return server, session

        yield open_session
