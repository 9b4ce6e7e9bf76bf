"""Caching on the Python simple index: pages from the metadata cache, files from the verified
artifact cache, over real HTTP against the fake upstream index (which counts its requests)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry
from yarl import URL

from proxy.keys import metadata_cache_key
from proxy.metrics import metrics_key
from tests.conftest import RunningServer, StartServer
from tests.pypi.conftest import basic, start_pkgate
from tests.upstreams.pypi_index import (
    JSON_TYPE,
    Published,
    PypiIndex,
    build_wheel,
    serve_bytes,
)
from tokenapi.issue import ensure_user, issue_token

TINYDEP = "/simple/tinydep/"
WHEEL = "tinydep-1.0.0-py3-none-any.whl"
DEMO_WHEEL = "demo_app-1.0.0-py3-none-any.whl"


class FakeClock:
    """Stands in for the metadata cache's monotonic clock, so that tests move time on at will."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def fake_clock(server: RunningServer) -> FakeClock:
    """Give the server's metadata cache a clock the test controls (entries age only when told)."""
    clock = FakeClock()
    server.app[metadata_cache_key]._clock = clock
    return clock


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
    project = "tinydep" if filename.startswith("tinydep") else "demo-app"
    _, _, body, _ = await get_page(http, page(server, project))
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


async def in_flight_reaches(server: RunningServer, count: int) -> None:
    """Wait until ``count`` requests are being answered (polls the metrics gauge)."""
    registry: CollectorRegistry = server.app[metrics_key].registry
    async with asyncio.timeout(10):
        while (registry.get_sample_value("pkgate_requests_in_flight") or 0) < count:
            await asyncio.sleep(0.01)


# --- pages -----------------------------------------------------------------------------------


async def test_pypi_cache__second_page_request_is_served_without_upstream(
    server: RunningServer, index: PypiIndex, http: aiohttp.ClientSession
) -> None:
    first = await get_page(http, page(server))
    second = await get_page(http, page(server))
    assert (first[0], first[1]) == (200, "MISS")
    assert (second[0], second[1]) == (200, "HIT")
    assert second[2] == first[2]
    assert second[3]["Content-Type"] == JSON_TYPE
    assert second[3]["Vary"] == "Accept"
    assert second[3]["ETag"] == first[3]["ETag"]
    assert len(index.page_requests(TINYDEP)) == 1
    assert cache_count(server, "miss") == 1
    assert cache_count(server, "hit") == 1


async def test_pypi_cache__each_representation_cached_with_its_own_type(
    server: RunningServer, index: PypiIndex, http: aiohttp.ClientSession
) -> None:
    for _ in range(2):
        json_page = await get_page(http, page(server))
        html_page = await get_page(http, page(server), "text/html")
    assert json_page[3]["Content-Type"] == JSON_TYPE
    assert html_page[3]["Content-Type"] == "text/html; charset=utf-8"
    assert json_page[1] == html_page[1] == "HIT"
    assert json.loads(json_page[2])["name"] == "tinydep"
    assert html_page[2].startswith(b"<!DOCTYPE html>")
    assert len(index.page_requests(TINYDEP)) == 2


async def test_pypi_cache__root_page_cached(
    server: RunningServer, index: PypiIndex, http: aiohttp.ClientSession
) -> None:
    url = URL(f"{server.url}/pypi/simple/")
    assert (await get_page(http, url))[1] == "MISS"
    status, state, body, _ = await get_page(http, url)
    assert (status, state) == (200, "HIT")
    assert {"name": "tinydep"} in json.loads(body)["projects"]
    assert len(index.page_requests("/simple/")) == 1


async def test_pypi_cache__client_etag_answered_304_from_cache(
    server: RunningServer, index: PypiIndex, http: aiohttp.ClientSession
) -> None:
    _, _, body, headers = await get_page(http, page(server))
    assert headers["ETag"] == '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'
    status, state, again, replay = await get_page(
        http, page(server), **{"If-None-Match": headers["ETag"]}
    )
    assert (status, state, again) == (304, "HIT", b"")
    assert replay["ETag"] == headers["ETag"]
    # Another representation has other bytes, so the JSON page's ETag does not match it.
    html = await get_page(http, page(server), "text/html", **{"If-None-Match": headers["ETag"]})
    assert html[0] == 200
    assert len(index.page_requests(TINYDEP)) == 2


async def test_pypi_cache__revalidated_upstream_after_ttl(
    start_server: StartServer, index: PypiIndex
) -> None:
    server = await start_pkgate(start_server, index, metadata_ttl=120)
    clock = fake_clock(server)
    async with aiohttp.ClientSession(headers=basic(await server.token())) as http:
        first = await get_page(http, page(server))
        clock.advance(121)
        second = await get_page(http, page(server))
        third = await get_page(http, page(server))
    assert (first[1], second[1], third[1]) == ("MISS", "REVALIDATED", "HIT")
    assert second[2] == first[2]
    requests = index.page_requests(TINYDEP)
    assert len(requests) == 2
    assert "If-None-Match" not in requests[0].headers
    assert requests[1].headers["If-None-Match"].startswith('"')
    assert requests[1].headers["If-Modified-Since"] == "Tue, 02 Jan 2024 03:04:05 GMT"
    assert cache_count(server, "revalidated") == 1


