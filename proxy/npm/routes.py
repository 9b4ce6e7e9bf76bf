"""The npm registry endpoint, at ``<public_url>/npm/`` and at the root of ``npm_host`` when set.

Every request has already passed the registry gate (throttles, authentication). Only npm's wire
format lives here: routing on the raw path (so ``@scope%2fname``, ``%2F`` and ``/`` all work), what
a packument says (``rewrite``), and which digest a tarball must match; the steps themselves (cache
or fetch -> decode -> parse/rewrite -> policy -> respond, and expected digest -> policy -> store or
fetch-and-verify -> respond) are ``proxy.registry.pipeline``'s. Packuments are cached after
rewriting, per mount and per form (abbreviated or full, from the client's ``Accept``), and every
tarball in them points at the mount that served them. Version documents (``<name>/<version>``, a
dist-tag too) and ``-/package/<name>/dist-tags`` are derived from the cached full packument and
cached beside it. Tarballs go through the artifact store, verified against the ``dist.integrity``
(else ``shasum``) their packument publishes. The registry is read-only."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache, partial
from itertools import chain
from operator import itemgetter
from sys import getsizeof
from typing import Any, Final

import orjson
from aiohttp import hdrs, web
from yarl import URL

from ..auth import NPM_CHALLENGE, unauthorized
from ..errors import Answer, json_error
from ..keys import registry_token
from ..registry.artifacts import Digest
from ..registry.decode import IN_FLIGHT, MAX_BODY, decode_body, decode_small, read_body
from ..registry.metacache import (
    Cached,
    CacheKey,
    MetaEntry,
    NotModified,
    Validators,
    deep_size,
    metadata_response,
    text_size,
)
from ..registry.metadisk import UpstreamAnswer
from ..registry.pipeline import (
    Artifact,
    Fetched,
    Keeping,
    Registry,
    decided,
    decision_for,
    fetch_metadata,
    note_cache_state,
    serve_artifact,
    serve_metadata,
)
from ..registry.policy import Decision, Ecosystem, PackageFacts, PolicyRefused
from ..registry.upstream import Upstream, UpstreamError, raise_for_upstream_status
from ..settings import Settings
from ..vhosts import RegistryMount
from . import rewrite as npmrewrite
from .login import LOGIN_METHODS, login_answer
from .notice import NOTICE_CACHE_CONTROL, NOTICE_HEADER, withheld_notice
from .rewrite import BadPath, PackagePath, Published, published_of

log = logging.getLogger(__name__)

READ_ONLY = "This registry is read-only"
# An audit payload lists package names and versions; this is far beyond any real project.
AUDIT_MAX_DECODED = 32 * 1024 * 1024
WHAT = "npm upstream"
CORGI = "application/vnd.npm.install-v1+json"
TARBALL_TYPE = "application/octet-stream"
# Rewriting parses and re-serialises JSON: above this size it runs off the event loop.
OFF_LOOP_BYTES = 512 * 1024
# The largest upstream JSON body read (as sent, before decoding); the biggest real packuments are
# tens of megabytes.  Above it the upstream's answer is an error, not a memory hog.
MAX_PACKUMENT_BYTES = MAX_BODY

PACKUMENT_HEADERS: Mapping[str, str] = {
    hdrs.CACHE_CONTROL: "private, max-age=300",
    hdrs.VARY: "Accept",
}
# Version documents and dist-tags come in one form whatever the client accepts.
DERIVED_HEADERS: Mapping[str, str] = {hdrs.CACHE_CONTROL: "private, max-age=300"}
TARBALL_CACHE_CONTROL = "private, max-age=31536000, immutable"
TARBALL_HEADERS: Mapping[str, str] = {hdrs.CACHE_CONTROL: TARBALL_CACHE_CONTROL}

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
# The format of packument entries the disk tier keeps (``packument_table``): raise it whenever
# the rewrite writes documents differently or the table changes, so that copies kept by an older
# pkgate are built again from the upstream's bytes instead of being served as they are.
KEPT_FORMAT = 2  # 2: the table's rows kept as columns


@dataclass(frozen=True, slots=True)
class NpmConfig:
    """Where one npm mount lives and where it fetches from."""

    mount: str  # raw path of the npm root without trailing slash: "/npm", "/base/npm" or ""
    public_root: str  # absolute URL of the npm root, no trailing slash: base of every URL we write
    upstream_root: str  # upstream registry base URL, with a trailing slash
    registry: Registry = field(compare=False)  # the shared pipeline (caches, upstream, policy)
    root: str  # raw path every request of this mount starts with: ``mount`` and a slash

    def packument_key(self, name: str, form: str) -> CacheKey:
        """The metadata cache key of a packument as this mount rewrites it."""
        # Entries hold URLs of this mount (a virtual host and the path mount differ).
        return ("npm", name, f"{form} {self.public_root}")

    def derived_key(self, name: str, what: str) -> CacheKey:
        """The metadata cache key of an answer derived from the full packument, named ``what``."""
        return ("npm", name, f"{what} {self.public_root}")


@dataclass(frozen=True, slots=True)
class JsonAnswer:
    """A decoded upstream JSON answer (audit, search, keys)."""

    status: int
    body: bytes
    content_type: str


# What PackumentEntry.aux_bytes reads and counts of each published file and publish time.
_INTEGRITY = itemgetter(0)  # Published.integrity
_SHASUM = itemgetter(1)  # Published.shasum
PUBLISHED_BYTES = getsizeof(Published(None, None, None))
FLOAT_BYTES = getsizeof(0.0)


@dataclass(slots=True)
class PackumentEntry(MetaEntry):
    """A rewritten packument and, by tarball file name, the hashes it publishes."""

    files: Mapping[str, Published] = field(default_factory=dict)
    # By tarball file name: what a request for it is (made at its first request; a few hundred
    # bytes per tarball asked for, never more than ``files`` has).
    artifacts: dict[str, Artifact] = field(default_factory=dict, repr=False, compare=False)

    def aux(self) -> tuple[object, ...]:
        return (self.facts, self.files)

    def aux_bytes(self) -> int:
        """Memory taken by the file table and the facts, summed by kind of object.

        A large packument's table and publish times are tens of thousands of small objects;
        walking them one by one (``deep_size``) cost more than rewriting the document.  Each
        string is counted with its real size (hashes and names come from the upstream), every
        ``Published`` and publish time at the size of one; the versions the table shares with
        the publish times are counted once.
        """
        files, facts = self.files, self.facts
        published: Mapping[str, float | None] = facts.published if facts is not None else {}
        values = files.values()
        strings = chain(files, map(_INTEGRITY, values), map(_SHASUM, values), published)
        size = (
            getsizeof(files)
            + getsizeof(published)
            + text_size(strings)
            + len(files) * PUBLISHED_BYTES
            + len(published) * FLOAT_BYTES
        )
        if facts is not None:
            size += getsizeof(facts) + getsizeof(facts.name) + deep_size(facts.dist_tags)
        return size

    def without(self, decision: Decision) -> PackumentEntry:
        """This packument without the versions ``decision`` removes, with its dist-tags."""
        body = npmrewrite.without(self.body, decision.removed, decision.dist_tags)
        variant = PackumentEntry(
            body=body,
            content_type=self.content_type,
            validators=self.validators,
            headers=with_notice(self.headers, decision),
            files={f: p for f, p in self.files.items() if p.version not in decision.removed},
        )
        variant.measure()
        return variant


def with_notice(headers: Mapping[str, str], decision: Decision) -> Mapping[str, str]:
    """``headers`` plus the ``npm-notice`` naming what ``decision`` withholds (``.notice``).

    npm prints the notice only for answers it does not store in its cache (make-fetch-happen
    marks every stored 200 ``x-local-cache``, which npm-registry-fetch skips), so such a variant
    is ``no-store``: npm asks again each time (the body then comes from pkgate's memory).
    """
    notice = withheld_notice(decision.removed)
    if notice is None:
        return headers
    return {**headers, hdrs.CACHE_CONTROL: NOTICE_CACHE_CONTROL, NOTICE_HEADER: notice}


def npm_config(settings: Settings, base: URL, registry: Registry) -> NpmConfig:
    """The mount's locations: ``base`` is the absolute URL it answers at (never request headers)."""
    if settings.npm_upstream is None:
        raise ValueError("npm_upstream is not set")
    mount = base.raw_path.rstrip("/")
    return NpmConfig(
        mount=mount,
        public_root=str(base).rstrip("/"),
        upstream_root=settings.npm_upstream,
        registry=registry,
        root=mount + "/",
    )


def upstream_url(config: NpmConfig, raw_path: str, query: str = "") -> URL:
    # encoded=True keeps %2f in scoped names as it is; callers only pass validated paths.
    text = config.upstream_root + raw_path
    if query:
        text += "?" + query
    return URL(text, encoded=True)


def read_only() -> web.Response:
    return json_error(405, READ_ONLY, headers={hdrs.ALLOW: "GET, HEAD"})


@lru_cache(maxsize=256)  # clients send a handful of fixed Accept strings
def form_of(accept: str | None) -> str:
    """Which packument form an ``Accept`` header asks for (npm's corgi media type or not).

    Media types compare case-insensitively; one listed with ``q=0`` is refused, not asked for.
    """
    if accept is None:
        return FULL
    lowered = accept.lower()
    if CORGI not in lowered:
        return FULL
    for item in lowered.split(","):
        media_type, _, params = item.partition(";")
        if media_type.strip() != CORGI:
            continue
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip() == "q":
                try:
                    if float(value.strip()) <= 0:
                        break
                except ValueError:
                    break
        else:
            return ABBREVIATED
    return FULL


# What the upstream is asked for each form: only the canonical media type the cache key names,
# never the client's own header (an upstream might read it differently than we do).
UPSTREAM_ACCEPT: Mapping[str, str] = {ABBREVIATED: CORGI, FULL: "application/json"}


# -- handlers -------------------------------------------------------------------------------------


async def ping(request: web.Request) -> web.Response:
    """``npm ping`` (and pnpm's ``?write=true``)."""
    return web.json_response({})


async def whoami(request: web.Request) -> web.Response:
    """``npm whoami``: the email of the token's owner."""
    token = registry_token(request)
    if token is None:
        return unauthorized("Not logged in", NPM_CHALLENGE)
    return web.json_response({"username": token.email})


def dispatch(config: NpmConfig, request: web.Request) -> Answer | web.StreamResponse:
    """Route one npm request on its raw path (the step of a mount, bound to its ``config``).

    Gives the answer, or the chosen step's coroutine without awaiting it (the gate awaits it):
    on the warm path every coroutine level costs a frame and a send, and a memory hit needs none.
    """
    raw = request.raw_path
    if "?" in raw:
        raw = raw.split("?", 1)[0]
    root = config.root
    if not raw.startswith(root):
        raise web.HTTPNotFound()
    rest = raw[len(root) :]
    method = request.method
    if rest.startswith("-/"):
        return endpoint(request, config, rest, method)
    if method not in (hdrs.METH_GET, hdrs.METH_HEAD):
        return read_only()
    if rest == "":
        raise web.HTTPNotFound()
    try:
        package = npmrewrite.parse_package_path(rest)
    except BadPath as exc:
        return json_error(400, str(exc))
    if package is None:
        raise web.HTTPNotFound()
    if package.file is not None:
        return tarball(request, config, package)
    if package.version is not None:
        return version_document(request, config, package)
    return packument(request, config, package)


async def endpoint(
    request: web.Request, config: NpmConfig, rest: str, method: str
) -> web.StreamResponse:
    """The registry's own endpoints, below ``-/``: audits, ping, whoami, keys, search, tags."""
    if rest in AUDIT_PATHS:
        if method != hdrs.METH_POST:
            raise web.HTTPMethodNotAllowed(method, [hdrs.METH_POST])
        return await audit(request, config, rest)
    if method not in (hdrs.METH_GET, hdrs.METH_HEAD):
        return read_only()
    if rest == "-/ping":
        return await ping(request)
    if rest == "-/whoami":
        return await whoami(request)
    if rest in JSON_GET_PATHS:
        return await json_passthrough(request, config, rest)
    return await dist_tags(request, config, rest)


def packument(
    request: web.Request, config: NpmConfig, package: PackagePath
) -> Coroutine[Any, Any, web.Response] | web.Response:
    """A package document, full or abbreviated as the client's Accept asks, from the cache:
    a memory hit answered at once, anything else the pipeline's coroutine (see ``dispatch``)."""
    registry = config.registry
    form = form_of(request.headers.get(hdrs.ACCEPT))
    fetch = partial(fetch_packument, config, package, form)
    complete = None
    if form == ABBREVIATED:
        complete = partial(full_facts, registry, config, package)
    key = config.packument_key(package.name, form)
    return serve_metadata(request, registry, key, fetch, complete_facts=complete)


async def full_packument(registry: Registry, config: NpmConfig, package: PackagePath) -> Cached:
    fetch = partial(fetch_packument, config, package, FULL)
    return await registry.metadata.get_or_fetch(config.packument_key(package.name, FULL), fetch)


async def full_facts(
    registry: Registry, config: NpmConfig, package: PackagePath
) -> PackageFacts | None:
    """The facts of the full packument (publish times included) for an abbreviated answer."""
    return (await full_packument(registry, config, package)).entry.facts


async def version_document(
    request: web.Request, config: NpmConfig, package: PackagePath
) -> web.Response:
    """One version's manifest (an exact version or a dist-tag's), from the full packument."""
    spec = package.version
    assert spec is not None
    derive = partial(npmrewrite.version_document, spec=spec)
    missing = f"{package.name}@{spec}: not found"
    return await derived(request, config, package, f"version {spec}", derive, missing, spec)


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
    spec: str | None = None,
) -> web.Response:
    """An answer ``derive`` computes from the full packument, cached beside it under ``what``.

    ``derive`` returning None is a 404 with ``missing`` as its message (remembered like an
    upstream 404).  A derived entry lives as long as any metadata entry, so it trails a changed
    packument by at most one TTL.  When the policy changes the packument, the answer is derived
    from the packument as the policy lets it be served (and ``spec``, a version the policy
    removed, is refused), uncached.
    """
    registry = config.registry
    cache = registry.metadata
    policy = registry.policy
    if policy.active:
        source = await full_packument(registry, config, package)
        found = await decision_for(registry, policy, source.entry)
        if found is not None and not found[0].allows_all:
            decision, facts = found
            refusal = decision.refusal_for(spec)
            if refusal is not None:
                policy.applied(registry_token(request), facts, decision, spec)
                raise PolicyRefused(refusal)
            key = config.packument_key(package.name, FULL)
            served = await decided(request, registry, policy, key, source.entry)
            answer = await off_loop_if_large(derive, served.body)
            if answer is None:
                raise UpstreamError(404, missing)
            entry = MetaEntry.build(
                answer,
                "application/json",
                upstream_last_modified=source.entry.validators.last_modified,
                headers=DERIVED_HEADERS,
            )
            note_cache_state(request, source)
            return metadata_response(request, Cached(entry, source.state))

    async def fetch(validators: Validators) -> MetaEntry:
        # The derived entry has no upstream of its own: the packument's entry revalidates.
        source = await full_packument(registry, config, package)
        answer = await off_loop_if_large(derive, source.entry.body)
        if answer is None:
            raise UpstreamError(404, missing)
        return MetaEntry.build(
            answer,
            "application/json",
            upstream_last_modified=source.entry.validators.last_modified,
            headers=DERIVED_HEADERS,
        )

    cached = await cache.get_or_fetch(config.derived_key(package.name, what), fetch)
    note_cache_state(request, cached)
    return metadata_response(request, cached)


