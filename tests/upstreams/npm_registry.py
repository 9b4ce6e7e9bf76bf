"""A fake upstream npm registry for tests and benchmarks, and builders for the packages it serves.

``build_package`` makes a real npm tarball (``package/package.json`` inside a gzipped tar) with
its integrity fields.  ``NpmRegistry`` serves packages in the npmjs layout on a real loopback
server: full and abbreviated packuments (gzip-encoded when asked for), ETags with 304s, tarballs
with exact lengths, the audit and keys endpoints.  It records every request and refuses any that
carries client credentials, so tests can assert nothing of the client's ever reached it.  Failure
modes (hang, 500, reset, broken body) can be switched on per path.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import gzip
import hashlib
import io
import json
import random
import tarfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from yarl import URL

from tests.conftest import serve_app
from tests.upstreams.faults import Behaviour, Faults

CORGI = "application/vnd.npm.install-v1+json"
FORBIDDEN_HEADERS = ("authorization", "cookie", "npm-otp", "proxy-authorization")


@dataclass
class NpmPackage:
    """One published version: its manifest and tarball bytes."""

    name: str
    version: str
    manifest: dict[str, Any]
    tarball: bytes
    published: str = "2024-01-02T00:00:00.000Z"  # its entry in the packument's ``time``

    @property
    def unscoped(self) -> str:
        return self.name.rpartition("/")[2]

    @property
    def file(self) -> str:
        return f"{self.unscoped}-{self.version}.tgz"

    @property
    def integrity(self) -> str:
        return "sha512-" + base64.b64encode(hashlib.sha512(self.tarball).digest()).decode()

    @property
    def shasum(self) -> str:
        return hashlib.sha1(self.tarball).hexdigest()


def build_package(
    name: str,
    version: str,
    *,
    dependencies: Mapping[str, str] | None = None,
    payload_size: int = 0,
) -> NpmPackage:
    """A real npm package tarball; ``payload_size`` adds that many incompressible bytes."""
    manifest: dict[str, Any] = {
        "name": name,
        "version": version,
        "description": f"test package {name}",
        "main": "index.js",
        "license": "MIT",
        "dependencies": dict(dependencies or {}),
    }
    files = {
        "package/package.json": json.dumps(manifest, indent=2).encode(),
        "package/index.js": f"module.exports = {json.dumps(name + '@' + version)};\n".encode(),
    }
    if payload_size:
        # Seeded random bytes: incompressible, yet the same on every run.
        files["package/payload.bin"] = random.Random(f"{name}@{version}").randbytes(payload_size)
    buf = io.BytesIO()
    # mtime=0 and a fixed order make the tarball reproducible.
    with (
        gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar,
    ):
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return NpmPackage(name, version, manifest, buf.getvalue())


def standard_packages(big_size: int = 3 * 1024 * 1024) -> list[NpmPackage]:
    """The set the npm tests install: plain, scoped, with dependencies, and one big tarball."""
    return list(_standard_packages(big_size))


@functools.cache
def _standard_packages(big_size: int) -> tuple[NpmPackage, ...]:
    # Built once per process: tests must treat the packages as read-only.
    return (
        build_package("pkg-plain", "1.0.0"),
        build_package("pkg-plain", "1.1.0"),
        build_package("@acme/scoped", "2.0.0"),
        build_package(
            "pkg-deps", "1.0.0", dependencies={"pkg-plain": "^1.0.0", "@acme/scoped": "^2.0.0"}
        ),
        build_package("pkg-big", "1.0.0", payload_size=big_size),
    )


@dataclass
class Recorded:
    """One request the registry received."""

    method: str
    path: str  # raw, still percent-encoded, with query
    headers: dict[str, str]


@dataclass
class NpmRegistry(Faults):
    """A fake npm registry; ``await start()`` serves it and sets ``url``."""

    packages: list[NpmPackage] = field(default_factory=standard_packages)
    # "gzip": Content-Encoding gzip when accepted; "identity"; "unlabelled": gzip bytes, no header.
    metadata_encoding: str = "gzip"
    advisories: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    audit_payloads: list[Any] = field(default_factory=list)
    # raw path (without query) -> behaviour replacing the normal answer
    overrides: dict[str, Behaviour] = field(default_factory=dict)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    url: URL | None = None
    _runner: web.AppRunner | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> URL:
        self._runner, self.url = await serve_app(self.app())
        return self.url

    async def close(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._record])
        app.router.add_route("*", "/{path:.*}", self._dispatch)
        return app

    # -- queries for tests ------------------------------------------------------------------------

    def by_name(self, name: str) -> list[NpmPackage]:
        return [p for p in self.packages if p.name == name]

    def package(self, name: str, version: str) -> NpmPackage:
        return next(p for p in self.by_name(name) if p.version == version)

    def tarball_path(self, package: NpmPackage) -> str:
        return f"/{package.name}/-/{package.file}"

    def tarball_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.endswith(".tgz")]

    def clear(self) -> None:
        self.requests.clear()
        self.audit_payloads.clear()

    # -- serving ----------------------------------------------------------------------------------

    @web.middleware
    async def _record(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.requests.append(Recorded(request.method, request.raw_path, dict(request.headers)))
        for name in FORBIDDEN_HEADERS:
            if name in request.headers:
                self.violations.append(f"{request.method} {request.raw_path} carried {name}")
                return web.json_response({"error": f"{name} must not reach me"}, status=400)
        return await handler(request)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        raw = request.raw_path.split("?", 1)[0]
        override = self.overrides.get(raw)
        if override is not None:
            return await override(request)
        if raw == "/-/v1/search":
            text = request.query.get("text", "")
            names = sorted({p.name for p in self.packages if text in p.name})
            objects = [{"package": {"name": n}} for n in names]
            return web.json_response({"objects": objects, "total": len(objects)})
        if raw == "/-/npm/v1/keys":
            return web.json_response({"keys": [{"keyid": "SHA256:test", "key": "test"}]})
        if raw in ("/-/npm/v1/security/advisories/bulk", "/-/npm/v1/security/audits/quick"):
            return await self._audit(request)
        if request.method not in ("GET", "HEAD"):
            return web.json_response({"error": "method not allowed"}, status=405)
        path = raw.lstrip("/").replace("%2f", "/").replace("%2F", "/")
        name, sep, file = path.partition("/-/")
        if sep:
            for package in self.by_name(name):
                if package.file == file:
                    return web.Response(
                        body=package.tarball, content_type="application/octet-stream"
                    )
            return web.json_response({"error": "Not found"}, status=404)
        if not self.by_name(name):
            return web.json_response({"error": "Not found"}, status=404)
        return self._packument(request, name)

    def packument(self, name: str, abbreviated: bool) -> dict[str, Any]:
        """The document this registry serves for ``name``."""
        assert self.url is not None
        versions: dict[str, Any] = {}
        times: dict[str, str] = {"created": "2024-01-01T00:00:00.000Z"}
        for package in self.by_name(name):
            manifest = dict(package.manifest)
            if not abbreviated:
                manifest["_id"] = f"{name}@{package.version}"
            manifest["dist"] = {
                "tarball": str(self.url) + self.tarball_path(package),
                "integrity": package.integrity,
                "shasum": package.shasum,
                "signatures": [{"keyid": "SHA256:test", "sig": "c2lnbmF0dXJl"}],
            }
            versions[package.version] = manifest
            times[package.version] = package.published
        times["modified"] = max(times.values())
        releases = [v for v in versions if "-" not in v] or list(versions)
        latest = max(releases, key=lambda v: tuple(int(x) for x in v.split(".")))
        doc: dict[str, Any] = {"name": name, "dist-tags": {"latest": latest}, "versions": versions}
        if abbreviated:
            doc["modified"] = times["modified"]
        else:
            doc.update({"_id": name, "time": times, "readme": f"# {name}\n"})
        return doc

    def _packument(self, request: web.Request, name: str) -> web.Response:
        abbreviated = CORGI in request.headers.get("Accept", "")
        body = json.dumps(self.packument(name, abbreviated)).encode()
        content_type = CORGI if abbreviated else "application/json"
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        headers = {"ETag": etag, "Content-Type": content_type}
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers=headers)
        if self.metadata_encoding == "unlabelled":
            body = gzip.compress(body)
        elif self.metadata_encoding == "gzip" and "gzip" in request.headers.get(
            "Accept-Encoding", ""
        ):
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, headers=headers)

    async def _audit(self, request: web.Request) -> web.Response:
        if request.method != "POST":
            return web.json_response({"error": "method not allowed"}, status=405)
        # aiohttp's server decodes a gzip request body itself.
        payload = json.loads(await request.read())
        self.audit_payloads.append(payload)
        if request.raw_path.startswith("/-/npm/v1/security/audits/quick"):
            return web.json_response({"actions": [], "advisories": {}, "metadata": {}})
        found = {name: advs for name, advs in self.advisories.items() if name in payload}
        # gzip with a label, like the real bulk endpoint answers compressing clients.
        return web.Response(
            body=gzip.compress(json.dumps(found).encode()),
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )


@asynccontextmanager
async def serve_registry(**options: Any) -> AsyncIterator[NpmRegistry]:
    """A started NpmRegistry (``options`` are its fields), closed on exit."""
    registry = NpmRegistry(**options)
    await registry.start()
    try:
        yield registry
    finally:
        await registry.close()
