"""The npm registry endpoint, at ``<public_url>/npm/`` and at the root of ``npm_host`` when set.

Every request has already passed the registry auth middleware.  The data path reads top to
bottom: route on the raw path (so ``@scope%2fname``, ``%2F`` and ``/`` all work) -> metadata
cache (on a miss: fetch from the upstream and rewrite) -> answer.  Packuments are cached after
rewriting, per mount and per form (abbreviated or full, from the client's ``Accept``), and every
tarball in them points at the mount that served them.  Version documents (``<name>/<version>``,
a dist-tag too) and ``-/package/<name>/dist-tags`` are derived from the cached full packument and
cached beside it.  Tarballs go through the artifact cache,
verified against the ``dist.integrity`` (else ``shasum``) their packument publishes; a tarball
whose hash is not known is relayed byte-for-byte without being kept.  The registry is read-only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from functools import partial

import aiohttp
from aiohttp import hdrs, web
from yarl import URL

from tokenapi.keys import request_token

from ..auth import NPM_CHALLENGE, unauthorized
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
    MetaEntry,
    NotModified,
    Validators,
    body_etag,
    metadata_response,
)
from ..registry.upstream import Upstream, UpstreamError, raise_for_upstream_status
from ..settings import Settings
from . import rewrite as npmrewrite
from .rewrite import BadPath, PackagePath, Published

log = logging.getLogger(__name__)

READ_ONLY = "This registry is read-only"
# An audit payload lists package names and versions; this is far beyond any real project.
AUDIT_MAX_DECODED = 32 * 1024 * 1024
WHAT = "npm upstream"
CORGI = "application/vnd.npm.install-v1+json"
TARBALL_TYPE = "application/octet-stream"
# Rewriting parses and re-serialises JSON: above this size it runs off the event loop.
OFF_LOOP_BYTES = 512 * 1024
# Bytes charged per listed tarball on top of the body (file name and hashes kept in memory).
FILE_OVERHEAD = 200
# The largest upstream JSON body read (as sent, before decoding); the biggest real packuments are
# tens of megabytes.  Above it the upstream's answer is an error, not a memory hog.
MAX_PACKUMENT_BYTES = npmrewrite.MAX_DECODED

PACKUMENT_HEADERS: Mapping[str, str] = {
    hdrs.CACHE_CONTROL: "private, max-age=300",
    hdrs.VARY: "Accept",
}
# Version documents and dist-tags come in one form whatever the client accepts.
DERIVED_HEADERS: Mapping[str, str] = {hdrs.CACHE_CONTROL: "private, max-age=300"}
TARBALL_CACHE_CONTROL = "private, max-age=31536000, immutable"

# POST endpoints clients use for `npm audit` (bulk, then the legacy quick fallback).
AUDIT_PATHS = frozenset(
    {
        "-/npm/v1/security/advisories/bulk",
        "-/npm/v1/security/audits/quick",
        "-/npm/v1/security/audits",
    }
)
# Read-only JSON endpoints passed through as they are.
JSON_GET_PATHS = frozenset({"-/npm/v1/keys", "-/v1/search"})

ABBREVIATED = "abbreviated"
FULL = "full"


@dataclass(frozen=True, slots=True)
class NpmConfig:
    """Where one npm mount lives and where it fetches from."""

    mount: str  # raw path of the npm root without trailing slash: "/npm", "/base/npm" or ""
    public_root: str  # absolute URL of the npm root, no trailing slash: base of every URL we write
    upstream_root: str  # upstream registry base URL, with a trailing slash

    def packument_key(self, name: str, form: str) -> CacheKey:
        """The metadata cache key of a packument as this mount rewrites it."""
        # Entries hold URLs of this mount (a virtual host and the path mount differ).
        return ("npm", name, f"{form} {self.public_root}")

    def derived_key(self, name: str, what: str) -> CacheKey:
        """The metadata cache key of an answer derived from the full packument, named ``what``."""
        return ("npm", name, f"{what} {self.public_root}")


npm_config_key = web.AppKey("npm_config", NpmConfig)


@dataclass(frozen=True, slots=True)
class Fetched:
    """A decoded upstream JSON answer."""

    status: int
    body: bytes
    content_type: str


@dataclass(slots=True)
class PackumentEntry(MetaEntry):
    """A rewritten packument and, by tarball file name, the hashes it publishes."""

    files: Mapping[str, Published] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.body) + ENTRY_OVERHEAD + FILE_OVERHEAD * len(self.files)


def npm_config(settings: Settings, base: URL) -> NpmConfig:
    """The mount's locations: ``base`` is the absolute URL it answers at (never request headers)."""
    if settings.npm_upstream is None:
        raise ValueError("npm_upstream is not set")
    return NpmConfig(
        mount=base.raw_path.rstrip("/"),
        public_root=str(base).rstrip("/"),
        upstream_root=settings.npm_upstream,
    )


