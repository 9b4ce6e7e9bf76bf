"""Fixtures of the simple-index tests: the fake upstream index and a pkgate in front of it."""

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.conftest import RunningServer, StartServer
from tests.upstreams.pypi_index import PypiIndex, serve_index


@pytest.fixture
async def index() -> AsyncIterator[PypiIndex]:
    async with serve_index() as idx:
        yield idx


async def start_pkgate(start_server: StartServer, index: PypiIndex, **extra: Any) -> RunningServer:
    """A pkgate in front of ``index`` (its files origin configured), with settings overridden."""
    return await start_server(
        pypi_upstream=str(index.index_url),
        pypi_files_upstream=(str(index.files_url) + "/",),
        **extra,
    )


def basic(secret: str, login: str = "token") -> dict[str, str]:
    """Basic credentials with the token as password (``login`` may be the token itself)."""
    return {"Authorization": aiohttp.encode_basic_auth(login, secret)}


@pytest.fixture
async def server(start_server: StartServer, index: PypiIndex) -> RunningServer:
    return await start_pkgate(start_server, index)


@pytest.fixture
async def http(server: RunningServer) -> AsyncIterator[aiohttp.ClientSession]:
    """A session that sends a valid token on every request."""
    async with aiohttp.ClientSession(headers=basic(await server.token())) as session:
        yield session
