"""Upstream faults on every kind of fetch: index pages and files (PyPI), packuments and tarballs
(npm).  The upstream hangs, resets mid-body, sends a truncated or oversized body, a wrong
Content-Length, invalid gzip or invalid JSON.  The client always gets a clean JSON error or, for
metadata cached earlier, the stale copy (``X-Cache: STALE``); an artifact answered 200 in full is
always the published bytes, and the artifact cache keeps nothing that does not match its hash.

Faults are written as raw bytes on the fake upstream's socket, so framing can lie freely.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from proxy.npm import routes as npm
from proxy.pypi import routes as simple
from tests.conftest import RunningServer, StartServer
from tests.upstreams.faults import Behaviour
from tests.upstreams.npm_registry import CORGI, NpmRegistry, serve_registry
from tests.upstreams.pypi_index import JSON_TYPE, PypiIndex, serve_index

# What the upstream would have sent for a request: (body, content type).
Good = Callable[[web.Request], tuple[bytes, str]]

WHEEL = "tinydep-1.0.0-py3-none-any.whl"
PAGE = "/simple/tinydep/"
PACKAGE = "pkg-plain"
TARBALL = "/pkg-plain/-/pkg-plain-1.0.0.tgz"
# Small bound for the "oversized" metadata fault (the real bound is hundreds of megabytes).
SMALL_LIMIT = 64 * 1024

FAULTS = [
    "hang",
    "reset mid-body",
    "truncated body (larger Content-Length)",
    "short Content-Length",
    "oversized body",
    "no length, trailing junk",
    "invalid gzip",
    "truncated gzip",
    "invalid JSON",
    "status 503",
    "gzip-encoded wrong bytes",
    "gzip-encoded right bytes",
]


def raw_answer(head: bytes, body: bytes, *, abort: bool = False) -> Behaviour:
    async def answer(request: web.Request) -> web.StreamResponse:
        transport = request.transport
        assert transport is not None
        transport.write(head + body)
        if abort:
            transport.abort()
        else:
            transport.close()
        # Never sent: the connection is gone.
        return web.Response()

    return answer


def head(content_type: str, length: int | None, *extra: str) -> bytes:
    lines = ["HTTP/1.1 200 OK", f"Content-Type: {content_type}", "Connection: close", *extra]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def fault(name: str, good: Good, hang: Behaviour) -> Behaviour:
    """The behaviour replacing the upstream's answer for one fault."""

    async def answer(request: web.Request) -> web.StreamResponse:
        body, ctype = good(request)
        n = len(body)
        if name == "hang":
            return await hang(request)
        if name == "reset mid-body":
            return await raw_answer(head(ctype, n), body[: n // 2], abort=True)(request)
        if name == "truncated body (larger Content-Length)":
            return await raw_answer(head(ctype, n + 1000), body)(request)
        if name == "short Content-Length":
            return await raw_answer(head(ctype, n - 7), body)(request)
        if name == "oversized body":
            # Trailing whitespace: still a valid document, only too large.
            junk = b" " * (SMALL_LIMIT + 4096)
            return await raw_answer(head(ctype, n + len(junk)), body + junk)(request)
        if name == "no length, trailing junk":
            return await raw_answer(head(ctype, None), body + b"junk")(request)
        if name == "invalid gzip":
            bad = b"\x1f\x8b\x08\x00" + os.urandom(64)
            return await raw_answer(head(ctype, len(bad), "Content-Encoding: gzip"), bad)(request)
        if name == "truncated gzip":
            packed = gzip.compress(body)[: -max(20, n // 3)]
            return await raw_answer(head(ctype, len(packed), "Content-Encoding: gzip"), packed)(
                request
            )
        if name == "invalid JSON":
            bad = b'{"name": "x", "files": [' if ctype != "text/html" else b"<html><a href="
            return await raw_answer(head("application/json", len(bad)), bad)(request)
        if name == "status 503":
            return web.json_response({"error": "down"}, status=503)
        if name.startswith("gzip-encoded"):
            # Compressed although pkgate asked for identity (artifacts) or allowed gzip (metadata).
            content = body if name.endswith("right bytes") else body[:-1] + bytes([body[-1] ^ 1])
            packed = gzip.compress(content)
            gz = "Content-Encoding: gzip"
            return await raw_answer(head(ctype, len(packed), gz), packed)(request)
        raise AssertionError(name)

    return answer


@dataclass
class World:
    pkgate: RunningServer
    index: PypiIndex
    registry: NpmRegistry
    secret: str
    http: aiohttp.ClientSession

    async def get(self, path: str, **headers: str) -> tuple[int, dict[str, str], bytes | None]:
        """GET through pkgate; the body is None when the answer was cut short."""
        async with self.http.get(
            self.pkgate.url.with_path(path, encoded=True),
            headers={"Authorization": f"Bearer {self.secret}", **headers},
        ) as resp:
            try:
                body: bytes | None = await resp.read()
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
                body = None
            if body is not None and resp.content_length not in (None, len(body)):
                body = None
            if body is not None and resp.headers.get("Content-Encoding") == "gzip":
                # What a client decoding the answer (and then checking its hash) ends up with.
                try:
                    body = gzip.decompress(body)
                except (OSError, EOFError, zlib.error):
                    body = None
            return resp.status, dict(resp.headers), body


@pytest.fixture
async def world(start_server: StartServer, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[World]:
    monkeypatch.setattr(simple, "MAX_PAGE_BYTES", SMALL_LIMIT)
    monkeypatch.setattr(npm, "MAX_PACKUMENT_BYTES", SMALL_LIMIT)
    async with serve_index() as index, serve_registry() as registry:
        pkgate = await start_server(
            pypi_upstream=str(index.index_url),
            pypi_files_upstream=(str(index.files_url) + "/",),
            npm_upstream=f"{registry.url}/",
            upstream_timeout=0.5,
            # Every metadata request revalidates, so a warm entry meets the fault at once.
            metadata_ttl=0,
            registry_rate_per_token=0,
            registry_rate_per_ip=0,
        )
        secret = await pkgate.token()
        # No pooling: a fault's closed connection must not be reused by the next request.
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True),
            auto_decompress=False,
            headers={"Accept-Encoding": "gzip, deflate"},  # as npm and pip (not zstd, as bun)
        ) as http:
            yield World(pkgate, index, registry, secret, http)


def assert_clean_error(status: int, headers: dict[str, str], body: bytes | None) -> None:
    assert status in (502, 504), (status, body)
    assert headers["Content-Type"].startswith("application/json")
    assert body is not None
    assert set(json.loads(body)) == {"error"}


def artifact_files(world: World) -> list[Path]:
    root = world.pkgate.settings.artifact_dir
    return [p for p in root.rglob("*") if p.is_file() and not p.name.endswith(".part")]


# --- metadata ----------------------------------------------------------------------------------


def page_good(index: PypiIndex) -> Good:
    def good(request: web.Request) -> tuple[bytes, str]:
        accept = request.headers.get("Accept", "")
        if index.page_format == "json" or (
            index.page_format == "negotiate" and JSON_TYPE in accept
        ):
            return json.dumps(index.project_json("tinydep")).encode(), JSON_TYPE
        return index.project_html("tinydep").encode(), "text/html"

    return good


def packument_good(registry: NpmRegistry) -> Good:
    def good(request: web.Request) -> tuple[bytes, str]:
        abbreviated = CORGI in request.headers.get("Accept", "")
        body = json.dumps(registry.packument(PACKAGE, abbreviated)).encode()
        return body, CORGI if abbreviated else "application/json"

    return good


def install_metadata_fault(world: World, target: str, name: str, page_format: str) -> str:
    """Switch the fault on; returns the pkgate path that meets it."""
    if target == "page":
        world.index.page_format = page_format
        hang = world.index.hang
        world.index.overrides[("index", PAGE)] = fault(name, page_good(world.index), hang)
        return "/pypi" + PAGE
    behaviour = fault(name, packument_good(world.registry), world.registry.hang)
    world.registry.overrides["/" + PACKAGE] = behaviour
    return "/npm/" + PACKAGE


def clear_faults(world: World) -> None:
    world.index.overrides.clear()
    world.registry.overrides.clear()


METADATA = [("page", "json"), ("page", "html"), ("packument", "json")]


@pytest.mark.parametrize("name", FAULTS)
@pytest.mark.parametrize(("target", "page_format"), METADATA)
async def test_faults__cold_metadata_gives_a_clean_error_or_the_right_document(
    world: World, target: str, page_format: str, name: str
) -> None:
    path = install_metadata_fault(world, target, name, page_format)
    status, headers, body = await world.get(path)
    clear_faults(world)
    good_status, _, good_body = await world.get(path)
    assert good_status == 200
    if name in ("oversized body", "hang", "reset mid-body", "invalid gzip", "status 503"):
        assert status != 200, name
    if status == 200:
        # A fault the document survives whole (e.g. HTML missing its closing tag) is fine.
        assert body == good_body, name
    else:
        assert_clean_error(status, headers, body)


@pytest.mark.parametrize("name", FAULTS)
@pytest.mark.parametrize(("target", "page_format"), METADATA)
async def test_faults__warm_metadata_serves_the_stale_copy(
    world: World, target: str, page_format: str, name: str
) -> None:
    world.index.page_format = page_format
    path = "/pypi" + PAGE if target == "page" else "/npm/" + PACKAGE
    status, headers, warm = await world.get(path)
    assert status == 200
    assert headers["X-Cache"] == "MISS"
    install_metadata_fault(world, target, name, page_format)
    status, headers, body = await world.get(path)
    assert status == 200, (name, body)
    assert body == warm
    # Only a fault the document survives whole may be taken as a fresh copy.
    assert headers["X-Cache"] in ("STALE", "REVALIDATED", "MISS"), headers
    if name in ("hang", "reset mid-body", "invalid gzip", "invalid JSON", "status 503"):
        assert headers["X-Cache"] == "STALE"


# --- artifacts ----------------------------------------------------------------------------------


def wheel_bytes(world: World) -> bytes:
    return world.index.find(WHEEL).dist.data


def tarball_bytes(world: World) -> bytes:
    return world.registry.package(PACKAGE, "1.0.0").tarball


def install_artifact_fault(world: World, target: str, name: str) -> tuple[str, bytes, str]:
    """Switch the fault on; (pkgate path, published bytes, hash algorithm)."""
    if target == "file":
        data = wheel_bytes(world)
        path = world.index.file_path(world.index.find(WHEEL))
        good: Good = lambda _request: (data, "application/octet-stream")  # noqa: E731
        world.index.overrides[("index", path)] = fault(name, good, world.index.hang)
        return "/pypi/files/0" + path, data, "sha256"
    data = tarball_bytes(world)
    good = lambda _request: (data, "application/octet-stream")  # noqa: E731
    world.registry.overrides[TARBALL] = fault(name, good, world.registry.hang)
    return "/npm" + TARBALL, data, "sha512"


async def warm_metadata(world: World, target: str) -> None:
    path = "/pypi" + PAGE if target == "file" else "/npm/" + PACKAGE
    status, _, _ = await world.get(path)
    assert status == 200


@pytest.mark.parametrize("name", [f for f in FAULTS if f != "invalid JSON"])
@pytest.mark.parametrize("warm", [False, True], ids=["cold-metadata", "warm-metadata"])
@pytest.mark.parametrize("target", ["file", "tarball"])
async def test_faults__artifact_never_complete_with_wrong_bytes(
    world: World, target: str, warm: bool, name: str
) -> None:
    if warm:
        await warm_metadata(world, target)
    path, data, algorithm = install_artifact_fault(world, target, name)
    for _ in range(2):  # the second attempt meets the same fault, not a remembered result
        status, headers, body = await world.get(path)
        if status == 200:
            assert body is None or body == data, (name, len(body))
        else:
            assert_clean_error(status, headers, body)
    for stored in artifact_files(world):
        assert (
            hashlib.new(algorithm, stored.read_bytes()).digest()
            == hashlib.new(algorithm, data).digest()
        )
    clear_faults(world)
    status, headers, body = await world.get(path)
    assert status == 200
    assert body == data
    assert headers["X-Cache"] == "MISS"
    assert len(artifact_files(world)) == 1
