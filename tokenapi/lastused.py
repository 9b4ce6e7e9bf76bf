"""Last-used and download recording: memory on the request path, one transaction per interval.

Downloads (SPEC 16) ride in the same batch as last-used times: the request path appends a record
to a list, and the flush writes both in one store transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from .errors import StoreUnavailable
from .store import Download, Store, Usage, UsageUpdate

log = logging.getLogger(__name__)

# Downloads kept in memory while the store cannot take them; beyond this the oldest are dropped
# (and counted) rather than letting a long outage exhaust memory.
MAX_PENDING_DOWNLOADS = 200_000
# Downloads written per flush: a backlog (after an outage) is worked off over several intervals in
# short transactions rather than holding the store's write lock for one long one.
MAX_DOWNLOADS_PER_FLUSH = 5_000


@dataclass(slots=True)
class _Pending:
    last_used_at: float = 0.0
    counts: dict[str, list[float]] = field(default_factory=dict)  # eco -> [requests, last]

    def add(self, ecosystem: str, now: float, n: int = 1, last: float | None = None) -> None:
        last = now if last is None else last
        if last > self.last_used_at:
            self.last_used_at = last
        entry = self.counts.get(ecosystem)
        if entry is None:
            self.counts[ecosystem] = [n, last]
        else:
            entry[0] += n
            if last > entry[1]:
                entry[1] = last


class UsageRecorder:
    """Collects uses in memory and writes them in one transaction per interval."""

    def __init__(self, store: Store, interval: float = 1.0) -> None:
        self._store = store
        self.interval = interval
        self._pending: dict[str, _Pending] = {}
        self._flushing: dict[str, _Pending] = {}
        self.flushes = 0
        self.last_batch_size = 0
        self.tokens_written = 0
        self._current: asyncio.Future[int] | None = None
        self._downloads: list[Download] = []
        # Download ids: a random prefix per recorder and a counter (unique across processes,
        # hex only so they sort alike in every collation, far cheaper than a uuid4 per record).
        self._id_prefix = secrets.token_hex(8)
        self._ids = itertools.count()
        self._flushing_downloads: list[Download] = []
        self._in_flush = False
        self.downloads_written = 0
        self.downloads_dropped = 0

    def record_download(
        self,
        token_id: str,
        ecosystem: str,
        package: str,
        version: str,
        filename: str,
        now: float | None = None,
    ) -> None:
        """Note one artifact served to a token; touches memory only."""
        if len(self._downloads) >= MAX_PENDING_DOWNLOADS:
            del self._downloads[0]
            self.downloads_dropped += 1
        self._downloads.append(
            Download(
                f"{self._id_prefix}{next(self._ids):012x}",
                token_id,
                ecosystem,
                package,
                version,
                filename,
                time.time() if now is None else now,
            )
        )

    def pending_downloads(self) -> list[Download]:
        """Downloads memory holds that the store may not have yet."""
        return [*self._flushing_downloads, *self._downloads]

    def record(self, token_id: str, ecosystem: str, now: float | None = None) -> None:
        """Note one use of a token; touches memory only."""
        if now is None:
            now = time.time()
        pending = self._pending.get(token_id)
        if pending is None:
            pending = self._pending[token_id] = _Pending()
        pending.add(ecosystem, now)

    async def flush(self) -> int:
        """Write everything pending in one transaction; on failure keep it for the next try."""
        if (not self._pending and not self._downloads) or self._in_flush:
            return 0
        self._in_flush = True
        self._flushing, self._pending = self._pending, {}
        self._flushing_downloads = self._downloads[:MAX_DOWNLOADS_PER_FLUSH]
        self._downloads = self._downloads[MAX_DOWNLOADS_PER_FLUSH:]
        batch = [
            UsageUpdate(
                token_id,
                p.last_used_at,
                {eco: (int(c[0]), c[1]) for eco, c in p.counts.items()},
            )
            for token_id, p in self._flushing.items()
        ]
        downloads = self._flushing_downloads
        try:
            written = await self._store.record_usage(batch, downloads)
        except BaseException:
            # Merge back so nothing recorded is lost; a later flush retries.
            for token_id, p in self._flushing.items():
                target = self._pending.setdefault(token_id, _Pending())
                for eco, (n, last) in p.counts.items():
                    target.add(eco, last, int(n), last)
            self._downloads[:0] = downloads
            self._flushing = {}
            self._flushing_downloads = []
            self._in_flush = False
            raise
        self._flushing = {}
        self._flushing_downloads = []
        self._in_flush = False
        self.downloads_written += len(downloads)
        self.flushes += 1
        self.last_batch_size = written
        self.tokens_written += written
        return written

    def pending_usage(self, token_id: str) -> list[Usage]:
        """What memory holds for a token that the store may not have yet."""
        merged = _Pending()
        for source in (self._flushing, self._pending):
            p = source.get(token_id)
            if p is not None:
                for eco, (n, last) in p.counts.items():
                    merged.add(eco, last, int(n), last)
        return [Usage(eco, int(c[0]), c[1]) for eco, c in sorted(merged.counts.items())]

    async def usage(self, token_id: str) -> list[Usage]:
        """Store counts with memory merged over them: the freshest view."""
        stored = {u.ecosystem: u for u in await self._store.usage(token_id)}
        for extra in self.pending_usage(token_id):
            base = stored.get(extra.ecosystem)
            if base is None:
                stored[extra.ecosystem] = extra
            else:
                stored[extra.ecosystem] = Usage(
                    extra.ecosystem,
                    base.requests + extra.requests,
                    max(base.last_used_at, extra.last_used_at),
                )
        return [stored[k] for k in sorted(stored)]

    def last_used_at(self, token_id: str, stored: float | None) -> float | None:
        """The newer of the stored last-used time and what memory holds."""
        best = stored
        for source in (self._flushing, self._pending):
            p = source.get(token_id)
            if p is not None and (best is None or p.last_used_at > best):
                best = p.last_used_at
        return best

    async def sync(self) -> None:
        """Write what memory holds now, after any flush already under way (background use only)."""
        current = self._current
        if current is not None and not current.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(current)
        while True:
            self._current = asyncio.ensure_future(self.flush())
            await asyncio.shield(self._current)
            if not self._downloads:
                return

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            # Shielded: a flush cut off half-way could commit and still be merged back.
            self._current = asyncio.ensure_future(self.flush())
            try:
                await asyncio.shield(self._current)
            except StoreUnavailable as exc:
                log.warning("last-used flush failed, will retry: %s", exc)
            except Exception:
                log.exception("last-used flush failed, will retry")

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Flush periodically while the block runs, and once more when it ends."""
        task = asyncio.create_task(self._run(), name="pkgate-last-used-flush")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if self._current is not None and not self._current.done():
                with contextlib.suppress(Exception):
                    await self._current
            try:
                while await self.flush() or self._downloads:
                    pass  # a download backlog takes several flushes
            except Exception:
                log.exception("final last-used flush failed")
