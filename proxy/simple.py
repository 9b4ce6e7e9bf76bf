"""The Python simple index endpoint under ``<public_url>/pypi/``.

``/pypi/simple/`` and ``/pypi/simple/<name>/`` serve the upstream index's pages rewritten so every
file link points at ``/pypi/files/<n>/<path>`` (``n`` numbers the configured origins, see
``simplerewrite.FileLinks``); those files (and their PEP 658 ``.metadata``) are streamed from the
upstream byte for byte.  Each handler reads top to bottom: (authenticated by the sub-app's
middleware) -> route -> fetch -> rewrite -> respond.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import zlib
from dataclasses import dataclass

from aiohttp import StreamReader, hdrs, web
from yarl import URL

from .errors import json_error
from .keys import registry_base_key, upstream_key
from .negotiate import choose
from .settings import Settings
from .simplerewrite import (
    HTML_TYPE,
    JSON_TYPE,
    TEXT_HTML,
    FileLinks,
    IndexPage,
    PageError,
    ProjectPage,
    is_valid_name,
    normalize_name,
    parse_index_page,
    parse_project_page,
    render_index,
    render_project,
)
from .upstream import Upstream, UpstreamError, raise_for_upstream_status, response_headers

log = logging.getLogger(__name__)

# text/html first: like the reference index, a client that accepts anything gets HTML.
PAGE_OFFERS = (TEXT_HTML, HTML_TYPE, JSON_TYPE)
UPSTREAM_PAGE_ACCEPT = f"{JSON_TYPE}, {HTML_TYPE};q=0.2, {TEXT_HTML};q=0.01"
PAGE_CACHE_CONTROL = "max-age=600"
FILE_CACHE_CONTROL = "max-age=365000000, immutable"
MAX_PAGE_BYTES = 256 * 1024 * 1024
# Parsing a page this large would stall every other request; do it on a worker thread.
OFF_LOOP_BYTES = 256 * 1024
FILE_CHUNK = 64 * 1024
FILE_REQUEST_HEADERS = (hdrs.RANGE, hdrs.IF_RANGE, hdrs.IF_NONE_MATCH, hdrs.IF_MODIFIED_SINCE)
FILE_RESPONSE_HEADERS = (
    hdrs.CONTENT_TYPE,
    hdrs.CONTENT_RANGE,
    hdrs.ACCEPT_RANGES,
    hdrs.CONTENT_ENCODING,
    hdrs.ETAG,
    hdrs.LAST_MODIFIED,
)
PASSED_FILE_STATUSES = frozenset({200, 206, 304, 416})


@dataclass(frozen=True, slots=True)
class FetchedPage:
    """An upstream page body, already decompressed."""

    url: URL
    content_type: str | None
    body: bytes


async def _read_limited(content: StreamReader, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in content.iter_chunked(FILE_CHUNK):
        size += len(chunk)
        if size > limit:
            raise UpstreamError(502, "upstream index page is too large")
        chunks.append(chunk)
    return b"".join(chunks)


def _inflate(data: bytes, wbits: int, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error:
        raise UpstreamError(502, "upstream index page is not validly compressed") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise UpstreamError(502, "upstream index page is too large")
    return out


def decode_body(raw: bytes, content_encoding: str | None, limit: int = MAX_PAGE_BYTES) -> bytes:
    """Undo the upstream's Content-Encoding (gzip, deflate), bounded by ``limit`` bytes."""
    encodings = [e.strip().lower() for e in (content_encoding or "").split(",") if e.strip()]
    body = raw
    for encoding in reversed(encodings):
        if encoding in {"gzip", "x-gzip"}:
            body = _inflate(body, 16 + zlib.MAX_WBITS, limit)
        elif encoding == "deflate":
            # "deflate" means zlib-wrapped, but some servers send raw deflate.
            wbits = zlib.MAX_WBITS if body[:1] == b"\x78" else -zlib.MAX_WBITS
            body = _inflate(body, wbits, limit)
        elif encoding != "identity":
            raise UpstreamError(502, "upstream index page uses an unsupported encoding")
    if not encodings and body[:2] == b"\x1f\x8b":
        # Gzip bytes without the header that says so; seen from real registries.
        body = _inflate(body, 16 + zlib.MAX_WBITS, limit)
    return body


