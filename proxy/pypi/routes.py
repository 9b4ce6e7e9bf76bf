"""The Python simple index endpoint under ``<public_url>/pypi/``.

``/pypi/simple/`` and ``/pypi/simple/<name>/`` serve the upstream index's pages rewritten so every
file link points at ``/pypi/files/<n>/<path>`` (``n`` numbers the configured origins, see
``simplerewrite.FileLinks``); those files (and their PEP 658 ``.metadata``) are streamed from the
upstream byte for byte.  Each handler reads top to bottom: (authenticated by the sub-app's
middleware) -> route -> cache or fetch -> rewrite -> respond.

Caching (SPEC 10):
- Pages live in the ``MetadataCache`` rendered, one entry per (project, negotiated media type,
  mount), so a warm request costs a memoised Accept lookup, a dict lookup and a prepared body.
  Expired entries are revalidated upstream with the upstream's ETag/Last-Modified; a client's own
  validators are answered 304 from the entry (its ETag is that of the bytes served).
- Each page entry also carries what its files must hash to (``#sha256`` / ``hashes``), keyed as the
  files route names them.  The files route finds the project from the file name, reads the hash
  from any cached page of it (fetching the JSON page once when none is cached, e.g. in another
  worker) and hands the download to ``ArtifactCache.serve``, which keeps only verified bytes.  A
  file whose hash is unknown is relayed uncached.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import urllib.parse
import zlib
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from functools import partial
from typing import Final

import aiohttp
from aiohttp import StreamReader, hdrs, web
from yarl import URL

from ..errors import json_error
from ..keys import (
    REQUEST_CACHE,
    artifact_cache_key,
    metadata_cache_key,
    registry_base_key,
    upstream_key,
)
from ..registry.artifacts import Digest
from ..registry.metacache import (
    ENTRY_OVERHEAD,
    NOT_MODIFIED,
    CacheKey,
    Fetch,
    MetadataCache,
    MetaEntry,
    NotModified,
    Validators,
    body_etag,
    metadata_response,
)
from ..registry.upstream import Upstream, UpstreamError, raise_for_upstream_status
from ..settings import Settings
from .negotiate import choose
from .rewrite import (
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
    project_of_filename,
    published_hashes,
    render_index,
    render_project,
)

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
FILE_TYPE = "application/octet-stream"
ECOSYSTEM: Final = "pypi"
ROOT_KEY_NAME: Final = ""  # never a project name
# Every page answer carries these (cached with the entry, replayed on hits).
PAGE_HEADERS: Final[Mapping[str, str]] = {
    str(hdrs.VARY): "Accept",
    str(hdrs.CACHE_CONTROL): PAGE_CACHE_CONTROL,
}
X_CACHE: Final = "X-Cache"
# Valid names and their normal form are memoised for the warm path, in a bounded memo.
NAMES_REMEMBERED = 4096
# Memory charged per remembered file hash on top of the page body.
FILE_HASH_OVERHEAD: Final = 160


@dataclass(frozen=True, slots=True)
class FetchedPage:
    """An upstream page body, already decompressed, with the upstream's validators."""

    url: URL
    content_type: str | None
    body: bytes
    etag: str | None = None
    last_modified: str | None = None


@dataclass(slots=True)
class PageEntry(MetaEntry):
    """A rendered page and, by files-route key, the digests its files were published with."""

    files: Mapping[str, Digest] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.body) + ENTRY_OVERHEAD + FILE_HASH_OVERHEAD * len(self.files)


def page_content_type(media_type: str) -> str:
    """The exact Content-Type a page in ``media_type`` is served with."""
    return media_type if media_type == JSON_TYPE else f"{media_type}; charset=utf-8"


def page_entry(fetched: FetchedPage, body: bytes, media_type: str) -> PageEntry:
    """A cache entry for a page rendered from ``fetched``."""
    return PageEntry(
        body=body,
        content_type=page_content_type(media_type),
        etag=body_etag(body),
        validators=Validators(fetched.etag, fetched.last_modified),
        headers=PAGE_HEADERS,
    )


def file_digests(page: ProjectPage, links: FileLinks) -> dict[str, Digest]:
    """What each linked file must hash to, keyed as the files route names it."""
    out: dict[str, Digest] = {}
    for key, (algorithm, hexdigest) in published_hashes(page, links).items():
        digest = Digest.from_hex(algorithm, hexdigest)
        if digest is not None:
            out[key] = digest
    return out


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
    if not inflater.eof:
        # A cut-off stream inflates without complaint to a prefix of the page: a page with
        # files missing must never be served or cached.
        raise UpstreamError(502, "upstream index page is not validly compressed")
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


