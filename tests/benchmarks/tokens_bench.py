"""Benchmark of the token hot path: validation on a cache hit, and last-used write batching.

Run by hand (not part of the test suite):  .venv/bin/python -m tests.benchmarks.tokens_bench
Figures are printed with a baseline measured in the same run.
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
import time
from pathlib import Path

from tokenapi.issue import ensure_user, issue_token
from tokenapi.lastused import UsageRecorder
from tokenapi.store import Store
from tokenapi.validation import TokenValidator

N_VALIDATIONS = 200_000
N_USES = 100_000
N_TOKENS = 50
FLUSH_INTERVAL = 0.05


def _per_call(seconds: float, n: int) -> float:
    return seconds / n * 1e6


async def bench_validation(store: Store) -> tuple[float, float, float]:
    """µs per validate() on a cache hit, per cached() and per bare sha256+dict lookup."""
    user = await ensure_user(store, "bench@example.com")
    _, secret = await issue_token(store, user, name="bench")
    validator = TokenValidator(store, ttl=3600)
    assert await validator.validate(secret) is not None
    lookups = store.queries

    start = time.perf_counter()
    for _ in range(N_VALIDATIONS):
        await validator.validate(secret)
    hit = _per_call(time.perf_counter() - start, N_VALIDATIONS)

    start = time.perf_counter()
    for _ in range(N_VALIDATIONS):
        validator.cached(secret)
    sync_hit = _per_call(time.perf_counter() - start, N_VALIDATIONS)
    assert store.queries == lookups, "a cache hit touched the store"

    table = {hashlib.sha256(secret.encode()).hexdigest(): object()}
    start = time.perf_counter()
    for _ in range(N_VALIDATIONS):
        table.get(hashlib.sha256(secret.encode()).hexdigest())
    baseline = _per_call(time.perf_counter() - start, N_VALIDATIONS)
    return hit, sync_hit, baseline


async def bench_last_used(store: Store) -> tuple[int, int, float]:
    """Record 100,000 uses over 50 tokens while the flusher runs; count store writes."""
    ids = []
    for n in range(N_TOKENS):
        user = await ensure_user(store, f"user{n}@example.com")
        token, _ = await issue_token(store, user, name="bench")
        ids.append(token.id)
    recorder = UsageRecorder(store, FLUSH_INTERVAL)
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with recorder.running():
        for i in range(N_USES):
            recorder.record(ids[i % N_TOKENS], "npm" if i % 3 else "pypi")
            if i % 500 == 0:
                await asyncio.sleep(0.001)  # spread the uses over several flush intervals
    elapsed = loop.time() - start
    intervals = int(elapsed / FLUSH_INTERVAL) + 1  # + the final flush at shutdown
    usage = [await store.usage(t) for t in ids]
    recorded = sum(u.requests for per_token in usage for u in per_token)
    assert recorded == N_USES, f"lost uses: {recorded} != {N_USES}"
    return recorder.flushes, intervals, elapsed


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = await Store.open(Path(tmp) / "bench.db")
        try:
            hit, sync_hit, baseline = await bench_validation(store)
            writes, intervals, elapsed = await bench_last_used(store)
        finally:
            await store.close()
    ratio = "x sha256+dict"
    rows = [
        (
            "validate() on a cache hit",
            f"{hit:.2f} µs",
            f"{hit / baseline:.2f}{ratio}",
            "< 5 µs",
        ),
        (
            "cached() (sync) on a hit",
            f"{sync_hit:.2f} µs",
            f"{sync_hit / baseline:.2f}{ratio}",
            "< 5 µs",
        ),
        ("baseline sha256+dict lookup", f"{baseline:.2f} µs", "1.00x", ""),
        (
            f"store writes, {N_USES:,} uses / {N_TOKENS} tokens",
            f"{writes} transactions",
            f"{writes / intervals:.2f}x flush intervals ({intervals} in {elapsed:.2f} s)",
            "<= 1.00x",
        ),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    header = ("measure", "figure", "ratio to baseline", "target")
    widths = [max(w, len(h)) for w, h in zip(widths, header, strict=True)]
    for row in (header, *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    asyncio.run(main())
