"""Caching on the Python simple index: pages from the metadata cache, files from the verified
artifact cache, over real HTTP against the fake upstream index (which counts its requests)."""

from __future__ import annotations

import json
import re

import aiohttp
from yarl import URL

from proxy.keys import metadata_cache_key
from tests.conftest import RunningServer
from tests.pypi.conftest import (
    TINYDEP,
    WHEEL,
    PypiSession,
    basic,
    cache_count,
    cached_files,
    file_link,
    get_page,
    page,
)
from tests.upstreams.pypi_index import (
    JSON_TYPE,
    Published,
    PypiIndex,
    build_wheel,
)
from tokenapi.issue import ensure_user, issue_token


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


async def settled(server: RunningServer) -> None:
    """The disk tier's copies of what was fetched so far are written (they go in the background)."""
    disk = server.app[metadata_cache_key].disk
    assert disk is not None
    await disk.settled()


async def test_pypi_cache__each_representation_cached_with_its_own_type(
    server: RunningServer, index: PypiIndex, http: aiohttp.ClientSession
) -> None:
    for _ in range(2):
        json_page = await get_page(http, page(server))
        await settled(server)
        html_page = await get_page(http, page(server), "text/html")
    assert json_page[3]["Content-Type"] == JSON_TYPE
    assert html_page[3]["Content-Type"] == "text/html; charset=utf-8"
    assert json_page[1] == html_page[1] == "HIT"
    assert json.loads(json_page[2])["name"] == "tinydep"
    assert html_page[2].startswith(b"<!DOCTYPE html>")
    # Both are rendered from one upstream answer: the second from the copy the disk tier kept.
    assert len(index.page_requests(TINYDEP)) == 1


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
    _, _, _, headers = await get_page(http, page(server))
    # A strong validator: quoted, not weak, a hash of what pkgate stores of the page.
    assert re.fullmatch(r'"[0-9a-f]{32}(-gzip)?"', headers["ETag"]), headers["ETag"]
    status, state, again, replay = await get_page(
        http, page(server), **{"If-None-Match": headers["ETag"]}
    )
    assert (status, state, again) == (304, "HIT", b"")
    assert replay["ETag"] == headers["ETag"]
    # Another representation has other bytes, so the JSON page's ETag does not match it.
    await settled(server)
    html = await get_page(http, page(server), "text/html", **{"If-None-Match": headers["ETag"]})
    assert (html[0], html[1]) == (200, "DISK")
    assert len(index.page_requests(TINYDEP)) == 1


async def test_pypi_cache__revalidated_upstream_after_ttl(
    pypi_session: PypiSession, index: PypiIndex
) -> None:
    server, http = await pypi_session(metadata_ttl=120)
    clock = fake_clock(server)
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
    pypi_session: PypiSession, index: PypiIndex
) -> None:
    server, http = await pypi_session(metadata_ttl=120)
    clock = fake_clock(server)
    before = json.loads((await get_page(http, page(server)))[2])
    index.published.append(Published(build_wheel("tinydep", "2.0.0")))
    assert json.loads((await get_page(http, page(server)))[2]) == before
    clock.advance(121)
    status, state, body, _ = await get_page(http, page(server))
    assert (status, state) == (200, "MISS")
    assert "tinydep-2.0.0-py3-none-any.whl" in {f["filename"] for f in json.loads(body)["files"]}
    assert "2.0.0" not in before["versions"]


async def test_pypi_cache__upstream_404_remembered_for_negative_ttl_only(
    pypi_session: PypiSession, index: PypiIndex
) -> None:
    server, http = await pypi_session(metadata_negative_ttl=10)
    clock = fake_clock(server)
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


async def test_pypi_cache__stale_page_served_when_upstream_fails(
    pypi_session: PypiSession, index: PypiIndex
) -> None:
    server, http = await pypi_session(metadata_ttl=120)
    clock = fake_clock(server)
    fresh = await get_page(http, page(server))
    index.overrides[("index", TINYDEP)] = index.status(503)
    clock.advance(121)
    stale = await get_page(http, page(server))
    assert (stale[0], stale[1]) == (200, "STALE")
    assert stale[2] == fresh[2]
    assert len(index.page_requests(TINYDEP)) == 2
    assert cache_count(server, "stale") == 1


async def test_pypi_cache__stale_page_not_served_beyond_stale_max(
    pypi_session: PypiSession, index: PypiIndex
) -> None:
    server, http = await pypi_session(metadata_ttl=120, metadata_stale_max=600)
    clock = fake_clock(server)
    assert (await get_page(http, page(server)))[0] == 200
    index.overrides[("index", TINYDEP)] = index.status(503)
    clock.advance(601)
    status, _, body, _ = await get_page(http, page(server))
    assert status == 502
    assert "error" in json.loads(body)


async def test_pypi_cache__off_means_every_request_goes_upstream(
    pypi_session: PypiSession, index: PypiIndex
) -> None:
    server, http = await pypi_session(cache=False)
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


async def test_pypi_cache__each_mount_caches_its_own_links(pypi_session: PypiSession) -> None:
    server, http = await pypi_session(pypi_host="pypi.test")
    host = f"pypi.test:{server.url.port}"
    path_mount = json.loads((await get_page(http, page(server)))[2])
    await settled(server)
    vhost = await get_page(http, server.url / "simple" / "tinydep" / "", Host=host)
    assert vhost[1] == "DISK"  # its own entry, from the upstream answer the disk tier kept
    assert path_mount["files"][0]["url"].startswith(f"{server.url}/pypi/files/")
    assert json.loads(vhost[2])["files"][0]["url"].startswith(f"http://{host}/files/")


async def test_pypi_cache__a_restart_starts_warm_from_the_disk_tier(
    pypi_session: PypiSession, index: PypiIndex
) -> None:
    first, http = await pypi_session()
    status, state, body, _ = await get_page(http, page(first))
    assert (status, state) == (200, "MISS")
    await first.close()
    again, http = await pypi_session(metadata_ttl=0)  # the same data directory, copy expired
    status, state, warm, _ = await get_page(http, page(again))
    assert (status, state) == (200, "REVALIDATED")
    port = f":{first.url.port}/".encode(), f":{again.url.port}/".encode()
    assert warm == body.replace(*port)
    _, revalidated = index.page_requests(TINYDEP)
    assert "If-None-Match" in revalidated.headers or "If-Modified-Since" in revalidated.headers


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
