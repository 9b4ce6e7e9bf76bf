"""Limits kept in the store: one count per key for every worker and instance (both backends)."""

import asyncio

import pytest

from tokenapi.store import Store, limits


@pytest.fixture
async def store(database_url: str):
    s = await Store.open(database_url)
    yield s
    await s.close()


async def test_limits__allow_the_limit_then_refuse_with_whole_seconds(store: Store) -> None:
    now = 1_000_000.0
    got = [await limits.hit(store, "k", 3, 60, now=now) for _ in range(4)]
    assert got[:3] == [None, None, None]
    assert got[3] == 20  # one event per 20 s frees up
    assert await limits.hit(store, "other", 3, 60, now=now) is None  # keys are independent
    assert await limits.hit(store, "k", 3, 60, now=now + 20) is None
    assert await limits.hit(store, "k", 3, 60, now=now + 20) is not None


async def test_limits__refund_and_reset(store: Store) -> None:
    assert await limits.hit(store, "k", 1, 60) is None
    assert await limits.hit(store, "k", 1, 60) is not None
    await limits.refund(store, "k", 1, 60)
    assert await limits.hit(store, "k", 1, 60) is None
    await limits.reset(store, "k")
    assert await limits.hit(store, "k", 1, 60) is None


async def test_limits__keys_are_stored_as_digests_and_expired_rows_purged(store: Store) -> None:
    await limits.hit(store, "login-ip:203.0.113.9", 5, 60, now=1000.0)
    rows = await store._fetchall("SELECT key, tat FROM limit_counters")
    assert len(rows) == 1
    assert "203.0.113.9" not in rows[0][0]
    assert len(rows[0][0]) == 64
    await limits.hit(store, "later", 5, 60, now=2000.0)  # the first row's time has passed
    assert [r[0] for r in await store._fetchall("SELECT key FROM limit_counters")] == [
        limits._key("later")
    ]


async def test_limits__shared_by_two_connections_racing(database_url: str) -> None:
    # Two workers, each with its own store on the same database: 60 concurrent events against a
    # limit of 20 let exactly 20 through.
    a, b = await Store.open(database_url), await Store.open(database_url)
    try:
        results = await asyncio.gather(
            *(limits.hit(s, "token-create:u1", 20, 3600) for s in [a, b] * 30)
        )
    finally:
        await a.close()
        await b.close()
    assert results.count(None) == 20
    assert all(isinstance(r, int) and r >= 1 for r in results if r is not None)