async def fetch_page(
    upstream: Upstream, url: URL, validators: Validators | None = None
) -> FetchedPage | None:
    """GET an upstream index page (JSON preferred) and return its decompressed body.

    With ``validators`` the request is conditional; None means the upstream answered 304.
    """
    headers: dict[str, str] = {
        hdrs.ACCEPT: UPSTREAM_PAGE_ACCEPT,
        hdrs.ACCEPT_ENCODING: "gzip, deflate",
    }
    if validators is not None:
        headers.update(validators.headers())
    async with upstream.request("GET", url, headers=headers, what="upstream index") as resp:
        if resp.status == 304 and validators is not None and validators.headers():
            return None
        raise_for_upstream_status(resp, "upstream index")
        if resp.status != 200:
            raise UpstreamError(502, f"upstream index answered unexpected status {resp.status}")
        raw = await _read_limited(resp.content, MAX_PAGE_BYTES)
        body = decode_body(raw, resp.headers.get(hdrs.CONTENT_ENCODING))
        return FetchedPage(
            url,
            resp.headers.get(hdrs.CONTENT_TYPE),
            body,
            resp.headers.get(hdrs.ETAG),
            resp.headers.get(hdrs.LAST_MODIFIED),
        )


def build_project_entry(
    fetched: FetchedPage, name: str, media_type: str, links: FileLinks
) -> PageEntry:
    """Parse, rewrite and render a fetched project page into a cache entry with its file hashes."""
    try:
        page = parse_project_page(fetched.body, fetched.content_type, fetched.url, name)
    except PageError as exc:
        raise UpstreamError(502, str(exc)) from None
    entry = page_entry(fetched, render_project(page, media_type, links), media_type)
    entry.files = file_digests(page, links)
    return entry


def build_index_entry(fetched: FetchedPage, media_type: str) -> PageEntry:
    """Parse and render a fetched root page into a cache entry."""
    try:
        page: IndexPage = parse_index_page(fetched.body, fetched.content_type)
    except PageError as exc:
        raise UpstreamError(502, str(exc)) from None
    return page_entry(fetched, render_index(page, media_type), media_type)


async def off_loop_if_large(fetched: FetchedPage, build: partial[PageEntry]) -> PageEntry:
    """Run ``build`` here, or on a worker thread when the page would stall other requests."""
    if len(fetched.body) > OFF_LOOP_BYTES:
        return await asyncio.to_thread(build)
    return build()


def negotiate(request: web.Request) -> str | None:
    """The simple API media type to answer with, or None when the client accepts none."""
    return choose(request.headers.get(hdrs.ACCEPT), PAGE_OFFERS)


def not_acceptable() -> web.Response:
    return json_error(
        406,
        f"Not acceptable: this index serves {JSON_TYPE}, {HTML_TYPE} and {TEXT_HTML}",
        headers={hdrs.VARY: "Accept"},
    )


