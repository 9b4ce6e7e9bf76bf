"""Entries kept on the disk tier beside the upstream's bytes (``metadisk.Built``): a restarted
pkgate restores a packument entry without parsing or rewriting it again, with the same bytes
and ETag, its file hashes still checked against every tarball; and a kept copy is trusted only
when this data directory's key made it and every field checks out."""

from __future__ import annotations

import gzip
import hashlib
import hmac
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from proxy.keys import artifact_cache_key
from proxy.npm import rewrite as npmrewrite
from proxy.npm.routes import packument_entry, packument_table, restored_packument
from proxy.registry.metadisk import KEY_FILE, UpstreamAnswer
from proxy.registry.pipeline import Fetched
from tests.conftest import RunningServer, StartServer
from tests.npm.test_npm_metadisk import PACKUMENT, disk_of, gets, stored_files
from tests.upstreams.npm_registry import NpmRegistry

# Both servers of a test write this public URL into what they serve: the same kind of entry.
PUBLIC = "http://pkgate.test"
TARBALL = "/pkg-plain/-/pkg-plain-1.0.0.tgz"


async def start(
    start_server: StartServer, registry: NpmRegistry, public_url: str = PUBLIC, **settings: Any
) -> RunningServer:
    return await start_server(
        npm_upstream=str(registry.url) + "/", public_url=public_url, **settings
    )


async def get(
    server: RunningServer, path: str = PACKUMENT, headers: dict[str, str] | None = None
) -> tuple[int, CIMultiDict[str], bytes]:
    """One request on the server's real port (its public URL names no reachable host)."""
    token = await server.token(f"u{time.monotonic_ns()}@example.com")
    url = URL(f"http://127.0.0.1:{server.settings.port}/npm{path}")
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http,
        http.get(url, headers=headers or {}) as resp,
    ):
        return resp.status, CIMultiDict(resp.headers), await resp.read()


async def served_and_stopped(
    start_server: StartServer, registry: NpmRegistry
) -> tuple[Path, CIMultiDict[str], bytes]:
    """A pkgate that served the packument once and kept it, stopped: the file of its copy, its
    answer's headers and the document."""
    first = await start(start_server, registry)
    status, headers, body = await get(first)
    assert (status, headers["X-Cache"]) == (200, "MISS")
    await disk_of(first).settled()
    await first.close()
    (path,) = stored_files(first)
    return path, headers, body


