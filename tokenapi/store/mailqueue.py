"""The mail outbox table: a message is written in the same transaction as the token or reset code
it delivers, then sent (and deleted) by whoever holds its lease.

A row is leased when written (by the request that will try to send it at once) and again each
time a sender claims it; a lease that ran out means its holder died, and the row is due again.
Rows hold the message text (with its secret) only until it is sent or given up on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .base import Store, Tx


@dataclass(frozen=True, slots=True)
class QueuedMail:
    id: int
    recipient: str
    message: str
    attempts: int
    created_at: float


async def enqueue_in(db: Tx, recipient: str, message: str, *, lease: float, now: float) -> int:
    """Add a message inside the caller's transaction, leased to the caller; returns its id."""
    async with db.execute(
        "INSERT INTO mail_outbox (recipient, message, created_at, attempts, next_attempt_at,"
        " lease_until) VALUES (?, ?, ?, 1, ?, ?) RETURNING id",
        (recipient, message, now, now, now + lease),
    ) as cur:
        row = await cur.fetchone()
    return int(row[0])


async def claim_due(store: Store, *, lease: float, limit: int = 10) -> list[QueuedMail]:
    """Lease up to ``limit`` messages that are due and not leased by a live holder."""
    now = time.time()
    claimed: list[QueuedMail] = []
    async with store.transaction() as db:
        async with db.execute(
            "SELECT id, recipient, message, attempts, created_at FROM mail_outbox"
            " WHERE next_attempt_at <= ? AND (lease_until IS NULL OR lease_until <= ?)"
            f" ORDER BY next_attempt_at LIMIT {int(limit)}{store.d.for_update}",
            (now, now),
        ) as cur:
            rows = list(await cur.fetchall())
        for r in rows:
            await db.execute(
                "UPDATE mail_outbox SET lease_until = ?, attempts = attempts + 1 WHERE id = ?",
                (now + lease, r[0]),
            )
            claimed.append(QueuedMail(int(r[0]), str(r[1]), str(r[2]), int(r[3]) + 1, float(r[4])))
    return claimed


async def delete(store: Store, mail_id: int) -> bool:
    """Forget a message (sent, or given up on); False when it was already gone."""
    async with store.transaction() as db:
        cur = await db.execute("DELETE FROM mail_outbox WHERE id = ?", (mail_id,))
        return cur.rowcount > 0


async def retry_later(store: Store, mail_id: int, *, at: float, error: str) -> None:
    """Release the lease and schedule the next attempt."""
    async with store.transaction() as db:
        await db.execute(
            "UPDATE mail_outbox SET lease_until = NULL, next_attempt_at = ?, last_error = ?"
            " WHERE id = ?",
            (at, error[:500], mail_id),
        )


async def pending(store: Store) -> int:
    row = await store._fetchone("SELECT count(*) FROM mail_outbox")
    return int(row[0])