async def off_loop_if_large(derive: Callable[[bytes], bytes | None], body: bytes) -> bytes | None:
    if len(body) > OFF_LOOP_BYTES:
        return await asyncio.to_thread(derive, body)
    return derive(body)


async def fetch_packument(
    config: NpmConfig,
    package: PackagePath,
    form: str,
    validators: Validators,
) -> PackumentEntry | NotModified:
    """Fetch, decode and rewrite a packument (the metadata cache's fetch function)."""
    build = partial(packument_entry, name=package.name, public_root=config.public_root)
    return await fetch_metadata(
        config.registry.upstream,
        upstream_url(config, package.escaped_name),
        build,
        validators=validators,
        accept=UPSTREAM_ACCEPT[form],
        what=WHAT,
        limit=MAX_PACKUMENT_BYTES,
        disk=config.registry.metadata.disk,
        keep=Keeping(
            f"npm-packument/{KEPT_FORMAT} {package.name} {config.public_root}",
            packument_table,
            partial(restored_packument, name=package.name),
        ),
    )


def packument_entry(fetched: Fetched, name: str, public_root: str) -> PackumentEntry:
    """The cache entry for an upstream packument: rewritten, with its files' hashes and facts."""
    try:
        rewritten = npmrewrite.rewrite(fetched.body, name, public_root)
    except ValueError as exc:
        raise UpstreamError(502, f"{WHAT} sent an unusable packument ({exc})") from None
    entry = PackumentEntry(
        body=rewritten.body,
        content_type=fetched.content_type or "application/json",
        validators=Validators(fetched.etag, fetched.last_modified),
        headers=PACKUMENT_HEADERS,
        files=rewritten.files,
        facts=PackageFacts(
            Ecosystem.NPM,
            name,
            rewritten.published,
            rewritten.dist_tags,
            times_known=rewritten.times_known,
        ),
    )
    entry.measure()  # here: off the event loop for large packuments
    return entry