def no_rewrite(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every packument rewrite fail loudly; returns the names it was asked for."""
    asked: list[str] = []

    def refuse(body: bytes, name: str, public_root: str) -> Any:
        asked.append(name)
        raise AssertionError("the packument was rewritten again")

    monkeypatch.setattr(npmrewrite, "rewrite", refuse)
    return asked


def read_copy(path: Path) -> tuple[dict[str, Any], bytes, bytes, bytes]:
    """A stored file's header, upstream bytes, kept table and kept body."""
    head, _, rest = path.read_bytes().partition(b"\n")
    header = orjson.loads(head)
    raw, kept = rest[: header["length"]], rest[header["length"] :]
    table = header["built"]["table"]
    return header, raw, kept[:table], kept[table:]


def write_copy(
    path: Path, header: dict[str, Any], raw: bytes, table: bytes, body: bytes, *, length: int
) -> None:
    """Replace the kept entry with ``table`` and ``body``, signed with the directory's key: what
    only a holder of the key (pkgate itself) could write."""
    built = header["built"]
    key = (path.parent / KEY_FILE).read_bytes()
    signed = f"{built['kind']}\ngzip\n{length}\n".encode() + table + body
    mac = hmac.new(key, signed, hashlib.sha256).hexdigest()
    built.update(mac=mac, table=len(table), body=len(body), length=length)
    path.write_bytes(orjson.dumps(header) + b"\n" + raw + table + body)


async def test_kept__a_restart_restores_the_entry_without_rewriting_it(
    start_server: StartServer, registry: NpmRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, headers, body = await served_and_stopped(start_server, registry)
    header, _, table, kept = read_copy(path)
    assert header["built"]["kind"].startswith("npm-packument/")
    assert gzip.decompress(kept) == body  # the body as served, kept gzipped
    assert orjson.loads(table)["files"]  # and the hashes its tarballs must have

    asked = no_rewrite(monkeypatch)
    again = await start(start_server, registry)
    status, answer, warm = await get(again)
    assert (status, answer["X-Cache"], warm) == (200, "DISK", body)
    assert answer["ETag"] == headers["ETag"]  # a client's stored copy is still current
    assert asked == []
    assert len(gets(registry)) == 1  # the upstream was not asked again
    stats = disk_of(again).stats
    assert (stats.restored, stats.rebuilt) == (1, 0)
    status, _, _ = await get(again, headers={"If-None-Match": headers["ETag"]})
    assert status == 304
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{again.settings.port}/metrics") as resp,
    ):
        text = await resp.text()
    assert "pkgate_metadata_disk_restored_total 1.0" in text
    assert "pkgate_metadata_disk_rebuilt_total 0.0" in text


async def test_kept__a_restored_entry_still_checks_every_tarball(
    start_server: StartServer, registry: NpmRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    await served_and_stopped(start_server, registry)
    no_rewrite(monkeypatch)
    again = await start(start_server, registry)
    assert (await get(again))[1]["X-Cache"] == "DISK"  # restored, with its file table
    package = registry.package("pkg-plain", "1.0.0")

    status, _, tarball = await get(again, TARBALL)
    assert (status, tarball) == (200, package.tarball)

    async def other_bytes(request: web.Request) -> web.Response:
        return web.Response(body=b"not the published tarball")

    registry.overrides[registry.tarball_path(registry.package("pkg-plain", "1.1.0"))] = other_bytes
    with pytest.raises(aiohttp.ClientPayloadError):  # cut short: never served whole
        await get(again, "/pkg-plain/-/pkg-plain-1.1.0.tgz")
    assert again.app[artifact_cache_key].stats.mismatches == 1  # the restored hash refused it


async def test_kept__another_public_url_builds_the_entry_again_and_keeps_that(
    start_server: StartServer, registry: NpmRegistry
) -> None:
    path, _, _ = await served_and_stopped(start_server, registry)
    mtime = path.stat().st_mtime

    other = "http://other.pkgate.test"
    moved = await start(start_server, registry, public_url=other)
    status, answer, body = await get(moved)
    assert (status, answer["X-Cache"]) == (200, "DISK")
    assert f"{other}/npm/pkg-plain/-/pkg-plain-1.0.0.tgz".encode() in body
    assert PUBLIC.encode() not in body  # never another mount's URLs
    stats = disk_of(moved).stats
    assert (stats.restored, stats.rebuilt) == (0, 1)
    await disk_of(moved).settled()
    header, _, _, _ = read_copy(path)
    assert other in header["built"]["kind"]  # kept again, for this public URL
    assert abs(path.stat().st_mtime - mtime) < 1.0  # and no fresher than the upstream left it
    await moved.close()

    again = await start(start_server, registry, public_url=other)
    assert (await get(again))[1]["X-Cache"] == "DISK"
    assert disk_of(again).stats.restored == 1
    assert len(gets(registry)) == 1


async def test_kept__a_copy_kept_under_another_key_is_built_again_from_its_upstream_bytes(
    start_server: StartServer, registry: NpmRegistry
) -> None:
    path, _, body = await served_and_stopped(start_server, registry)
    (path.parent / KEY_FILE).write_bytes(os.urandom(32))  # the key lost and made anew

    again = await start(start_server, registry)
    status, answer, warm = await get(again)
    assert (status, answer["X-Cache"], warm) == (200, "DISK", body)
    assert (disk_of(again).stats.restored, disk_of(again).stats.rebuilt) == (0, 1)
    assert len(gets(registry)) == 1


async def test_kept__a_copy_from_before_entries_were_kept_is_used_and_then_kept(
    start_server: StartServer, registry: NpmRegistry
) -> None:
    path, _, body = await served_and_stopped(start_server, registry)
    header, raw, _, _ = read_copy(path)
    del header["built"]
    header["format"] = 1
    path.write_bytes(orjson.dumps(header) + b"\n" + raw)

    again = await start(start_server, registry)
    status, answer, warm = await get(again)
    assert (status, answer["X-Cache"], warm) == (200, "DISK", body)
    assert disk_of(again).stats.rebuilt == 1
    await disk_of(again).settled()
    assert read_copy(path)[0]["format"] == 2


def _types_wrong(table: dict[str, Any]) -> None:
    table["files"]["integrity"][0] = 12345  # an integrity that is not text


def _dist_tags_wrong(table: dict[str, Any]) -> None:
    table["dist_tags"] = {"latest": ["1.0.0"]}


def _times_wrong(table: dict[str, Any]) -> None:
    table["published"] = {"version": ["1.0.0"], "time": ["yesterday"]}


def _fields_missing(table: dict[str, Any]) -> None:
    del table["files"]


def _column_missing(table: dict[str, Any]) -> None:
    del table["files"]["shasum"]


def _column_short(table: dict[str, Any]) -> None:
    table["files"]["shasum"].pop()  # one file without its shasum: the rows would shift


def _column_not_a_list(table: dict[str, Any]) -> None:
    table["files"]["name"] = "ab"  # two characters: two names only when iterated blindly


def _rows_not_columns(table: dict[str, Any]) -> None:
    files = table["files"]
    table["files"] = [list(row) for row in zip(*files.values(), strict=True)]  # the old layout


@pytest.mark.parametrize(
    "spoil",
    [
        _types_wrong,
        _dist_tags_wrong,
        _times_wrong,
        _fields_missing,
        _column_missing,
        _column_short,
        _column_not_a_list,
        _rows_not_columns,
    ],
    ids=[
        "integrity-not-text",
        "dist-tags-not-text",
        "time-not-a-number",
        "no-files",
        "no-shasums",
        "short-column",
        "column-not-a-list",
        "rows",
    ],
)
async def test_kept__a_signed_table_that_does_not_check_out_is_deleted(
    start_server: StartServer, registry: NpmRegistry, spoil: Any
) -> None:
    path, _, body = await served_and_stopped(start_server, registry)
    header, raw, table, kept = read_copy(path)
    spoilt = orjson.loads(table)
    spoil(spoilt)
    write_copy(path, header, raw, orjson.dumps(spoilt), kept, length=len(body))

    again = await start(start_server, registry)
    status, answer, fetched = await get(again)
    assert (status, answer["X-Cache"], fetched) == (200, "MISS", body)  # from the upstream
    assert disk_of(again).stats.rejected == 1
    assert len(gets(registry)) == 2


@pytest.mark.parametrize("lie", ["bomb", "truncated", "longer"])
async def test_kept__a_signed_body_that_does_not_inflate_to_its_length_is_deleted(
    start_server: StartServer, registry: NpmRegistry, lie: str
) -> None:
    path, _, body = await served_and_stopped(start_server, registry)
    header, raw, table, kept = read_copy(path)
    if lie == "bomb":  # a small stream that inflates far past the packument limit
        kept, length = gzip.compress(b"\0" * (300 * 1024 * 1024), 1), len(body)
    elif lie == "truncated":
        kept, length = kept[: len(kept) // 2], len(body)
    else:
        length = len(body) + 1
    write_copy(path, header, raw, table, kept, length=length)

    again = await start(start_server, registry)
    status, answer, fetched = await get(again)
    assert (status, answer["X-Cache"], fetched) == (200, "MISS", body)
    assert disk_of(again).stats.rejected == 1


async def test_kept__a_damaged_kept_copy_deletes_the_file(
    start_server: StartServer, registry: NpmRegistry
) -> None:
    path, _, body = await served_and_stopped(start_server, registry)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # in the kept body: its MAC no longer matches
    path.write_bytes(bytes(data))

    again = await start(start_server, registry)
    status, answer, fetched = await get(again)
    assert (status, answer["X-Cache"], fetched) == (200, "MISS", body)
    assert disk_of(again).stats.rejected == 1


async def test_kept__workers_sharing_the_directory_share_one_key(
    start_server: StartServer, registry: NpmRegistry
) -> None:
    one = await start(start_server, registry)
    two = await start(start_server, registry)
    key = one.settings.metadata_dir / KEY_FILE
    assert len(key.read_bytes()) == 32
    assert key.stat().st_mode & 0o777 == 0o600
    assert (await get(one))[1]["X-Cache"] == "MISS"
    await disk_of(one).settled()
    assert (await get(two))[1]["X-Cache"] == "DISK"
    assert disk_of(two).stats.restored == 1


def test_kept__a_table_read_back_is_the_entry_it_was_kept_from() -> None:
    doc = {
        "name": "mixed",
        "dist-tags": {"latest": "2.0.0", "next": "3.0.0-rc.1"},
        "versions": {
            "1.0.0": {"dist": {"tarball": "http://up.test/mixed/-/mixed-1.0.0.tgz"}},  # no hashes
            "2.0.0": {
                "dist": {
                    "tarball": "http://up.test/mixed/-/mixed-2.0.0.tgz",
                    "integrity": "sha512-" + "Q" * 86,
                    "shasum": "ab" * 20,
                }
            },
            "3.0.0-rc.1": {
                "dist": {"tarball": "http://up.test/mixed/-/mixed-3.0.0-rc.1.tgz", "shasum": "ü"}
            },
        },
        "time": {"2.0.0": "2024-01-02T00:00:00.000Z", "3.0.0-rc.1": "2024-02-01T00:00:00.000Z"},
    }
    fetched = Fetched(URL("http://up.test/mixed"), orjson.dumps(doc), "application/json", "e", None)
    built = packument_entry(fetched, "mixed", "http://pkgate.test/npm")
    answer = UpstreamAnswer(b"", None, "application/json", "e", None)
    table = orjson.loads(packument_table(built))
    assert set(table["files"]) == {"name", "integrity", "shasum", "version"}  # kept as columns

    restored = restored_packument(table, answer, "mixed")
    assert restored.files == built.files
    assert restored.facts == built.facts
    assert restored.facts is not None
    assert restored.facts.published["1.0.0"] is None
    # Charged what the built entry was, but for the UTF-8 copy a non-ASCII string keeps once it
    # was written out (the built entry's "ü": three bytes).
    assert built.aux_size - 3 <= restored.aux_size <= built.aux_size
    # Publish times written as whole numbers come back as the floats the entry was built with.
    table["published"]["time"] = [None if t is None else int(t) for t in table["published"]["time"]]
    again = restored_packument(table, answer, "mixed")
    assert again.facts == built.facts
    assert again.facts is not None
    assert {type(t) for t in again.facts.published.values()} == {float, type(None)}
