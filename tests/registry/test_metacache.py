"""The metadata cache: freshness, revalidation, 404s, coalescing, stale-if-error, LRU."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from backports import zstd

from proxy.registry.metacache import (
    COMPRESS_MIN,
    ENTRY_OVERHEAD,
    NOT_MODIFIED,
    STREAM_PIECE,
    TAKES_GZIP,
    TAKES_ZSTD,
    CacheKey,
    CacheState,
    MetadataCache,
    MetaEntry,
    NotModified,
    Validators,
    accepted_codings,
    accepts_gzip,
    metadata_response,
    not_modified,
    text_size,
)
from proxy.registry.upstream import UpstreamError
from proxy.settings import SettingsError, load
from tests.conftest import serve_app

KEY: CacheKey = ("npm", "left-pad", "abbreviated")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeUpstream:
    """A fetch callable that records calls and answers from a script."""

    def __init__(self, body: bytes = b'{"name":"left-pad"}') -> None:
        self.body = body
        self.calls: list[Validators] = []
        self.error: UpstreamError | None = None
        self.gate: asyncio.Event | None = None
        self.etag = '"up-1"'

    async def __call__(self, validators: Validators) -> MetaEntry | NotModified:
        self.calls.append(validators)
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        if validators.etag == self.etag:
            return NOT_MODIFIED
        return MetaEntry.build(
            self.body,
            "application/json",
            upstream_etag=self.etag,
            upstream_last_modified="Tue, 01 Oct 2024 10:00:00 GMT",
        )


def make_cache(clock: Clock, **kw: float) -> MetadataCache:
    return MetadataCache(
        max_bytes=int(kw.pop("max_bytes", 1 << 20)),
        ttl=kw.pop("ttl", 120.0),
        negative_ttl=kw.pop("negative_ttl", 10.0),
        stale_max=kw.pop("stale_max", 3600.0),
        clock=clock,
    )


async def test_metadata_cache__miss_then_fresh_hit_without_fetch() -> None:
    clock, up = Clock(), FakeUpstream()
    cache = make_cache(clock)
    first = await cache.get_or_fetch(KEY, up)
    clock.now += 119
    second = await cache.get_or_fetch(KEY, up)
    assert (first.state, second.state) == (CacheState.MISS, CacheState.HIT)
    assert second.entry.body == up.body
    assert len(up.calls) == 1


async def test_metadata_cache__expired_entry_revalidated_with_upstream_validators() -> None:
    clock, up = Clock(), FakeUpstream()
    cache = make_cache(clock)
    first = await cache.get_or_fetch(KEY, up)
    clock.now += 121
    again = await cache.get_or_fetch(KEY, up)
    assert again.state is CacheState.REVALIDATED
    assert again.entry is first.entry
    assert up.calls[1] == Validators('"up-1"', "Tue, 01 Oct 2024 10:00:00 GMT")
    assert up.calls[1].headers() == {
        "If-None-Match": '"up-1"',
        "If-Modified-Since": "Tue, 01 Oct 2024 10:00:00 GMT",
    }
    # Revalidation renews freshness: the next request is a hit.
    clock.now += 60
    assert (await cache.get_or_fetch(KEY, up)).state is CacheState.HIT
    assert len(up.calls) == 2


async def test_metadata_cache__changed_upstream_replaces_entry_and_etag() -> None:
    clock, up = Clock(), FakeUpstream()
    cache = make_cache(clock)
    first = await cache.get_or_fetch(KEY, up)
    up.body, up.etag = b'{"name":"left-pad","v":2}', '"up-2"'
    clock.now += 121
    second = await cache.get_or_fetch(KEY, up)
    assert second.state is CacheState.MISS
    assert second.entry.body == up.body
    assert second.entry.etag != first.entry.etag
    assert cache.bytes == len(up.body) + ENTRY_OVERHEAD


async def test_metadata_cache__concurrent_misses_make_one_fetch() -> None:
    clock, up = Clock(), FakeUpstream()
    up.gate = asyncio.Event()
    cache = make_cache(clock)
    waiting = [asyncio.create_task(cache.get_or_fetch(KEY, up)) for _ in range(25)]
    await asyncio.sleep(0)
    up.gate.set()
    results = await asyncio.gather(*waiting)
    assert len(up.calls) == 1
    assert {r.entry.body for r in results} == {up.body}


async def test_metadata_cache__cancelled_caller_does_not_cancel_shared_fetch() -> None:
    clock, up = Clock(), FakeUpstream()
    up.gate = asyncio.Event()
    cache = make_cache(clock)
    leaver = asyncio.create_task(cache.get_or_fetch(KEY, up))
    stayer = asyncio.create_task(cache.get_or_fetch(KEY, up))
    await asyncio.sleep(0)
    leaver.cancel()
    up.gate.set()
    result = await stayer
    assert result.state is CacheState.MISS
    assert leaver.cancelled()
    assert len(up.calls) == 1


async def test_metadata_cache__concurrent_misses_share_the_upstream_error() -> None:
    clock, up = Clock(), FakeUpstream()
    up.gate, up.error = asyncio.Event(), UpstreamError(502, "upstream answered 503")
    cache = make_cache(clock)
    waiting = [asyncio.create_task(cache.get_or_fetch(KEY, up)) for _ in range(5)]
    await asyncio.sleep(0)
    up.gate.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(r, UpstreamError) and r.status == 502 for r in results)
    assert len(up.calls) == 1


async def test_metadata_cache__upstream_404_remembered_for_negative_ttl() -> None:
    clock, up = Clock(), FakeUpstream()
    up.error = UpstreamError(404, "package not found")
    cache = make_cache(clock)
    for _ in range(3):
        with pytest.raises(UpstreamError) as caught:
            await cache.get_or_fetch(KEY, up)
        assert caught.value.status == 404
    assert len(up.calls) == 1
    clock.now += 10
    up.error = None
    assert (await cache.get_or_fetch(KEY, up)).state is CacheState.MISS
    assert len(up.calls) == 2


async def test_metadata_cache__upstream_404_drops_positive_entry() -> None:
    clock, up = Clock(), FakeUpstream()
    cache = make_cache(clock)
    await cache.get_or_fetch(KEY, up)
    clock.now += 121
    up.error = UpstreamError(404, "package not found")
    with pytest.raises(UpstreamError):
        await cache.get_or_fetch(KEY, up)
    assert cache.peek(KEY) is None


async def test_metadata_cache__upstream_failure_serves_stale_flagged() -> None:
    clock, up = Clock(), FakeUpstream()
    cache = make_cache(clock, stale_max=3600)
    await cache.get_or_fetch(KEY, up)
    clock.now += 3000
    up.error = UpstreamError(504, "upstream timed out")
    result = await cache.get_or_fetch(KEY, up)
    assert result.stale
    assert result.state is CacheState.STALE
    assert result.entry.body == up.body
    # Still expired: the next request tries the upstream again, and recovers once it is back.
    up.error = None
    assert (await cache.get_or_fetch(KEY, up)).state is CacheState.REVALIDATED
    assert len(up.calls) == 3


async def test_metadata_cache__stale_beyond_limit_raises_upstream_error() -> None:
    clock, up = Clock(), FakeUpstream()
    cache = make_cache(clock, stale_max=3600)
    await cache.get_or_fetch(KEY, up)
    clock.now += 3601
    up.error = UpstreamError(502, "upstream answered 500")
    with pytest.raises(UpstreamError) as caught:
        await cache.get_or_fetch(KEY, up)
    assert caught.value.status == 502


async def test_metadata_cache__lru_evicts_least_recently_used_by_bytes() -> None:
    clock = Clock()
    body = os.urandom(1000)  # incompressible: stored and charged as it is
    cache = make_cache(clock, max_bytes=3 * (1000 + ENTRY_OVERHEAD))
    keys: list[CacheKey] = [("npm", f"p{i}", "full") for i in range(4)]
    for key in keys[:3]:
        await cache.get_or_fetch(key, FakeUpstream(body))
    await cache.get_or_fetch(keys[0], FakeUpstream(body))  # p0 becomes most recently used
    await cache.get_or_fetch(keys[3], FakeUpstream(body))
    assert [cache.peek(k) is not None for k in keys] == [True, False, True, True]
    assert cache.bytes == 3 * (1000 + ENTRY_OVERHEAD)
    assert cache.stats.evictions == 1


async def test_metadata_cache__entry_larger_than_bound_is_served_not_kept() -> None:
    clock = Clock()
    cache = make_cache(clock, max_bytes=2000)
    up = FakeUpstream(os.urandom(5000))
    result = await cache.get_or_fetch(KEY, up)
    assert result.entry.body == up.body
    assert cache.peek(KEY) is None
    assert cache.bytes == 0


async def test_metadata_cache__representations_are_separate_entries() -> None:
    clock = Clock()
    cache = make_cache(clock)
    full = await cache.get_or_fetch(("npm", "a", "full"), FakeUpstream(b"full"))
    abbr = await cache.get_or_fetch(("npm", "a", "abbreviated"), FakeUpstream(b"abbr"))
    assert (full.entry.body, abbr.entry.body) == (b"full", b"abbr")
    assert full.entry.etag != abbr.entry.etag


async def test_metadata_cache__disabled_fetches_every_time() -> None:
    up = FakeUpstream()
    cache = MetadataCache(enabled=False)
    states = [(await cache.get_or_fetch(KEY, up)).state for _ in range(3)]
    assert states == [CacheState.BYPASS] * 3
    assert len(up.calls) == 3
    assert up.calls[0] == Validators()


def entry() -> MetaEntry:
    return MetaEntry.build(
        b"{}", "application/json", upstream_last_modified="Tue, 01 Oct 2024 10:00:00 GMT"
    )


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, False),
        ({"If-None-Match": "SELF"}, True),
        ({"If-None-Match": "W/SELF"}, True),
        ({"If-None-Match": '"other", SELF'}, True),
        ({"If-None-Match": "*"}, True),
        ({"If-None-Match": '"other"'}, False),
        ({"If-None-Match": '"other"', "If-Modified-Since": "Wed, 02 Oct 2024 10:00:00 GMT"}, False),
        ({"If-Modified-Since": "Wed, 02 Oct 2024 10:00:00 GMT"}, True),
        ({"If-Modified-Since": "Tue, 01 Oct 2024 10:00:00 GMT"}, True),
        ({"If-Modified-Since": "Mon, 30 Sep 2024 10:00:00 GMT"}, False),
        ({"If-Modified-Since": "not a date"}, False),
    ],
)
def test_not_modified__client_validators(headers: dict[str, str], expected: bool) -> None:
    e = entry()
    headers = {k: v.replace("SELF", e.etag) for k, v in headers.items()}
    assert not_modified(e, headers) is expected


@pytest.fixture
async def cached_app() -> AsyncIterator[tuple[str, FakeUpstream, Clock]]:
    """A tiny server answering from a MetadataCache with metadata_response."""
    clock, up = Clock(), FakeUpstream()
    cache = make_cache(clock)

    async def handler(request: web.Request) -> web.StreamResponse:
        cached = await cache.get_or_fetch(KEY, up)
        return metadata_response(request, cached, headers={"Vary": "Accept"})

    app = web.Application()
    app.router.add_get("/pkg", handler)
    runner, url = await serve_app(app)
    yield str(url / "pkg"), up, clock
    await runner.cleanup()


async def test_metadata_response__client_etag_answered_304_from_cache(
    cached_app: tuple[str, FakeUpstream, Clock],
) -> None:
    url, up, _ = cached_app
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as first:
            assert first.status == 200
            assert first.headers["X-Cache"] == "MISS"
            assert first.headers["Content-Type"] == "application/json"
            assert first.headers["Vary"] == "Accept"
            assert await first.read() == up.body
            etag = first.headers["ETag"]
        async with http.get(url, headers={"If-None-Match": etag}) as second:
            assert second.status == 304
            assert second.headers["ETag"] == etag
            assert second.headers["X-Cache"] == "HIT"
            assert await second.read() == b""
        async with http.head(url) as head:
            assert head.status == 200
            assert int(head.headers["Content-Length"]) == len(up.body)
    assert len(up.calls) == 1


async def test_metadata_response__stale_answer_marked_x_cache_stale(
    cached_app: tuple[str, FakeUpstream, Clock],
) -> None:
    url, up, clock = cached_app
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as first:
            assert first.status == 200
        clock.now += 600
        up.error = UpstreamError(502, "upstream connection failed")
        async with http.get(url) as stale:
            assert stale.status == 200
            assert stale.headers["X-Cache"] == "STALE"
            assert await stale.read() == up.body


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("67108864", 67108864), ("64MiB", 64 * 1024**2), ("10 GB", 10 * 1000**3), ("0", 0)],
)
def test_settings__cache_byte_sizes(raw: str, expected: int) -> None:
    settings = load({"metadata_cache_bytes": raw}, env={})
    assert settings.metadata_cache_bytes == expected


@pytest.mark.parametrize("raw", ["-1", "lots", "12 parsecs", "inf"])
def test_settings__bad_cache_size_names_the_setting(raw: str) -> None:
    with pytest.raises(SettingsError, match="artifact_cache_bytes"):
        load({"artifact_cache_bytes": raw}, env={})


def test_settings__cache_defaults() -> None:
    settings = load({}, env={})
    assert settings.cache is True
    assert (settings.metadata_ttl, settings.metadata_negative_ttl) == (120.0, 10.0)
    assert settings.metadata_cache_bytes == 256 * 1024**2
    assert settings.artifact_cache_bytes == 10 * 1024**3
    assert settings.artifact_dir == settings.data_dir / "cache" / "artifacts"


# ------------------------------------------------------------------ compressed entries


def packument_like(versions: int) -> bytes:
    """A JSON document shaped like a packument (compressible the way real ones are)."""
    doc = {
        "name": "big",
        "dist-tags": {"latest": f"1.0.{versions - 1}"},
        "versions": {
            f"1.0.{i}": {
                "name": "big",
                "version": f"1.0.{i}",
                "dependencies": {f"dep-{j}": f"^{j}.{i % 7}.0" for j in range(12)},
                "dist": {
                    "tarball": f"http://127.0.0.1/npm/big/-/big-1.0.{i}.tgz",
                    "integrity": "sha512-" + os.urandom(48).hex(),
                },
            }
            for i in range(versions)
        },
    }
    return json.dumps(doc).encode()


def test_meta_entry__kept_gzipped_and_charged_at_its_compressed_size() -> None:
    body = packument_like(400)
    e = MetaEntry.build(body, "application/json")
    assert e.coding == "gzip"
    assert e.stored_size < len(body) / 2
    assert gzip.decompress(e.stored) == body
    assert e.body == body
    assert e.length == len(body)
    assert e.size == e.stored_size + ENTRY_OVERHEAD


def test_meta_entry__small_or_incompressible_bodies_kept_as_they_are() -> None:
    small = MetaEntry.build(b"{" + b" " * (COMPRESS_MIN - 3) + b"}", "application/json")
    noise = MetaEntry.build(os.urandom(50_000), "application/octet-stream")
    assert (small.coding, noise.coding) == (None, None)
    assert small.stored_size == COMPRESS_MIN - 1


async def test_metadata_cache__bytes_count_compressed_entries() -> None:
    body = packument_like(400)
    cache = make_cache(Clock())
    cached = await cache.get_or_fetch(KEY, FakeUpstream(body))
    assert cache.bytes == cached.entry.stored_size + ENTRY_OVERHEAD < len(body) / 2


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, False),
        ("", False),
        ("gzip", True),
        ("gzip, deflate", True),
        ("gzip, deflate, br, zstd", True),
        ("deflate, gzip;q=1.0, *;q=0.5", True),
        ("x-gzip", True),
        ("identity", False),
        ("br", False),
        ("gzip;q=0", False),
        ("GZIP ; Q=0.001", True),
        ("*", True),
        ("*;q=0", False),
        ("*, gzip;q=0", False),
        ("gzip;q=nonsense", False),
    ],
)
def test_accepts_gzip(header: str | None, expected: bool) -> None:
    assert accepts_gzip(header) is expected


@pytest.fixture
async def big_app() -> AsyncIterator[tuple[str, FakeUpstream]]:
    """metadata_response of a compressible document larger than one streamed piece."""
    up = FakeUpstream(packument_like(3000))
    assert len(up.body) > 2 * STREAM_PIECE
    cache = make_cache(Clock(), max_bytes=64 << 20)

    async def handler(request: web.Request) -> web.StreamResponse:
        cached = await cache.get_or_fetch(KEY, up)
        return metadata_response(request, cached)

    app = web.Application()
    app.router.add_get("/pkg", handler)
    runner, url = await serve_app(app)
    yield str(url / "pkg"), up
    await runner.cleanup()


async def test_metadata_response__gzip_to_clients_that_accept_it_identity_to_others(
    big_app: tuple[str, FakeUpstream],
) -> None:
    url, up = big_app
    async with aiohttp.ClientSession(auto_decompress=False) as http:
        async with http.get(url, headers={"Accept-Encoding": "gzip, deflate"}) as zipped:
            assert zipped.status == 200
            assert zipped.headers["Content-Encoding"] == "gzip"
            assert zipped.headers["Vary"] == "Accept-Encoding"
            raw = await zipped.read()
            assert int(zipped.headers["Content-Length"]) == len(raw) < len(up.body) / 2
            assert gzip.decompress(raw) == up.body
            gzip_etag = zipped.headers["ETag"]
        async with http.get(url, headers={"Accept-Encoding": "identity"}) as plain:
            assert plain.status == 200
            assert "Content-Encoding" not in plain.headers
            assert plain.headers["Vary"] == "Accept-Encoding"
            assert await plain.read() == up.body
            plain_etag = plain.headers["ETag"]
        async with http.get(url, headers={"Accept-Encoding": "br, gzip;q=0"}) as refused:
            assert "Content-Encoding" not in refused.headers
            assert await refused.read() == up.body
    # One entity tag per representation.
    assert gzip_etag != plain_etag
    assert gzip_etag.endswith('-gzip"')


async def test_metadata_response__304_per_representation(
    big_app: tuple[str, FakeUpstream],
) -> None:
    url, _ = big_app
    gz = {"Accept-Encoding": "gzip"}
    plain = {"Accept-Encoding": "identity"}
    async with aiohttp.ClientSession(auto_decompress=False) as http:
        async with http.get(url, headers=gz) as first:
            gzip_etag = first.headers["ETag"]
        async with http.get(url, headers=plain) as first_plain:
            plain_etag = first_plain.headers["ETag"]
        async with http.get(url, headers={**gz, "If-None-Match": gzip_etag}) as again:
            assert again.status == 304
            assert again.headers["ETag"] == gzip_etag
            assert "Content-Encoding" not in again.headers
            assert again.headers["Vary"] == "Accept-Encoding"
        async with http.get(url, headers={**plain, "If-None-Match": plain_etag}) as plain_again:
            assert plain_again.status == 304
        # A tag of the other representation does not match: the client gets this one whole.
        async with http.get(url, headers={**plain, "If-None-Match": gzip_etag}) as other:
            assert other.status == 200
            assert other.headers["ETag"] == plain_etag
        async with http.head(url, headers=gz) as head:
            assert head.status == 200
            assert head.headers["Content-Encoding"] == "gzip"


@pytest.mark.parametrize(
    "texts",
    [
        ["left-pad-1.3.0.tgz", "sha512-" + "A" * 86, "", "1.3.0"],  # ASCII: summed from a join
        ["naïve-1.0.0.tgz", "abc", "\U0001f600" * 3],  # wider characters: string by string
        ["abc", None, "", None],  # None is one shared object: not counted
        [],
    ],
    ids=["ascii", "wide", "none", "empty"],
)
def test_text_size__is_what_each_string_takes(texts: list[str | None]) -> None:
    assert text_size(iter(texts)) == sum(sys.getsizeof(t) for t in texts if t is not None)


# ------------------------------------------------------------------ zstd for clients that take it


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, 0),
        ("gzip,deflate", TAKES_GZIP),  # npm, pip
        ("gzip, deflate, br, zstd", TAKES_GZIP | TAKES_ZSTD),  # bun
        ("gzip, deflate, zstd", TAKES_GZIP | TAKES_ZSTD),  # uv
        ("zstd", TAKES_ZSTD),
        ("ZSTD;q=0.5, gzip;q=0", TAKES_ZSTD),
        ("zstd;q=0, gzip", TAKES_GZIP),
        ("*", TAKES_GZIP | TAKES_ZSTD),
        ("*, zstd;q=0", TAKES_GZIP),
        ("br", 0),
    ],
)
def test_accepted_codings(header: str | None, expected: int) -> None:
    assert accepted_codings(header) == expected


@pytest.fixture
async def zstd_app() -> AsyncIterator[tuple[str, FakeUpstream, MetadataCache]]:
    up = FakeUpstream(packument_like(3000))
    cache = make_cache(Clock(), max_bytes=64 << 20)

    async def handler(request: web.Request) -> web.StreamResponse:
        cached = await cache.get_or_fetch(KEY, up)
        return metadata_response(request, cached)

    app = web.Application()
    app.router.add_get("/pkg", handler)
    runner, url = await serve_app(app)
    yield str(url / "pkg"), up, cache
    await runner.cleanup()
    await cache.close()


async def test_metadata_response__zstd_once_made_to_clients_that_accept_it(
    zstd_app: tuple[str, FakeUpstream, MetadataCache],
) -> None:
    url, up, cache = zstd_app
    bun = {"Accept-Encoding": "gzip, deflate, br, zstd"}
    async with aiohttp.ClientSession(auto_decompress=False) as http:
        async with http.get(url, headers=bun) as first:  # gzip now; the zstd copy is made
            assert first.headers["Content-Encoding"] == "gzip"
            gzip_etag = first.headers["ETag"]
        ((entry_key, entry),) = cache._items.items()
        assert isinstance(entry, MetaEntry)
        charged = cache.bytes
        await cache.zstd_settled()
        assert entry.zstd is not None
        assert cache.bytes == charged + len(entry.zstd) == entry.size
        assert cache.stats.zstd_made == 1

        async with http.get(url, headers=bun) as second:
            assert second.status == 200
            assert second.headers["Content-Encoding"] == "zstd"
            assert second.headers["Vary"] == "Accept-Encoding"
            raw = await second.read()
            assert int(second.headers["Content-Length"]) == len(raw) < len(up.body) / 2
            assert zstd.decompress(raw) == up.body
            zstd_etag = second.headers["ETag"]
        assert zstd_etag.endswith('-zstd"')
        assert zstd_etag != gzip_etag
        async with http.get(url, headers={**bun, "If-None-Match": zstd_etag}) as again:
            assert again.status == 304
            assert again.headers["ETag"] == zstd_etag
            assert "Content-Encoding" not in again.headers
        # A client revalidating the gzip answer it stored before is told that one still holds.
        async with http.get(url, headers={**bun, "If-None-Match": gzip_etag}) as held:
            assert held.status == 304
            assert held.headers["ETag"] == gzip_etag
        async with http.get(url, headers={"Accept-Encoding": "zstd"}) as only:
            assert only.headers["Content-Encoding"] == "zstd"
        async with http.get(url, headers={"Accept-Encoding": "gzip,deflate"}) as npm:
            assert npm.headers["Content-Encoding"] == "gzip"
            assert npm.headers["ETag"] == gzip_etag
            assert gzip.decompress(await npm.read()) == up.body
        async with http.get(url, headers={"Accept-Encoding": "identity"}) as plain:
            assert "Content-Encoding" not in plain.headers
            assert await plain.read() == up.body
    assert cache.stats.zstd_made == 1  # made once
    assert cache.stats.zstd_answers == 2
    assert entry_key == KEY


async def test_metadata_cache__a_zstd_copy_is_charged_and_evicts_by_the_bound() -> None:
    clock = Clock()
    first = (await make_cache(clock).get_or_fetch(KEY, FakeUpstream(packument_like(400)))).entry
    cache = make_cache(clock, max_bytes=2 * first.size + 4000)  # sizes differ by a few bytes
    old = await cache.get_or_fetch(("npm", "old", "abbreviated"), FakeUpstream(packument_like(400)))
    new = await cache.get_or_fetch(KEY, FakeUpstream(packument_like(400)))
    assert len(cache) == 2
    new.entry.ask_zstd()
    new.entry.ask_zstd()  # asked once
    await cache.zstd_settled()
    assert cache.stats.zstd_made == 1
    assert new.entry.zstd is not None
    assert cache.peek(("npm", "old", "abbreviated")) is None  # the least recently used made room
    assert cache.stats.evictions == 1
    assert cache.bytes == new.entry.size
    assert old.entry.zstd is None
    await cache.close()


async def test_metadata_cache__a_zstd_copy_of_an_entry_gone_meanwhile_is_not_kept() -> None:
    cache = make_cache(Clock())
    cached = await cache.get_or_fetch(KEY, FakeUpstream(packument_like(400)))
    cached.entry.ask_zstd()
    cache.invalidate(KEY)
    await cache.zstd_settled()
    assert (cached.entry.zstd, cache.bytes, cache.stats.zstd_made) == (None, 0, 0)

    loose = MetaEntry.build(packument_like(400), "application/json")  # held by no cache
    loose.ask_zstd()
    assert cache._zstd_pending == set()
    assert loose.zstd is None
    await cache.close()
