"""Redeeming a reset code, with the same work whether or not the address exists.

``POST /api/v1/tokens/reset`` must not tell, by its answer or by its timing, whether an address
has an account.  So one write transaction does everything for every request: it counts the
attempt against the address's limit (a write, known address or not), finds the user (or a
placeholder id no user has), reads the live codes, and on a wrong code adds a failed attempt to
them (the same statement, touching no row for an unknown address).  Only a right code does more.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass

from . import limits
from .base import Store, Token

# No user has this id (ids are UUID4 strings); an unknown address is redeemed against it.
NO_USER_ID = "00000000-0000-0000-0000-000000000000"


@dataclass(frozen=True, slots=True)
class Redeemed:
    """A right code: the new email token and the old one's digest (None if there was none)."""

    token: Token
    old_digest: str | None


@dataclass(frozen=True, slots=True)
class Limited:
    """Too many attempts for this address: seconds to wait."""

    retry_after: int


async def redeem_reset_code(
    store: Store,
    email: str,
    code: str,
    *,
    code_digest: Callable[[str, str], str],
    max_attempts: int,
    limit: tuple[str, int, float],
    name: str,
    digest: str,
    prefix: str,
) -> Redeemed | Limited | None:
    """Trade ``code`` for a new email token of ``email``'s user, all in one transaction.

    ``limit`` is (key, events, period) counted for every attempt; ``code_digest(user_id, code)``
    is the stored form of a code.  None for any wrong address/code pair.  A right code uses up
    every live code of the user and replaces their email token.
    """
    now = time.time()
    key, events, period = limit
    d = store.d
    async with store.transaction() as db:
        retry = await limits.hit_in(db, d, key, events, period, now=now)
        if retry is not None:
            return Limited(retry)
        async with db.execute(
            f"SELECT id FROM users WHERE {d.nocase('email')} = {d.nocase('?')}", (email,)
        ) as cur:
            row = await cur.fetchone()
        user_id = str(row[0]) if row else NO_USER_ID
        wanted = code_digest(user_id, code)
        async with db.execute(
            "SELECT id, digest FROM reset_codes WHERE user_id = ? AND used_at IS NULL"
            " AND expires_at > ? AND failed_attempts < ?" + d.for_update,
            (user_id, now, max_attempts),
        ) as cur:
            live = list(await cur.fetchall())
        # Every live code is compared (no early exit), so the work does not depend on which.
        matches = [hmac.compare_digest(str(r[1]).encode(), wanted.encode()) for r in live]
        if not any(matches):
            await db.execute(
                "UPDATE reset_codes SET failed_attempts = failed_attempts + 1"
                " WHERE user_id = ? AND used_at IS NULL AND expires_at > ? AND failed_attempts < ?",
                (user_id, now, max_attempts),
            )
            return None
        await db.execute(
            "UPDATE reset_codes SET used_at = ? WHERE user_id = ? AND used_at IS NULL",
            (now, user_id),
        )
        async with db.execute(
            "SELECT id FROM tokens WHERE user_id = ? AND kind = 'email' AND revoked_at IS NULL"
            + d.for_update,
            (user_id,),
        ) as cur:
            old = await cur.fetchone()
        old_digest = await store._revoke_in(db, str(old[0]), now) if old else None
        token = await store._insert_token(db, user_id, name, "email", digest, prefix)
    return Redeemed(token, old_digest)
