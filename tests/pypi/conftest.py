"""Fixtures of the simple-index tests: the fake upstream index and a pkgate in front of it.

``server`` and ``http`` are the default pkgate and a session with a valid token; ``pypi_session``
opens the same with settings overridden (``await pypi_session(metadata_ttl=120)``), closing every
session it opened.  The page and file helpers are shared by the page, cache and files tests.
"""

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry
from yarl import URL

from proxy.metrics import metrics_key
from tests.conftest import RunningServer, StartServer
from tests.upstreams.pypi_index import JSON_TYPE, PypiIndex, serve_index

TINYDEP = "/simple/tinydep/"
WHEEL = "tinydep-1.0.0-py3-none-any.whl"
DEMO_WHEEL = "demo_app-1.0.0-py3-none-any.whl"


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


PypiSession = Callable[..., Awaitable[tuple[RunningServer, aiohttp.ClientSession]]]


@pytest.fixture
async def pypi_session(start_server: StartServer, index: PypiIndex) -> AsyncIterator[PypiSession]:
    """A factory: a pkgate in front of ``index`` (settings overridden) and a session sending a
    valid token to it."""
    async with contextlib.AsyncExitStack() as stack:

        async def open_session(**overrides: Any) -> tuple[RunningServer, aiohttp.ClientSession]:
            server = await start_pkgate(start_server, index, **overrides)
            session = aiohttp.ClientSession(headers=basic(await server.token()))
            return server, await stack.enter_async_context(session)

        yield open_session


def page(server: RunningServer, name: str = "tinydep") -> URL:
    return URL(f"{server.url}/pypi/simple/{name}/", encoded=True)


async def get_page(
    http: aiohttp.ClientSession, url: URL, accept: str = JSON_TYPE, **headers: str
) -> tuple[int, str, bytes, CIMultiDict[str]]:
    """(status, X-Cache, body, headers) of one page request."""
    async with http.get(url, headers={"Accept": accept, **headers}) as resp:
        body = await resp.read()
        return resp.status, resp.headers.get("X-Cache", ""), body, resp.headers.copy()


async def file_link(http: aiohttp.ClientSession, server: RunningServer, filename: str) -> str:
    """The pkgate URL of ``filename`` as its project's JSON page links it."""
    project = "tinydep" if filename.startswith("tinydep") else "demo-app"
    status, _, body, _ = await get_page(http, page(server, project))
    assert status == 200
    return next(str(f["url"]) for f in json.loads(body)["files"] if f["filename"] == filename)


def cached_files(server: RunningServer) -> list[Path]:
    root = server.settings.artifact_dir
    return [p for p in root.rglob("*") if p.is_file() and p.parent.name != "tmp"]


def cache_count(server: RunningServer, outcome: str) -> float:
    registry: CollectorRegistry = server.app[metrics_key].registry
    value = registry.get_sample_value(
        "pkgate_cache_total", {"ecosystem": "pypi", "outcome": outcome}
    )
    return value or 0.0