def upstream_url(config: NpmConfig, raw_path: str, query: str = "") -> URL:
    # encoded=True keeps %2f in scoped names as it is; callers only pass validated paths.
    text = config.upstream_root + raw_path
    if query:
        text += "?" + query
    return URL(text, encoded=True)


def read_only() -> web.Response:
    return json_error(405, READ_ONLY, headers={hdrs.ALLOW: "GET, HEAD"})


def form_of(accept: str | None) -> str:
    """Which packument form an ``Accept`` header asks for (npm's corgi media type or not)."""
    return ABBREVIATED if accept is not None and CORGI in accept else FULL


# -- handlers -------------------------------------------------------------------------------------


async def ping(request: web.Request) -> web.Response:
    """``npm ping`` (and pnpm's ``?write=true``)."""
    return web.json_response({})


async def whoami(request: web.Request) -> web.Response:
    """``npm whoami``: the email of the token's owner."""
    token = request_token(request)
    if token is None:
        return unauthorized("Not logged in", NPM_CHALLENGE)
    return web.json_response({"username": token.email})


async def dispatch(request: web.Request) -> web.StreamResponse:
    """Route one npm request on its raw path."""
    config = request.app[npm_config_key]
    raw = request.raw_path.split("?", 1)[0]
    if not raw.startswith(config.mount + "/"):
        raise web.HTTPNotFound()
    rest = raw[len(config.mount) + 1 :]

    if rest in AUDIT_PATHS:
        if request.method != hdrs.METH_POST:
            raise web.HTTPMethodNotAllowed(request.method, [hdrs.METH_POST])
        return await audit(request, config, rest)
    if request.method not in (hdrs.METH_GET, hdrs.METH_HEAD):
        return read_only()
    if rest == "-/ping":
        return await ping(request)
    if rest == "-/whoami":
        return await whoami(request)
    if rest in JSON_GET_PATHS:
        return await json_passthrough(request, config, rest)
    if rest.startswith("-/"):
        return await dist_tags(request, config, rest)
    if rest == "":
        raise web.HTTPNotFound()
    try:
        package = npmrewrite.parse_package_path(rest)
    except BadPath as exc:
        return json_error(400, str(exc))
    if package is None:
        raise web.HTTPNotFound()
    if package.file is not None:
        return await tarball(request, config, package)
    if package.version is not None:
        return await version_document(request, config, package)
    return await packument(request, config, package)


async def packument(request: web.Request, config: NpmConfig, package: PackagePath) -> web.Response:
    """A package document, full or abbreviated as the client's Accept asks, from the cache."""
    headers = request.headers
    accept = headers.get(hdrs.ACCEPT)
    key = config.packument_key(package.name, form_of(accept))

    async def fetch(validators: Validators) -> PackumentEntry | NotModified:
        upstream = request.config_dict[upstream_key]
        return await fetch_packument(upstream, config, package, accept, validators)

    cached = await request.config_dict[metadata_cache_key].get_or_fetch(key, fetch)
    request[REQUEST_CACHE] = cached.state.value.lower()
    return metadata_response(request, cached)


async def version_document(
    request: web.Request, config: NpmConfig, package: PackagePath
) -> web.Response:
    """One version's manifest (an exact version or a dist-tag's), from the full packument."""
    spec = package.version
    assert spec is not None
    derive = partial(npmrewrite.version_document, spec=spec)
    missing = f"{package.name}@{spec}: not found"
    return await derived(request, config, package, f"version {spec}", derive, missing)


async def dist_tags(request: web.Request, config: NpmConfig, rest: str) -> web.Response:
    """``-/package/<name>/dist-tags`` (``npm dist-tag ls``), from the full packument."""
    try:
        package = npmrewrite.parse_dist_tags_path(rest)
    except BadPath as exc:
        return json_error(400, str(exc))
    if package is None:
        raise web.HTTPNotFound()
    return await derived(request, config, package, "dist-tags", npmrewrite.dist_tags)


async def derived(
    request: web.Request,
    config: NpmConfig,
    package: PackagePath,
    what: str,
    derive: Callable[[bytes], bytes | None],
    missing: str = "not found",
) -> web.Response:
    """An answer ``derive`` computes from the full packument, cached beside it under ``what``.

    ``derive`` returning None is a 404 with ``missing`` as its message (remembered like an
    upstream 404).  A derived entry lives as long as any metadata entry, so it trails a changed
    packument by at most one TTL.
    """
    cache = request.config_dict[metadata_cache_key]

    async def fetch_full(validators: Validators) -> PackumentEntry | NotModified:
        upstream = request.config_dict[upstream_key]
        return await fetch_packument(upstream, config, package, "application/json", validators)

    async def fetch(validators: Validators) -> MetaEntry:
        # The derived entry has no upstream of its own: the packument's entry revalidates.
        source = await cache.get_or_fetch(config.packument_key(package.name, FULL), fetch_full)
        body = source.entry.body
        if len(body) > OFF_LOOP_BYTES:
            answer = await asyncio.to_thread(derive, body)
        else:
            answer = derive(body)
        if answer is None:
            raise UpstreamError(404, missing)
        return MetaEntry.build(
            answer,
            "application/json",
            upstream_last_modified=source.entry.validators.last_modified,
            headers=DERIVED_HEADERS,
        )

    cached = await cache.get_or_fetch(config.derived_key(package.name, what), fetch)
    request[REQUEST_CACHE] = cached.state.value.lower()
    return metadata_response(request, cached)


