"""The PyPI files route (``/pypi/files/<origin>/<path>``): files and their ``.metadata`` streamed
byte for byte, verified against the hash their page publishes and kept on disk, HEAD and Range,
unhashed files relayed, and every path no page published refused before any upstream request."""

from __future__ import annotations

import hashlib

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from proxy.registry.upstream import USER_AGENT
from tests.conftest import RunningServer
from tests.pypi.conftest import (
    DEMO_WHEEL,
    TINYDEP,
    WHEEL,
    cache_count,
    cached_files,
    file_link,
    get_page,
    page,
)
from tests.upstreams.pypi_index import Published, PypiIndex, build_wheel, serve_bytes


def publish_unhashed(server: RunningServer, index: PypiIndex) -> tuple[Published, str]:
    """A wheel its page links without any hash (relayed, never stored) and its pkgate URL."""
    pub = Published(build_wheel("unhashed", "1.0"), host="files", hashed=False, with_metadata=False)
    index.published.append(pub)
    return pub, f"{server.url}/pypi/files/1{index.file_path(pub)}"


# --- listed files: streamed, verified, kept -------------------------------------------------


# Merged: test_simple_file__streamed_byte_for_byte (tests/pypi/test_pypi_simple.py) and
# test_pypi_cache__file_kept_on_disk_and_second_download_local (tests/pypi/test_pypi_cache.py).
@pytest.mark.parametrize("filename", [WHEEL, "tinydep-1.0.0.tar.gz", DEMO_WHEEL])
async def test_files__streamed_byte_for_byte_then_served_from_disk(
    server: RunningServer, index: PypiIndex, http: aiohttp.ClientSession, filename: str
) -> None:
    url = await file_link(http, server, filename)
    data = index.find(filename).dist.data
    states = []
    for _ in range(2):
        async with http.get(url, headers={"Accept-Encoding": "identity"}) as resp:
            assert resp.status == 200
            body = await resp.read()
            assert resp.headers["Content-Length"] == str(len(body)) == str(len(data))
            assert resp.headers["Cache-Control"] == "max-age=365000000, immutable"
            assert resp.headers["Accept-Ranges"] == "bytes"
            assert "Content-Encoding" not in resp.headers
            states.append(resp.headers["X-Cache"])
            assert body == data
    assert hashlib.sha256(body).hexdigest() == index.find(filename).dist.sha256
    assert states == ["MISS", "HIT"]
    upstream = index.file_requests()[-1]
    assert upstream.headers["User-Agent"] == USER_AGENT
    assert upstream.headers["Accept-Encoding"] == "identity"
    assert index.violations == []
    assert len(index.file_requests()) == 1
    assert [p.read_bytes() for p in cached_files(server)] == [data]
    assert cache_count(server, "hit") >= 1


# Merged: test_simple_metadata__served_byte_for_byte (tests/pypi/test_pypi_simple.py) and
# test_pypi_cache__metadata_file_cached_by_its_published_hash (tests/pypi/test_pypi_cache.py).
@pytest.mark.parametrize("filename", [DEMO_WHEEL, WHEEL])
async def test_files__metadata_served_byte_for_byte_and_cached_by_its_published_hash(
    server: RunningServer, index: PypiIndex, http: aiohttp.ClientSession, filename: str
) -> None:
    url = await file_link(http, server, filename) + ".metadata"
    pub = index.find(filename)
    for expected in ("MISS", "HIT"):
        async with http.get(url) as resp:
            assert resp.status == 200
            assert resp.headers["X-Cache"] == expected
            body = await resp.read()
        assert body == pub.dist.metadata
        assert hashlib.sha256(body).hexdigest() == pub.dist.metadata_sha256
    assert len(index.file_requests()) == 1


async def test_files__head_has_exact_length_and_no_body(
    server: RunningServer, index: PypiIndex, http: aiohttp.ClientSession
) -> None:
    filename = "demo_app-1.0.0-py3-none-any.whl"
    url = await file_link(http, server, filename)
    async with http.head(url) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(len(index.find(filename).dist.data))
        assert await resp.read() == b""
    # A listed file is fetched whole once into the verified cache, then answered from disk.
    assert [r.method for r in index.file_requests()] == ["GET"]
    async with http.head(url) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(len(index.find(filename).dist.data))
    assert len(index.file_requests()) == 1


