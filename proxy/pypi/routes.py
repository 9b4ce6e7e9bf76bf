"""The Python simple index endpoint under ``<public_url>/pypi/``.

``/pypi/simple/`` and ``/pypi/simple/<name>/`` serve the upstream index's pages rewritten so every
file link points at ``/pypi/files/<n>/<path>`` (``n`` numbers the configured origins, see
``rewrite.FileLinks``); those files (and their PEP 658 ``.metadata``) are streamed from the
upstream byte for byte.  Only the index's wire format lives here (negotiation, which page and
file a path names, page parsing and rendering in ``rewrite``); the steps are
``proxy.registry.pipeline``'s: cache or fetch -> decode -> parse/render -> policy -> respond.

Caching (SPEC 10):
- Pages live in the ``MetadataCache`` rendered, one entry per (project, negotiated media type,
  mount), so a warm request costs a memoised Accept lookup, a dict lookup and a prepared body.
  Expired entries are revalidated upstream with the upstream's ETag/Last-Modified; a client's own
  validators are answered 304 from the entry (its ETag is that of the bytes served).
- Each page entry also carries what its files must hash to (``#sha256`` / ``hashes``), keyed as the
  files route names them.  The files route finds the project from the file name, reads what
  any cached page of it published for that path (fetching the JSON page when none lists it, e.g.
  in another worker) and hands the download to the pipeline's ``serve_artifact``.  A path no page
  published is never fetched (404); a file published without a usable hash is relayed uncached.
"""

from __future__ import annotations

import functools
import logging
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Final

from aiohttp import hdrs, web
from yarl import URL

from ..errors import Answer, json_error
from ..registry.artifacts import Digest
from ..registry.decode import MAX_BODY
from ..registry.metacache import (
    CacheKey,
    MetadataCache,
    MetaEntry,
    NotModified,
    Validators,
)
from ..registry.pipeline import (
    Artifact,
    Fetched,
    Registry,
    decision_for,
    fetch_metadata,
    serve_artifact,
    serve_metadata,
)
from ..registry.policy import Decision, Ecosystem, FileFacts, PackageFacts
from ..registry.upstream import UpstreamError
from ..settings import Settings
from ..vhosts import RegistryMount
from .negotiate import choose
from .rewrite import (
    HTML_TYPE,
    JSON_TYPE,
    METADATA_SUFFIX,
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
    render_index,
    render_project,
    upload_time,
    verifying_hash,
    version_of_filename,
    without_files,
)

log = logging.getLogger(__name__)

# text/html first: like the reference index, a client that accepts anything gets HTML.
PAGE_OFFERS = (TEXT_HTML, HTML_TYPE, JSON_TYPE)
UPSTREAM_PAGE_ACCEPT = f"{JSON_TYPE}, {HTML_TYPE};q=0.2, {TEXT_HTML};q=0.01"
PAGE_CACHE_CONTROL = "max-age=600"
FILE_CACHE_CONTROL = "max-age=365000000, immutable"
MAX_PAGE_BYTES = MAX_BODY
FILE_TYPE = "application/octet-stream"
WHAT = "upstream index"
ECOSYSTEM: Final = "pypi"
ROOT_KEY_NAME: Final = ""  # never a project name
# Every page answer carries these (cached with the entry, replayed on hits).
PAGE_HEADERS: Final[Mapping[str, str]] = {
    str(hdrs.VARY): "Accept",
    str(hdrs.CACHE_CONTROL): PAGE_CACHE_CONTROL,
}
# Valid names and their normal form are memoised for the warm path, in a bounded memo.
NAMES_REMEMBERED = 4096


@dataclass(frozen=True, slots=True)
class PublishedFile:
    """What a project page publishes for one file (or its ``.metadata``) on the files route."""

    filename: str
    version: str | None
    digest: Digest | None  # None: published without a hash pkgate can verify


@dataclass(slots=True)
class PageEntry(MetaEntry):
    """A rendered page and, by files-route key, what each of its files was published with."""

    files: Mapping[str, PublishedFile] = field(default_factory=dict)
    media_type: str = TEXT_HTML

    def aux(self) -> tuple[object, ...]:
        return (self.facts, self.files)

    def without(self, decision: Decision) -> PageEntry:
        """This page without the files of the versions (and the files) ``decision`` removes."""
        removed = {
            f.filename
            for f in self.files.values()
            if f.version in decision.removed or f.filename in decision.removed_files
        }
        body = without_files(self.body, self.media_type, removed, decision.removed)
        variant = PageEntry(
            body=body,
            content_type=self.content_type,
            validators=self.validators,
            headers=self.headers,
            files={
                k: f
                for k, f in self.files.items()
                if f.filename.removesuffix(METADATA_SUFFIX) not in removed
            },
            media_type=self.media_type,
        )
        variant.measure()
        return variant


