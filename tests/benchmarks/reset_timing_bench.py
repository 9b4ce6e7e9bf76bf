"""Does ``POST /api/v1/tokens/reset`` tell, by its timing, whether an address has an account?

Run by hand (not part of the test suite):  .venv/bin/python -m tests.benchmarks.reset_timing_bench

A real pkgate (in this process, real HTTP on loopback, SQLite in a temporary directory) answers
wrong codes for an address that has an account with a live reset code, and for one that does
not, interleaved at random.  It prints the median and p90 of each and how well the best single
latency threshold tells them apart (0.5 = chance; the issue measured 0.95 before the fix).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from proxy.app import create_app
from proxy.server import SafeAppRunner
from proxy.settings import Settings
from tests.conftest import free_socket

N_EACH = 600


def best_threshold_accuracy(known: list[float], unknown: list[float]) -> float:
    """The accuracy of the best rule "slower than t means known" (or the reverse)."""
    points = sorted([(t, 1) for t in known] + [(t, 0) for t in unknown])
    total, n_known = len(points), len(known)
    best, known_below = 0.0, 0
    for i, (_, is_known) in enumerate(points, start=1):
        known_below += is_known
        unknown_below = i - known_below
        # below t: say "unknown"; above: say "known" (and the mirrored rule)
        right = unknown_below + (n_known - known_below)
        best = max(best, right / total, (total - right) / total)
    return best


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sock = free_socket()
        port = sock.getsockname()[1]
        settings = Settings(
            data_dir=Path(tmp),
            port=port,
            npm_upstream="http://127.0.0.1:9/",
            reset_limit_email=1_000_000,
            reset_limit_ip=1_000_000,
            register_limit_email=1_000_000,
            access_log=False,
        )
        runner = SafeAppRunner(create_app(settings), access_log=None, handle_signals=False)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        base = f"http://127.0.0.1:{port}/api/v1/tokens"
        try:
            async with aiohttp.ClientSession() as http:
                for _ in range(2):  # a token, then a live reset code
                    async with http.post(base, json={"email": "known@example.com"}) as r:
                        assert r.status == 202, await r.text()
                order = ["known"] * N_EACH + ["unknown"] * N_EACH
                random.shuffle(order)
                times: dict[str, list[float]] = {"known": [], "unknown": []}
                for i, who in enumerate(order):
                    email = "known@example.com" if who == "known" else f"nobody{i}@example.com"
                    body = {"email": email, "code": "WRONGXX2"}
                    start = time.perf_counter()
                    async with http.post(f"{base}/reset", json=body) as r:
                        await r.read()
                        assert r.status == 400, r.status
                    times[who].append((time.perf_counter() - start) * 1000)
        finally:
            await runner.cleanup()
    for who, got in times.items():
        got.sort()
        p90 = got[int(len(got) * 0.9)]
        print(f"{who:8} median {statistics.median(got):.3f} ms   p90 {p90:.3f} ms")
    ratio = statistics.median(times["known"]) / statistics.median(times["unknown"])
    accuracy = best_threshold_accuracy(times["known"], times["unknown"])
    print(f"median known/unknown: {ratio:.3f}x   best threshold accuracy: {accuracy:.3f}")


if __name__ == "__main__":
    asyncio.run(main())
