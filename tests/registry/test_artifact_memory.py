"""Small cached artifacts answered from memory: the same answer as from disk, verified as read,
bounded, and never a file that changed on disk (issue 13: warm installs of many small tarballs)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp
from multidict import CIMultiDict

from proxy.registry.artifacts import SMALL_FILE_MAX, ArtifactCache
from tests.registry.test_artifacts import Harness, cached_files, harness, publish, start_harness

__all__ = ["harness"]  # the fixture, shared with the store's own tests

TARBALL = os.urandom(20_000)


async def get(h: Harness, name: str, **headers: str) -> tuple[int, bytes, CIMultiDict[str]]:
    async with aiohttp.ClientSession() as http, http.get(h.url / "a" / name, headers=headers) as r:
        return r.status, await r.read(), CIMultiDict(r.headers)


async def test_memory__second_get_of_a_small_file_is_answered_from_memory(harness: Harness) -> None:
    publish(harness, "a.tgz", TARBALL)
    assert (await get(harness, "a.tgz"))[0] == 200  # the download: stored on disk
    status, body, _ = await get(harness, "a.tgz")  # read once, kept in memory
    again = await get(harness, "a.tgz")
    assert harness.cache.stats.memory_hits == 2
    assert (status, body) == (200, TARBALL)
    assert again[:2] == (200, TARBALL)
    assert harness.files.hits["a.tgz"] == 1
    assert harness.cache.memory_bytes == len(TARBALL)
    async with aiohttp.ClientSession() as http, http.head(harness.url / "a" / "a.tgz") as resp:
        from_disk = CIMultiDict(resp.headers)  # HEAD is answered from the file
    for name in ("ETag", "Last-Modified", "Accept-Ranges", "Cache-Control", "Content-Type"):
        assert again[2][name] == from_disk[name]
    assert again[2]["Content-Length"] == from_disk["Content-Length"] == str(len(TARBALL))
    assert again[2]["X-Cache"] == "HIT"
    # The validators are the file's: a conditional request (answered from disk) agrees.
    status, _, _ = await get(harness, "a.tgz", **{"If-None-Match": again[2]["ETag"]})
    assert status == 304


async def test_memory__range_and_head_still_come_from_the_file(harness: Harness) -> None:
    publish(harness, "a.tgz", TARBALL)
    await get(harness, "a.tgz")
    status, body, _ = await get(harness, "a.tgz", Range="bytes=0-9")
    assert (status, body) == (206, TARBALL[:10])
    async with aiohttp.ClientSession() as http, http.head(harness.url / "a" / "a.tgz") as resp:
        assert resp.status == 200
        assert resp.content_length == len(TARBALL)
    assert harness.cache.stats.memory_hits == 0


async def test_memory__a_file_changed_on_disk_is_dropped_and_fetched_again(
    harness: Harness,
) -> None:
    publish(harness, "a.tgz", TARBALL)
    await get(harness, "a.tgz")
    [stored] = cached_files(harness.cache)
    stored.write_bytes(b"X" * len(TARBALL))  # the disk is not trusted
    status, body, _ = await get(harness, "a.tgz")
    assert (status, body) == (200, TARBALL)
    assert harness.files.hits["a.tgz"] == 2  # fetched and verified again
    assert harness.cache.stats.mismatches == 1
    assert [p.read_bytes() for p in cached_files(harness.cache)] == [TARBALL]


async def test_memory__bounded_large_files_stay_on_disk_and_eviction_drops_copies(
    tmp_path: Path,
) -> None:
    async with start_harness(tmp_path, max_bytes=200_000) as h:
        h.cache.memory_max = 50_000  # two of the small files below
        big = os.urandom(SMALL_FILE_MAX + 1)
        h.cache.max_bytes = 2 * len(big)
        for n in range(4):
            publish(h, f"s{n}.tgz", os.urandom(20_000))
        publish(h, "big.tgz", big)
        for name in ("s0.tgz", "s1.tgz", "s2.tgz", "s3.tgz", "big.tgz"):
            for _ in range(2):
                assert (await get(h, name))[0] == 200
            assert h.cache.memory_bytes <= h.cache.memory_max
        assert (await get(h, "big.tgz"))[1] == big
        assert "big.tgz" not in {n for n in h.files.hits if h.files.hits[n] > 1}
        assert h.cache.memory_bytes == 40_000  # the last two small files; the large one never
        # Evicting a file from the store drops its memory copy with it.
        publish(h, "big2.tgz", os.urandom(SMALL_FILE_MAX + 1))
        await get(h, "big2.tgz")
        assert h.cache.memory_bytes <= 40_000
        assert h.cache.memory_bytes == sum(len(v.body) for v in h.cache._memory.values())
        for name in h.cache._memory:
            assert name in h.cache._index


def test_memory__off_when_the_store_is_off(tmp_path: Path) -> None:
    assert ArtifactCache(tmp_path, 0).memory_max == 0


async def test_memory__concurrent_first_loads_count_the_copy_once(harness: Harness) -> None:
    publish(harness, "a.tgz", TARBALL)
    await get(harness, "a.tgz")
    store = harness.cache
    [name] = list(store._index)
    digest = harness.digests["a.tgz"]
    assert digest is not None
    assert store.remembered(name) is None
    loaded = await asyncio.gather(*(store.load_into_memory(name, digest) for _ in range(3)))
    assert all(copy is not None and copy.body == TARBALL for copy in loaded)
    assert store.memory_bytes == len(TARBALL)
