import pytest

from tokenapi.errors import StoreUnavailable
from tokenapi.issue import ensure_user, issue_token
from tokenapi.lastused import UsageRecorder
from tokenapi.store import Store


@pytest.fixture
async def store(database_url: str):
    s = await Store.open(database_url)
    yield s
    await s.close()


async def make_token_id(store: Store, n: int = 0) -> str:
    user = await ensure_user(store, f"u{n}@example.com")
    token, _ = await issue_token(store, user, name="t")
    return token.id


async def test_record__touches_memory_only(store: Store) -> None:
    token_id = await make_token_id(store)
    recorder = UsageRecorder(store, 3600)
    before = store.queries
    for _ in range(1000):
        recorder.record(token_id, "npm")
    assert store.queries == before


async def test_flush__one_write_per_interval_for_many_uses(store: Store) -> None:
    ids = [await make_token_id(store, n) for n in range(5)]
    recorder = UsageRecorder(store, 3600)
    for i in range(10_000):
        recorder.record(ids[i % 5], "npm" if i % 2 else "pypi", now=1000.0 + i)
    assert await recorder.flush() == 5
    assert recorder.flushes == 1
    assert await recorder.flush() == 0  # nothing pending: no transaction
    assert recorder.flushes == 1
    usage = await store.usage(ids[0])
    assert sum(u.requests for u in usage) == 2000


async def test_usage__merges_memory_over_store(store: Store) -> None:
    token_id = await make_token_id(store)
    recorder = UsageRecorder(store, 3600)
    recorder.record(token_id, "npm", now=100.0)
    await recorder.flush()
    recorder.record(token_id, "npm", now=200.0)
    recorder.record(token_id, "pypi", now=150.0)
    usage = {u.ecosystem: (u.requests, u.last_used_at) for u in await recorder.usage(token_id)}
    assert usage == {"npm": (2, 200.0), "pypi": (1, 150.0)}
    assert recorder.last_used_at(token_id, 100.0) == 200.0


async def test_running__final_flush_on_exit(store: Store) -> None:
    token_id = await make_token_id(store)
    recorder = UsageRecorder(store, 3600)
    async with recorder.running():
        recorder.record(token_id, "npm", now=123.0)
    token = await store.get_token(token_id)
    assert token is not None
    assert token.last_used_at == 123.0


async def test_flush__failure_keeps_pending_uses(database_url: str) -> None:
    broken = await Store.open(database_url)
    token_id = await make_token_id(broken)
    recorder = UsageRecorder(broken, 3600)
    recorder.record(token_id, "npm", now=5.0)
    await broken.close()
    with pytest.raises(StoreUnavailable):
        await recorder.flush()
    healthy = await Store.open(database_url)
    try:
        recorder._store = healthy
        assert await recorder.flush() == 1
        assert [(u.ecosystem, u.requests) for u in await healthy.usage(token_id)] == [("npm", 1)]
    finally:
        await healthy.close()
