"""The metadata cache: rewritten packuments and index pages, kept in memory per representation.

How a handler uses it (the cache lives under ``keys.metadata_cache_key``)::

    cache = request.app[metadata_cache_key]          # or request.config_dict[...]
    key = ("npm", name, "abbreviated")               # (ecosystem, name, representation)

    async def fetch(validators: Validators) -> MetaEntry | NotModified:
        async with upstream.request("GET", url, headers={**accept, **validators.headers()}) as r:
            if r.status == 304:
                return NOT_MODIFIED                  # only ever when validators were sent
            raise_for_upstream_status(r)             # 404 -> UpstreamError(404), 5xx -> 502 ...
            body = rewrite(await r.read())
            return MetaEntry.build(body, r.content_type + "; charset=utf-8",
                                   upstream_etag=r.headers.get("ETag"),
                                   upstream_last_modified=r.headers.get("Last-Modified"))

    cached = await cache.get_or_fetch(key, fetch)    # raises UpstreamError when nothing to serve
    return metadata_response(request, cached)        # 304 for the client's own validators

Semantics:
- An entry is fresh for ``ttl`` seconds after it was fetched or revalidated (a fresh hit: no I/O).
- An expired entry is revalidated: ``fetch`` receives the upstream's ETag/Last-Modified and may
  answer ``NOT_MODIFIED``, which only renews the entry's time.
- Concurrent misses (or revalidations) of one key share a single ``fetch`` call, which runs in its
  own task so that a client hanging up does not cancel it for the others.
- An upstream 404 (``UpstreamError`` with status 404) is remembered for ``negative_ttl`` seconds and
  re-raised to callers meanwhile; it also drops any positive entry for the key.
- Any other ``UpstreamError`` serves the previous entry, flagged ``STALE``, while it is younger than
  ``stale_max`` seconds (measured from its last successful fetch); beyond that the error propagates.
- The cache is bounded by bytes (body plus a fixed per-entry overhead) with LRU eviction; an entry
  larger than the whole bound is served but not kept.
- With ``enabled=False`` nothing is stored or coalesced: every call is one ``fetch`` (state BYPASS).
- The cache is per process: with ``--workers N`` each worker keeps its own copy.

The ETag a client sees is computed from the rewritten body (``MetaEntry.build``), so it changes
whenever pkgate's answer changes, never only when the upstream's does.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Final

from aiohttp import hdrs, web

from .policy import Decision, PackageFacts
from .upstream import UpstreamError

CacheKey = tuple[str, str, str]
"""(ecosystem, package name, representation), e.g. ("pypi", "requests", "json")."""

ENTRY_OVERHEAD: Final = 512
"""Bytes charged per entry on top of its body, for headers and bookkeeping."""


class NotModified(enum.Enum):
    """The upstream confirmed that the cached entry is still current."""

    NOT_MODIFIED = "not-modified"


NOT_MODIFIED: Final = NotModified.NOT_MODIFIED


class CacheState(enum.StrEnum):
    """How an answer was obtained; sent to clients as ``X-Cache``."""

    HIT = "HIT"
    MISS = "MISS"
    REVALIDATED = "REVALIDATED"
    STALE = "STALE"
    BYPASS = "BYPASS"


@dataclass(frozen=True, slots=True)
class Validators:
    """The upstream's validators for a cached entry."""

    etag: str | None = None
    last_modified: str | None = None

    def headers(self) -> dict[str, str]:
        """Conditional request headers for the upstream (empty when there is nothing to send)."""
        out: dict[str, str] = {}
        if self.etag:
            out[hdrs.IF_NONE_MATCH] = self.etag
        if self.last_modified:
            out[hdrs.IF_MODIFIED_SINCE] = self.last_modified
        return out


def body_etag(body: bytes) -> str:
    """A strong ETag for a response body."""
    return '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'