async def test_pypi_cache__changed_upstream_page_replaces_entry_after_ttl(
    start_server: StartServer, index: PypiIndex
) -> None:
    server = await start_pkgate(start_server, index, metadata_ttl=120)
    clock = fake_clock(server)
    async with aiohttp.ClientSession(headers=basic(await server.token())) as http:
        before = json.loads((await get_page(http, page(server)))[2])
        index.published.append(Published(build_wheel("tinydep", "2.0.0")))
        assert json.loads((await get_page(http, page(server)))[2]) == before
        clock.advance(121)
        status, state, body, _ = await get_page(http, page(server))
    assert (status, state) == (200, "MISS")
    assert "tinydep-2.0.0-py3-none-any.whl" in {f["filename"] for f in json.loads(body)["files"]}
    assert "2.0.0" not in before["versions"]


async def test_pypi_cache__upstream_404_remembered_for_negative_ttl_only(
    start_server: StartServer, index: PypiIndex
) -> None:
    server = await start_pkgate(start_server, index, metadata_negative_ttl=10)
    clock = fake_clock(server)
    async with aiohttp.ClientSession(headers=basic(await server.token())) as http:
        assert (await get_page(http, page(server, "latecomer")))[0] == 404
        index.published.append(Published(build_wheel("latecomer", "1.0.0")))
        status, _, body, _ = await get_page(http, page(server, "latecomer"))
        assert status == 404
        assert "error" in json.loads(body)
        assert len(index.page_requests("/simple/latecomer/")) == 1
        clock.advance(9)
        assert (await get_page(http, page(server, "latecomer")))[0] == 404
        clock.advance(2)
        status, state, body, _ = await get_page(http, page(server, "latecomer"))
    assert (status, state) == (200, "MISS")
    assert json.loads(body)["files"][0]["filename"] == "latecomer-1.0.0-py3-none-any.whl"
    assert len(index.page_requests("/simple/latecomer/")) == 2


async def test_pypi_cache__concurrent_misses_make_one_upstream_request(
    server: RunningServer, index: PypiIndex, http: aiohttp.ClientSession
) -> None:
    gate = asyncio.Event()

    async def slow_page(request: web.Request) -> web.StreamResponse:
        await gate.wait()
        body = json.dumps(index.project_json("tinydep")).encode()
        return web.Response(body=body, headers={"Content-Type": JSON_TYPE})

    index.overrides[("index", TINYDEP)] = slow_page
    tasks = [asyncio.create_task(get_page(http, page(server))) for _ in range(20)]
    await in_flight_reaches(server, 20)
    gate.set()
    results = await asyncio.gather(*tasks)
    assert {r[0] for r in results} == {200}
    assert len({r[2] for r in results}) == 1
    assert len(index.page_requests(TINYDEP)) == 1


async def test_pypi_cache__stale_page_served_when_upstream_fails(
    start_server: StartServer, index: PypiIndex
) -> None:
    server = await start_pkgate(start_server, index, metadata_ttl=120)
    clock = fake_clock(server)
    async with aiohttp.ClientSession(headers=basic(await server.token())) as http:
        fresh = await get_page(http, page(server))
        index.overrides[("index", TINYDEP)] = index.status(503)
        clock.advance(121)
        stale = await get_page(http, page(server))
    assert (stale[0], stale[1]) == (200, "STALE")
    assert stale[2] == fresh[2]
    assert len(index.page_requests(TINYDEP)) == 2
    assert cache_count(server, "stale") == 1


async def test_pypi_cache__stale_page_not_served_beyond_stale_max(
    start_server: StartServer, index: PypiIndex
) -> None:
    server = await start_pkgate(start_server, index, metadata_ttl=120, metadata_stale_max=600)
    clock = fake_clock(server)
    async with aiohttp.ClientSession(headers=basic(await server.token())) as http:
        assert (await get_page(http, page(server)))[0] == 200
        index.overrides[("index", TINYDEP)] = index.status(503)
        clock.advance(601)
        status, _, body, _ = await get_page(http, page(server))
    assert status == 502
    assert "error" in json.loads(body)


async def test_pypi_cache__off_means_every_request_goes_upstream(
    start_server: StartServer, index: PypiIndex
) -> None:
    server = await start_pkgate(start_server, index, cache=False)
    async with aiohttp.ClientSession(headers=basic(await server.token())) as http:
        states = [(await get_page(http, page(server)))[1] for _ in range(2)]
        url = await file_link(http, server, WHEEL)
        for _ in range(2):
            async with http.get(url) as resp:
                assert resp.status == 200
                assert resp.headers["X-Cache"] == "BYPASS"
    assert states == ["BYPASS", "BYPASS"]
    # Each file request reads the page again for the hash it must match (issue 11, item 2).
    assert len(index.page_requests(TINYDEP)) == 5
    assert len(index.file_requests()) == 2
    assert cached_files(server) == []


