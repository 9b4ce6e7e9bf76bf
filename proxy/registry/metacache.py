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
- The cache is per process: with ``--workers N`` each worker keeps its own copy.  Its second tier
  on disk (``metadisk``, read and filled by ``pipeline.fetch_metadata``) is shared by every
  process on the data directory; an entry built from it carries ``loaded`` (``DISK`` or
  ``REVALIDATED``, and the copy's age, which its freshness counts from).

Entries are kept compressed: a body of ``COMPRESS_MIN`` bytes or more is stored gzipped (ISA-L,
level 2: a few percent larger than zlib's level 6 at a tenth of the time, so a cold miss of a
20 MB packument pays ~30 ms for it, off the event loop) and charged at its compressed size.  A
client that accepts gzip gets the stored bytes as they are (``Content-Encoding: gzip``); one that
does not gets them decompressed (streamed in pieces when large).  Both answers carry
``Vary: Accept-Encoding`` and their own strong ETag (the gzip one ends in ``-gzip"``), and a
client's ``If-None-Match`` is compared with the ETag of the representation it would get.
``MetaEntry.body`` still reads as the identity body: code that needs the document (derivations,
policy views) decompresses on demand, so it should read it once, off the loop when large.

The ETag a client sees is computed from the rewritten body (``MetaEntry.build``), so it changes
whenever pkgate's answer changes, never only when the upstream's does.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import hashlib
import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from operator import is_not
from typing import TYPE_CHECKING, Any, Final, NamedTuple, cast

from aiohttp import hdrs, web
from aiohttp.payload import AsyncIterablePayload
from isal import igzip, isal_zlib
from multidict import CIMultiDict, CIMultiDictProxy

from .policy import Decision, PackageFacts
from .upstream import UpstreamError

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

if TYPE_CHECKING:
    from .metadisk import MetadataDisk

CacheKey = tuple[str, str, str]
"""(ecosystem, package name, representation), e.g. ("pypi", "requests", "json")."""

ENTRY_OVERHEAD: Final = 1024
"""Bytes charged per entry on top of its body, for headers (the answer headers aiohttp copies
from are kept as a multidict, about 900 bytes) and bookkeeping."""

COMPRESS_MIN: Final = 1024
"""Bodies shorter than this are kept (and served) as they are."""
GZIP_LEVEL: Final = 2
# Identity answers of a gzip-stored entry larger than this are decompressed in pieces of this size
# while being sent, so that neither the event loop nor memory takes the whole document at once.
STREAM_PIECE: Final = 256 * 1024
GZIP: Final = "gzip"
ZSTD: Final = "zstd"
ZSTD_LEVEL: Final = 3  # zstd's own default: about as fast as ISA-L's gzip level 2, and smaller

log = logging.getLogger(__name__)


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
    DISK = "DISK"  # not in memory, read back from the disk tier while fresh (``metadisk``)


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
    """A strong ETag for bytes: a body, or what an entry stores of it (see ``MetaEntry.etag``)."""
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def coding_etag(etag: str, coding: str) -> str:
    """The ETag of the ``coding``-encoded representation of a body whose ETag is ``etag``."""
    if etag.endswith('"'):
        return f'{etag[:-1]}-{coding}"'
    return f"{etag}-{coding}"


@dataclass(slots=True)
class MetaEntry:
    """One cached answer: the rewritten body and what is needed to serve and revalidate it.

    ``body`` is given (and read) as the identity body; it is stored gzipped when that pays.
    """

    # Declared before ``body``: the generated __init__ sets them first, then ``body`` fills them.
    _data: bytes = field(init=False, default=b"", repr=False, compare=False)
    _coding: str | None = field(init=False, default=None, repr=False, compare=False)
    _length: int = field(init=False, default=0, repr=False, compare=False)
    # A strong ETag of the identity body, set with it: the hash of the bytes stored (gzip bytes
    # are a function of the body, and a third to a tenth of its size to hash).
    etag: str = field(init=False, default="")
    body: bytes = field(repr=False)  # a property: see _get_body / _set_body below the class
    content_type: str
    validators: Validators = Validators()
    headers: Mapping[str, str] = field(default_factory=dict)
    fetched_at: float = 0.0
    # What the document says about its package, for the policy (None: nothing to judge).
    facts: PackageFacts | None = None
    # The last policy decision on this entry: (policy generation, decision, facts judged).
    policy_memo: tuple[int, Decision, PackageFacts] | None = field(
        default=None, repr=False, compare=False
    )
    # Bytes of what the entry holds besides its body (facts, file tables), measured once.
    _aux_size: int = field(init=False, default=-1, repr=False, compare=False)
    # The headers of a 200 answer per (cache state, content coding), built once.
    _answer_headers: dict[tuple[CacheState, str | None], CIMultiDictProxy[str]] = field(
        default_factory=dict, repr=False, compare=False
    )
    # This entry as a cache hit (``MetadataCache.fresh``), made once.
    _hit: Cached | None = field(init=False, default=None, repr=False, compare=False)
    # The body compressed with zstd, for clients that accept it: made once, off the event loop,
    # when such a client first asks for the entry while a cache holds it (``_cache``).
    _zstd: bytes | None = field(init=False, default=None, repr=False, compare=False)
    _zstd_asked: bool = field(init=False, default=False, repr=False, compare=False)
    _cache: MetadataCache | None = field(init=False, default=None, repr=False, compare=False)
    # Built from the disk tier's copy (``metadisk``): how it was had, and how old the copy was.
    loaded: tuple[CacheState, float] | None = field(
        init=False, default=None, repr=False, compare=False
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
            validators=Validators(upstream_etag, upstream_last_modified),
            headers=dict(headers or {}),
        )

    @property
    def coding(self) -> str | None:
        """How the body is stored: ``"gzip"``, or None when kept as it is."""
        return self._coding

    def without(self, decision: Decision) -> MetaEntry:
        """This answer without what ``decision`` removes (registries' entries override this)."""
        return self

    def keep_stored(self, data: bytes, coding: str | None, length: int) -> None:
        """Take a body as stored already (``stored``, ``coding``, ``length``): an entry the disk
        tier kept, read back and checked by the caller, is not compressed again."""
        self._data, self._coding, self._length = data, coding, length
        self.etag = body_etag(data)
        self._answer_headers = {}

    @property
    def stored(self) -> bytes:
        """The body as stored (gzip bytes when ``coding`` is gzip)."""
        return self._data

    @property
    def stored_size(self) -> int:
        """Bytes of memory the body takes."""
        return len(self._data)

    @property
    def length(self) -> int:
        """Length of the identity body."""
        return self._length

    def aux(self) -> tuple[object, ...]:
        """What the entry keeps besides its body (registries' entries add their file tables)."""
        return (self.facts,)

    def aux_bytes(self) -> int:
        """Memory taken by ``aux()``, worked out (entries with large tables count them faster)."""
        return deep_size(*self.aux())

    @property
    def aux_size(self) -> int:
        """Memory taken by ``aux()``, measured once (call it where the entry is built)."""
        if self._aux_size < 0:
            self._aux_size = self.aux_bytes()
        return self._aux_size

    def measure(self) -> None:
        """Measure ``aux_size`` now (builders call it off the event loop for large entries)."""
        _ = self.aux_size

    @property
    def size(self) -> int:
        """Memory charged to the cache: the stored body (and its zstd copy, once made), the
        fixed overhead and ``aux_size``."""
        size = len(self._data) + ENTRY_OVERHEAD + self.aux_size
        if self._zstd is not None:
            size += len(self._zstd)
        return size

    @property
    def zstd(self) -> bytes | None:
        """The body compressed with zstd, when made (``ask_zstd``)."""
        return self._zstd

    def ask_zstd(self) -> None:
        """Have the cache holding this entry make its zstd copy (once, in the background): a
        client that accepts zstd gets it from then on.  Nothing for an entry no cache holds (an
        answer made for one request) or one kept as it is (a small body)."""
        cache = self._cache
        if cache is not None and not self._zstd_asked and self._coding == GZIP:
            self._zstd_asked = True
            cache.make_zstd(self)

    def answer_headers(self, state: CacheState, coding: str | None = None) -> Mapping[str, str]:
        """Every header of a 200 answer of this entry in ``state`` sent with ``coding``."""
        found = self._answer_headers.get((state, coding))
        if found is None:
            made = {
                **self.headers,
                hdrs.CONTENT_TYPE: self.content_type,
                hdrs.ETAG: coding_etag(self.etag, coding) if coding else self.etag,
                "X-Cache": state.value,
            }
            if coding:
                made[hdrs.CONTENT_ENCODING] = coding
            if self._coding:
                vary = made.get(hdrs.VARY)
                made[hdrs.VARY] = f"{vary}, Accept-Encoding" if vary else "Accept-Encoding"
            if self.validators.last_modified:
                made[hdrs.LAST_MODIFIED] = self.validators.last_modified
            # Kept as the multidict aiohttp copies into each answer (never changed after): the
            # copy from one is a quarter cheaper than from a dict, whose keys it converts.
            found = self._answer_headers[(state, coding)] = CIMultiDictProxy(CIMultiDict(made))
        return found


def text_size(texts: Iterable[str | None]) -> int:
    """``sys.getsizeof`` summed over the strings in ``texts`` (None, one shared object, is not
    counted, as ``deep_size`` does not count it).

    A string of ASCII text takes what the empty string takes plus one byte a character, so when
    all of them are ASCII the sum comes from one join instead of a call per string (a large
    packument's file table holds a hundred thousand)."""
    strings = cast("list[str]", list(filter(_NOT_NONE, texts)))
    joined = "".join(strings)
    if joined.isascii():
        return len(strings) * _EMPTY_TEXT + len(joined)
    return sum(map(sys.getsizeof, strings))


_NOT_NONE: Final = functools.partial(is_not, None)
_EMPTY_TEXT: Final = sys.getsizeof("")


def deep_size(*objects: object) -> int:
    """Bytes of memory the objects and everything they hold take (each object counted once)."""
    seen: set[int] = set()
    total = 0
    stack: list[object] = list(objects)
    while stack:
        obj = stack.pop()
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, (str, bytes, int, float, bool)):
            continue
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        else:
            for name in getattr(type(obj), "__slots__", ()):
                stack.append(getattr(obj, name, None))
            instance_dict = getattr(obj, "__dict__", None)
            if instance_dict is not None:
                stack.append(instance_dict)
    return total


def _get_body(self: MetaEntry) -> bytes:
    if self._coding is None:
        return self._data
    return isal_zlib.decompress(self._data, 31)


def _set_body(self: MetaEntry, body: bytes) -> None:
    body = bytes(body)
    self._length = len(body)
    self._answer_headers = {}
    if len(body) >= COMPRESS_MIN:
        packed = igzip.compress(body, GZIP_LEVEL)
        if len(packed) < len(body) * 0.9:
            self._data, self._coding = packed, GZIP
            self.etag = body_etag(packed)
            return
    self._data, self._coding = body, None
    self.etag = body_etag(body)


# The dataclass's ``body`` field, read and written through the compressed store.
setattr(MetaEntry, "body", property(_get_body, _set_body))  # noqa: B010


class Cached(NamedTuple):
    """The result of a lookup: an entry and how it was obtained (a named tuple: one is made
    per request; it builds in about 60% of the time a frozen dataclass takes)."""

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
    zstd_made: int = 0  # entries given their zstd copy
    zstd_answers: int = 0  # answers sent with Content-Encoding: zstd


class MetadataCache:
    """A byte-bounded LRU of rewritten metadata with freshness, revalidation and coalescing."""

    def __init__(
        self,
        *,
        max_bytes: int = 256 * 1024 * 1024,
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
        # The second tier, on disk (``metadisk``): fetches read and fill it (``fetch_metadata``).
        self.disk: MetadataDisk | None = None
        # Makes entries' zstd copies one at a time (so one identity body at most is in memory
        # for it), made when first needed.
        self._zstd_maker: ThreadPoolExecutor | None = None
        self._zstd_pending: set[asyncio.Future[bytes]] = set()

    def __len__(self) -> int:
        return len(self._items)

    def identity_bytes(self) -> int:
        """What the stored bodies would take uncompressed (for metrics; walks every entry)."""
        return sum(item.length for item in self._items.values() if isinstance(item, MetaEntry))

    def peek(self, key: CacheKey) -> MetaEntry | None:
        """The stored entry for ``key`` whatever its age, without touching the LRU order."""
        item = self._items.get(key)
        return item if isinstance(item, MetaEntry) else None

    def fresh(self, key: CacheKey) -> Cached | None:
        """The fresh entry for ``key`` as a hit, found without any await (the warm path of every
        metadata answer); None when ``get_or_fetch`` has work to do."""
        item = self._items.get(key)
        if item is None or isinstance(item, _Negative):
            return None
        if self._clock() - item.fetched_at >= self.ttl:
            return None
        self._items.move_to_end(key)
        self.stats.hits += 1
        hit = item._hit
        if hit is None:
            hit = item._hit = Cached(item, CacheState.HIT)
        return hit

    async def get_or_fetch(self, key: CacheKey, fetch: Fetch) -> Cached:
        """A fresh entry from memory, or one fetched (once for all concurrent callers).

        Raises UpstreamError when the upstream fails and no usable entry exists, and
        UpstreamError(404) while a recent upstream 404 is remembered.
        """
        return self.fresh(key) or await self.miss(key, fetch)

    async def miss(self, key: CacheKey, fetch: Fetch) -> Cached:
        """What ``get_or_fetch`` does once ``fresh`` found nothing (the warm path asks ``fresh``
        itself first): revalidate, fetch, or wait for the fetch under way."""
        if not self.enabled:
            self.stats.fetches += 1
            result = await fetch(Validators())
            if isinstance(result, NotModified):
                raise UpstreamError(502, "upstream answered 304 to an unconditional request")
            return Cached(result, CacheState.BYPASS)
        item = self._items.get(key)
        if isinstance(item, _Negative) and self._clock() - item.fetched_at < self.negative_ttl:
            self.stats.negative_hits += 1
            raise UpstreamError(404, item.message)
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
        state, age = result.loaded or (CacheState.MISS, 0.0)
        result.loaded = None
        result.fetched_at = now - age  # a disk copy is as fresh as the upstream left it
        if state is CacheState.REVALIDATED:
            self.stats.revalidated += 1
        elif state is CacheState.STALE:
            self.stats.stale += 1
        self._put(key, result)
        return Cached(result, state)

    def _put(self, key: CacheKey, item: MetaEntry | _Negative) -> None:
        self.invalidate(key)
        if item.size > self.max_bytes:
            return
        self._items[key] = item
        self.bytes += item.size
        if isinstance(item, MetaEntry):
            item._cache = self
        self._evict()

    def _evict(self) -> None:
        """Drop the least recently used entries until the cache is within its bound."""
        while self.bytes > self.max_bytes:
            _, evicted = self._items.popitem(last=False)
            self._dropped(evicted)
            self.stats.evictions += 1

    def _dropped(self, item: MetaEntry | _Negative) -> None:
        self.bytes -= item.size
        if isinstance(item, MetaEntry):
            item._cache = None

    def make_zstd(self, entry: MetaEntry) -> None:
        """Make ``entry``'s zstd copy on the maker's thread; it is charged to the bound when done
        (and dropped if the entry has left the cache meanwhile)."""
        if self._zstd_maker is None:
            self._zstd_maker = ThreadPoolExecutor(1, thread_name_prefix="pkgate-zstd")
        made = asyncio.get_running_loop().run_in_executor(self._zstd_maker, _zstd_of, entry._data)
        self._zstd_pending.add(made)

        def done(future: asyncio.Future[bytes]) -> None:
            self._zstd_pending.discard(future)
            if future.cancelled():
                return
            exc = future.exception()
            if exc is not None:
                log.warning("metadata cache: could not make a zstd copy (%s)", exc)
                return
            if entry._cache is not self:
                return  # evicted or replaced while it was made: nobody would send it
            data = future.result()
            if len(data) >= len(entry._data):
                return  # no smaller than the gzip bytes: those are sent
            entry._zstd = data
            self.bytes += len(data)
            self.stats.zstd_made += 1
            self._evict()

        made.add_done_callback(done)

    def keep(self, key: CacheKey, entry: MetaEntry) -> None:
        """Store ``entry`` under ``key`` (a policy variant of another entry), LRU-bounded."""
        if self.enabled:
            self._put(key, entry)

    async def zstd_settled(self) -> None:
        """Wait until every zstd copy asked for so far is made."""
        while self._zstd_pending:
            await asyncio.gather(*self._zstd_pending, return_exceptions=True)

    async def close(self) -> None:
        """Stop the zstd maker (copies under way are finished, those not begun dropped)."""
        maker, self._zstd_maker = self._zstd_maker, None
        if maker is not None:
            await asyncio.to_thread(maker.shutdown, wait=True, cancel_futures=True)

    def invalidate(self, key: CacheKey) -> None:
        """Forget ``key`` (positive or negative)."""
        old = self._items.pop(key, None)
        if old is not None:
            self._dropped(old)

    def clear(self) -> None:
        """Forget everything."""
        for item in self._items.values():
            if isinstance(item, MetaEntry):
                item._cache = None
        self._items.clear()
        self.bytes = 0


def _holds_gzip_copy(entry: MetaEntry, request_headers: Mapping[str, str]) -> bool:
    """Whether the client revalidates the gzip answer it stored before the zstd copy was made:
    that representation is then the one selected (and a 304 follows), not the zstd one."""
    inm = request_headers.get(hdrs.IF_NONE_MATCH)
    return inm is not None and coding_etag(entry.etag, GZIP) in _etag_list(inm)


def _zstd_of(gzipped: bytes) -> bytes:
    """The zstd copy of a gzip-stored body (run on the cache's maker thread)."""
    return zstd.compress(isal_zlib.decompress(gzipped, 31), ZSTD_LEVEL)


def _etag_list(value: str) -> list[str]:
    return [tag.strip().removeprefix("W/") for tag in value.split(",") if tag.strip()]


def not_modified(
    entry: MetaEntry, request_headers: Mapping[str, str], etag: str | None = None
) -> bool:
    """Whether the client's own If-None-Match / If-Modified-Since already holds ``entry``.

    ``etag`` is the ETag of the representation the client would get (default: identity).
    """
    inm = request_headers.get(hdrs.IF_NONE_MATCH)
    if inm is not None:
        # If-None-Match wins over If-Modified-Since (RFC 9110 13.2.2); weak comparison.
        tags = _etag_list(inm)
        return "*" in tags or (etag or entry.etag).removeprefix("W/") in tags
    ims = request_headers.get(hdrs.IF_MODIFIED_SINCE)
    last_modified = entry.validators.last_modified
    if ims is None or last_modified is None:
        return False
    try:
        return parsedate_to_datetime(last_modified) <= parsedate_to_datetime(ims)
    except (TypeError, ValueError):
        return False


# Clients send a handful of fixed Accept-Encoding strings: each is parsed once (a hit is one C
# call), and at most this many are kept.
_ACCEPT_MEMO_ENTRIES: Final = 256


# What an Accept-Encoding value accepts of the codings metadata is sent in (bits).
TAKES_GZIP: Final = 1
TAKES_ZSTD: Final = 2


@functools.lru_cache(maxsize=_ACCEPT_MEMO_ENTRIES)
def accepted_codings(accept_encoding: str | None) -> int:
    """Which of gzip and zstd an ``Accept-Encoding`` value accepts (``TAKES_GZIP`` and
    ``TAKES_ZSTD`` bits; RFC 9110 12.5.3, q-values honoured, ``*`` for codings not named)."""
    if not accept_encoding:
        return 0
    named: dict[str, float] = {}
    star: float | None = None
    for part in accept_encoding.split(","):
        coding, _, params = part.partition(";")
        coding = coding.strip().lower()
        q = 1.0
        for param in params.split(";"):
            key, _, number = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(number.strip())
                except ValueError:
                    q = 0.0
        if coding == "x-gzip":
            coding = GZIP
        if coding == "*":
            star = q
        else:
            named[coding] = max(named.get(coding, q), q)
    taken = 0
    for coding, bit in ((GZIP, TAKES_GZIP), (ZSTD, TAKES_ZSTD)):
        weight = named.get(coding, star)
        if weight is not None and weight > 0:
            taken |= bit
    return taken


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether an ``Accept-Encoding`` value accepts gzip."""
    return bool(accepted_codings(accept_encoding) & TAKES_GZIP)


def accepts_zstd(accept_encoding: str | None) -> bool:
    """Whether an ``Accept-Encoding`` value accepts zstd."""
    return bool(accepted_codings(accept_encoding) & TAKES_ZSTD)


async def _gunzip_pieces(data: bytes) -> Any:
    """The identity body of gzip ``data``, in pieces of at most ``STREAM_PIECE`` bytes."""
    inflater = isal_zlib.decompressobj(31)
    pending = data
    while pending:
        piece = inflater.decompress(pending, STREAM_PIECE)
        pending = inflater.unconsumed_tail
        if piece:
            yield piece
        if inflater.eof:
            break
    rest = inflater.flush()
    if rest:
        yield rest


def metadata_response(
    request: web.BaseRequest,
    cached: Cached,
    *,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """The answer for ``cached``: 304 when the client's validators match, else the body.

    Carries ETag, Last-Modified (the upstream's), X-Cache and the entry's extra headers; HEAD
    requests get the headers only (aiohttp drops the body).  This is the warm path of every
    metadata request: the headers come prepared from the entry, and a client accepting gzip gets
    the stored bytes without any work.  A client that accepts zstd (bun, uv) gets the entry's
    zstd copy, which its first such request has the cache make in the background (that answer,
    and any before the copy is ready, in gzip).
    """
    entry = cached.entry
    request_headers = request.headers
    coding = entry._coding
    data = entry._data
    if coding is not None:
        taken = accepted_codings(request_headers.get(hdrs.ACCEPT_ENCODING))
        if taken & TAKES_ZSTD:
            if entry._zstd is None:
                entry.ask_zstd()  # this answer in gzip (or as it is), the next ones in zstd
            elif not (taken & TAKES_GZIP and _holds_gzip_copy(entry, request_headers)):
                coding, data = ZSTD, entry._zstd
        if coding == GZIP and not taken & TAKES_GZIP:
            coding = None
    out = entry.answer_headers(cached.state, coding)
    if headers:
        out = {**out, **headers}
    if (
        (hdrs.IF_NONE_MATCH in request_headers or hdrs.IF_MODIFIED_SINCE in request_headers)
        and request.method in (hdrs.METH_GET, hdrs.METH_HEAD)
        and not_modified(entry, request_headers, out[hdrs.ETAG])
    ):
        return web.Response(
            status=304,
            headers={
                k: v for k, v in out.items() if k not in (hdrs.CONTENT_TYPE, hdrs.CONTENT_ENCODING)
            },
        )
    if coding is not None or entry._coding is None:
        if data is not entry._data and entry._cache is not None:
            entry._cache.stats.zstd_answers += 1
        return web.Response(body=data, headers=out)
    # A client that does not take gzip, for a body stored gzipped.
    if entry._length <= STREAM_PIECE:
        return web.Response(body=entry.body, headers=out)
    payload = AsyncIterablePayload(_gunzip_pieces(entry._data), content_type=entry.content_type)
    return web.Response(body=payload, headers=out)


__all__ = [
    "COMPRESS_MIN",
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
    "accepts_gzip",
    "body_etag",
    "coding_etag",
    "metadata_response",
    "not_modified",
]
