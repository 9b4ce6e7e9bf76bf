"""The npm registry endpoint under ``<public_url>/npm/``.

Every request has already passed the registry auth middleware.  The data path reads top to
bottom: route on the raw path (so ``@scope%2fname``, ``%2F`` and ``/`` all work) -> fetch from
the upstream -> rewrite -> answer.  Packuments are rewritten so that every tarball is fetched
through pkgate; tarballs are streamed byte-for-byte.  The registry is read-only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import hdrs, web
from yarl import URL

from tokenapi.keys import request_token

from . import npmrewrite
from .auth import NPM_CHALLENGE, unauthorized
from .errors import json_error
from .keys import upstream_key
from .npmrewrite import BadPath, PackagePath
from .settings import Settings
from .upstream import Upstream, UpstreamError, raise_for_upstream_status

log = logging.getLogger(__name__)

READ_ONLY = "This registry is read-only"
# An audit payload lists package names and versions; this is far beyond any real project.
AUDIT_MAX_DECODED = 32 * 1024 * 1024
WHAT = "npm upstream"
CHUNK = 64 * 1024

PACKUMENT_CACHE_CONTROL = "private, max-age=300"
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


@dataclass(frozen=True, slots=True)
class NpmConfig:
    """Where the npm endpoint lives and where it fetches from."""

    mount: str  # raw path of the npm root, e.g. "/npm"
    public_root: str  # "<public_url>/npm", no trailing slash: base of every URL we write
    upstream_root: str  # upstream registry base URL, with a trailing slash


npm_config_key = web.AppKey("npm_config", NpmConfig)


@dataclass(frozen=True, slots=True)
class Fetched:
    """A decoded upstream JSON answer."""

    status: int
    body: bytes
    content_type: str


@dataclass(frozen=True, slots=True)
class Packument:
    """A rewritten packument, ready to serve."""

    body: bytes
    content_type: str
    etag: str


def npm_config(settings: Settings) -> NpmConfig:
    """The endpoint's locations derived from settings (never from request headers)."""
    if settings.npm_upstream is None:
        raise ValueError("npm_upstream is not set")
    base = settings.base_url
    mount = base.raw_path.rstrip("/") + "/npm"
    return NpmConfig(
        mount=mount,
        public_root=str(base).rstrip("/") + "/npm",
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
    config = request.config_dict[npm_config_key]
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
    if rest == "" or rest.startswith("-/"):
        raise web.HTTPNotFound()
    try:
        package = npmrewrite.parse_package_path(rest)
    except BadPath as exc:
        return json_error(400, str(exc))
    if package is None:
        raise web.HTTPNotFound()
    if package.file is None:
        return await packument(request, config, package)
    return await tarball(request, config, package)


async def packument(request: web.Request, config: NpmConfig, package: PackagePath) -> web.Response:
    """A package document, full or abbreviated as the client's Accept asks."""
    upstream = request.config_dict[upstream_key]
    fetched = await fetch_packument(upstream, config, package, request.headers.get(hdrs.ACCEPT))
    doc = rewrite_packument(fetched, package, config)
    headers: dict[str, str] = {
        hdrs.CONTENT_TYPE: doc.content_type,
        hdrs.ETAG: doc.etag,
        hdrs.CACHE_CONTROL: PACKUMENT_CACHE_CONTROL,
        hdrs.VARY: "Accept",
    }
    if npmrewrite.etag_matches(request.headers.get(hdrs.IF_NONE_MATCH), doc.etag):
        headers.pop(hdrs.CONTENT_TYPE)
        return web.Response(status=304, headers=headers)
    return web.Response(body=doc.body, headers=headers)


async def fetch_packument(
    upstream: Upstream, config: NpmConfig, package: PackagePath, accept: str | None
) -> Fetched:
    """Fetch and decode a packument from the upstream (the client's Accept picks the form)."""
    headers: dict[str, str] = {hdrs.ACCEPT_ENCODING: "gzip, deflate"}
    if accept:
        headers[hdrs.ACCEPT] = accept
    url = upstream_url(config, package.escaped_name)
    return await fetch_json(upstream, "GET", url, headers)


def rewrite_packument(fetched: Fetched, package: PackagePath, config: NpmConfig) -> Packument:
    """Point every tarball at pkgate and give the result its own ETag."""
    try:
        body = npmrewrite.rewrite_packument(fetched.body, package.name, config.public_root)
    except ValueError as exc:
        raise UpstreamError(502, f"{WHAT} sent an unusable packument ({exc})") from None
    return Packument(body, fetched.content_type, npmrewrite.etag_of(body, fetched.content_type))


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
        raw = await resp.read()
        content_type = resp.headers.get(hdrs.CONTENT_TYPE, "application/json")
        coding = resp.headers.get(hdrs.CONTENT_ENCODING)
    try:
        body = npmrewrite.decode_body(raw, coding)
    except ValueError as exc:
        raise UpstreamError(502, f"{WHAT} sent an undecodable body ({exc})") from None
    return Fetched(status, body, content_type)


async def tarball(
    request: web.Request, config: NpmConfig, package: PackagePath
) -> web.StreamResponse:
    """Stream a tarball from the upstream byte-for-byte (npmjs layout upstream)."""
    assert package.file is not None
    upstream = request.config_dict[upstream_key]
    url = upstream_url(config, f"{package.name}/-/{package.file}")
    out: web.StreamResponse | None = None
    try:
        # identity: the bytes must reach the client exactly as published, with their length.
        async with upstream.request(
            request.method, url, headers={hdrs.ACCEPT_ENCODING: "identity"}, what=WHAT
        ) as resp:
            raise_for_upstream_status(resp, WHAT)
            if resp.status != 200:
                raise UpstreamError(502, f"{WHAT} answered unexpected status {resp.status}")
            out = web.StreamResponse(
                headers={
                    hdrs.CONTENT_TYPE: "application/octet-stream",
                    hdrs.CACHE_CONTROL: TARBALL_CACHE_CONTROL,
                }
            )
            if resp.content_length is not None:
                out.content_length = resp.content_length
            await out.prepare(request)
            if request.method != hdrs.METH_HEAD:
                # 64 KiB pieces keep per-download memory small (measured: whole received
                # chunks via iter_any() double throughput but also double the RSS growth).
                async for chunk in resp.content.iter_chunked(CHUNK):
                    await out.write(chunk)
            await out.write_eof()
            return out
    except UpstreamError as exc:
        if out is None or not out.prepared:
            raise
        # Headers are gone; the only honest signal left is a connection cut short.
        log.warning("npm tarball %s broke off: %s", package.name, exc.message)
        if request.transport is not None:
            request.transport.close()
        return out


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
    app[npm_config_key] = npm_config(settings)
    # One catch-all: aiohttp's router unquotes only some %2F spellings, so dispatch() routes
    # on the raw path itself.
    app.router.add_route("*", "/{path:.*}", dispatch)