def packument_table(entry: PackumentEntry) -> bytes:
    """What the disk tier keeps of a packument entry besides its body (``restored_packument``
    reads it back): the file table, the publish times and the dist-tags.

    Tables are kept as columns (one JSON list per field): read back, a column is one list of
    strings, where a list per row would be tens of thousands of lists for the collector to walk.
    """
    facts = entry.facts
    assert facts is not None  # every packument entry is built with its facts
    files = entry.files
    published = facts.published
    return orjson.dumps(
        {
            "files": {
                "name": list(files),
                "integrity": [p.integrity for p in files.values()],
                "shasum": [p.shasum for p in files.values()],
                "version": [p.version for p in files.values()],
            },
            "published": {"version": list(published), "time": list(published.values())},
            "dist_tags": facts.dist_tags,
            "times_known": facts.times_known,
        }
    )


def restored_packument(table: Any, answer: UpstreamAnswer, name: str) -> PackumentEntry:
    """The entry ``packument_entry`` built, from its table read back from disk (its body is put
    in by the caller); every field is checked: ``TypeError`` or ``ValueError`` otherwise.

    A large packument's table has tens of thousands of rows: each column is checked at once
    (the set of its values' types, which the interpreter makes without a Python step per value)
    and the entry's objects are made by ``map``, not row by row.
    """
    versions, times = _columns(table["published"], ("version", "time"))
    time_types = _types(times)
    if not _types(versions) <= _TEXT or not time_types <= _TIME:
        raise TypeError("a publish time is not a version and a number")
    if int in time_types:  # whole numbers: kept as floats, as when built
        published = {
            v: None if t is None else float(t) for v, t in zip(versions, times, strict=True)
        }
    else:
        published = dict(zip(versions, times, strict=True))
    names, integrities, shasums, file_versions = _columns(
        table["files"], ("name", "integrity", "shasum", "version")
    )
    if not _types(names) <= _TEXT or not all(
        _types(column) <= _TEXT_OR_NONE for column in (integrities, shasums, file_versions)
    ):
        raise TypeError("a file's hashes are not text")
    # The table's versions are the publish times' own strings (counted once, as when built).
    shared = {v: v for v in published}
    rows = zip(integrities, shasums, map(shared.get, file_versions, file_versions), strict=True)
    files = dict(zip(names, map(published_of, rows), strict=True))
    dist_tags = table["dist_tags"]
    if type(dist_tags) is not dict or not _types(dist_tags.values()) <= _TEXT:
        raise TypeError("dist-tags are not text")
    times_known = table["times_known"]
    if type(times_known) is not bool:
        raise TypeError("times_known is not a boolean")
    return PackumentEntry(
        body=b"",
        content_type=answer.content_type or "application/json",
        validators=answer.validators(),
        headers=PACKUMENT_HEADERS,
        files=files,
        facts=PackageFacts(Ecosystem.NPM, name, published, dist_tags, times_known=times_known),
    )


