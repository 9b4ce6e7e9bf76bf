"""Registering an address: the token (or reset code) and the mail that delivers it, written in one
transaction, so a mail is never sent for a token that was not stored (or the other way round).

``register`` decides inside the transaction: an address with an active email token gets a reset
code, any other a new email token (and a user when it has none); the message is rendered there
(the user's language is known only then) and queued in ``mail_outbox``, leased to the caller.
The caller then sends it at once.  If that fails, ``undo`` removes everything the registration
wrote and the caller answers 503; if the caller dies first, the lease runs out and a background
sender delivers the queued message: either way every mailed token works.

Racing registrations of one address (in any process or instance) are serialised by the unique
indexes: the loser's transaction fails with ``Conflict`` and is run again, and then finds the
winner's user and token.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import Conflict
from .base import Store, Tx, User, new_id
from .mailqueue import enqueue_in

ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class Registered:
    """What one registration wrote: enough to send its mail, and to take it all back."""

    mail_id: int
    recipient: str
    message: str
    kind: str  # "welcome" or "reset"
    user_id: str
    created_user: bool
    token_id: str | None
    reset_code_id: int | None


# (recipient, language) -> message text, for each kind of mail.
Render = Callable[[str, str], str]


async def register(
    store: Store,
    email: str,
    *,
    language: str,
    language_given: bool,
    token_name: str,
    digest: str,
    prefix: str,
    welcome: Render,
    reset: Render,
    code_digest: Callable[[str], str],
    code_ttl: float,
    lease: float,
) -> Registered:
    """Write a new email token or a reset code for ``email``, with its queued mail."""
    for attempt in range(ATTEMPTS):
        try:
            async with store.transaction() as db:
                return await _register_in(
                    store,
                    db,
                    email,
                    language,
                    language_given,
                    token_name,
                    digest,
                    prefix,
                    welcome,
                    reset,
                    code_digest,
                    code_ttl,
                    lease,
                )
        except Conflict:
            # Another registration of this address won a race on a unique index: run again,
            # now seeing what it wrote.
            if attempt == ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


async def _register_in(
    store: Store,
    db: Tx,
    email: str,
    language: str,
    language_given: bool,
    token_name: str,
    digest: str,
    prefix: str,
    welcome: Render,
    reset: Render,
    code_digest: Callable[[str], str],
    code_ttl: float,
    lease: float,
) -> Registered:
    d = store.d
    now = time.time()
    async with db.execute(
        "SELECT id, email, language, is_admin, password_hash, created_at FROM users"
        f" WHERE {d.nocase('email')} = {d.nocase('?')}{d.for_update}",
        (email,),
    ) as cur:
        row = await cur.fetchone()
    user = User(row[0], row[1], row[2], bool(row[3]), row[4], row[5]) if row else None
    if user is not None:
        async with db.execute(
            "SELECT id FROM tokens WHERE user_id = ? AND kind = 'email' AND revoked_at IS NULL",
            (user.id,),
        ) as cur:
            active = await cur.fetchone()
        if active is not None:
            lang = language if language_given else user.language
            # Earlier live codes stay valid (each mailed code works); wrong guesses count
            # against all of them, and using one uses them all up.
            async with db.execute(
                "INSERT INTO reset_codes (user_id, digest, created_at, expires_at)"
                " VALUES (?, ?, ?, ?) RETURNING id",
                (user.id, code_digest(user.id), now, now + code_ttl),
            ) as cur:
                code_row = await cur.fetchone()
            message = reset(user.email, lang)
            mail_id = await enqueue_in(db, user.email, message, lease=lease, now=now)
            return Registered(
                mail_id, user.email, message, "reset", user.id, False, None, int(code_row[0])
            )
    created = user is None
    if user is None:
        user = User(new_id(), email, language, False, None, now)
        await db.execute(
            "INSERT INTO users (id, email, language, is_admin, password_hash, created_at)"
            " VALUES (?, ?, ?, 0, NULL, ?)",
            (user.id, user.email, user.language, user.created_at),
        )
    token = await store._insert_token(db, user.id, token_name, "email", digest, prefix)
    message = welcome(user.email, language)
    mail_id = await enqueue_in(db, user.email, message, lease=lease, now=now)
    return Registered(mail_id, user.email, message, "welcome", user.id, created, token.id, None)


async def undo(store: Store, done: Registered) -> bool:
    """Take back a registration whose mail could not be sent: its queued mail, its token or
    code, and the user it created.  False when the mail had already left the queue (another
    sender delivered it after our lease ran out): then nothing is taken back."""
    async with store.transaction() as db:
        cur = await db.execute("DELETE FROM mail_outbox WHERE id = ?", (done.mail_id,))
        if cur.rowcount == 0:
            return False
        if done.token_id is not None:
            # Never delivered, never seen by anyone: removed, not revoked.
            await db.execute("DELETE FROM tokens WHERE id = ?", (done.token_id,))
        if done.reset_code_id is not None:
            await db.execute("DELETE FROM reset_codes WHERE id = ?", (done.reset_code_id,))
        if done.created_user:
            await db.execute(
                "DELETE FROM users WHERE id = ? AND NOT EXISTS"
                " (SELECT 1 FROM tokens WHERE user_id = ?)",
                (done.user_id, done.user_id),
            )
    return True