def page_content_type(media_type: str) -> str:
    """The exact Content-Type a page in ``media_type`` is served with."""
    return media_type if media_type == JSON_TYPE else f"{media_type}; charset=utf-8"


def page_entry(fetched: Fetched, body: bytes, media_type: str) -> PageEntry:
    """A cache entry for a page rendered from ``fetched``."""
    return PageEntry(
        body=body,
        content_type=page_content_type(media_type),
        validators=Validators(fetched.etag, fetched.last_modified),
        headers=PAGE_HEADERS,
        media_type=media_type,
    )


def published_files(page: ProjectPage, links: FileLinks) -> dict[str, PublishedFile]:
    """Every linked file (and ``.metadata``), keyed as the files route names it."""
    out: dict[str, PublishedFile] = {}
    for f in page.files:
        located = links.locate(f.url)
        if located is None:
            continue
        version = version_of_filename(f.filename)
        found = verifying_hash(f.hashes)
        digest = Digest.from_hex(*found) if found is not None else None
        out[located] = PublishedFile(f.filename, version, digest)
        if f.core_metadata is not None:
            meta = verifying_hash(f.core_metadata) if f.core_metadata else None
            path, sep, query = located.partition("?")
            out[path + METADATA_SUFFIX + sep + query] = PublishedFile(
                f.filename + METADATA_SUFFIX,
                version,
                Digest.from_hex(*meta) if meta is not None else None,
            )
    return out


def page_facts(page: ProjectPage, name: str) -> PackageFacts:
    """What a project page says about its releases, for the policy."""
    files = tuple(
        FileFacts(f.filename, version_of_filename(f.filename), upload_time(f.upload_time))
        for f in page.files
    )
    published: dict[str, float | None] = {v: None for v in page.versions or ()}
    for f in files:
        if f.version is None:
            continue
        known = published.get(f.version)
        if f.uploaded is not None and (known is None or f.uploaded < known):
            published[f.version] = f.uploaded
        elif f.version not in published:
            published[f.version] = None
    return PackageFacts(Ecosystem.PYPI, name, published, files=files)


def build_project_entry(
    fetched: Fetched, name: str, media_type: str, links: FileLinks
) -> PageEntry:
    """Parse, rewrite and render a fetched project page into a cache entry with its files."""
    try:
        page = parse_project_page(bytes(fetched.body), fetched.content_type, fetched.url, name)
    except PageError as exc:
        raise UpstreamError(502, str(exc)) from None
    entry = page_entry(fetched, render_project(page, media_type, links), media_type)
    entry.files = published_files(page, links)
    entry.facts = page_facts(page, name)
    entry.measure()  # here: off the event loop for large pages
    return entry