async def test_files__unhashed_head_is_relayed_as_head(
    server: RunningServer, index: PypiIndex, http: aiohttp.ClientSession
) -> None:
    pub, url = publish_unhashed(server, index)
    async with http.head(url) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(len(pub.dist.data))
        assert resp.headers["X-Cache"] == "BYPASS"
    assert [r.method for r in index.file_requests()] == ["HEAD"]


async def test_files__unhashed_unsatisfiable_range_is_416(
    server: RunningServer, index: PypiIndex, http: aiohttp.ClientSession
) -> None:
    pub, url = publish_unhashed(server, index)
    async with http.get(url, headers={"Range": "bytes=9999999-"}) as resp:
        assert resp.status == 416
        assert resp.headers["Content-Range"] == f"bytes */{len(pub.dist.data)}"
        assert "error" in await resp.json()


@pytest.mark.parametrize(
    "path",
    [
        "files/1/__stats",
        "files/1/packages/extra/unlisted-1.0-py3-none-any.whl",
        "files/0/packages/tinydep/tinydep-9.9.9.tar.gz",
        "files/0/packages/tinydep/tinydep-1.0.0.tar.gz.metadata",
    ],
)
async def test_files__paths_no_page_published_are_never_fetched(
    server: RunningServer, index: PypiIndex, http: aiohttp.ClientSession, path: str
) -> None:
    async def anything(request: web.Request) -> web.StreamResponse:
        return serve_bytes(request, b"whatever the origin holds", "application/octet-stream")

    raw = "/" + path.split("/", 2)[2]
    for server_name in ("index", "files"):
        index.overrides[(server_name, raw)] = anything
    async with http.get(f"{server.url}/pypi/{path}") as resp:
        assert resp.status == 404
        assert await resp.json() == {"error": "Not found"}
    assert index.file_requests() == []
    assert not any(r.path == raw for r in index.requests)


@pytest.mark.parametrize(
    ("range_header", "span"),
    [("bytes=0-9", (0, 9)), ("bytes=-22", (-22, None)), ("bytes=100-", (100, None))],
)
async def test_files__range_requests_answer_206(
    server: RunningServer,
    index: PypiIndex,
    http: aiohttp.ClientSession,
    range_header: str,
    span: tuple[int, int | None],
) -> None:
    filename = "demo_app-1.0.0-py3-none-any.whl"
    data = index.find(filename).dist.data
    url = await file_link(http, server, filename)
    headers = {"Range": range_header, "Accept-Encoding": "identity"}
    async with http.get(url, headers=headers) as resp:
        assert resp.status == 206
        body = await resp.read()
    start, stop = span
    expected = data[start:] if stop is None else data[start : stop + 1]
    assert body == expected
    first = start % len(data)
    assert resp.headers["Content-Range"] == f"bytes {first}-{first + len(expected) - 1}/{len(data)}"
    assert resp.headers["Content-Length"] == str(len(expected))


async def test_files__unsatisfiable_range_is_416(
    server: RunningServer, http: aiohttp.ClientSession, index: PypiIndex
) -> None:
    filename = "tinydep-1.0.0-py3-none-any.whl"
    url = await file_link(http, server, filename)
    async with http.get(url, headers={"Range": "bytes=99999999-"}) as resp:
        assert resp.status == 416
        assert resp.headers["Content-Range"] == f"bytes */{len(index.find(filename).dist.data)}"


@pytest.mark.parametrize(
    "tail",
    [
        "0/../simple/",
        "0/%2e%2e/simple/",
        "0/packages/%2E%2E/%2e%2E/simple/",
        "0/packages/..%2fsimple/",
        "0//127.0.0.1/packages/x.whl",
        "0/packages//x.whl",
        "2/packages/x.whl",
        "01/packages/tinydep/tinydep-1.0.0.tar.gz",
        "-1/packages/x.whl",
        "x/packages/x.whl",
        "0/",
        "0/packages/%00.whl",
        "0/packages\\..\\x.whl",
    ],
)
async def test_files__path_tricks_are_404_and_never_reach_upstream(
    server: RunningServer, index: PypiIndex, http: aiohttp.ClientSession, tail: str
) -> None:
    url = URL(f"{server.url}/pypi/files/{tail}", encoded=True)
    async with http.get(url, allow_redirects=False) as resp:
        assert resp.status == 404
        assert "error" in await resp.json()
    assert index.requests == []