async def fetch_page(upstream: Upstream, url: URL) -> FetchedPage:
    """GET an upstream index page (JSON preferred) and return its decompressed body."""
    headers: dict[str, str] = {
        hdrs.ACCEPT: UPSTREAM_PAGE_ACCEPT,
        hdrs.ACCEPT_ENCODING: "gzip, deflate",
    }
    async with upstream.request("GET", url, headers=headers, what="upstream index") as resp:
        raise_for_upstream_status(resp, "upstream index")
        if resp.status != 200:
            raise UpstreamError(502, f"upstream index answered unexpected status {resp.status}")
        raw = await _read_limited(resp.content, MAX_PAGE_BYTES)
        body = decode_body(raw, resp.headers.get(hdrs.CONTENT_ENCODING))
        return FetchedPage(url, resp.headers.get(hdrs.CONTENT_TYPE), body)


async def rewrite_project(fetched: FetchedPage, name: str) -> ProjectPage:
    """Parse a fetched project page into the model the renderers write."""
    if len(fetched.body) > OFF_LOOP_BYTES:
        return await asyncio.to_thread(
            parse_project_page, fetched.body, fetched.content_type, fetched.url, name
        )
    return parse_project_page(fetched.body, fetched.content_type, fetched.url, name)


async def rewrite_index(fetched: FetchedPage) -> IndexPage:
    """Parse a fetched root page into project names."""
    if len(fetched.body) > OFF_LOOP_BYTES:
        return await asyncio.to_thread(parse_index_page, fetched.body, fetched.content_type)
    return parse_index_page(fetched.body, fetched.content_type)


def negotiate(request: web.Request) -> str | None:
    """The simple API media type to answer with, or None when the client accepts none."""
    return choose(request.headers.get(hdrs.ACCEPT), PAGE_OFFERS)


def not_acceptable() -> web.Response:
    return json_error(
        406,
        f"Not acceptable: this index serves {JSON_TYPE}, {HTML_TYPE} and {TEXT_HTML}",
        headers={hdrs.VARY: "Accept"},
    )


def page_response(request: web.Request, body: bytes, media_type: str) -> web.Response:
    """A rendered page with its exact media type, validators and caching headers."""
    etag = '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'
    headers = {
        hdrs.VARY: "Accept",
        hdrs.CACHE_CONTROL: PAGE_CACHE_CONTROL,
        hdrs.ETAG: etag,
    }
    if etag in _etags(request.headers.get(hdrs.IF_NONE_MATCH)):
        return web.Response(status=304, headers=headers)
    content_type = media_type if media_type == JSON_TYPE else f"{media_type}; charset=utf-8"
    headers[hdrs.CONTENT_TYPE] = content_type
    return web.Response(body=body, headers=headers)


def _etags(header: str | None) -> set[str]:
    if not header:
        return set()
    return {t.strip().removeprefix("W/") for t in header.split(",")}


def _redirect(location: str) -> web.HTTPMovedPermanently:
    # Relative, so the redirect can never leave pkgate's origin.
    return web.HTTPMovedPermanently(location=location)