@dataclass(slots=True)
class MetaEntry:
    """One cached answer: the rewritten body and what is needed to serve and revalidate it."""

    body: bytes
    content_type: str
    etag: str
    validators: Validators = Validators()
    headers: Mapping[str, str] = field(default_factory=dict)
    fetched_at: float = 0.0
    # What the document says about its package, for the policy (None: nothing to judge).
    facts: PackageFacts | None = None
    # The last policy decision on this entry: (policy generation, decision, facts judged).
    policy_memo: tuple[int, Decision, PackageFacts] | None = field(
        default=None, repr=False, compare=False
    )
    # The headers of a 200 answer per cache state, built once: warm requests only copy them.
    _answer_headers: dict[CacheState, dict[str, str]] = field(
        default_factory=dict, repr=False, compare=False
    )

    @classmethod
    def build(
        cls,
        body: bytes,
        content_type: str,
        *,
        upstream_etag: str | None = None,
        upstream_last_modified: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> MetaEntry:
        """An entry for a rewritten ``body``; ``headers`` are extra response headers to replay."""
        return cls(
            body=body,
            content_type=content_type,
            etag=body_etag(body),
            validators=Validators(upstream_etag, upstream_last_modified),
            headers=dict(headers or {}),
        )

    @property
    def size(self) -> int:
        return len(self.body) + ENTRY_OVERHEAD

    def without(self, decision: Decision) -> MetaEntry:
        """This answer without what ``decision`` removes (registries' entries override this)."""
        return self

    def answer_headers(self, state: CacheState) -> Mapping[str, str]:
        """Every header of a 200 answer of this entry in ``state``: extras, type, validators."""
        found = self._answer_headers.get(state)
        if found is None:
            found = {
                **self.headers,
                hdrs.CONTENT_TYPE: self.content_type,
                hdrs.ETAG: self.etag,
                "X-Cache": state.value,
            }
            if self.validators.last_modified:
                found[hdrs.LAST_MODIFIED] = self.validators.last_modified
            self._answer_headers[state] = found
        return found


@dataclass(frozen=True, slots=True)
class Cached:
    """The result of a lookup: an entry and how it was obtained."""

    entry: MetaEntry
    state: CacheState

    @property
    def stale(self) -> bool:
        return self.state is CacheState.STALE


@dataclass(slots=True)
class _Negative:
    message: str
    fetched_at: float

    @property
    def size(self) -> int:
        return ENTRY_OVERHEAD


Fetch = Callable[[Validators], Awaitable[MetaEntry | NotModified]]


@dataclass(slots=True)
class CacheStats:
    """Counters for metrics and tests."""

    hits: int = 0
    fetches: int = 0
    revalidated: int = 0
    stale: int = 0
    negative_hits: int = 0
    evictions: int = 0


class MetadataCache:
    """A byte-bounded LRU of rewritten metadata with freshness, revalidation and coalescing."""

    def __init__(
        self,
        *,
        max_bytes: int = 64 * 1024 * 1024,
        ttl: float = 120.0,
        negative_ttl: float = 10.0,
        stale_max: float = 86400.0,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_bytes = max_bytes
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.stale_max = stale_max
        self.enabled = enabled and max_bytes > 0
        self._clock = clock
        self._items: OrderedDict[CacheKey, MetaEntry | _Negative] = OrderedDict()
        self._inflight: dict[CacheKey, asyncio.Task[Cached]] = {}
        self.bytes = 0
        self.stats = CacheStats()

    def __len__(self) -> int:
        return len(self._items)

    def peek(self, key: CacheKey) -> MetaEntry | None:
        """The stored entry for ``key`` whatever its age, without touching the LRU order."""
        item = self._items.get(key)
        return item if isinstance(item, MetaEntry) else None

    async def get_or_fetch(self, key: CacheKey, fetch: Fetch) -> Cached:
        """A fresh entry from memory, or one fetched (once for all concurrent callers).

        Raises UpstreamError when the upstream fails and no usable entry exists, and
        UpstreamError(404) while a recent upstream 404 is remembered.
        """
        if not self.enabled:
            self.stats.fetches += 1
            result = await fetch(Validators())
            if isinstance(result, NotModified):
                raise UpstreamError(502, "upstream answered 304 to an unconditional request")
            return Cached(result, CacheState.BYPASS)
        item = self._items.get(key)
        if item is not None:
            age = self._clock() - item.fetched_at
            if isinstance(item, _Negative):
                if age < self.negative_ttl:
                    self.stats.negative_hits += 1
                    raise UpstreamError(404, item.message)
            elif age < self.ttl:
                self._items.move_to_end(key)
                self.stats.hits += 1
                return Cached(item, CacheState.HIT)
        task = self._inflight.get(key)
        if task is None:
            previous = item if isinstance(item, MetaEntry) else None
            task = asyncio.get_running_loop().create_task(self._refresh(key, fetch, previous))
            self._inflight[key] = task
            task.add_done_callback(self._refresh_done(key))
        # shield: one caller going away must not cancel the fetch the others wait for.
        return await asyncio.shield(task)

    def _refresh_done(self, key: CacheKey) -> Callable[[asyncio.Task[Cached]], None]:
        def done(task: asyncio.Task[Cached]) -> None:
            if self._inflight.get(key) is task:
                del self._inflight[key]
            if not task.cancelled():
                task.exception()  # retrieved here: every waiter re-raises it itself

        return done

    async def _refresh(self, key: CacheKey, fetch: Fetch, previous: MetaEntry | None) -> Cached:
        self.stats.fetches += 1
        try:
            result = await fetch(previous.validators if previous else Validators())
        except UpstreamError as exc:
            if exc.status == 404:
                self._put(key, _Negative(exc.message, self._clock()))
                raise
            if previous is not None and self._clock() - previous.fetched_at <= self.stale_max:
                self.stats.stale += 1
                return Cached(previous, CacheState.STALE)
            raise
        now = self._clock()
        if isinstance(result, NotModified):
            if previous is None:
                raise UpstreamError(502, "upstream answered 304 to an unconditional request")
            previous.fetched_at = now
            self.stats.revalidated += 1
            if self._items.get(key) is previous:
                self._items.move_to_end(key)
            else:
                self._put(key, previous)
            return Cached(previous, CacheState.REVALIDATED)
        result.fetched_at = now
        self._put(key, result)
        return Cached(result, CacheState.MISS)

    def _put(self, key: CacheKey, item: MetaEntry | _Negative) -> None:
        self.invalidate(key)
        if item.size > self.max_bytes:
            return
        self._items[key] = item
        self.bytes += item.size
        while self.bytes > self.max_bytes:
            _, evicted = self._items.popitem(last=False)
            self.bytes -= evicted.size
            self.stats.evictions += 1

    def keep(self, key: CacheKey, entry: MetaEntry) -> None:
        """Store ``entry`` under ``key`` (a policy variant of another entry), LRU-bounded."""
        if self.enabled:
            self._put(key, entry)

    def invalidate(self, key: CacheKey) -> None:
        """Forget ``key`` (positive or negative)."""
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= old.size

    def clear(self) -> None:
        """Forget everything."""
        self._items.clear()
        self.bytes = 0


def _etag_list(value: str) -> list[str]:
    return [tag.strip().removeprefix("W/") for tag in value.split(",") if tag.strip()]


def not_modified(entry: MetaEntry, request_headers: Mapping[str, str]) -> bool:
    """Whether the client's own If-None-Match / If-Modified-Since already holds ``entry``."""
    inm = request_headers.get(hdrs.IF_NONE_MATCH)
    if inm is not None:
        # If-None-Match wins over If-Modified-Since (RFC 9110 13.2.2); weak comparison.
        tags = _etag_list(inm)
        return "*" in tags or entry.etag.removeprefix("W/") in tags
    ims = request_headers.get(hdrs.IF_MODIFIED_SINCE)
    last_modified = entry.validators.last_modified
    if ims is None or last_modified is None:
        return False
    try:
        return parsedate_to_datetime(last_modified) <= parsedate_to_datetime(ims)
    except (TypeError, ValueError):
        return False


def metadata_response(
    request: web.BaseRequest,
    cached: Cached,
    *,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """The answer for ``cached``: 304 when the client's validators match, else the body.

    Carries ETag, Last-Modified (the upstream's), X-Cache and the entry's extra headers; HEAD
    requests get the headers only (aiohttp drops the body).  This is the warm path of every
    metadata request: the headers come prepared from the entry.
    """
    entry = cached.entry
    out = entry.answer_headers(cached.state)
    if headers:
        out = {**out, **headers}
    request_headers = request.headers
    if (
        (hdrs.IF_NONE_MATCH in request_headers or hdrs.IF_MODIFIED_SINCE in request_headers)
        and request.method in (hdrs.METH_GET, hdrs.METH_HEAD)
        and not_modified(entry, request_headers)
    ):
        return web.Response(
            status=304, headers={k: v for k, v in out.items() if k != hdrs.CONTENT_TYPE}
        )
    return web.Response(body=entry.body, headers=out)


__all__ = [
    "NOT_MODIFIED",
    "CacheKey",
    "CacheState",
    "CacheStats",
    "Cached",
    "Fetch",
    "MetaEntry",
    "MetadataCache",
    "NotModified",
    "Validators",
    "body_etag",
    "metadata_response",
    "not_modified",
]
