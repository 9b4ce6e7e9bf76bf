"""The metadata cache's disk tier (``proxy.registry.metadisk``): a restarted pkgate, or another
one on the same data directory, starts warm; what is on disk is checked before it is used, kept
within its bound, and never needed for an answer."""

from __future__ import annotations

import gzip
import os
import shutil
import time
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web

from proxy.keys import metadata_cache_key
from proxy.registry.metadisk import MetadataDisk
from tests.conftest import RunningServer, StartServer
from tests.upstreams.npm_registry import NpmRegistry, build_package, serve_registry

PACKUMENT = "/pkg-plain"


async def start(
    start_server: StartServer, registry: NpmRegistry, **settings: object
) -> RunningServer:
    return await start_server(npm_upstream=str(registry.url) + "/", **settings)


async def get(server: RunningServer, path: str = PACKUMENT) -> tuple[int, str, bytes]:
    """One packument request: (status, X-Cache, the document as the client reads it)."""
    token = await server.token(f"u{time.monotonic_ns()}@example.com")
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http,
        http.get(server.url / "npm" / path.lstrip("/")) as resp,
    ):
        return resp.status, resp.headers.get("X-Cache", ""), await resp.read()


async def served_and_stopped(
    start_server: StartServer, registry: NpmRegistry
) -> tuple[RunningServer, bytes]:
    """A pkgate that served the packument once (so the disk tier has it), stopped; and the
    document it sent."""
    first = await start(start_server, registry)
    _, _, body = await get(first)
    await first.close()
    return first, body


def moved(body: bytes, before: RunningServer, after: RunningServer) -> bytes:
    """``body`` as ``after`` writes it: its tarball URLs name its own port."""
    return body.replace(f":{before.url.port}/".encode(), f":{after.url.port}/".encode())


def gets(registry: NpmRegistry, path: str = PACKUMENT) -> list[dict[str, str]]:
    return [r.headers for r in registry.requests if r.path == path]


def disk_of(server: RunningServer) -> MetadataDisk:
    disk = server.app[metadata_cache_key].disk
    assert disk is not None
    return disk


def stored_files(server: RunningServer) -> list[Path]:
    return sorted(server.settings.metadata_dir.glob("*.meta"))


async def test_metadisk__a_restart_starts_warm_within_the_ttl(
    start_server: StartServer, registry: NpmRegistry
) -> None:
    first = await start(start_server, registry)
    status, state, body = await get(first)
    assert (status, state) == (200, "MISS")
    await disk_of(first).settled()  # copies are written after the answer
    (path,) = stored_files(first)
    head = orjson.loads(path.read_bytes().partition(b"\n")[0])
    assert head["url"].endswith(PACKUMENT)
    assert head["coding"] == "gzip"  # the upstream's bytes, as they came
    await first.close()

    again = await start(start_server, registry)  # the same data directory
    status, state, warm = await get(again)
    assert (status, state, warm) == (200, "DISK", moved(body, first, again))
    assert len(gets(registry)) == 1  # the upstream was not asked again
    assert disk_of(again).stats.fresh == 1
    # Then it is in memory like any other entry.
    assert (await get(again))[1] == "HIT"


async def test_metadisk__an_old_copy_is_revalidated_and_a_304_serves_it(
    start_server: StartServer, registry: NpmRegistry
) -> None:
    first, body = await served_and_stopped(start_server, registry)

    again = await start(start_server, registry, metadata_ttl=0)
    status, state, revalidated = await get(again)
    assert (status, state, revalidated) == (200, "REVALIDATED", moved(body, first, again))
    fetched, conditional = gets(registry)
    assert "If-None-Match" not in fetched
    assert conditional["If-None-Match"]  # the stored copy's own validator
    assert disk_of(again).stats.revalidated == 1


async def test_metadisk__another_server_on_the_data_directory_shares_it(
    start_server: StartServer, registry: NpmRegistry
) -> None:
    one = await start(start_server, registry)
    two = await start(start_server, registry)
    assert (await get(one))[1] == "MISS"
    await disk_of(one).settled()
    assert (await get(two))[1] == "DISK"
    assert len(gets(registry)) == 1


