"""The metadata cache's byte bound counts the memory its entries really take (issue 11, item 8):
within 20%, measured with tracemalloc over packuments and project pages built the way the
server builds them (rewritten, compressed, with their file tables and policy facts)."""

from __future__ import annotations

import gc
import json
import tracemalloc
from collections.abc import Callable

import pytest
from yarl import URL

from proxy.npm.routes import packument_entry
from proxy.pypi.rewrite import JSON_TYPE, FileLinks
from proxy.pypi.routes import build_project_entry
from proxy.registry.metacache import CacheState, MetadataCache, MetaEntry
from proxy.registry.pipeline import Fetched

ENTRIES = 100


def packument(name: str, versions: int) -> bytes:
    docs, times = {}, {}
    for i in range(versions):
        version = f"1.{i}.0"
        docs[version] = {
            "name": name,
            "version": version,
            "description": f"release {i} of {name}",
            "dependencies": {f"dep-{j}": f"^{j}.0.0" for j in range(4)},
            "dist": {
                "tarball": f"https://upstream.test/{name}/-/{name}-{version}.tgz",
                "integrity": "sha512-" + "A" * 86 + "==",
                "shasum": "a" * 40,
            },
        }
        times[version] = f"2024-01-{1 + i % 28:02d}T00:00:00.000Z"
    doc = {"name": name, "dist-tags": {"latest": version}, "versions": docs, "time": times}
    return json.dumps(doc).encode()


def project(name: str, versions: int) -> bytes:
    files = []
    for i in range(versions):
        for filename in (f"{name}-1.{i}.0-py3-none-any.whl", f"{name}-1.{i}.0.tar.gz"):
            files.append(
                {
                    "filename": filename,
                    "url": f"https://files.test/packages/ab/cd/{filename}",
                    "hashes": {"sha256": f"{i:064x}"},
                    "requires-python": ">=3.9",
                    "size": 10_000 + i,
                    "upload-time": "2024-01-02T03:04:05.000000Z",
                    "core-metadata": {"sha256": f"{i + 1:064x}"},
                }
            )
    doc = {
        "meta": {"api-version": "1.1"},
        "name": name,
        "files": files,
        "versions": [f"1.{i}.0" for i in range(versions)],
    }
    return json.dumps(doc).encode()


def npm_entry(n: int, versions: int) -> MetaEntry:
    name = f"pkg-{n}"
    fetched = Fetched(
        URL(f"https://upstream.test/{name}"), packument(name, versions), None, None, None
    )
    return packument_entry(fetched, name, "https://pkgate.test/npm")


def pypi_entry(n: int, versions: int) -> MetaEntry:
    name = f"proj{n}"
    url = URL(f"https://files.test/simple/{name}/")
    fetched = Fetched(url, project(name, versions), JSON_TYPE, None, None)
    links = FileLinks("https://pkgate.test/pypi/files", ["https://files.test/"])
    return build_project_entry(fetched, name, JSON_TYPE, links)


@pytest.mark.parametrize("versions", [3, 40, 300])
@pytest.mark.parametrize("build", [npm_entry, pypi_entry], ids=["npm", "pypi"])
def test_memory__charged_bytes_match_measured_memory(
    build: Callable[[int, int], MetaEntry], versions: int
) -> None:
    cache = MetadataCache(max_bytes=1 << 40)
    entries = max(20, ENTRIES * 40 // versions)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for n in range(entries):
            entry = build(n, versions)
            cache.keep(("test", f"name-{n}", "representation"), entry)
            entry.answer_headers(CacheState.HIT)  # what the warm path keeps per entry
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    real = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert 0.8 <= real / cache.bytes <= 1.2, (real, cache.bytes)