async def test_files__upstream_404_is_404(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    url = f"{server.url}/pypi/files/1/packages/aa/bb/cc/missing-1.0-py3-none-any.whl"
    async with http.get(url) as resp:
        assert resp.status == 404
        assert "error" in await resp.json()


async def test_files__broken_upstream_body_is_cut_short(
    server: RunningServer, index: PypiIndex, http: aiohttp.ClientSession
) -> None:
    _, url = publish_unhashed(server, index)
    index.overrides[("files", url.split("/pypi/files/1", 1)[1])] = index.broken_body
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.get(url) as resp:
            await resp.read()


async def test_files__range_and_head_answered_from_cached_file(
    server: RunningServer, index: PypiIndex, http: aiohttp.ClientSession
) -> None:
    url = await file_link(http, server, WHEEL)
    data = index.find(WHEEL).dist.data
    async with http.get(url) as resp:
        assert await resp.read() == data
    async with http.get(url, headers={"Range": "bytes=10-19"}) as resp:
        assert resp.status == 206
        assert resp.headers["X-Cache"] == "HIT"
        assert resp.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
        assert await resp.read() == data[10:20]
    async with http.head(url) as resp:
        assert resp.status == 200
        assert resp.headers["X-Cache"] == "HIT"
        assert resp.headers["Content-Length"] == str(len(data))
    assert len(index.file_requests()) == 1


async def test_files__file_before_any_page_learns_hash_from_the_index(
    server: RunningServer, index: PypiIndex, http: aiohttp.ClientSession
) -> None:
    # As when another worker served the page: this process has not seen it yet.
    url = f"{server.url}/pypi/files/0/packages/tinydep/{WHEEL}"
    for expected in ("MISS", "HIT"):
        async with http.get(url) as resp:
            assert resp.status == 200
            assert resp.headers["X-Cache"] == expected
            assert await resp.read() == index.find(WHEEL).dist.data
    assert len(index.page_requests(TINYDEP)) == 1
    assert len(index.file_requests()) == 1
    # The page fetched for the hash serves the pages route too.
    assert (await get_page(http, page(server)))[1] == "HIT"


async def test_files__corrupted_upstream_file_never_served_whole_nor_kept(
    server: RunningServer, index: PypiIndex, http: aiohttp.ClientSession
) -> None:
    pub = index.find(DEMO_WHEEL)
    wrong = bytes(b ^ 0xFF for b in pub.dist.data)

    async def corrupted(request: web.Request) -> web.StreamResponse:
        return serve_bytes(request, wrong, "application/octet-stream")

    index.overrides[("files", index.file_path(pub))] = corrupted
    url = await file_link(http, server, DEMO_WHEEL)
    for _ in range(2):
        with pytest.raises(aiohttp.ClientPayloadError):
            async with http.get(url) as resp:
                await resp.read()
    async with http.get(url, headers={"Range": "bytes=0-9"}) as resp:
        assert resp.status == 502
        assert "hash" in (await resp.json())["error"]
    async with http.head(url) as resp:
        assert resp.status == 502
    assert cached_files(server) == []
    assert len(index.file_requests()) == 4


async def test_files__unhashed_file_relayed_uncached(
    server: RunningServer, index: PypiIndex, http: aiohttp.ClientSession
) -> None:
    pub, url = publish_unhashed(server, index)
    for _ in range(2):
        async with http.get(url) as resp:
            assert resp.status == 200
            assert resp.headers["X-Cache"] == "BYPASS"
            assert await resp.read() == pub.dist.data
    assert len(index.file_requests()) == 2
    assert cached_files(server) == []
    assert cache_count(server, "bypass") == 2
