"""Rate limits kept in the store, so that every worker and instance shares one count per key.

The algorithm is the same GCRA as ``tokenapi.ratelimit.RateLimiter`` (one theoretical arrival
time per key, ``limit`` events per ``period`` with bursts), but its state is a row of
``limit_counters`` changed inside one write transaction, with the row locked on PostgreSQL.
Keys are stored as SHA-256 digests (no address or IP in clear).  Rows whose time has passed no
longer limit anything and are purged as others are written.
"""

from __future__ import annotations

import hashlib
import math
import time

from .base import Dialect, Store, Tx

TOLERANCE = 1e-6


def _key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def hit(
    store: Store, key: str, limit: int, period: float, *, now: float | None = None
) -> int | None:
    """Count one event for ``key`` unless over the limit: None if allowed, else whole seconds
    to wait.  A refused event is not counted."""
    async with store.transaction() as db:
        return await hit_in(db, store.d, key, limit, period, now=now)


async def hit_in(
    db: Tx, d: Dialect, key: str, limit: int, period: float, *, now: float | None = None
) -> int | None:
    """``hit`` inside a write transaction the caller holds (so it commits with the caller's
    other changes, or not at all)."""
    if limit < 1 or period <= 0:
        raise ValueError("limit must be >= 1 and period > 0")
    now = time.time() if now is None else now
    interval = period / limit
    digest = _key(key)
    # The row exists before it is read, so that on PostgreSQL the read below locks it even
    # for the first event of a key (a concurrent first insert waits for this one).
    await db.execute(
        "INSERT INTO limit_counters (key, tat) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
        (digest, 0.0),
    )
    async with db.execute(
        f"SELECT tat FROM limit_counters WHERE key = ?{d.for_update}", (digest,)
    ) as cur:
        row = await cur.fetchone()
    tat = max(float(row[0]) if row else 0.0, now)
    new_tat = tat + interval
    excess = new_tat - now - period
    if excess > TOLERANCE:
        return max(1, math.ceil(excess))
    await db.execute("UPDATE limit_counters SET tat = ? WHERE key = ?", (new_tat, digest))
    await db.execute("DELETE FROM limit_counters WHERE tat < ?", (now,))
    return None


async def refund(store: Store, key: str, limit: int, period: float) -> None:
    """Give back one event counted by ``hit`` (reserved up front, not a failure after all)."""
    async with store.transaction() as db:
        await db.execute(
            "UPDATE limit_counters SET tat = tat - ? WHERE key = ?", (period / limit, _key(key))
        )


async def reset(store: Store, key: str) -> None:
    """Forget ``key`` (e.g. after a successful login)."""
    async with store.transaction() as db:
        await db.execute("DELETE FROM limit_counters WHERE key = ?", (_key(key),))
