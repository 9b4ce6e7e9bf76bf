"""Path tricks on the registry routes (``..``, ``%2e%2e``, ``%2f``, double encoding, ``//host/``,
absolute URLs, backslashes, NUL, very long paths): pkgate contacts nothing but its configured
upstreams, asks them only for well-formed paths, writes nothing outside its data directory and
never answers 5xx.  A decoy server records every TCP connection it gets; the fake index's
"foreign" origin (not configured in pkgate) records every request."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest

from tests.conftest import RunningServer, StartServer
from tests.upstreams.npm_registry import NpmRegistry, serve_registry
from tests.upstreams.pypi_index import PypiIndex, serve_index

LONG = "a" * 10_000


class Decoy:
    """A TCP server that records every connection and answers any request with a 200."""

    def __init__(self) -> None:
        self.connections = 0
        self.received = bytearray()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            self.received += await reader.read(65536)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
                b"Connection: close\r\n\r\n{}"
            )
            await writer.drain()
        finally:
            writer.close()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


@dataclass
class World:
    pkgate: RunningServer
    index: PypiIndex
    registry: NpmRegistry
    decoy: Decoy
    secret: str
    root: Path

    @property
    def d(self) -> str:
        """The decoy's host:port, as a trick would name it."""
        return f"127.0.0.1:{self.decoy.port}"


@pytest.fixture
async def world(start_server: StartServer, tmp_path: Path) -> AsyncIterator[World]:
    decoy = Decoy()
    await decoy.start()
    async with serve_index() as index, serve_registry() as registry:
        pkgate = await start_server(
            pypi_upstream=str(index.index_url),
            pypi_files_upstream=(str(index.files_url) + "/",),
            npm_upstream=f"{registry.url}/",
        )
        secret = await pkgate.token()
        yield World(pkgate, index, registry, decoy, secret, tmp_path)
    await decoy.close()


async def raw_get(world: World, target: str, *, host: str | None = None) -> tuple[int, bytes]:
    """Send ``GET <target>`` byte for byte (no client normalisation); (status, whole answer)."""
    port = world.pkgate.url.port
    request = (
        f"GET {target} HTTP/1.1\r\nHost: {host or f'127.0.0.1:{port}'}\r\n"
        f"Authorization: Bearer {world.secret}\r\nConnection: close\r\n\r\n"
    ).encode("latin-1")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(20):
            answer = await reader.read(-1)
    finally:
        writer.close()
    return int(answer.split(b" ", 2)[1]), answer