_TEXT: Final = frozenset({str})
_TEXT_OR_NONE: Final = frozenset({str, type(None)})
_TIME: Final = frozenset({float, int, type(None)})


def _types(values: Iterable[object]) -> set[type]:
    """The types of ``values``."""
    return set(map(type, values))


def _columns(value: Any, fields: tuple[str, ...]) -> list[list[Any]]:
    """The columns ``fields`` of ``value``, a JSON object of lists of one length (a table kept
    by ``packument_table``); ``TypeError`` otherwise."""
    if type(value) is not dict or set(value) != set(fields):
        raise TypeError("not a table of " + ", ".join(fields))
    columns = [value[f] for f in fields]
    if not _types(columns) <= {list} or len(set(map(len, columns))) > 1:
        raise TypeError("a table's columns are not lists of one length")
    return columns


async def fetch_json(
    upstream: Upstream,
    method: str,
    url: URL,
    headers: Mapping[str, str],
    data: bytes | None = None,
    *,
    pass_client_errors: bool = False,
) -> JsonAnswer:
    """One upstream JSON request, decoded; failures become UpstreamError.

    With ``pass_client_errors`` an upstream 4xx (other than an auth refusal of pkgate itself)
    is returned for the caller to pass on instead of being mapped.
    """
    with IN_FLIGHT.hold() as held:
        async with upstream.request(method, url, headers=headers, data=data, what=WHAT) as resp:
            status = resp.status
            if not (pass_client_errors and 400 <= status < 500 and status not in (401, 403, 407)):
                raise_for_upstream_status(resp, WHAT)
            if status != 200 and not (pass_client_errors and status >= 400):
                raise UpstreamError(502, f"{WHAT} answered unexpected status {status}")
            raw = await read_body(resp, held, WHAT, MAX_PACKUMENT_BYTES)
            content_type = resp.headers.get(hdrs.CONTENT_TYPE, "application/json")
            coding = resp.headers.get(hdrs.CONTENT_ENCODING)
        body = await decode_body(raw, coding, held, WHAT, MAX_PACKUMENT_BYTES)
        return JsonAnswer(status, bytes(body), content_type)


