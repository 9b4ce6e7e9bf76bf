"""Resolving secrets to tokens through an in-memory cache that revocations cut through at once.

Positive and negative results are cached (cachetools TTL caches, bounded).  Concurrent misses for
one digest share one store query.  Revocations made in this process evict immediately; those made
by other processes sharing the database are noticed by polling the store's ``data_version``
(SQLite: ``PRAGMA data_version``, a commit counter that costs no disk I/O; PostgreSQL: a counter
moved by LISTEN/NOTIFY and by every reconnection) and reading the revocation log only when it moved,
from the last sequence number seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from cachetools import TTLCache

from . import tokens
from .errors import StoreUnavailable
from .store import Store, Token

log = logging.getLogger(__name__)

NEGATIVE_TTL = 5.0
WATCH_INTERVAL = 0.25


class TokenValidator:
    """Cache-fronted secret -> token resolution."""

    def __init__(
        self,
        store: Store,
        *,
        ttl: float = 60.0,
        negative_ttl: float = NEGATIVE_TTL,
        maxsize: int = 100_000,
    ) -> None:
        self._store = store
        self._positive: TTLCache[str, Token] = TTLCache(maxsize, max(ttl, 1e-6))
        self._negative: TTLCache[str, bool] = TTLCache(maxsize, negative_ttl)
        self._inflight: dict[str, asyncio.Future[Token | None]] = {}
        # Bumped on every eviction so that a lookup that raced a revocation is not cached.
        self._generation = 0
        self._data_version: int | None = None
        self._revocation_seq = 0
        self.store_lookups = 0

    def cached(self, secret: str) -> Token | None:
        """A cache hit, without any I/O; None on a miss or for a malformed secret.

        The checksum is not recomputed here: a digest found in the positive cache belongs to a
        secret that passed the full check when it was first looked up.
        """
        if len(secret) != tokens.TOKEN_LEN or not secret.startswith(tokens.PREFIX):
            return None
        try:
            return self._positive[tokens.digest(secret)]
        except KeyError:
            return None

    async def validate(self, secret: str) -> Token | None:
        """The active token for ``secret``, or None when it is malformed, unknown or revoked."""
        hit = self.cached(secret)
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
                self._positive[digest] = token
        future.set_result(token)
        return token

    def forget(self, digest: str) -> None:
        """Drop every cached answer for a digest (called on revocation)."""
        self._generation += 1
        self._positive.pop(digest, None)
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