def tree(root: Path, skip: Path) -> set[str]:
    """Every path under ``root`` except those under ``skip``."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here == skip or skip in here.parents:
            dirnames.clear()
            continue
        out.update(str(here / n) for n in dirnames + filenames)
    return out


def pypi_tricks(d: str) -> list[str]:
    wheel = "tinydep-1.0.0-py3-none-any.whl"
    return [
        "/pypi/simple/../../../../etc/passwd",
        "/pypi/simple/..",
        "/pypi/simple/../",
        "/pypi/simple/%2e%2e/",
        "/pypi/simple/%2e%2e/%2e%2e/api/tokens",
        "/pypi/simple/..%2f..%2fapi%2ftokens/",
        "/pypi/simple/%2E%2E%2F%2E%2E%2F/",
        "/pypi/simple/%252e%252e%252f/",
        "/pypi/simple/%252e%252e/",
        f"/pypi/simple//{d}/",
        f"/pypi/simple/%2f%2f{d}%2f/",
        f"/pypi/simple/http://{d}/",
        f"/pypi/simple/http:%2f%2f{d}%2ftinydep/",
        f"/pypi/simple/http%3a%2f%2f{d}/",
        f"/pypi/simple/@{d}/",
        "/pypi/simple/..\\..\\etc\\",
        "/pypi/simple/tinydep\\..\\..\\x/",
        "/pypi/simple/%5c%5c" + d + "/",
        "/pypi/simple/%00/",
        "/pypi/simple/tinydep%00/",
        "/pypi/simple/tinydep%00",
        f"/pypi/simple/{LONG}/",
        f"/pypi/simple/{LONG}",
        "/pypi/files/0/../../../etc/passwd",
        "/pypi/files/0/%2e%2e/%2e%2e/etc/passwd",
        "/pypi/files/0/..%2f..%2fsimple%2f",
        "/pypi/files/0/packages/tinydep/..%2f..%2f..%2fsimple/tinydep/",
        "/pypi/files/0/%252e%252e/%252e%252e/x.whl",
        f"/pypi/files/0//{d}/{wheel}",
        f"/pypi/files/0/%2f%2f{d}/{wheel}",
        f"/pypi/files/0/http://{d}/{wheel}",
        f"/pypi/files/0/http:%2f%2f{d}%2f{wheel}",
        f"/pypi/files/1/%2F%2F{d}%2F{wheel}",
        f"/pypi/files/0/@{d}/{wheel}",
        f"/pypi/files/0/:80@{d}/{wheel}",
        "/pypi/files/9/x.whl",
        "/pypi/files/-1/x.whl",
        "/pypi/files/01/x.whl",
        "/pypi/files/%30/x.whl",
        f"/pypi/files/{d}/x.whl",
        "/pypi/files/0/packages\\..\\..\\x.whl",
        "/pypi/files/0/packages%5c..%5c..%5cx.whl",
        "/pypi/files/0/packages/tinydep/%00.whl",
        f"/pypi/files/0/packages/tinydep/{wheel}%00.whl",
        f"/pypi/files/0/{LONG}.whl",
        f"/pypi/files/0/packages/tinydep/{wheel}/../../../../x",
        f"/pypi/files/0/packages/tinydep/{wheel}?u=http://{d}/",
    ]


def npm_tricks(d: str) -> list[str]:
    return [
        "/npm/../../../../etc/passwd",
        "/npm/..",
        "/npm/%2e%2e",
        "/npm/%2e%2e/%2e%2e/api/tokens",
        "/npm/%2e%2e%2f%2e%2e%2fapi%2ftokens",
        "/npm/%2E%2E%2F",
        "/npm/%252e%252e%252f",
        "/npm/%252e%252e/x",
        f"/npm//{d}/pkg-plain",
        f"/npm/%2f%2f{d}/pkg-plain",
        f"/npm/http://{d}/pkg-plain",
        f"/npm/http:%2f%2f{d}%2fpkg-plain",
        f"/npm/@{d}",
        f"/npm/@x%2f..%2f..%2f{d}",
        "/npm/@acme%2f..%2f..%2fx",
        "/npm/@acme%2f%2e%2e",
        "/npm/@acme/..",
        "/npm/@..%2fscoped",
        "/npm/pkg-plain/-/..%2f..%2fx.tgz",
        "/npm/pkg-plain/-/%2e%2e%2fpkg-plain-1.0.0.tgz",
        "/npm/pkg-plain/-/../../pkg-deps/-/pkg-deps-1.0.0.tgz",
        f"/npm/pkg-plain/-/http:%2f%2f{d}%2fx.tgz",
        "/npm/pkg-plain/-/pkg-plain-1.0.0.tgz/../../x",
        "/npm/pkg-plain\\..\\..\\x",
        "/npm/pkg-plain%5c..%5cx",
        "/npm/pkg-plain%00",
        "/npm/pkg-plain/-/pkg-plain-1.0.0.tgz%00",
        "/npm/%00",
        f"/npm/{LONG}",
        f"/npm/pkg-plain/-/{LONG}.tgz",
        f"/npm/@{LONG}%2f{LONG}",
        f"/npm/-/v1/search?text=http://{d}/",
    ]


def raw_level_tricks(d: str) -> list[tuple[str, str | None]]:
    """(request target, Host header) pairs that play on the request line or Host."""
    return [
        (f"http://{d}/npm/pkg-plain", None),
        (f"http://{d}/pypi/simple/tinydep/", None),
        (f"http://{d}/pypi/files/0/packages/tinydep/tinydep-1.0.0-py3-none-any.whl", None),
        (f"//{d}/npm/pkg-plain", None),
        (f"//{d}/pypi/simple/tinydep/", None),
        ("/npm/pkg-plain", d),
        ("/pypi/simple/tinydep/", d),
        ("/pypi/files/0/packages/tinydep/tinydep-1.0.0-py3-none-any.whl", d),
        (f"http://{d}", None),
        (f"{d}:443", None),
        ("*", None),
    ]


def well_formed(raw_path: str) -> bool:
    """An upstream request path with no dot segment, empty segment, hidden separator or control
    character, even if the upstream decoded it twice."""
    path = raw_path.split("?", 1)[0]
    if not path.startswith("/") or len(path) > 2048:
        return False
    segments = path[1:].split("/")
    if segments[-1] == "":
        segments.pop()  # a trailing slash (index pages) is fine
    for segment in segments:
        once = unquote(segment)
        twice = unquote(once)
        for decoded in (once, twice):
            if not decoded or decoded in {".", ".."} or "\\" in decoded:
                return False
            if not decoded.isprintable():
                return False
        # An encoded slash is allowed only as npm's scope separator (@scope%2fname).
        if "/" in twice and not re.fullmatch(
            r"@[a-z0-9][a-z0-9._~-]*%2[fF][a-z0-9][a-z0-9._~-]*", segment
        ):
            return False
    return True


def assert_world_clean(world: World, before: set[str]) -> None:
    assert world.decoy.connections == 0, bytes(world.decoy.received[:500])
    foreign = [r for r in world.index.requests if r.server == "foreign"]
    assert foreign == []
    for path in [r.path for r in world.index.requests] + [r.path for r in world.registry.requests]:
        assert well_formed(path), path
    assert world.index.violations == []
    assert world.registry.violations == []
    data_dir = world.pkgate.settings.data_dir
    assert tree(world.root, data_dir) == before
    for dirpath, _, filenames in os.walk(data_dir):
        for name in filenames:
            resolved = (Path(dirpath) / name).resolve()
            assert data_dir.resolve() in resolved.parents, resolved


async def warm(world: World) -> None:
    """Serve real pages and files first, so tricks meet warm caches and known file hashes."""
    for target in (
        "/pypi/simple/tinydep/",
        "/pypi/simple/demo-app/",
        "/pypi/files/0/packages/tinydep/tinydep-1.0.0-py3-none-any.whl",
        "/npm/pkg-plain",
        "/npm/pkg-plain/-/pkg-plain-1.0.0.tgz",
        "/npm/@acme%2fscoped",
    ):
        status, answer = await raw_get(world, target)
        assert status == 200, answer[:300]


async def test_pathtricks__pypi_routes_reach_nothing_but_the_index(world: World) -> None:
    await warm(world)
    before = tree(world.root, world.pkgate.settings.data_dir)
    for trick in pypi_tricks(world.d):
        status, answer = await raw_get(world, trick)
        assert status < 500, (trick[:200], answer[:300])
        assert status != 200 or trick.endswith("?u=http://" + world.d + "/"), trick[:200]
    assert_world_clean(world, before)


async def test_pathtricks__npm_routes_reach_nothing_but_the_registry(world: World) -> None:
    await warm(world)
    before = tree(world.root, world.pkgate.settings.data_dir)
    for trick in npm_tricks(world.d):
        status, answer = await raw_get(world, trick)
        assert status < 500, (trick[:200], answer[:300])
        assert status != 200 or "/-/v1/search" in trick, (trick[:200], answer[:300])
    assert_world_clean(world, before)


async def test_pathtricks__request_line_and_host_tricks_reach_no_other_host(world: World) -> None:
    await warm(world)
    before = tree(world.root, world.pkgate.settings.data_dir)
    for target, host in raw_level_tricks(world.d):
        status, answer = await raw_get(world, target, host=host)
        assert status < 500, (target, host, answer[:300])
    assert_world_clean(world, before)


async def test_pathtricks__the_upstreams_saw_the_warm_up(world: World) -> None:
    # The cleanliness checks above are only meaningful if pkgate really talks to the upstreams.
    await warm(world)
    assert world.index.page_requests("/simple/tinydep/")
    assert world.registry.tarball_requests()
    assert world.decoy.connections == 0