def published_digest(published: Published | None) -> Digest | None:
    """The digest a tarball must match: its sha512 SRI integrity, else its sha1 shasum."""
    if published is None:
        return None
    return _digest(published.integrity, published.shasum)


@lru_cache(maxsize=8192)
def _digest(integrity: str | None, shasum: str | None) -> Digest | None:
    # Parsed once per published hash, not on every download of the tarball (Digest is frozen).
    return Digest.from_sri(integrity) or Digest.from_hex("sha1", shasum)


async def published_file(
    registry: Registry, config: NpmConfig, package: PackagePath
) -> tuple[Published, PackumentEntry] | None:
    """What a tarball's packument publishes for it (and that packument); None when unknown."""
    assert package.file is not None
    cache = registry.metadata
    for form in (ABBREVIATED, FULL):
        entry = cache.peek(config.packument_key(package.name, form))
        if isinstance(entry, PackumentEntry):
            published = entry.files.get(package.file)
            return (published, entry) if published is not None else None
    # No packument here yet (another worker served it, it was evicted, or the cache is off):
    # fetch the abbreviated one; it lands in the cache for packument requests too.
    fetch = partial(fetch_packument, config, package, ABBREVIATED)
    try:
        cached = await cache.get_or_fetch(config.packument_key(package.name, ABBREVIATED), fetch)
    except UpstreamError:
        return None
    entry = cached.entry
    if not isinstance(entry, PackumentEntry):
        return None
    published = entry.files.get(package.file)
    return (published, entry) if published is not None else None