async def fetch_packument(
    upstream: Upstream,
    config: NpmConfig,
    package: PackagePath,
    accept: str | None,
    validators: Validators,
) -> PackumentEntry | NotModified:
    """Fetch, decode and rewrite a packument (the metadata cache's fetch function)."""
    headers: dict[str, str] = {hdrs.ACCEPT_ENCODING: "gzip, deflate", **validators.headers()}
    if accept:
        headers[hdrs.ACCEPT] = accept
    url = upstream_url(config, package.escaped_name)
    async with upstream.request("GET", url, headers=headers, what=WHAT) as resp:
        if resp.status == 304:
            return NOT_MODIFIED
        raise_for_upstream_status(resp, WHAT)
        if resp.status != 200:
            raise UpstreamError(502, f"{WHAT} answered unexpected status {resp.status}")
        raw = await read_limited(resp)
        fetched = (
            raw,
            resp.headers.get(hdrs.CONTENT_ENCODING),
            resp.headers.get(hdrs.CONTENT_TYPE, "application/json"),
            resp.headers.get(hdrs.ETAG),
            resp.headers.get(hdrs.LAST_MODIFIED),
        )
    build = partial(packument_entry, *fetched, package.name, config.public_root)
    if len(raw) > OFF_LOOP_BYTES:
        return await asyncio.to_thread(build)
    return build()


def packument_entry(
    raw: bytes,
    coding: str | None,
    content_type: str,
    etag: str | None,
    last_modified: str | None,
    name: str,
    public_root: str,
) -> PackumentEntry:
    """The cache entry for an upstream packument: decoded, rewritten, with its files' hashes."""
    try:
        decoded = npmrewrite.decode_body(raw, coding)
    except ValueError as exc:
        raise UpstreamError(502, f"{WHAT} sent an undecodable body ({exc})") from None
    try:
        rewritten = npmrewrite.rewrite(decoded, name, public_root)
    except ValueError as exc:
        raise UpstreamError(502, f"{WHAT} sent an unusable packument ({exc})") from None
    return PackumentEntry(
        body=rewritten.body,
        content_type=content_type,
        etag=body_etag(rewritten.body),
        validators=Validators(etag, last_modified),
        headers=PACKUMENT_HEADERS,
        files=rewritten.files,
    )


async def fetch_json(
    upstream: Upstream,
    method: str,
    url: URL,
    headers: Mapping[str, str],
    data: bytes | None = None,
    *,
    pass_client_errors: bool = False,
) -> Fetched:
    """One upstream JSON request, decoded; failures become UpstreamError.

    With ``pass_client_errors`` an upstream 4xx (other than an auth refusal of pkgate itself)
    is returned for the caller to pass on instead of being mapped.
    """
    async with upstream.request(method, url, headers=headers, data=data, what=WHAT) as resp:
        status = resp.status
        if not (pass_client_errors and 400 <= status < 500 and status not in (401, 403, 407)):
            raise_for_upstream_status(resp, WHAT)
        if status != 200 and not (pass_client_errors and status >= 400):
            raise UpstreamError(502, f"{WHAT} answered unexpected status {status}")
        raw = await read_limited(resp)
        content_type = resp.headers.get(hdrs.CONTENT_TYPE, "application/json")
        coding = resp.headers.get(hdrs.CONTENT_ENCODING)
    try:
        body = npmrewrite.decode_body(raw, coding)
    except ValueError as exc:
        raise UpstreamError(502, f"{WHAT} sent an undecodable body ({exc})") from None
    return Fetched(status, body, content_type)