def _damage_body(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _other_document(path: Path) -> None:
    head, _, body = path.read_bytes().partition(b"\n")
    header = orjson.loads(head)
    header["url"] = header["url"].replace("pkg-plain", "pkg-other")
    path.write_bytes(orjson.dumps(header) + b"\n" + body)


def _no_header(path: Path) -> None:
    path.write_bytes(b"\x1f\x8b" + os.urandom(2000))


def _lying_hash(path: Path) -> None:
    """A body replaced by a valid gzip of other JSON, with its length fixed up: only the hash
    check stands between it and the clients."""
    head, _, _ = path.read_bytes().partition(b"\n")
    header = orjson.loads(head)
    other = gzip.compress(b'{"name": "pkg-plain", "versions": {}}')
    header["length"] = len(other)
    path.write_bytes(orjson.dumps(header) + b"\n" + other)


def _symlink(path: Path) -> None:
    """The copy moved away and a link left in its place (a link is never followed)."""
    moved = path.with_name("elsewhere")
    path.rename(moved)
    path.symlink_to(moved)


def _fifo(path: Path) -> None:
    """A pipe in the copy's place: reading it would wait for a writer forever."""
    path.unlink()
    os.mkfifo(path)


@pytest.mark.parametrize(
    "damage",
    [_damage_body, _truncate, _other_document, _no_header, _lying_hash, _symlink, _fifo],
    ids=[
        "flipped-byte",
        "truncated",
        "other-document",
        "no-header",
        "lying-hash",
        "symlink",
        "fifo",
    ],
)
async def test_metadisk__a_damaged_copy_is_deleted_and_fetched_again(
    start_server: StartServer, registry: NpmRegistry, damage: object
) -> None:
    first, body = await served_and_stopped(start_server, registry)
    (path,) = stored_files(first)
    damage(path)  # type: ignore[operator]

    again = await start(start_server, registry)
    status, state, answer = await get(again)
    assert (status, state, answer) == (200, "MISS", moved(body, first, again))
    assert len(gets(registry)) == 2
    assert disk_of(again).stats.rejected == 1
    await disk_of(again).settled()
    (kept,) = stored_files(again)  # the upstream's answer, stored anew
    assert orjson.loads(kept.read_bytes().partition(b"\n")[0])["url"].endswith(PACKUMENT)


async def test_metadisk__a_failing_upstream_gets_the_copy_served_stale(
    start_server: StartServer, registry: NpmRegistry
) -> None:
    first, body = await served_and_stopped(start_server, registry)

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=503)

    registry.overrides[PACKUMENT] = broken
    again = await start(start_server, registry, metadata_ttl=0)
    status, state, stale = await get(again)
    assert (status, state, stale) == (200, "STALE", moved(body, first, again))
    assert disk_of(again).stats.stale == 1
    # Beyond metadata_stale_max the failure is the answer.
    late = await start(start_server, registry, metadata_ttl=0, metadata_stale_max=0)
    assert (await get(late))[0] == 502


async def test_metadisk__a_copy_dated_in_the_future_is_revalidated(
    start_server: StartServer, registry: NpmRegistry
) -> None:
    first, _ = await served_and_stopped(start_server, registry)
    (path,) = stored_files(first)
    later = time.time() + 365 * 86400
    os.utime(path, (later, later))

    again = await start(start_server, registry)
    assert (await get(again))[1] == "REVALIDATED"
    assert len(gets(registry)) == 2


async def test_metadisk__an_upstream_404_deletes_the_copy(
    start_server: StartServer, registry: NpmRegistry
) -> None:
    await served_and_stopped(start_server, registry)
    registry.packages[:] = [p for p in registry.packages if p.name != "pkg-plain"]

    again = await start(start_server, registry, metadata_ttl=0)
    assert (await get(again))[0] == 404
    assert stored_files(again) == []


async def test_metadisk__kept_within_its_bound_oldest_first(start_server: StartServer) -> None:
    names = [f"pkg-{n:02d}" for n in range(30)]
    async with serve_registry(packages=[build_package(n, "1.0.0") for n in names]) as registry:
        server = await start(start_server, registry, metadata_disk_bytes=8 * 1024)
        for name in names:  # about 700 bytes each on disk
            assert (await get(server, f"/{name}"))[0] == 200
    disk = disk_of(server)
    await disk.settled()
    files = stored_files(server)
    on_disk = sum(p.stat().st_size for p in files)
    assert on_disk <= 8 * 1024
    assert disk.bytes == on_disk
    assert disk.stats.written == 30
    assert disk.stats.evicted == 30 - len(files) > 0
    kept = {orjson.loads(p.read_bytes().partition(b"\n")[0])["url"].rsplit("/")[-1] for p in files}
    assert names[-1] in kept  # the oldest went first
    assert names[0] not in kept


async def test_metadisk__a_disk_that_refuses_writes_fails_no_answer(
    start_server: StartServer, registry: NpmRegistry
) -> None:
    server = await start(start_server, registry)
    root = server.settings.metadata_dir
    shutil.rmtree(root)  # with the tier's key in it
    root.write_bytes(b"")  # the directory replaced by a file: every write fails
    status, state, _ = await get(server)
    assert (status, state) == (200, "MISS")
    await disk_of(server).settled()
    assert disk_of(server).stats.failures == 2  # the read of a stored copy, then the write
    assert (await get(server))[1] == "HIT"


async def test_metadisk__off_with_a_zero_bound(
    start_server: StartServer, registry: NpmRegistry
) -> None:
    server = await start(start_server, registry, metadata_disk_bytes=0)
    assert server.app[metadata_cache_key].disk is None
    assert (await get(server))[1] == "MISS"
    assert not server.settings.metadata_dir.exists()