@functools.lru_cache(maxsize=NAMES_REMEMBERED)
def valid_normalized(name: str) -> str | None:
    """The PEP 503 form of a project name, or None when it is not a valid name (memoised)."""
    return normalize_name(name) if is_valid_name(name) else None


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
        # Pages hold links to this mount (a virtual host and the path mount differ): each mount
        # keeps its own entries.
        self._representations = {m: f"{m} {base}" for m in PAGE_OFFERS}
        # The app's cache and upstream client, looked up on the first request (they are created
        # at start-up, after the routes).
        self._shared: tuple[MetadataCache, Upstream] | None = None

    def page_key(self, name: str, media_type: str) -> CacheKey:
        """The metadata cache key of a page (``name`` "" for the root) as this mount renders it."""
        return (ECOSYSTEM, name, self._representations[media_type])

    def shared(self, request: web.Request) -> tuple[MetadataCache, Upstream]:
        """The metadata cache and upstream client of the app serving ``request``."""
        if self._shared is None:
            config = request.config_dict
            self._shared = (config[metadata_cache_key], config[upstream_key])
        return self._shared

    async def cached_page(
        self, request: web.Request, cache: MetadataCache, key: CacheKey, fetch: Fetch
    ) -> web.Response:
        """The page for ``key`` from the cache (fetched on a miss), noted for logs and metrics."""
        cached = await cache.get_or_fetch(key, fetch)
        request[REQUEST_CACHE] = cached.state.value.lower()
        return metadata_response(request, cached)

    def project_url(self, normalized: str) -> URL:
        return URL(str(self.index_url) + normalized + "/", encoded=True)

    async def simple_no_slash(self, request: web.Request) -> web.StreamResponse:
        """``/pypi/simple`` -> ``/pypi/simple/``."""
        raise _redirect("simple/")

    async def root(self, request: web.Request) -> web.StreamResponse:
        """The root page listing every project."""
        media_type = negotiate(request)
        if media_type is None:
            return not_acceptable()
        cache, upstream = self.shared(request)
        fetch = partial(self._fetch_index, upstream, self.index_url, media_type)
        key = self.page_key(ROOT_KEY_NAME, media_type)
        return await self.cached_page(request, cache, key, fetch)

    async def project_no_slash(self, request: web.Request) -> web.StreamResponse:
        """``/pypi/simple/<name>`` -> ``/pypi/simple/<normalised>/``."""
        normalized = valid_normalized(request.match_info["name"])
        if normalized is None:
            return json_error(404, "Not a valid project name")
        raise _redirect(f"{normalized}/")

    async def project(self, request: web.Request) -> web.StreamResponse:
        """One project's page."""
        name = request.match_info["name"]
        normalized = valid_normalized(name)
        if normalized is None:
            return json_error(404, "Not a valid project name")
        if normalized != name:
            raise _redirect(f"../{normalized}/")
        media_type = negotiate(request)
        if media_type is None:
            return not_acceptable()
        cache, upstream = self.shared(request)
        fetch = partial(self._fetch_project, upstream, normalized, media_type)
        return await self.cached_page(request, cache, self.page_key(normalized, media_type), fetch)

    async def _fetch_index(
        self, upstream: Upstream, url: URL, media_type: str, validators: Validators
    ) -> MetaEntry | NotModified:
        fetched = await fetch_page(upstream, url, validators)
        if fetched is None:
            return NOT_MODIFIED
        return await off_loop_if_large(fetched, partial(build_index_entry, fetched, media_type))

    async def _fetch_project(
        self, upstream: Upstream, name: str, media_type: str, validators: Validators
    ) -> MetaEntry | NotModified:
        fetched = await fetch_page(upstream, self.project_url(name), validators)
        if fetched is None:
            return NOT_MODIFIED
        build = partial(build_project_entry, fetched, name, media_type, self.links)
        return await off_loop_if_large(fetched, build)

    # --- files ---------------------------------------------------------------------------------

    def file_key(self, request: web.Request) -> str | None:
        """``<n>/<tail>[?query]`` of a files request (as ``FileLinks.locate`` writes them)."""
        raw_path, sep, raw_query = request.raw_path.partition("?")
        if not raw_path.startswith(self.files_prefix):
            return None
        return raw_path[len(self.files_prefix) :] + sep + raw_query

    def file_url(self, key: str) -> URL | None:
        """The upstream URL a files-route key names, or None when it names nothing allowed."""
        path, _, raw_query = key.partition("?")
        number, _, tail = path.partition("/")
        return self.links.to_upstream(number, tail, raw_query)

    def _any_cached_page(self, cache: MetadataCache, project: str) -> PageEntry | None:
        """Any cached representation of ``project``'s page, however old (files do not change)."""
        for media_type in PAGE_OFFERS:
            entry = cache.peek(self.page_key(project, media_type))
            if isinstance(entry, PageEntry):
                return entry
        return None

    async def expected_digest(self, request: web.Request, key: str) -> Digest | None:
        """What the file named by ``key`` must hash to, per its project's page; None if unknown."""
        tail = key.partition("?")[0].rpartition("/")[2]
        project = project_of_filename(urllib.parse.unquote(tail))
        if project is None:
            return None
        cache, upstream = self.shared(request)
        known = self._any_cached_page(cache, project)
        if known is not None:
            return known.files.get(key)
        if not cache.enabled:
            return None
        # No page in this process yet (another worker served it, or it was evicted): fetch the
        # JSON form once; it lands in the cache for the pages route too.
        fetch = partial(self._fetch_project, upstream, project, JSON_TYPE)
        try:
            cached = await cache.get_or_fetch(self.page_key(project, JSON_TYPE), fetch)
        except UpstreamError:
            return None
        entry = cached.entry
        return entry.files.get(key) if isinstance(entry, PageEntry) else None

    async def file(self, request: web.Request) -> web.StreamResponse:
        """A distribution file or its ``.metadata``, from the verified cache or streamed as is."""
        key = self.file_key(request)
        url = None if key is None else self.file_url(key)
        if key is None or url is None:
            return json_error(404, "Not found")
        artifacts = request.config_dict[artifact_cache_key]
        digest = await self.expected_digest(request, key) if artifacts.enabled else None
        headers: dict[str, str] = {hdrs.CACHE_CONTROL: FILE_CACHE_CONTROL}
        if digest is not None:
            # Answered from a verified file on disk (FileResponse), which serves ranges.
            headers[hdrs.ACCEPT_RANGES] = "bytes"
        else:
            headers[X_CACHE] = "BYPASS"
        # A relayed HEAD stays a HEAD upstream; anything the cache stores is fetched with GET.
        relayed_head = request.method == hdrs.METH_HEAD and digest is None
        method = hdrs.METH_HEAD if relayed_head else hdrs.METH_GET
        opener = partial(_open_file, self.shared(request)[1], method, url)
        request[REQUEST_CACHE] = "miss" if digest is not None else "bypass"
        response = await artifacts.serve(
            request,
            key=str(url),
            digest=digest,
            open_upstream=opener,
            content_type=FILE_TYPE,
            headers=headers,
        )
        if response.headers.get(X_CACHE) == "HIT":
            request[REQUEST_CACHE] = "hit"
        return response


def _open_file(
    upstream: Upstream, method: str, url: URL, headers: Mapping[str, str]
) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
    return upstream.request(method, url, headers=headers, what="upstream file host")


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
