"""The artifact cache: verified storage, shared downloads, Range on cached files, LRU, no escape."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from proxy.compat import front_key
from proxy.metrics import Metrics, front
from proxy.registry.artifacts import ArtifactCache, Digest
from proxy.registry.delivery import deliver
from proxy.registry.upstream import Upstream
from tests.conftest import serve_app


def sri(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


@dataclass
class FakeFiles:
    """A fake upstream file host: real HTTP, counting requests, optionally pausing mid-body."""

    root: Path
    hits: dict[str, int] = field(default_factory=dict)
    seen_headers: list[Mapping[str, str]] = field(default_factory=list)
    # name -> event: the body is sent half, then waits for the event.
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    # name -> a handler answering instead of the file (hostile upstreams)
    handlers: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]] = field(
        default_factory=dict
    )

    def add(self, name: str, data: bytes) -> None:
        (self.root / name).write_bytes(data)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.hits[name] = self.hits.get(name, 0) + 1
        self.seen_headers.append(dict(request.headers))
        special = self.handlers.get(name)
        if special is not None:
            return await special(request)
        path = self.root / name
        if not path.exists():
            return web.json_response({"error": "not found"}, status=404)
        gate = self.gates.get(name)
        if gate is None:
            return web.FileResponse(path)
        data = path.read_bytes()
        resp = web.StreamResponse()
        resp.content_length = len(data)
        await resp.prepare(request)
        await resp.write(data[: len(data) // 2])
        self.started.set()
        await gate.wait()
        await resp.write(data[len(data) // 2 :])
        await resp.write_eof()
        return resp


@dataclass
class Harness:
    url: URL
    files: FakeFiles
    cache: ArtifactCache
    digests: dict[str, Digest | None]


@contextlib.asynccontextmanager
async def start_harness(tmp_path: Path, max_bytes: int = 1 << 30) -> AsyncIterator[Harness]:
    files = FakeFiles(tmp_path / "upstream")
    files.root.mkdir()
    up_app = web.Application()
    up_app.router.add_get("/files/{name}", files.handle)
    up_runner, up_url = await serve_app(up_app)
    upstream = Upstream([str(up_url)])
    await upstream.start()
    cache = ArtifactCache(tmp_path / "data" / "cache" / "artifacts", max_bytes, chunk_size=4096)
    await cache.start()
    digests: dict[str, Digest | None] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]

        def open_upstream(
            method: str, headers: Mapping[str, str]
        ) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
            return upstream.request(method, up_url / "files" / name, headers=headers)

        return await deliver(
            request,
            cache,
            key=f"test:{name}",
            digest=digests.get(name),
            open_upstream=open_upstream,
            content_type="application/octet-stream",
            headers={"Cache-Control": "public, max-age=31536000, immutable"},
        )

    app = web.Application()
    app[front_key] = front(Metrics())  # failures answered as JSON, as pkgate's server does
    app.router.add_get("/a/{name}", handler)
    runner, url = await serve_app(app)
    try:
        yield Harness(url, files, cache, digests)
    finally:
        await runner.cleanup()
        await upstream.close()
        await up_runner.cleanup()


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with start_harness(tmp_path) as h:
        yield h


def publish(h: Harness, name: str, data: bytes, *, published: bytes | None = None) -> None:
    """Put ``data`` on the upstream with metadata claiming the hash of ``published``."""
    h.files.add(name, data)
    h.digests[name] = Digest.from_sri(sri(data if published is None else published))


def cached_files(cache: ArtifactCache) -> list[Path]:
    return [p for p in cache.root.rglob("*") if p.is_file() and p.parent.name != "tmp"]


async def test_artifact_cache__miss_streams_and_stores_verified_file(harness: Harness) -> None:
    data = os.urandom(100_000)
    publish(harness, "a.tgz", data)
    async with aiohttp.ClientSession() as http, http.get(harness.url / "a" / "a.tgz") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(len(data))
        assert resp.headers["Cache-Control"].startswith("public")
        assert await resp.read() == data
    [stored] = cached_files(harness.cache)
    assert stored.read_bytes() == data
    assert harness.cache.bytes == len(data)
    assert harness.files.seen_headers[0]["Accept-Encoding"] == "identity"


async def test_artifact_cache__hit_served_from_disk_without_upstream(harness: Harness) -> None:
    data = os.urandom(50_000)
    publish(harness, "b.tgz", data)
    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            async with http.get(harness.url / "a" / "b.tgz") as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"] == "application/octet-stream"
                assert resp.headers["X-Cache"] == ("MISS" if _ == 0 else "HIT")
                assert await resp.read() == data
    assert harness.files.hits["b.tgz"] == 1
    assert harness.cache.stats.hits == 2


async def test_artifact_cache__hash_mismatch_never_kept_and_body_cut_short(
    harness: Harness,
) -> None:
    data = os.urandom(100_000)
    publish(harness, "evil.tgz", data, published=b"what the metadata promised")
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientPayloadError):
            async with http.get(harness.url / "a" / "evil.tgz") as resp:
                await resp.read()
        # A second attempt downloads again (nothing was kept) and is cut short again.
        with pytest.raises(aiohttp.ClientPayloadError):
            async with http.get(harness.url / "a" / "evil.tgz") as resp:
                await resp.read()
    assert cached_files(harness.cache) == []
    assert list((harness.cache.root / "tmp").iterdir()) == []
    assert harness.cache.stats.mismatches == 2
    assert harness.files.hits["evil.tgz"] == 2


async def test_artifact_cache__range_request_on_mismatched_artifact_is_502(
    harness: Harness,
) -> None:
    publish(harness, "evil.whl", os.urandom(10_000), published=b"other")
    async with (
        aiohttp.ClientSession() as http,
        http.get(harness.url / "a" / "evil.whl", headers={"Range": "bytes=0-9"}) as resp,
    ):
        assert resp.status == 502
        assert "hash" in (await resp.json())["error"]
    assert cached_files(harness.cache) == []


async def test_artifact_cache__concurrent_requests_share_one_download(harness: Harness) -> None:
    data = os.urandom(200_000)
    publish(harness, "c.tgz", data)
    gate = harness.files.gates["c.tgz"] = asyncio.Event()

    async def fetch(http: aiohttp.ClientSession) -> bytes:
        async with http.get(harness.url / "a" / "c.tgz") as resp:
            assert resp.status == 200
            return await resp.read()

    async with aiohttp.ClientSession() as http:
        leader = asyncio.create_task(fetch(http))
        await harness.files.started.wait()
        followers = [asyncio.create_task(fetch(http)) for _ in range(5)]
        async with asyncio.timeout(10):
            while harness.cache.stats.coalesced < 5:
                await asyncio.sleep(0.005)
        gate.set()
        bodies = await asyncio.gather(leader, *followers)
    assert all(b == data for b in bodies)
    assert harness.files.hits["c.tgz"] == 1
    assert harness.cache.stats.downloads == 1


async def test_artifact_cache__range_on_cached_file_answers_206(harness: Harness) -> None:
    data = bytes(range(256)) * 400
    publish(harness, "d.whl", data)
    async with aiohttp.ClientSession() as http:
        async with http.get(harness.url / "a" / "d.whl") as resp:
            assert await resp.read() == data
        async with http.get(harness.url / "a" / "d.whl", headers={"Range": "bytes=100-199"}) as r:
            assert r.status == 206
            assert r.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
            assert await r.read() == data[100:200]
        async with http.get(harness.url / "a" / "d.whl", headers={"Range": "bytes=-10"}) as r:
            assert r.status == 206
            assert await r.read() == data[-10:]
        bad = {"Range": f"bytes={len(data) + 5}-"}
        async with http.get(harness.url / "a" / "d.whl", headers=bad) as r:
            assert r.status == 416
        async with http.head(harness.url / "a" / "d.whl") as r:
            assert r.status == 200
            assert r.headers["Content-Length"] == str(len(data))
            assert r.headers["Accept-Ranges"] == "bytes"
    assert harness.files.hits["d.whl"] == 1


async def test_artifact_cache__range_on_miss_fills_cache_then_answers_206(
    harness: Harness,
) -> None:
    data = os.urandom(30_000)
    publish(harness, "e.whl", data)
    async with aiohttp.ClientSession() as http:
        async with http.get(harness.url / "a" / "e.whl", headers={"Range": "bytes=10-19"}) as r:
            assert r.status == 206
            assert await r.read() == data[10:20]
        async with http.get(harness.url / "a" / "e.whl") as r:
            assert await r.read() == data
    assert harness.files.hits["e.whl"] == 1
    assert "Range" not in harness.files.seen_headers[0]


async def test_artifact_cache__upstream_404_is_json_404_and_nothing_kept(
    harness: Harness,
) -> None:
    harness.digests["gone.tgz"] = Digest.from_sri(sri(b"x"))
    async with aiohttp.ClientSession() as http, http.get(harness.url / "a" / "gone.tgz") as r:
        assert r.status == 404
        assert "error" in await r.json()
    assert cached_files(harness.cache) == []


async def test_artifact_cache__without_digest_relays_and_stores_nothing(harness: Harness) -> None:
    data = os.urandom(20_000)
    harness.files.add("f.tgz", data)
    async with aiohttp.ClientSession() as http:
        async with http.get(harness.url / "a" / "f.tgz", headers={"Range": "bytes=0-4"}) as r:
            assert r.status == 206
            assert await r.read() == data[:5]
        async with http.get(harness.url / "a" / "f.tgz") as r:
            assert await r.read() == data
    assert cached_files(harness.cache) == []
    assert harness.files.hits["f.tgz"] == 2
    assert harness.files.seen_headers[0]["Range"] == "bytes=0-4"


async def test_artifact_cache__disabled_relays_every_request(tmp_path: Path) -> None:
    async with start_harness(tmp_path, max_bytes=0) as h:
        data = os.urandom(5_000)
        publish(h, "g.tgz", data)
        async with aiohttp.ClientSession() as http:
            for _ in range(2):
                async with http.get(h.url / "a" / "g.tgz") as r:
                    assert await r.read() == data
        assert h.files.hits["g.tgz"] == 2
        assert not h.cache.root.exists()


async def test_artifact_cache__lru_evicts_oldest_files_by_bytes(tmp_path: Path) -> None:
    async with start_harness(tmp_path, max_bytes=25_000) as h:
        blobs = {f"{n}.tgz": os.urandom(10_000) for n in "pqr"}
        for name, data in blobs.items():
            publish(h, name, data)
        async with aiohttp.ClientSession() as http:
            for name in ("p.tgz", "q.tgz", "p.tgz", "r.tgz"):
                async with http.get(h.url / "a" / name) as r:
                    assert await r.read() == blobs[name]
            assert h.cache.bytes == 20_000
            assert h.cache.stats.evictions == 1
            assert len(cached_files(h.cache)) == 2
            # q was least recently used: it is fetched again; p is still on disk.
            for name in ("q.tgz", "r.tgz"):
                async with http.get(h.url / "a" / name) as r:
                    assert await r.read() == blobs[name]
        assert h.files.hits == {"p.tgz": 1, "q.tgz": 2, "r.tgz": 1}


async def test_artifact_cache__artifact_larger_than_bound_is_relayed_not_kept(
    tmp_path: Path,
) -> None:
    async with start_harness(tmp_path, max_bytes=1000) as h:
        data = os.urandom(5000)
        publish(h, "big.tgz", data)
        async with aiohttp.ClientSession() as http, http.get(h.url / "a" / "big.tgz") as r:
            assert await r.read() == data
        assert cached_files(h.cache) == []


async def test_artifact_cache__index_rebuilt_from_disk_on_start(tmp_path: Path) -> None:
    data = os.urandom(8_000)
    async with start_harness(tmp_path) as h:
        publish(h, "s.tgz", data)
        async with aiohttp.ClientSession() as http, http.get(h.url / "a" / "s.tgz") as r:
            assert await r.read() == data
    root = tmp_path / "data" / "cache" / "artifacts"
    (root / "tmp" / "deadbeef.999999999.abcd.part").write_bytes(b"half a download")
    restarted = ArtifactCache(root, 1 << 30)
    await restarted.start()
    assert restarted.bytes == len(data)
    digest = Digest.from_sri(sri(data))
    assert digest is not None
    path = restarted.lookup("test:s.tgz", digest)
    assert path is not None
    assert path.read_bytes() == data
    assert list((root / "tmp").iterdir()) == []


async def test_artifact_cache__file_of_another_worker_is_adopted(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    one, two = ArtifactCache(root, 1 << 20), ArtifactCache(root, 1 << 20)
    await one.start()
    await two.start()
    digest = Digest.from_hex("sha256", hashlib.sha256(b"abc").hexdigest())
    assert digest is not None
    target = root / one.name_for("k", digest)[:2] / one.name_for("k", digest)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"abc")
    assert two.lookup("k", digest) == target
    assert two.bytes == 3


@pytest.mark.parametrize("key", ["../../../etc/passwd", "/etc/passwd", "a/../../b", "\0", "é/.."])
def test_artifact_cache__path_never_escapes_root(tmp_path: Path, key: str) -> None:
    cache = ArtifactCache(tmp_path / "artifacts", 1 << 20)
    digest = Digest.from_hex("sha256", "00" * 32)
    assert digest is not None
    name = cache.name_for(key, digest)
    assert len(name) == 64
    assert all(c in "0123456789abcdef" for c in name)


def test_artifact_cache__digest_is_part_of_the_file_name(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path, 1 << 20)
    one = Digest.from_hex("sha256", "00" * 32)
    two = Digest.from_hex("sha256", "11" * 32)
    assert one is not None
    assert two is not None
    assert cache.name_for("k", one) != cache.name_for("k", two)


def test_digest__from_sri_picks_strongest_supported() -> None:
    data = b"package"
    sha256 = "sha256-" + base64.b64encode(hashlib.sha256(data).digest()).decode()
    digest = Digest.from_sri(f"sha1-AAAA {sha256} {sri(data)}")
    assert digest is not None
    assert digest.algorithm == "sha512"
    assert digest.matches(hashlib.sha512(data).digest())
    only256 = Digest.from_sri(sha256)
    assert only256 is not None
    assert only256.algorithm == "sha256"


@pytest.mark.parametrize(
    "integrity", [None, "", "sha1-Zm9v", "sha512-!!!", "sha512-Zm9v", "md5-Zm9v", "garbage"]
)
def test_digest__from_sri_rejects_unusable(integrity: str | None) -> None:
    assert Digest.from_sri(integrity) is None


@pytest.mark.parametrize(
    ("algorithm", "value", "ok"),
    [
        ("sha256", hashlib.sha256(b"x").hexdigest(), True),
        ("SHA256", hashlib.sha256(b"x").hexdigest().upper(), True),
        ("sha1", hashlib.sha1(b"x").hexdigest(), True),
        ("sha256", "abc", False),
        ("sha256", "zz" * 32, False),
        ("sha256", hashlib.sha1(b"x").hexdigest(), False),
        ("whirlpool", "00" * 64, False),
        ("sha256", None, False),
    ],
)
def test_digest__from_hex(algorithm: str, value: str | None, ok: bool) -> None:
    assert (Digest.from_hex(algorithm, value) is not None) is ok
