"""The registry pipeline: the steps every npm and PyPI answer goes through, written once (SPEC §14).

Serve metadata (a packument, a version document, an index page)::

    cache or (fetch -> decode -> parse/rewrite)  ->  policy  ->  respond
    ``MetadataCache.get_or_fetch(key, fetch)``      ``decided``    ``metadata_response``
    with ``fetch_metadata(..., build)``

``fetch_metadata`` does the upstream side for any registry: a conditional GET, the status mapping,
the bounded read and the decoding (``decode``), and hands the decoded body to the registry's
``build`` (parse, rewrite, render: a ``MetaEntry`` carrying the ``PackageFacts`` the policy
judges), on a worker thread when the body is large.  ``decided`` applies the policy's decision to a
cached entry: unchanged, a variant without the removed versions (made by the entry's own
``without``, kept in the metadata cache beside it), or ``PolicyRefused``.

Serve artifact (a tarball, a wheel, a ``.metadata``)::

    expected digest  ->  policy  ->  store hit or (fetch -> verify while streaming)  ->  respond
    (the registry)   ``check_artifact``   ``ArtifactCache.serve``

``serve_artifact`` runs the last three steps for an ``Artifact`` the registry describes, and after
a complete answer calls every ``ArtifactServedHook`` registered on the ``Registry`` (token id,
ecosystem, package, version, file name, bytes sent): the one place downloads are observed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from typing import Any, Final, Generic, NamedTuple, TypeVar

import aiohttp
import orjson
from aiohttp import hdrs, web
from yarl import URL

from ..keys import (
    artifact_cache_key,
    metadata_cache_key,
    note_cache,
    registry_facts,
    registry_token,
    upstream_key,
)
from .artifacts import ArtifactCache, Digest, file_name
from .decode import IN_FLIGHT, MAX_BODY, Held, decode_body, gzip_length, read_body
from .delivery import ARTIFACT_SENT, deliver
from .metacache import (
    GZIP,
    NOT_MODIFIED,
    Cached,
    CacheKey,
    CacheState,
    Fetch,
    MetadataCache,
    MetaEntry,
    NotModified,
    Validators,
    metadata_response,
)
from .metadisk import Built, MetadataDisk, UpstreamAnswer
from .policy import (
    Decision,
    NoPolicy,
    PackageFacts,
    Policy,
    PolicyRefused,
)
from .upstream import Upstream, UpstreamError, raise_for_upstream_status

log = logging.getLogger(__name__)

# Building an entry from a decoded body larger than this runs on a worker thread.
OFF_LOOP_BYTES: Final = 256 * 1024
NO_POLICY: Final = NoPolicy()

E = TypeVar("E", bound=MetaEntry)


class ArtifactServed(NamedTuple):
    """One artifact answered complete to a client (what download history records); a named
    tuple, as one is made per artifact served."""

    token_id: str | None
    ecosystem: str
    package: str
    version: str | None
    filename: str
    bytes: int


ArtifactServedHook = Callable[[ArtifactServed], None]


class Registry:
    """The shared machinery of one server's registries, read from the root application.

    Handlers are bound to it when their mount is set up (``RegistryMount.registry``), so a warm
    request looks nothing up to reach it.  ``on_served`` hooks are called on the event
    loop after every complete artifact answer; they must not block (queue and flush elsewhere).
    """

    def __init__(self, root: web.Application) -> None:
        self._root = root
        self.on_served: list[ArtifactServedHook] = []
        # The policy stage; a supply-chain engine replaces it at start-up (``registry.policy =``).
        self.policy: Policy = NO_POLICY
        # The caches, read from the root once they exist (its cleanup contexts make them).
        self._metadata: MetadataCache | None = None
        self._artifacts: ArtifactCache | None = None

    @property
    def upstream(self) -> Upstream:
        return self._root[upstream_key]

    @property
    def metadata(self) -> MetadataCache:
        cache = self._metadata
        if cache is None:
            cache = self._metadata = self._root[metadata_cache_key]
        return cache

    @property
    def artifacts(self) -> ArtifactCache:
        cache = self._artifacts
        if cache is None:
            cache = self._artifacts = self._root[artifact_cache_key]
        return cache

    def served(self, event: ArtifactServed) -> None:
        for hook in self.on_served:
            try:
                hook(event)
            except Exception:
                log.exception("an artifact-served hook failed")


registry_key: Final = web.AppKey("registry", Registry)


# -- metadata -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fetched:
    """An upstream metadata answer, decoded."""

    url: URL
    body: bytes | bytearray
    content_type: str | None
    etag: str | None
    last_modified: str | None


@dataclass(frozen=True, slots=True)
class Keeping(Generic[E]):
    """How a registry keeps the entries it builds on the disk tier, beside the upstream's bytes
    (``metadisk.Built``), so that a restart restores them instead of building them again.

    ``kind`` names the builder, the format of its table and every parameter the build depends
    on (a copy of another kind is built again); ``table`` is what an entry knows besides its
    body, as JSON (run off the event loop); ``restore`` makes the entry again from that table,
    read back, and the upstream answer it was built from (the body is put in afterwards).  The
    table comes from disk: ``restore`` checks every field's type and raises ``ValueError``,
    ``TypeError`` or ``KeyError`` for anything else.
    """

    kind: str
    table: Callable[[E], bytes]
    restore: Callable[[Any, UpstreamAnswer], E]


async def fetch_metadata(
    upstream: Upstream,
    url: URL,
    build: Callable[[Fetched], E],
    *,
    validators: Validators,
    accept: str,
    what: str,
    limit: int = MAX_BODY,
    disk: MetadataDisk | None = None,
    keep: Keeping[E] | None = None,
) -> E | NotModified:
    """One conditional upstream GET of a metadata document, decoded and built into an entry.

    The metadata cache's fetch step for every registry: 304 is ``NOT_MODIFIED`` (only ever when
    ``validators`` were sent), failure statuses become ``UpstreamError``, the body is read and
    decoded within ``limit`` and the process-wide budget, and ``build`` (which raises
    ``UpstreamError`` for a document it cannot use) runs off the loop for large bodies.

    With a ``disk`` tier (``metadisk``) and nothing in memory, the upstream's last answer stored
    there is used while younger than the tier's ttl, otherwise revalidated with its own
    validators, and served stale (within the tier's ``stale_max``) when the upstream fails;
    every 200 that builds is stored, every 304 confirms the stored copy, a 404 deletes it.  With
    ``keep``, the entry built is stored beside the answer, and a stored answer is restored from
    it rather than built again.
    """
    text_url = str(url.with_user(None))  # the disk tier's key: never an upstream's credentials
    place = _Place(disk, text_url, accept, keep) if disk is not None else None
    with IN_FLIGHT.hold() as held:
        stored: UpstreamAnswer | None = None
        kept: E | None = None
        if place is not None and not validators.headers():
            kind = keep.kind if keep is not None else None
            stored = await place.disk.load(text_url, accept, limit, held, kind)
            if stored is not None and stored.built is not None and keep is not None:
                kept = await _restored(stored, keep, limit)
                if kept is None:
                    # Made under this data directory's key, yet unusable: not to be trusted.
                    log.warning("metadata disk cache: the entry kept for %s is unusable", what)
                    place.disk.stats.rejected += 1
                    stored = None
            if stored is not None and stored.age < place.disk.ttl:
                place.disk.stats.fresh += 1
                return await _loaded(stored, kept, place, build, held, what, limit, CacheState.DISK)
        conditional = validators.headers() or (stored.validators().headers() if stored else {})
        headers: dict[str, str] = {
            hdrs.ACCEPT: accept,
            hdrs.ACCEPT_ENCODING: "gzip, deflate",
            **conditional,
        }
        try:
            answer = await _ask(upstream, url, headers, bool(conditional), held, what, limit)
        except UpstreamError as exc:
            if place is None:
                raise
            if exc.status == 404:
                await place.disk.forget(text_url, accept)
            elif stored is not None and stored.age <= place.disk.stale_max:
                place.disk.stats.stale += 1
                return await _loaded(
                    stored, kept, place, build, held, what, limit, CacheState.STALE
                )
            raise
        if answer is None:  # 304
            if place is not None:
                await place.disk.confirm(text_url, accept)
                if stored is not None:
                    place.disk.stats.revalidated += 1
                    confirmed = replace(stored, age=0.0)
                    return await _loaded(
                        confirmed, kept, place, build, held, what, limit, CacheState.REVALIDATED
                    )
            return NOT_MODIFIED
        entry = await _built(answer, url, build, held, what, limit)
        if place is not None:
            place.disk.save(text_url, accept, answer, _dump(keep, entry) if keep else None)
        return entry


async def _ask(
    upstream: Upstream,
    url: URL,
    headers: Mapping[str, str],
    conditional: bool,
    held: Held,
    what: str,
    limit: int,
) -> UpstreamAnswer | None:
    """The upstream's answer: None for a 304 to a conditional request, else the body as sent
    with its coding, type and validators; failures as ``UpstreamError``."""
    async with upstream.request("GET", url, headers=headers, what=what, kind="metadata") as resp:
        if resp.status == 304 and conditional:
            return None
        raise_for_upstream_status(resp, what)
        if resp.status != 200:
            raise UpstreamError(502, f"{what} answered unexpected status {resp.status}")
        raw = await read_body(resp, held, what, limit)
        return UpstreamAnswer(
            raw,
            resp.headers.get(hdrs.CONTENT_ENCODING),
            resp.headers.get(hdrs.CONTENT_TYPE),
            resp.headers.get(hdrs.ETAG),
            resp.headers.get(hdrs.LAST_MODIFIED),
        )


async def _built(
    answer: UpstreamAnswer,
    url: URL,
    build: Callable[[Fetched], E],
    held: Held,
    what: str,
    limit: int,
) -> E:
    """``answer`` decoded (within ``limit`` and the budget) and built, off the loop when large."""
    body = await decode_body(answer.raw, answer.coding, held, what, limit)
    fetched = Fetched(url, body, answer.content_type, answer.etag, answer.last_modified)
    del body
    if len(fetched.body) > OFF_LOOP_BYTES:
        return await asyncio.to_thread(build, fetched)
    return build(fetched)


class _Place(NamedTuple):
    """Where a document's copy is on the disk tier, and how its entry is kept there."""

    disk: MetadataDisk
    url: str
    accept: str
    keep: Keeping[Any] | None


async def _loaded(
    stored: UpstreamAnswer,
    kept: E | None,
    place: _Place,
    build: Callable[[Fetched], E],
    held: Held,
    what: str,
    limit: int,
    state: CacheState,
) -> E:
    """The entry for an answer read back from the disk tier, marked with how it was had: the
    entry ``kept`` beside it, or one built from its bytes (and then kept, for the next start)."""
    entry = kept
    if entry is not None:
        place.disk.stats.restored += 1
    else:
        entry = await _built(stored, URL(place.url), build, held, what, limit)
        place.disk.stats.rebuilt += 1
        if place.keep is not None:
            # Its time on disk stays the upstream's: keeping the entry makes it no fresher.
            place.disk.save(
                place.url, place.accept, stored, _dump(place.keep, entry), age=stored.age
            )
    entry.loaded = (state, stored.age)
    return entry


def _dump(keep: Keeping[E], entry: E) -> Callable[[], Built]:
    """What makes the copy of ``entry`` the disk tier keeps (called on its writer thread)."""

    def dump() -> Built:
        return Built(keep.kind, keep.table(entry), entry.stored, entry.coding, entry.length)

    return dump


async def _restored(stored: UpstreamAnswer, keep: Keeping[E], limit: int) -> E | None:
    """The entry kept beside ``stored``, checked and made again (off the loop when large);
    None when it is unusable."""
    built = stored.built
    assert built is not None
    if len(built.stored) + len(built.table) > OFF_LOOP_BYTES:
        return await asyncio.to_thread(_restore, built, stored, keep, limit)
    return _restore(built, stored, keep, limit)


def _restore(built: Built, stored: UpstreamAnswer, keep: Keeping[E], limit: int) -> E | None:
    if built.coding == GZIP:
        if gzip_length(built.stored, limit) != built.length:
            return None
    elif built.coding is not None or len(built.stored) != built.length:
        return None
    try:
        entry = keep.restore(orjson.loads(built.table), stored)
    except (ValueError, TypeError, KeyError):  # orjson.JSONDecodeError is a ValueError
        return None
    entry.keep_stored(built.stored, built.coding, built.length)
    entry.measure()
    return entry


# The access log's and the metrics' name of each cache state.
_STATE_LABELS: Final = {state: state.value.lower() for state in CacheState}


def note_cache_state(request: web.Request, cached: Cached) -> None:
    """Record how the answer was obtained, for the access log and metrics."""
    note_cache(request, _STATE_LABELS[cached.state])


def serve_metadata(
    request: web.Request,
    registry: Registry,
    key: CacheKey,
    fetch: Fetch,
    *,
    complete_facts: Callable[[], Awaitable[PackageFacts | None]] | None = None,
) -> web.Response | Coroutine[Any, Any, web.Response]:
    """Cache or fetch -> policy -> respond, for one metadata document.

    A fresh memory hit with no policy in force (the warm path of every install) is answered at
    once, without a coroutine; anything else gives the coroutine that fetches and decides, for
    the gate to await (a registry step may give either, see ``RegistryGate.guard``).
    """
    cached = registry.metadata.fresh(key)
    if cached is not None and not registry.policy.active:
        note_cache(request, _STATE_LABELS[cached.state])
        return metadata_response(request, cached)
    return _fetched_and_decided(request, registry, key, fetch, cached, complete_facts)


async def _fetched_and_decided(
    request: web.Request,
    registry: Registry,
    key: CacheKey,
    fetch: Fetch,
    cached: Cached | None,
    complete_facts: Callable[[], Awaitable[PackageFacts | None]] | None,
) -> web.Response:
    if cached is None:
        cached = await registry.metadata.miss(key, fetch)
    note_cache(request, _STATE_LABELS[cached.state])
    policy = registry.policy
    if policy.active:
        entry = await decided(request, registry, policy, key, cached.entry, complete_facts)
        if entry is not cached.entry:
            cached = Cached(entry, cached.state)
    return metadata_response(request, cached)


async def decision_for(
    registry: Registry,
    policy: Policy,
    entry: MetaEntry,
    complete_facts: Callable[[], Awaitable[PackageFacts | None]] | None = None,
) -> tuple[Decision, PackageFacts] | None:
    """The policy's decision on ``entry``'s package (memoised on the entry), or None (no facts)."""
    facts = entry.facts
    if facts is None:
        return None
    memo = entry.policy_memo
    generation = policy.generation
    if memo is not None and memo[0] == generation:
        valid_until = memo[1].valid_until
        if valid_until is None or time.time() < valid_until:
            return memo[1], memo[2]
    if not facts.times_known and policy.needs_publish_times and complete_facts is not None:
        facts = await complete_facts() or facts
    decision = policy.decide(facts)
    entry.policy_memo = (generation, decision, facts)
    return decision, facts


async def decided(
    request: web.Request,
    registry: Registry,
    policy: Policy,
    key: CacheKey,
    entry: MetaEntry,
    complete_facts: Callable[[], Awaitable[PackageFacts | None]] | None = None,
) -> MetaEntry:
    """``entry`` as the policy lets it be served: itself, a variant without removed versions, or
    ``PolicyRefused``.  Variants live in the metadata cache, keyed by the entry and generation."""
    found = await decision_for(registry, policy, entry, complete_facts)
    if found is None:
        return entry
    decision, facts = found
    if decision.allows_all:
        return entry
    policy.applied(registry_token(request), facts, decision, None)
    if decision.refusal is not None:
        raise PolicyRefused(decision.refusal)
    cache = registry.metadata
    # Within one generation a decision changes only when time ends a quarantine, and then its
    # valid_until moves: it is part of the key, so an ended quarantine never serves its old variant.
    variant_key = (
        key[0],
        key[1],
        f"{key[2]} policy {policy.generation} {decision.valid_until} {entry.etag}",
    )
    variant = cache.peek(variant_key)
    if variant is None:
        if entry.length > OFF_LOOP_BYTES:
            variant = await asyncio.to_thread(entry.without, decision)
        else:
            variant = entry.without(decision)
        variant.fetched_at = entry.fetched_at
        cache.keep(variant_key, variant)
    return variant


# -- artifacts ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Artifact:
    """What a registry knows about one artifact request before anything is fetched."""

    ecosystem: str
    package: str
    version: str | None
    filename: str
    url: URL  # upstream URL
    digest: Digest | None  # what its bytes must hash to, when published
    what: str  # names the upstream in error messages
    content_type: str
    headers: Mapping[str, str]  # extra response headers (Cache-Control ...)
    # The store's key (the URL as text) and, for a published digest, its file name there.
    key: str = field(init=False, repr=False, compare=False)
    name: str | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        key = str(self.url)
        object.__setattr__(self, "key", key)
        digest = self.digest
        object.__setattr__(self, "name", file_name(key, digest) if digest is not None else None)


def check_artifact(
    request: web.Request,
    policy: Policy,
    artifact: Artifact,
    decision: tuple[Decision, PackageFacts] | None,
) -> None:
    """The policy step for an artifact: raises ``PolicyRefused`` for a removed version or file."""
    if decision is None:
        return
    verdict, facts = decision
    if verdict.allows_all:
        return
    refusal = verdict.refusal_for(artifact.version) or verdict.removed_files.get(
        artifact.filename.removesuffix(".metadata")
    )
    if refusal is not None:
        policy.applied(registry_token(request), facts, verdict, artifact.version)
        raise PolicyRefused(refusal)


async def serve_artifact(
    request: web.Request,
    registry: Registry,
    artifact: Artifact,
    decision: tuple[Decision, PackageFacts] | None = None,
) -> web.StreamResponse:
    """Policy -> store hit or fetch-and-verify -> respond, then the artifact-served hooks."""
    if decision is not None:
        check_artifact(request, registry.policy, artifact, decision)

    def open_upstream(
        method: str, extra: Mapping[str, str]
    ) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
        return registry.upstream.request(
            method, artifact.url, headers=extra, what=artifact.what, kind="artifact"
        )

    facts = registry_facts(request)
    if facts is not None:
        facts.cache = "bypass" if artifact.digest is None else "miss"
    response = await deliver(
        request,
        registry.artifacts,
        key=artifact.key,
        digest=artifact.digest,
        name=artifact.name,
        open_upstream=open_upstream,
        content_type=artifact.content_type,
        headers=artifact.headers,
    )
    if facts is not None and response.headers.get("X-Cache") == "HIT":
        facts.cache = "hit"
    try:
        sent = request[ARTIFACT_SENT]
    except KeyError:  # not a complete 200 body
        return response
    if registry.on_served:
        token = facts.token if facts is not None else None
        registry.served(
            ArtifactServed(
                token.id if token is not None else None,
                artifact.ecosystem,
                artifact.package,
                artifact.version,
                artifact.filename,
                sent,
            )
        )
    return response


__all__ = [
    "Artifact",
    "ArtifactServed",
    "ArtifactServedHook",
    "Fetched",
    "Keeping",
    "Registry",
    "check_artifact",
    "decided",
    "decision_for",
    "fetch_metadata",
    "registry_key",
    "serve_artifact",
    "serve_metadata",
]