class SimpleIndex:
    """The handlers of one PyPI sub-application, bound to its settings."""

    def __init__(self, settings: Settings, base: URL) -> None:
        """``base`` is the absolute URL this mount answers at, with a trailing slash."""
        if settings.pypi_upstream is None:
            raise ValueError("pypi_upstream is not set")
        self.index_url = URL(settings.pypi_upstream)
        index_origin = str(self.index_url.origin()) + "/"
        self.links = FileLinks(f"{base}files", [index_origin, *settings.pypi_files_upstream])
        self.files_prefix = base.raw_path + "files/"

    async def simple_no_slash(self, request: web.Request) -> web.StreamResponse:
        """``/pypi/simple`` -> ``/pypi/simple/``."""
        raise _redirect("simple/")

    async def root(self, request: web.Request) -> web.StreamResponse:
        """The root page listing every project."""
        media_type = negotiate(request)
        if media_type is None:
            return not_acceptable()
        fetched = await fetch_page(request.config_dict[upstream_key], self.index_url)
        try:
            page = await rewrite_index(fetched)
        except PageError as exc:
            raise UpstreamError(502, str(exc)) from None
        return page_response(request, render_index(page, media_type), media_type)

    async def project_no_slash(self, request: web.Request) -> web.StreamResponse:
        """``/pypi/simple/<name>`` -> ``/pypi/simple/<normalised>/``."""
        name = request.match_info["name"]
        if not is_valid_name(name):
            return json_error(404, "Not a valid project name")
        raise _redirect(f"{normalize_name(name)}/")

    async def project(self, request: web.Request) -> web.StreamResponse:
        """One project's page."""
        name = request.match_info["name"]
        if not is_valid_name(name):
            return json_error(404, "Not a valid project name")
        normalized = normalize_name(name)
        if normalized != name:
            raise _redirect(f"../{normalized}/")
        media_type = negotiate(request)
        if media_type is None:
            return not_acceptable()
        upstream_url = URL(str(self.index_url) + normalized + "/", encoded=True)
        fetched = await fetch_page(request.config_dict[upstream_key], upstream_url)
        try:
            page = await rewrite_project(fetched, normalized)
        except PageError as exc:
            raise UpstreamError(502, str(exc)) from None
        body = render_project(page, media_type, self.links)
        return page_response(request, body, media_type)

    def file_url(self, request: web.Request) -> URL | None:
        """The upstream URL a files request names (from the raw path), or None."""
        raw_path, _, raw_query = request.raw_path.partition("?")
        if not raw_path.startswith(self.files_prefix):
            return None
        number, _, tail = raw_path[len(self.files_prefix) :].partition("/")
        return self.links.to_upstream(number, tail, raw_query)

    async def file(self, request: web.Request) -> web.StreamResponse:
        """A distribution file or its ``.metadata``, streamed byte for byte (GET, HEAD, Range)."""
        url = self.file_url(request)
        if url is None:
            return json_error(404, "Not found")
        headers: dict[str, str] = {
            name: request.headers[name] for name in FILE_REQUEST_HEADERS if name in request.headers
        }
        # Files are passed through verbatim; never let the upstream compress them.
        headers[hdrs.ACCEPT_ENCODING] = "identity"
        upstream = request.config_dict[upstream_key]
        out = web.StreamResponse()
        try:
            async with upstream.request(
                request.method, url, headers=headers, what="upstream file host"
            ) as resp:
                if resp.status not in PASSED_FILE_STATUSES:
                    raise_for_upstream_status(resp, "upstream file host")
                    raise UpstreamError(
                        502, f"upstream file host answered unexpected status {resp.status}"
                    )
                out.set_status(resp.status)
                out.headers.update(response_headers(resp, FILE_RESPONSE_HEADERS))
                if resp.status in {200, 206}:
                    out.headers.setdefault(hdrs.CONTENT_TYPE, "application/octet-stream")
                    out.headers[hdrs.CACHE_CONTROL] = FILE_CACHE_CONTROL
                length = resp.headers.get(hdrs.CONTENT_LENGTH)
                if length is not None and length.isdigit() and resp.status != 304:
                    out.content_length = int(length)
                await out.prepare(request)
                if request.method != "HEAD" and resp.status != 304:
                    async for chunk in resp.content.iter_chunked(FILE_CHUNK):
                        await out.write(chunk)
        except UpstreamError as exc:
            if not out.prepared:
                raise
            # Headers are gone already: cut the connection so the client sees a short body
            # instead of a file that looks complete.
            log.warning("upstream file broke off on %s: %s", request.rel_url.path, exc.message)
            if request.transport is not None:
                request.transport.close()
            return out
        await out.write_eof()
        return out


def setup_routes(app: web.Application, settings: Settings) -> None:
    """Register the index and file routes on the PyPI sub-application."""
    # Mounted under the public URL's path and possibly on its own host: each mount writes
    # links to itself.
    base = app.get(registry_base_key)
    if base is None:
        public = settings.base_url
        base = public.with_path(public.path.rstrip("/") + "/pypi/")
    index = SimpleIndex(settings, base)
    app.router.add_get("/simple", index.simple_no_slash)
    app.router.add_get("/simple/", index.root)
    app.router.add_get("/simple/{name}", index.project_no_slash)
    app.router.add_get("/simple/{name}/", index.project)
    app.router.add_get("/files/{tail:.+}", index.file)
