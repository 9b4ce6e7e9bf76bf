"""Resolving secrets to tokens through an in-memory cache that revocations cut through at once.

Positive and negative results are cached, bounded: unrevoked tokens in ``_Positive`` (a plain
dict, each entry until its own deadline: the registry's warm path asks it on every request) and
unknown digests in a cachetools TTL cache.  Concurrent misses for
one digest share one store query.  Revocations made in this process evict immediately; those made
by other processes sharing the database are noticed by polling the store's ``data_version``
(SQLite: ``PRAGMA data_version``, a commit counter that costs no disk I/O; PostgreSQL: a counter
moved by LISTEN/NOTIFY and by every reconnection) and reading the revocation log only when it moved,
from the last sequence number seen.

Tokens may expire and may be limited to some ecosystems (SPEC 18).  A cached token is checked
against the clock on every use, and its cache entry itself never lives past its expiry, so the
cache can never make an expired token work.  ``check`` names the reason a token is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

from cachetools import TTLCache

from . import tokens
from .errors import StoreUnavailable
from .store import Store, Token

log = logging.getLogger(__name__)

NEGATIVE_TTL = 5.0
WATCH_INTERVAL = 0.25

INVALID = "Invalid or revoked token"
EXPIRED = "token expired"


def out_of_scope(ecosystem: str) -> str:
    return f"token not valid for {ecosystem}"


def refusal(token: Token | None, ecosystem: str | None, now: float) -> str | None:
    """Why ``token`` may not be used in ``ecosystem`` (None: any) at ``now``; None when it may."""
    if token is None:
        return INVALID
    if token.expired(now):
        return EXPIRED
    if ecosystem is not None and ecosystem not in token.scopes:
        return out_of_scope(ecosystem)
    return None


class _Positive:
    """Tokens by digest, each until a deadline (monotonic seconds); at most ``maxsize``, the
    oldest put going first.  Expired entries go when asked for, or when room is needed."""

    __slots__ = ("_items", "maxsize")

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: dict[str, tuple[Token, float]] = {}

    def get(self, digest: str) -> Token | None:
        found = self._items.get(digest)
        if found is None:
            return None
        if found[1] <= time.monotonic():
            del self._items[digest]
            return None
        return found[0]

    def put(self, digest: str, token: Token, until: float) -> None:
        items = self._items
        items.pop(digest, None)
        while len(items) >= self.maxsize:
            del items[next(iter(items))]
        items[digest] = (token, until)

    def pop(self, digest: str) -> None:
        self._items.pop(digest, None)

    def __contains__(self, digest: object) -> bool:
        return digest in self._items

    def __len__(self) -> int:
        return len(self._items)


class TokenValidator:
    """Cache-fronted secret -> token resolution."""

    def __init__(
        self,
        store: Store,
        *,
        ttl: float = 60.0,
        negative_ttl: float = NEGATIVE_TTL,
        maxsize: int = 100_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._ttl = max(ttl, 1e-6)
        self._negative_ttl = negative_ttl
        self.clock = clock  # wall-clock seconds; tests pass a controllable one
        # Unrevoked tokens (expired ones too, so that their refusal names the reason).  An
        # entry lives ``ttl`` at most, never past the token's expiry, and an expired token's
        # entry only as long as a negative one.
        self._positive = _Positive(maxsize)
        self._negative: TTLCache[str, bool] = TTLCache(maxsize, negative_ttl)
        self._inflight: dict[str, asyncio.Future[Token | None]] = {}
        # Bumped on every eviction so that a lookup that raced a revocation is not cached.
        self._generation = 0
        self._data_version: int | None = None
        self._revocation_seq = 0
        self.store_lookups = 0

    def _time_to_use(self, token: Token, now: float) -> float:
        """Until when (monotonic ``now`` + seconds) ``token`` may be answered from the cache."""
        if token.expires_at is None:
            return now + self._ttl
        left = token.expires_at - self.clock()
        if left <= 0:
            return now + self._negative_ttl
        return now + min(self._ttl, left)

    def cached(self, secret: str, digest: str | None = None) -> Token | None:
        """A cache hit for a token that has not expired, without any I/O; None otherwise.

        The checksum is not recomputed here: a digest found in the positive cache belongs to a
        secret that passed the full check when it was first looked up.  ``digest``, when given,
        is ``tokens.digest(secret)`` already computed by the caller.
        """
        if len(secret) != tokens.TOKEN_LEN or not secret.startswith(tokens.PREFIX):
            return None
        return self.cached_digest(digest or tokens.digest(secret))

    def cached_digest(self, digest: str) -> Token | None:
        """``cached`` for the digest of a secret the caller has checked the shape of."""
        token = self._positive.get(digest)
        if token is None:
            return None
        expires_at = token.expires_at
        return None if expires_at is not None and expires_at <= self.clock() else token

    async def validate(self, secret: str) -> Token | None:
        """The usable token for ``secret``; None when malformed, unknown, revoked or expired."""
        hit = self.cached(secret)  # the hot path: no await, no store
        if hit is not None:
            return hit
        token = await self.resolve(secret)
        return None if token is None or token.expired(self.clock()) else token

    async def check(self, secret: str, ecosystem: str | None = None) -> Token | str:
        """The token for ``secret`` if it may be used in ``ecosystem`` (None: any) now, else the
        reason it is refused (INVALID, EXPIRED or "token not valid for <ecosystem>")."""
        hit = self.cached(secret)
        if hit is not None and (ecosystem is None or ecosystem in hit.scopes):
            return hit
        token = hit or await self.resolve(secret)
        reason = refusal(token, ecosystem, self.clock())
        if reason is not None:
            return reason
        assert token is not None
        return token

    async def resolve(self, secret: str) -> Token | None:
        """The unrevoked token for ``secret``, expired or not; None when malformed, unknown or
        revoked.  Callers check expiry and scopes (``check`` does both)."""
        if len(secret) == tokens.TOKEN_LEN and secret.startswith(tokens.PREFIX):
            hit = self._positive.get(tokens.digest(secret))
            if hit is not None:
                return hit
        if not tokens.is_well_formed(secret):
            return None
        digest = tokens.digest(secret)
        if digest in self._negative:
            return None
        pending = self._inflight.get(digest)
        if pending is not None:
            return await asyncio.shield(pending)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Token | None] = loop.create_future()
        self._inflight[digest] = future
        generation = self._generation
        try:
            self.store_lookups += 1
            token = await self._store.lookup_digest(digest)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            if self._inflight.get(digest) is future:
                del self._inflight[digest]
        if generation == self._generation:
            if token is None:
                self._negative[digest] = True
            else:
                self._positive.put(digest, token, self._time_to_use(token, time.monotonic()))
        future.set_result(token)
        return token

    def forget(self, digest: str) -> None:
        """Drop every cached answer for a digest (called on revocation)."""
        self._generation += 1
        self._positive.pop(digest)
        self._negative.pop(digest, None)
        # A lookup that started before the revocation must not answer requests made after it.
        self._inflight.pop(digest, None)

    async def start_watching(self) -> None:
        """Remember where the database stands so that later changes can be detected."""
        self._data_version = await self._store.data_version()
        self._revocation_seq = await self._store.revocation_seq()

    async def check_foreign_revocations(self) -> int:
        """Evict tokens revoked since the last check (by any process); returns how many."""
        version = await self._store.data_version()
        if version == self._data_version:
            return 0
        seq, digests = await self._store.revocations_since(self._revocation_seq)
        # Only now: a failed read leaves the version unseen, so the next check reads again.
        self._data_version = version
        self._revocation_seq = seq
        for digest in digests:
            self.forget(digest)
        return len(digests)

    async def watch(self, interval: float = WATCH_INTERVAL) -> None:
        """Poll for revocations made by other processes until cancelled."""
        while True:
            await self._store.wait_for_change(interval)
            try:
                await self.check_foreign_revocations()
            except StoreUnavailable as exc:
                log.warning("revocation check failed: %s", exc)
            except Exception:
                log.exception("revocation check failed")

    @contextlib.asynccontextmanager
    async def running(self, interval: float = WATCH_INTERVAL) -> AsyncIterator[None]:
        """Watch for foreign revocations while the block runs."""
        await self.start_watching()
        task = asyncio.create_task(self.watch(interval), name="pkgate-revocation-watch")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