async def test_pypi_cache__each_mount_caches_its_own_links(
    start_server: StartServer, index: PypiIndex
) -> None:
    server = await start_pkgate(start_server, index, pypi_host="pypi.test")
    host = f"pypi.test:{server.url.port}"
    async with aiohttp.ClientSession(headers=basic(await server.token())) as http:
        path_mount = json.loads((await get_page(http, page(server)))[2])
        vhost = await get_page(http, server.url / "simple" / "tinydep" / "", Host=host)
    assert vhost[1] == "MISS"
    assert path_mount["files"][0]["url"].startswith(f"{server.url}/pypi/files/")
    assert json.loads(vhost[2])["files"][0]["url"].startswith(f"http://{host}/files/")


# --- files -----------------------------------------------------------------------------------


@pytest.mark.parametrize("filename", [WHEEL, "tinydep-1.0.0.tar.gz", DEMO_WHEEL])
async def test_pypi_cache__file_kept_on_disk_and_second_download_local(
    server: RunningServer, index: PypiIndex, http: aiohttp.ClientSession, filename: str
) -> None:
    url = await file_link(http, server, filename)
    data = index.find(filename).dist.data
    states = []
    for _ in range(2):
        async with http.get(url) as resp:
            assert resp.status == 200
            assert resp.headers["Cache-Control"] == "max-age=365000000, immutable"
            assert resp.headers["Content-Length"] == str(len(data))
            states.append(resp.headers["X-Cache"])
            assert await resp.read() == data
    assert states == ["MISS", "HIT"]
    assert len(index.file_requests()) == 1
    assert [p.read_bytes() for p in cached_files(server)] == [data]
    assert cache_count(server, "hit") >= 1


async def test_pypi_cache__range_and_head_answered_from_cached_file(
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


async def test_pypi_cache__metadata_file_cached_by_its_published_hash(
    server: RunningServer, index: PypiIndex, http: aiohttp.ClientSession
) -> None:
    url = await file_link(http, server, DEMO_WHEEL) + ".metadata"
    for expected in ("MISS", "HIT"):
        async with http.get(url) as resp:
            assert resp.status == 200
            assert resp.headers["X-Cache"] == expected
            assert await resp.read() == index.find(DEMO_WHEEL).dist.metadata
    assert len(index.file_requests()) == 1


async def test_pypi_cache__file_before_any_page_learns_hash_from_the_index(
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


async def test_pypi_cache__corrupted_upstream_file_never_served_whole_nor_kept(
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


async def test_pypi_cache__unhashed_file_relayed_uncached(
    server: RunningServer, index: PypiIndex, http: aiohttp.ClientSession
) -> None:
    pub = Published(build_wheel("unhashed", "1.0"), host="files", hashed=False, with_metadata=False)
    index.published.append(pub)
    url = f"{server.url}/pypi/files/1{index.file_path(pub)}"
    for _ in range(2):
        async with http.get(url) as resp:
            assert resp.status == 200
            assert resp.headers["X-Cache"] == "BYPASS"
            assert await resp.read() == pub.dist.data
    assert len(index.file_requests()) == 2
    assert cached_files(server) == []
    assert cache_count(server, "bypass") == 2


# --- authentication still guards cached content ----------------------------------------------


async def test_pypi_cache__revoked_token_gets_401_for_cached_page_and_file(
    server: RunningServer, index: PypiIndex
) -> None:
    user = await ensure_user(server.store, "cached@example.com")
    token, secret = await issue_token(server.store, user, name="cached")
    async with aiohttp.ClientSession(headers=basic(secret)) as http:
        url = await file_link(http, server, WHEEL)
        async with http.get(url) as resp:
            assert await resp.read() == index.find(WHEEL).dist.data
        assert (await get_page(http, page(server)))[1] == "HIT"
        async with http.get(url) as resp:
            assert resp.headers["X-Cache"] == "HIT"
        server.validator.forget(await server.store.revoke_token(token.id))
        index.clear()
        status, _, body, headers = await get_page(http, page(server))
        assert status == 401
        assert headers["WWW-Authenticate"] == 'Basic realm="pkgate"'
        assert "X-Cache" not in headers
        assert "error" in json.loads(body)
        async with http.get(url) as resp:
            assert resp.status == 401
            assert "X-Cache" not in resp.headers
            assert "error" in await resp.json()
    assert index.requests == []


async def test_pypi_cache__hits_still_record_token_use(
    server: RunningServer, index: PypiIndex
) -> None:
    user = await ensure_user(server.store, "used@example.com")
    token, secret = await issue_token(server.store, user, name="used")
    async with aiohttp.ClientSession(headers=basic(secret)) as http:
        url = await file_link(http, server, WHEEL)
        async with http.get(url) as resp:
            await resp.read()
        before = await server.recorder.usage(token.id)
        assert (await get_page(http, page(server)))[1] == "HIT"
        async with http.get(url) as resp:
            assert resp.headers["X-Cache"] == "HIT"
    after = await server.recorder.usage(token.id)
    assert [(u.ecosystem, u.requests) for u in before] == [("pypi", 2)]
    assert [(u.ecosystem, u.requests) for u in after] == [("pypi", 4)]
    assert after[0].last_used_at >= before[0].last_used_at
