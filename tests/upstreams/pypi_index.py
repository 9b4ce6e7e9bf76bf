"""A fake upstream Python simple index for tests and benchmarks, and builders for what it serves.

``build_wheel`` makes a real wheel (module, ``METADATA``, ``WHEEL``, ``RECORD`` with hashes) and
``build_sdist`` a real ``.tar.gz`` sdist with ``PKG-INFO``.  ``PypiIndex`` serves them on real
loopback servers the way the public index does: project pages in PEP 503 HTML and PEP 691 JSON
(negotiated on ``Accept``, gzip-encoded when asked for, with an ETag and Last-Modified and 304
answers to conditional requests), files with exact lengths and byte ranges,
PEP 658 ``.metadata`` files.  Files live on the index's own origin (relative links), on a second
"files" origin (absolute links, as on the public index) or on a "foreign" origin pkgate is not
configured for.  Every request is recorded, and any carrying client credentials is refused and
noted as a violation.  Failure modes (hang, status, broken body) can be switched on per path.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import html
import io
import json
import random
import re
import tarfile
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from yarl import URL

from tests.conftest import serve_app
from tests.upstreams.faults import Behaviour, Faults

JSON_TYPE = "application/vnd.pypi.simple.v1+json"
HTML_TYPE = "application/vnd.pypi.simple.v1+html"
FORBIDDEN_HEADERS = ("authorization", "cookie", "proxy-authorization")
UPLOAD_TIME = "2024-01-02T03:04:05.000000Z"
PAGE_LAST_MODIFIED = "Tue, 02 Jan 2024 03:04:05 GMT"


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _dist_name(name: str) -> str:
    # Wheel and sdist filenames use the normalised name with underscores.
    return normalize(name).replace("-", "_")


@dataclass(frozen=True)
class Dist:
    """One distribution file: its name on the index, its bytes and its core metadata."""

    project: str
    version: str
    filename: str
    data: bytes
    metadata: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def metadata_sha256(self) -> str:
        return hashlib.sha256(self.metadata).hexdigest()

    @property
    def is_wheel(self) -> bool:
        return self.filename.endswith(".whl")


def core_metadata(
    name: str,
    version: str,
    *,
    requires: Sequence[str] = (),
    requires_python: str | None = None,
) -> bytes:
    """A METADATA / PKG-INFO document."""
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines.append(f"Summary: test project {name}")
    if requires_python:
        lines.append(f"Requires-Python: {requires_python}")
    lines.extend(f"Requires-Dist: {r}" for r in requires)
    return ("\n".join(lines) + "\n\n").encode()


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def _zip_write(zf: zipfile.ZipFile, path: str, data: bytes) -> None:
    # A fixed timestamp makes the wheel reproducible.
    info = zipfile.ZipInfo(path, date_time=(2024, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    zf.writestr(info, data)


def build_wheel(
    name: str,
    version: str,
    *,
    requires: Sequence[str] = (),
    requires_python: str | None = None,
    payload_size: int = 0,
) -> Dist:
    """A real pure-Python wheel; ``payload_size`` adds that many incompressible bytes."""
    dist = _dist_name(name)
    metadata = core_metadata(name, version, requires=requires, requires_python=requires_python)
    info_dir = f"{dist}-{version}.dist-info"
    files: dict[str, bytes] = {
        f"{dist}/__init__.py": f"VERSION = {version!r}\n".encode(),
        f"{info_dir}/METADATA": metadata,
        f"{info_dir}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: pkgate-tests\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n"
        ),
    }
    if payload_size:
        files[f"{dist}/payload.bin"] = random.Random(f"{name}=={version}").randbytes(payload_size)
    record = "".join(f"{p},{_record_hash(d)},{len(d)}\n" for p, d in files.items())
    record += f"{info_dir}/RECORD,,\n"
    files[f"{info_dir}/RECORD"] = record.encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path, data in files.items():
            _zip_write(zf, path, data)
    return Dist(name, version, f"{dist}-{version}-py3-none-any.whl", buf.getvalue(), metadata)


def build_sdist(
    name: str,
    version: str,
    *,
    requires: Sequence[str] = (),
    requires_python: str | None = None,
) -> Dist:
    """A real sdist (``.tar.gz`` with ``PKG-INFO``, ``pyproject.toml`` and the module)."""
    dist = _dist_name(name)
    metadata = core_metadata(name, version, requires=requires, requires_python=requires_python)
    root = f"{dist}-{version}"
    deps = ", ".join(json.dumps(r) for r in requires)
    pyproject = (
        f'[project]\nname = "{name}"\nversion = "{version}"\ndependencies = [{deps}]\n'
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
    )
    files = {
        f"{root}/PKG-INFO": metadata,
        f"{root}/pyproject.toml": pyproject.encode(),
        f"{root}/{dist}/__init__.py": f"VERSION = {version!r}\n".encode(),
    }
    buf = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return Dist(name, version, f"{root}.tar.gz", buf.getvalue(), metadata)


@dataclass
class Published:
    """A file on the index and how the index advertises it."""

    dist: Dist
    host: str = "index"  # "index" (relative link), "files" (second origin) or "foreign"
    requires_python: str | None = None
    yanked: str | None = None  # None: not yanked; "": yanked without a reason
    with_metadata: bool = True
    hashed: bool = True  # False: the page links the file without any hash
    upload_time: str | None = UPLOAD_TIME  # PEP 700 ``upload-time``; None: not advertised


def standard_projects() -> list[Published]:
    """What the client tests install.

    ``tinydep`` lives on the index's own origin; ``Demo.App`` (normalised ``demo-app``) depends on
    it and lives on the files origin: 2.0.0 is yanked, 3.0.0 needs Python 4, 0.9.0 is on an
    origin pkgate does not know.  Installing ``demo-app`` must therefore give 1.0.0 + tinydep.
    """
    return [
        Published(build_wheel("tinydep", "1.0.0")),
        Published(build_sdist("tinydep", "1.0.0"), with_metadata=False),
        Published(build_wheel("Demo.App", "0.9.0", requires=["tinydep>=1"]), host="foreign"),
        Published(build_wheel("Demo.App", "1.0.0", requires=["tinydep>=1"]), host="files"),
        Published(
            build_sdist("Demo.App", "1.0.0", requires=["tinydep>=1"]),
            host="files",
            with_metadata=False,
        ),
        Published(
            build_wheel("Demo.App", "2.0.0", requires=["tinydep>=1"]),
            host="files",
            yanked="broken build",
        ),
        Published(
            build_wheel("Demo.App", "3.0.0", requires=["tinydep>=1"], requires_python=">=4"),
            host="files",
            requires_python=">=4",
        ),
    ]


@dataclass
class Recorded:
    """One request one of the fake servers received."""

    server: str  # "index", "files" or "foreign"
    method: str
    path: str  # raw, still percent-encoded, with query
    headers: dict[str, str]


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """(start, end inclusive) of a single ``bytes=`` range, or None if unsatisfiable."""
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        return None
    first, sep, last = spec.strip().partition("-")
    if not sep:
        return None
    if not first:
        if not last.isdigit() or int(last) == 0:
            return None
        return max(0, size - int(last)), size - 1
    if not first.isdigit() or int(first) >= size:
        return None
    end = int(last) if last.isdigit() else size - 1
    return int(first), min(end, size - 1)


def serve_bytes(request: web.Request, data: bytes, content_type: str) -> web.Response:
    """Bytes with exact length and single-range support (200, 206 or 416)."""
    headers = {"Content-Type": content_type, "Accept-Ranges": "bytes", "ETag": '"fixed"'}
    header = request.headers.get("Range")
    if header is None:
        return web.Response(body=data, headers=headers)
    span = _parse_range(header, len(data))
    if span is None:
        headers["Content-Range"] = f"bytes */{len(data)}"
        return web.Response(status=416, headers=headers)
    start, end = span
    headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
    return web.Response(status=206, body=data[start : end + 1], headers=headers)


@dataclass
class PypiIndex(Faults):
    """A fake simple index on three origins; ``await start()`` serves them."""

    published: list[Published] = field(default_factory=standard_projects)
    # "negotiate": JSON when the client lists it, else HTML; "html" or "json": always that.
    page_format: str = "negotiate"
    gzip_pages: bool = True
    # Pages carry ETag/Last-Modified and answer matching conditional requests with 304.
    page_validators: bool = True
    requests: list[Recorded] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    # (server, raw path without query) -> behaviour replacing the normal answer
    overrides: dict[tuple[str, str], Behaviour] = field(default_factory=dict)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    urls: dict[str, URL] = field(default_factory=dict)
    _runners: list[web.AppRunner] = field(default_factory=list)

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        for server in ("index", "files", "foreign"):
            runner, url = await serve_app(self.app(server))
            self._runners.append(runner)
            self.urls[server] = url

    async def close(self) -> None:
        self.release.set()
        for runner in self._runners:
            await runner.cleanup()

    @property
    def index_url(self) -> URL:
        """The simple index URL pkgate is configured with (ends in ``/simple/``)."""
        return self.urls["index"] / "simple" / ""

    @property
    def files_url(self) -> URL:
        return self.urls["files"]

    def app(self, server: str) -> web.Application:
        app = web.Application(middlewares=[self._recorder(server)])

        async def dispatch(request: web.Request) -> web.StreamResponse:
            return await self._dispatch(server, request)

        app.router.add_route("*", "/{path:.*}", dispatch)
        return app

    # -- queries for tests ------------------------------------------------------------------------

    def project(self, name: str) -> list[Published]:
        return [p for p in self.published if normalize(p.dist.project) == normalize(name)]

    def find(self, filename: str) -> Published:
        return next(p for p in self.published if p.dist.filename == filename)

    def file_path(self, pub: Published) -> str:
        """Where a file lives on its server."""
        if pub.host == "index":
            return f"/packages/{normalize(pub.dist.project)}/{pub.dist.filename}"
        digest = pub.dist.sha256
        return f"/packages/{digest[:2]}/{digest[2:4]}/{digest[4:12]}/{pub.dist.filename}"

    def file_url(self, pub: Published) -> URL:
        return URL(str(self.urls[pub.host]) + self.file_path(pub))

    def file_requests(self) -> list[Recorded]:
        return [r for r in self.requests if "/packages/" in r.path]

    def clear(self) -> None:
        self.requests.clear()

    # -- pages ------------------------------------------------------------------------------------

    def _href(self, pub: Published) -> str:
        if pub.host == "index":
            # Relative to /simple/<name>/, as simple servers write them.
            return "../.." + self.file_path(pub)
        return str(self.file_url(pub))

    def project_json(self, name: str) -> dict[str, Any]:
        """The PEP 691 (api 1.1) document for ``name``."""
        files = []
        for pub in self.project(name):
            entry: dict[str, Any] = {
                "filename": pub.dist.filename,
                "url": self._href(pub),
                "hashes": {"sha256": pub.dist.sha256} if pub.hashed else {},
                "requires-python": pub.requires_python,
                "yanked": pub.yanked if pub.yanked else pub.yanked is not None,
                "size": len(pub.dist.data),
                # PEP 740 key with a URL on another origin: pkgate must not pass it on.
                "provenance": str(self.urls["foreign"]) + "/provenance/" + pub.dist.filename,
            }
            if pub.upload_time is not None:
                entry["upload-time"] = pub.upload_time
            if pub.with_metadata:
                entry["core-metadata"] = {"sha256": pub.dist.metadata_sha256}
                entry["data-dist-info-metadata"] = {"sha256": pub.dist.metadata_sha256}
            files.append(entry)
        versions = sorted({p.dist.version for p in self.project(name)})
        return {
            "meta": {"api-version": "1.1", "_last-serial": 7},
            "name": normalize(name),
            "files": files,
            "versions": versions,
        }

    def project_html(self, name: str) -> str:
        """The PEP 503 page for ``name``."""
        lines = [
            "<!DOCTYPE html><html><head>",
            '<meta name="pypi:repository-version" content="1.1">',
            f"<title>Links for {normalize(name)}</title></head><body>",
        ]
        for pub in self.project(name):
            fragment = f"#sha256={pub.dist.sha256}" if pub.hashed else ""
            attrs = [f'href="{html.escape(self._href(pub))}{fragment}"']
            if pub.requires_python:
                attrs.append(f'data-requires-python="{html.escape(pub.requires_python)}"')
            if pub.yanked is not None:
                attrs.append(f'data-yanked="{html.escape(pub.yanked)}"')
            if pub.with_metadata:
                value = f"sha256={pub.dist.metadata_sha256}"
                attrs.append(f'data-dist-info-metadata="{value}" data-core-metadata="{value}"')
            lines.append(f"<a {' '.join(attrs)}>{html.escape(pub.dist.filename)}</a><br/>")
        lines.append("</body></html>")
        return "\n".join(lines)

    def _names(self) -> list[str]:
        return sorted({p.dist.project for p in self.published})

    def _wants_json(self, request: web.Request) -> bool:
        if self.page_format != "negotiate":
            return self.page_format == "json"
        return JSON_TYPE in request.headers.get("Accept", "")

    def page_requests(self, path: str) -> list[Recorded]:
        """Requests the index received for one page (e.g. ``/simple/tinydep/``)."""
        return [r for r in self.requests if r.server == "index" and r.path == path]

    def _page(self, request: web.Request, body: bytes, content_type: str) -> web.Response:
        headers = {"Content-Type": content_type}
        if self.page_validators:
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            headers.update({"ETag": etag, "Last-Modified": PAGE_LAST_MODIFIED})
            if request.headers.get("If-None-Match") == etag:
                return web.Response(status=304, headers={"ETag": etag})
        if self.gzip_pages and "gzip" in request.headers.get("Accept-Encoding", ""):
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, headers=headers)

    # -- serving ----------------------------------------------------------------------------------

    def _recorder(self, server: str) -> Any:
        @web.middleware
        async def record(
            request: web.Request,
            handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
        ) -> web.StreamResponse:
            self.requests.append(
                Recorded(server, request.method, request.raw_path, dict(request.headers))
            )
            for name in FORBIDDEN_HEADERS:
                if name in request.headers:
                    self.violations.append(f"{server} {request.raw_path} carried {name}")
                    return web.json_response({"error": f"{name} must not reach me"}, status=400)
            return await handler(request)

        return record

    async def _dispatch(self, server: str, request: web.Request) -> web.StreamResponse:
        raw = request.raw_path.split("?", 1)[0]
        override = self.overrides.get((server, raw))
        if override is not None:
            return await override(request)
        if request.method not in {"GET", "HEAD"}:
            return web.json_response({"error": "method not allowed"}, status=405)
        for pub in self.published:
            if pub.host != server:
                continue
            path = self.file_path(pub)
            if raw == path:
                return serve_bytes(request, pub.dist.data, "application/octet-stream")
            if raw == path + ".metadata" and pub.with_metadata:
                return serve_bytes(request, pub.dist.metadata, "application/octet-stream")
        if server != "index":
            return web.json_response({"error": "Not found"}, status=404)
        if raw == "/simple/":
            names = self._names()
            if self._wants_json(request):
                doc = {"meta": {"api-version": "1.1"}, "projects": [{"name": n} for n in names]}
                return self._page(request, json.dumps(doc).encode(), JSON_TYPE)
            links = "".join(f'<a href="/simple/{normalize(n)}/">{n}</a>\n' for n in names)
            page = f"<!DOCTYPE html><html><body>{links}</body></html>"
            return self._page(request, page.encode(), "text/html; charset=utf-8")
        match = re.fullmatch(r"/simple/([a-z0-9-]+)/", raw)
        if match is None or not self.project(match.group(1)):
            return web.json_response({"error": "Not found"}, status=404)
        name = match.group(1)
        if self._wants_json(request):
            return self._page(request, json.dumps(self.project_json(name)).encode(), JSON_TYPE)
        return self._page(request, self.project_html(name).encode(), "text/html; charset=utf-8")


@asynccontextmanager
async def serve_index(**options: Any) -> AsyncIterator[PypiIndex]:
    """A started PypiIndex (``options`` are its fields), closed on exit."""
    index = PypiIndex(**options)
    await index.start()
    try:
        yield index
    finally:
        await index.close()
