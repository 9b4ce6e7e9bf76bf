"""Registration, its mail queue and reset redemption on both backends: racing registrations of
one address from two connections (two workers) write one user and one email token, every other
one a reset code, each with its queued mail; a failed send takes its registration back."""

import asyncio
import hashlib

import pytest

from tokenapi import tokens
from tokenapi.store import Store, mailqueue, registration, resets


@pytest.fixture
async def stores(database_url: str):
    a, b = await Store.open(database_url), await Store.open(database_url)
    yield a, b
    await a.close()
    await b.close()


def code_digest(user_id: str, code: str) -> str:
    return hashlib.sha256(f"{user_id}:{code}".encode()).hexdigest()


async def register(store: Store, email: str, code: str) -> registration.Registered:
    secret = tokens.generate()
    return await registration.register(
        store,
        email,
        language="en",
        language_given=False,
        token_name="email",
        digest=tokens.digest(secret),
        prefix=tokens.display_prefix(secret),
        welcome=lambda to, lang: f"welcome {to} {secret}",
        reset=lambda to, lang: f"reset {to} {code}",
        code_digest=lambda user_id: code_digest(user_id, code),
        code_ttl=3600,
        lease=60,
    )


async def test_registration__racing_one_address_gives_one_token_and_codes(
    stores: tuple[Store, Store],
) -> None:
    codes = [f"CODE{i:04d}" for i in range(20)]
    done = await asyncio.gather(
        *(register(stores[i % 2], "Race@Example.com", code) for i, code in enumerate(codes))
    )
    kinds = [d.kind for d in done]
    assert kinds.count("welcome") == 1
    assert kinds.count("reset") == 19
    counts = await stores[0].table_counts()
    assert (counts["users"], counts["tokens"], counts["reset_codes"]) == (1, 1, 19)
    assert await mailqueue.pending(stores[0]) == 20
    # Every mailed code works (the first one used uses them all up).
    welcome = next(d for d in done if d.kind == "welcome")
    reset_code = next(c for d, c in zip(done, codes, strict=True) if d.kind == "reset")
    redeemed = await resets.redeem_reset_code(
        stores[1],
        "race@example.com",
        reset_code,
        code_digest=code_digest,
        max_attempts=5,
        limit=("reset-email:race@example.com", 10, 3600),
        name="email",
        digest=tokens.digest(tokens.generate()),
        prefix="pkg_xxxx",
    )
    assert isinstance(redeemed, resets.Redeemed)
    assert redeemed.old_digest is not None
    assert (await stores[0].get_token(welcome.token_id or "")).revoked_at is not None  # type: ignore[union-attr]
    rows = await stores[0]._fetchall("SELECT count(*) FROM reset_codes WHERE used_at IS NULL")
    assert int(rows[0][0]) == 0


async def test_registration__undo_takes_back_what_it_wrote(stores: tuple[Store, Store]) -> None:
    store = stores[0]
    first = await register(store, "u@example.com", "AAAA2222")
    again = await register(store, "u@example.com", "BBBB3333")
    assert (first.kind, again.kind) == ("welcome", "reset")
    assert await registration.undo(store, again)
    counts = await store.table_counts()
    assert (counts["users"], counts["tokens"], counts["reset_codes"]) == (1, 1, 0)
    assert await registration.undo(store, first)
    counts = await store.table_counts()
    assert (counts["users"], counts["tokens"], counts["mail_outbox"]) == (0, 0, 0)
    # Already sent (gone from the queue): nothing is taken back.
    sent = await register(store, "s@example.com", "CCCC4444")
    assert await mailqueue.delete(store, sent.mail_id)
    assert not await registration.undo(store, sent)
    assert (await store.table_counts())["tokens"] == 1


async def test_mailqueue__claims_are_exclusive_between_connections(
    stores: tuple[Store, Store],
) -> None:
    for i in range(6):
        await register(stores[0], f"q{i}@example.com", "DDDD5555")
    async with stores[0].transaction() as db:
        await db.execute("UPDATE mail_outbox SET lease_until = NULL")
    claimed = await asyncio.gather(
        *(mailqueue.claim_due(stores[i % 2], lease=60, limit=2) for i in range(6))
    )
    ids = [m.id for batch in claimed for m in batch]
    assert sorted(ids) == sorted(set(ids))
    assert len(ids) == 6
    assert all(m.attempts == 2 for batch in claimed for m in batch)
    assert await mailqueue.claim_due(stores[1], lease=60) == []  # all leased


async def test_resets__unknown_and_wrong_are_none_on_both_backends(
    stores: tuple[Store, Store],
) -> None:
    await register(stores[0], "r@example.com", "EEEE6666")
    await register(stores[0], "r@example.com", "FFFF7777")

    async def redeem(email: str, code: str) -> object:
        return await resets.redeem_reset_code(
            stores[1],
            email,
            code,
            code_digest=code_digest,
            max_attempts=5,
            limit=(f"reset-email:{email}", 3, 3600),
            name="email",
            digest=tokens.digest(tokens.generate()),
            prefix="pkg_xxxx",
        )

    assert await redeem("nobody@example.com", "FFFF7777") is None
    assert await redeem("r@example.com", "WRONG000") is None
    assert isinstance(await redeem("r@example.com", "FFFF7777"), resets.Redeemed)
    assert await redeem("r@example.com", "FFFF7777") is None  # used up, and the 3rd attempt
    limited = await redeem("r@example.com", "FFFF7777")
    assert isinstance(limited, resets.Limited)
    assert limited.retry_after >= 1