async def tarball(
    request: web.Request, config: NpmConfig, package: PackagePath
) -> web.StreamResponse:
    """A tarball: expected digest (from its packument) -> policy -> store or fetch-and-verify."""
    assert package.file is not None
    registry = config.registry
    found = await published_file(registry, config, package)
    published, entry = found if found is not None else (None, None)
    decision = None
    policy = registry.policy
    if policy.active and entry is not None:
        decision = await decision_for(
            registry, policy, entry, partial(full_facts, registry, config, package)
        )
    artifact = entry.artifacts.get(package.file) if entry is not None else None
    if artifact is None:
        artifact = Artifact(
            ecosystem="npm",
            package=package.name,
            version=published.version if published is not None else None,
            filename=package.file,
            url=upstream_url(config, f"{package.name}/-/{package.file}"),
            digest=published_digest(published),
            what=WHAT,
            content_type=TARBALL_TYPE,
            headers=TARBALL_HEADERS,
        )
        if entry is not None:
            entry.artifacts[package.file] = artifact
    return await serve_artifact(request, registry, artifact, decision)


async def audit(request: web.Request, config: NpmConfig, rest: str) -> web.Response:
    """Pass an audit POST upstream and its JSON answer back."""
    body = await request.read()
    # aiohttp's server already undid the client's gzip (npm sends it) although the header still
    # says gzip: forward decoded bytes without the header.  Sniffing covers a server that did not.
    try:
        body = decode_small(body, None, AUDIT_MAX_DECODED)
    except ValueError:
        return json_error(400, "Audit request body is not valid gzip")
    headers: dict[str, str] = {
        hdrs.CONTENT_TYPE: "application/json",
        hdrs.ACCEPT: "application/json",
        hdrs.ACCEPT_ENCODING: "gzip, deflate",
    }
    url = upstream_url(config, rest)
    fetched = await fetch_json(
        config.registry.upstream, "POST", url, headers, body, pass_client_errors=True
    )
    return web.Response(status=fetched.status, body=fetched.body, content_type="application/json")


async def json_passthrough(request: web.Request, config: NpmConfig, rest: str) -> web.Response:
    """Signing keys and search: upstream JSON as it is."""
    headers: dict[str, str] = {
        hdrs.ACCEPT: "application/json",
        hdrs.ACCEPT_ENCODING: "gzip, deflate",
    }
    url = upstream_url(config, rest, request.rel_url.raw_query_string)
    fetched = await fetch_json(config.registry.upstream, "GET", url, headers)
    return web.Response(body=fetched.body, content_type="application/json")


def setup_routes(mount: RegistryMount, settings: Settings) -> None:
    """Register the npm endpoint on ``mount`` (which knows where it is reached: tarball URLs
    point there)."""
    config = npm_config(settings, mount.base, mount.registry)
    # npm login is answered with how to get a token, before the throttles and authentication.
    mount.gate.answer_early(LOGIN_METHODS, login_answer(settings, config.mount))
    # One catch-all: aiohttp's router unquotes only some %2F spellings, so dispatch() routes
    # on the raw path itself.
    mount.add("*", "/{path:.*}", partial(dispatch, config))