def build_index_entry(fetched: Fetched, media_type: str) -> PageEntry:
    """Parse and render a fetched root page into a cache entry."""
    try:
        page: IndexPage = parse_index_page(bytes(fetched.body), fetched.content_type)
    except PageError as exc:
        raise UpstreamError(502, str(exc)) from None
    return page_entry(fetched, render_index(page, media_type), media_type)


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
    """The handlers of one PyPI mount, bound to its settings."""

    def __init__(self, settings: Settings, base: URL, registry: Registry) -> None:
        """``base`` is the absolute URL this mount answers at, with a trailing slash;
        ``registry`` the shared pipeline (caches, upstream, policy)."""
        if settings.pypi_upstream is None:
            raise ValueError("pypi_upstream is not set")
        self.registry = registry
        self.index_url = URL(settings.pypi_upstream)
        index_origin = str(self.index_url.origin()) + "/"
        self.links = FileLinks(f"{base}files", [index_origin, *settings.pypi_files_upstream])
        self.files_prefix = base.raw_path + "files/"
        # Pages hold links to this mount (a virtual host and the path mount differ): each mount
        # keeps its own entries.
        self._representations = {m: f"{m} {base}" for m in PAGE_OFFERS}

    def page_key(self, name: str, media_type: str) -> CacheKey:
        """The metadata cache key of a page (``name`` "" for the root) as this mount renders it."""
        return (ECOSYSTEM, name, self._representations[media_type])

    def project_url(self, normalized: str) -> URL:
        return URL(str(self.index_url) + normalized + "/", encoded=True)

    async def simple_no_slash(self, request: web.Request) -> web.StreamResponse:
        """``/pypi/simple`` -> ``/pypi/simple/``."""
        raise _redirect("simple/")

    def root(self, request: web.Request) -> Answer | web.StreamResponse:
        """The root page listing every project (answered as ``project`` is)."""
        media_type = negotiate(request)
        if media_type is None:
            return not_acceptable()
        fetch = partial(self._fetch_index, media_type)
        key = self.page_key(ROOT_KEY_NAME, media_type)
        return serve_metadata(request, self.registry, key, fetch)

    async def project_no_slash(self, request: web.Request) -> web.StreamResponse:
        """``/pypi/simple/<name>`` -> ``/pypi/simple/<normalised>/``."""
        normalized = valid_normalized(request.match_info["name"])
        if normalized is None:
            return json_error(404, "Not a valid project name")
        raise _redirect(f"{normalized}/")

    def project(self, request: web.Request) -> Answer | web.StreamResponse:
        """One project's page: a memory hit answered at once, anything else the pipeline's
        coroutine, unawaited (see ``serve_metadata``)."""
        name = request.match_info["name"]
        normalized = valid_normalized(name)
        if normalized is None:
            return json_error(404, "Not a valid project name")
        if normalized != name:
            raise _redirect(f"../{normalized}/")
        media_type = negotiate(request)
        if media_type is None:
            return not_acceptable()
        fetch = partial(self._fetch_project, normalized, media_type)
        key = self.page_key(normalized, media_type)
        return serve_metadata(request, self.registry, key, fetch)

    async def _fetch_index(
        self, media_type: str, validators: Validators
    ) -> MetaEntry | NotModified:
        build = partial(build_index_entry, media_type=media_type)
        return await fetch_metadata(
            self.registry.upstream,
            self.index_url,
            build,
            validators=validators,
            accept=UPSTREAM_PAGE_ACCEPT,
            what=WHAT,
            limit=MAX_PAGE_BYTES,
            disk=self.registry.metadata.disk,
        )

    async def _fetch_project(
        self, name: str, media_type: str, validators: Validators
    ) -> PageEntry | NotModified:
        build = partial(build_project_entry, name=name, media_type=media_type, links=self.links)
        return await fetch_metadata(
            self.registry.upstream,
            self.project_url(name),
            build,
            validators=validators,
            accept=UPSTREAM_PAGE_ACCEPT,
            what=WHAT,
            limit=MAX_PAGE_BYTES,
            disk=self.registry.metadata.disk,
        )

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

    async def published_page(
        self, registry: Registry, key: str
    ) -> tuple[PublishedFile, PageEntry] | None:
        """What the page of the file's project publishes for the files-route ``key`` (and that
        page); None when no page of that project lists it."""
        tail = key.partition("?")[0].rpartition("/")[2]
        project = project_of_filename(urllib.parse.unquote(tail))
        if project is None:
            return None
        cache = registry.metadata
        known = self._any_cached_page(cache, project)
        if known is None or key not in known.files:
            # No page in this process yet (another worker served it, it was evicted, the cache
            # is off) or an older one: fetch the JSON form; it lands in the cache for pages too.
            fetch = partial(self._fetch_project, project, JSON_TYPE)
            cached = await cache.get_or_fetch(self.page_key(project, JSON_TYPE), fetch)
            known = cached.entry if isinstance(cached.entry, PageEntry) else None
        if known is None:
            return None
        published = known.files.get(key)
        return (published, known) if published is not None else None

    async def file(self, request: web.Request) -> web.StreamResponse:
        """A distribution file or its ``.metadata``: only what a project page published."""
        key = self.file_key(request)
        url = None if key is None else self.file_url(key)
        if key is None or url is None:
            return json_error(404, "Not found")
        registry = self.registry
        try:
            found = await self.published_page(registry, key)
        except UpstreamError as exc:
            if exc.status == 404:
                return json_error(404, "Not found")
            raise
        if found is None:
            # Never fetch a path no index page published (the files origin may hold others).
            return json_error(404, "Not found")
        published, page = found
        decision = None
        policy = registry.policy
        if policy.active:
            decision = await decision_for(registry, policy, page)
        headers: dict[str, str] = {hdrs.CACHE_CONTROL: FILE_CACHE_CONTROL}
        if published.digest is not None and registry.artifacts.enabled:
            # Answered from a verified file on disk (FileResponse), which serves ranges.
            headers[hdrs.ACCEPT_RANGES] = "bytes"
        artifact = Artifact(
            ecosystem="pypi",
            package=project_of_filename(published.filename) or "",
            version=published.version,
            filename=published.filename,
            url=url,
            digest=published.digest,
            what="upstream file host",
            content_type=FILE_TYPE,
            headers=headers,
        )
        return await serve_artifact(request, registry, artifact, decision)


def setup_routes(mount: RegistryMount, settings: Settings) -> None:
    """Register the index and file routes on ``mount`` (whose links point at itself)."""
    index = SimpleIndex(settings, mount.base, mount.registry)
    mount.add(hdrs.METH_GET, "/simple", index.simple_no_slash)
    mount.add(hdrs.METH_GET, "/simple/", index.root)
    # The router tries the resources under one prefix in the order they were added: the page
    # every install asks for first (one pattern match instead of two per request).
    mount.add(hdrs.METH_GET, "/simple/{name}/", index.project)
    mount.add(hdrs.METH_GET, "/simple/{name}", index.project_no_slash)
    mount.add(hdrs.METH_GET, "/files/{tail:.+}", index.file)