async def read_limited(resp: aiohttp.ClientResponse) -> bytes:
    """An upstream JSON body, refused (502) beyond ``MAX_PACKUMENT_BYTES``."""
    limit = MAX_PACKUMENT_BYTES
    if resp.content_length is not None and resp.content_length > limit:
        raise UpstreamError(502, f"{WHAT} sent a body that is too large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise UpstreamError(502, f"{WHAT} sent a body that is too large")
        chunks.append(chunk)
    return b"".join(chunks)


def published_digest(published: Published | None) -> Digest | None:
    """The digest a tarball must match: its sha512 SRI integrity, else its sha1 shasum."""
    if published is None:
        return None
    return Digest.from_sri(published.integrity) or Digest.from_hex("sha1", published.shasum)


async def expected_digest(
    request: web.Request, config: NpmConfig, package: PackagePath
) -> Digest | None:
    """What a tarball must hash to, per its package's packument; None when that is unknown."""
    assert package.file is not None
    cache = request.config_dict[metadata_cache_key]
    for form in (ABBREVIATED, FULL):
        entry = cache.peek(config.packument_key(package.name, form))
        if isinstance(entry, PackumentEntry):
            return published_digest(entry.files.get(package.file))
    if not cache.enabled:
        return None
    # No packument here yet (another worker served it, or it was evicted): fetch the
    # abbreviated one once; it lands in the cache for packument requests too.
    fetch = partial(fetch_packument, request.config_dict[upstream_key], config, package, CORGI)
    try:
        cached = await cache.get_or_fetch(config.packument_key(package.name, ABBREVIATED), fetch)
    except UpstreamError:
        return None
    entry = cached.entry
    if not isinstance(entry, PackumentEntry):
        return None
    return published_digest(entry.files.get(package.file))


async def tarball(
    request: web.Request, config: NpmConfig, package: PackagePath
) -> web.StreamResponse:
    """A tarball from the verified artifact cache, or relayed byte-for-byte when unverifiable."""
    assert package.file is not None
    artifacts = request.config_dict[artifact_cache_key]
    url = upstream_url(config, f"{package.name}/-/{package.file}")
    digest = await expected_digest(request, config, package) if artifacts.enabled else None
    headers: dict[str, str] = {hdrs.CACHE_CONTROL: TARBALL_CACHE_CONTROL}
    if digest is None:
        headers["X-Cache"] = "BYPASS"
    # A relayed HEAD stays a HEAD upstream; anything the cache stores is fetched with GET.
    method = request.method if digest is None else hdrs.METH_GET
    request[REQUEST_CACHE] = "bypass" if digest is None else "miss"
    response = await artifacts.serve(
        request,
        key=str(url),
        digest=digest,
        open_upstream=partial(open_tarball, request.config_dict[upstream_key], method, url),
        content_type=TARBALL_TYPE,
        headers=headers,
    )
    if response.headers.get("X-Cache") == "HIT":
        request[REQUEST_CACHE] = "hit"
    return response


def open_tarball(
    upstream: Upstream, method: str, url: URL, headers: Mapping[str, str]
) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
    """One upstream tarball request (the artifact cache's opener)."""
    return upstream.request(method, url, headers=headers, what=WHAT)


async def audit(request: web.Request, config: NpmConfig, rest: str) -> web.Response:
    """Pass an audit POST upstream and its JSON answer back."""
    body = await request.read()
    # aiohttp's server already undid the client's gzip (npm sends it) although the header still
    # says gzip: forward decoded bytes without the header.  Sniffing covers a server that did not.
    try:
        body = npmrewrite.decode_body(body, None, max_size=AUDIT_MAX_DECODED)
    except ValueError:
        return json_error(400, "Audit request body is not valid gzip")
    headers: dict[str, str] = {
        hdrs.CONTENT_TYPE: "application/json",
        hdrs.ACCEPT: "application/json",
        hdrs.ACCEPT_ENCODING: "gzip, deflate",
    }
    url = upstream_url(config, rest)
    fetched = await fetch_json(
        request.config_dict[upstream_key], "POST", url, headers, body, pass_client_errors=True
    )
    return web.Response(status=fetched.status, body=fetched.body, content_type="application/json")


async def json_passthrough(request: web.Request, config: NpmConfig, rest: str) -> web.Response:
    """Signing keys and search: upstream JSON as it is."""
    headers: dict[str, str] = {
        hdrs.ACCEPT: "application/json",
        hdrs.ACCEPT_ENCODING: "gzip, deflate",
    }
    url = upstream_url(config, rest, request.rel_url.raw_query_string)
    fetched = await fetch_json(request.config_dict[upstream_key], "GET", url, headers)
    return web.Response(body=fetched.body, content_type="application/json")


def setup_routes(app: web.Application, settings: Settings) -> None:
    """Register the npm endpoint on its sub-application."""
    # Mounted under the public URL's path and possibly on its own host: each mount knows where
    # it is reached and writes tarball URLs pointing there.
    base = app.get(registry_base_key)
    if base is None:
        public = settings.base_url
        base = public.with_path(public.path.rstrip("/") + "/npm/")
    app[npm_config_key] = npm_config(settings, base)
    # One catch-all: aiohttp's router unquotes only some %2F spellings, so dispatch() routes
    # on the raw path itself.
    app.router.add_route("*", "/{path:.*}", dispatch)
