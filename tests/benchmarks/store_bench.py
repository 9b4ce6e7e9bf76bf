"""pkgate's store benchmark (SPEC 17): SQLite vs PostgreSQL, one instance vs two.

    .venv/bin/python -m tests.benchmarks.store_bench [--duration 5] [--rounds 3] [--tokens 2000]

Rows, each a ratio of figures from the same run:

1. cold validation (a cache miss: one store lookup) p50 / p99, PostgreSQL vs SQLite, in-process,
   one at a time and with 32 at once;
2. warm packument req/s with a token (validation hits are in memory), pkgate on PostgreSQL vs on
   SQLite, measured in alternating turns (median);
3. warm packument req/s of two instances on one PostgreSQL (each loaded by its own wrk with half
   the connections) vs one instance with all of them.

PostgreSQL is a throwaway cluster started from the distribution's binaries (tests/pg.py); the
upstream is the fake registry of proxy_bench.  Not collected by pytest; never part of pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tests import pg
from tests.benchmarks import proxy_bench as pb
from tokenapi.issue import ensure_user, issue_token
from tokenapi.store import Store
from tokenapi.validation import TokenValidator

PY = sys.executable


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def cold_validation(url: str, count: int) -> dict[str, tuple[float, float]]:
    """p50/p99 in microseconds of cache-miss validations, serial and 32 concurrent."""
    store = await Store.open(url)
    try:
        user = await ensure_user(store, "bench@example.com")
        secrets = [(await issue_token(store, user, name=f"b{i}"))[1] for i in range(count)]
        out = {}
        for label, concurrency in (("serial", 1), ("32 at once", 32)):
            validator = TokenValidator(store, ttl=3600)  # empty cache: every call is a miss
            latencies: list[float] = []

            async def one(
                secret: str, v: TokenValidator = validator, lat: list[float] = latencies
            ) -> None:
                t0 = time.perf_counter()
                assert await v.validate(secret) is not None
                lat.append((time.perf_counter() - t0) * 1e6)

            for start in range(0, len(secrets), concurrency):
                await asyncio.gather(*(one(s) for s in secrets[start : start + concurrency]))
            out[label] = (pct(latencies, 0.5), pct(latencies, 0.99))
        return out
    finally:
        await store.close()


class Bench:
    def __init__(self, work: Path, ns: argparse.Namespace, pg_url: str) -> None:
        self.work, self.ns, self.pg_url = work, ns, pg_url
        self.rows: list[tuple[str, str, str, str]] = []
        self.up_port = pb.free_port()
        self.upstream = f"http://127.0.0.1:{self.up_port}"
        self.serial = 0

    def row(self, item: str, measured: str, baseline: str, ratio: str) -> None:
        self.rows.append((item, measured, baseline, ratio))
        print(f"  {item}: {measured} vs {baseline} -> {ratio}", file=sys.stderr, flush=True)

    def pkgate(self, database_url: str) -> tuple[list[str], int]:
        self.serial += 1
        port = pb.free_port()
        return [
            PY, "-m", "proxy", "serve", "--port", str(port),
            "--data-dir", str(self.work / f"data{self.serial}"),
            "--database-url", database_url,
            "--npm-upstream", self.upstream + "/",
            "--access-log-file", str(self.work / f"access{self.serial}.log"),
            "--log-level", "warning",
            "--registry-rate-per-token", "1000000", "--registry-rate-per-ip", "1000000",
        ], port  # fmt: skip

    def token(self, database_url: str) -> str:
        out = subprocess.run(
            [PY, "-m", "proxy", "token", "create", "--email", "bench@example.com",
             "--data-dir", str(self.work / "cli"), "--database-url", database_url],
            cwd=pb.TOP, check=True, capture_output=True, text=True,
        )  # fmt: skip
        return out.stdout.strip()

    def cold(self) -> None:
        lite = asyncio.run(cold_validation(f"sqlite:///{self.work / 'cold.db'}", self.ns.tokens))
        pgsql = asyncio.run(cold_validation(self.pg_url, self.ns.tokens))
        for label in lite:
            for i, q in ((0, "p50"), (1, "p99")):
                self.row(
                    f"1. cold validation {q} ({label})",
                    f"PostgreSQL {pgsql[label][i]:,.0f} µs",
                    f"SQLite {lite[label][i]:,.0f} µs",
                    f"{pgsql[label][i] / lite[label][i]:.2f}x",
                )

    def warm_path(self) -> str:
        return "/npm/bench-pkg"

    def warm(self) -> None:
        ns = self.ns
        lite_url = f"sqlite:///{self.work / 'warm.db'}"
        targets = {}
        with contextlib.ExitStack() as stack:
            for label, url in (("sqlite", lite_url), ("postgresql", self.pg_url)):
                secret = self.token(url)
                args, port = self.pkgate(url)
                pid = stack.enter_context(pb.process(args, port))
                target = f"http://127.0.0.1:{port}{self.warm_path()}"
                status, _ = pb.curl(target, secret)
                if status != 200:
                    raise RuntimeError(f"{label}: {status}")
                targets[label] = (target, secret, pid)
            runs: dict[str, list[float]] = {label: [] for label in targets}
            for _ in range(ns.rounds):
                for label, (target, secret, pid) in targets.items():
                    pb.wait_idle(pid, 10)
                    runs[label].append(pb.wrk(target, secret, ns.duration, ns.connections, pid).rps)
        lite, pgsql = statistics.median(runs["sqlite"]), statistics.median(runs["postgresql"])
        self.row(
            "2. warm packument req/s",
            f"PostgreSQL {pgsql:,.0f}/s",
            f"SQLite {lite:,.0f}/s",
            f"{pgsql / lite:.2f}x",
        )

    def instances(self) -> None:
        ns = self.ns
        secret = self.token(self.pg_url)
        with contextlib.ExitStack() as stack:
            targets = []
            for _ in range(2):
                args, port = self.pkgate(self.pg_url)
                pid = stack.enter_context(pb.process(args, port))
                target = f"http://127.0.0.1:{port}{self.warm_path()}"
                pb.curl(target, secret)
                targets.append((target, pid))
            one_runs, two_runs = [], []
            for _ in range(ns.rounds):
                pb.wait_idle(targets[0][1], 10)
                one_runs.append(pb.wrk(targets[0][0], secret, ns.duration, ns.connections).rps)
                results: list[float] = []

                def load(target: str, out: list[float] = results) -> None:
                    out.append(pb.wrk(target, secret, ns.duration, ns.connections // 2).rps)

                threads = [threading.Thread(target=load, args=(t,)) for t, _ in targets]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                two_runs.append(sum(results))
        one, two = statistics.median(one_runs), statistics.median(two_runs)
        self.row(
            "3. warm packument req/s, 2 instances vs 1 (PostgreSQL)",
            f"{two:,.0f}/s",
            f"{one:,.0f}/s",
            f"{two / one:.2f}x",
        )

    def run(self) -> None:
        root = self.work / "upstream"
        print("building the fake upstream ...", file=sys.stderr, flush=True)
        pb.build_upstream(root)
        with pb.process(
            [PY, pb.__file__, "--upstream", str(root), str(self.up_port)], self.up_port
        ):
            for number, measure in ((1, self.cold), (2, self.warm), (3, self.instances)):
                if not self.ns.only or number in self.ns.only:
                    measure()

    def table(self) -> str:
        lines = ["| measurement | measured | baseline | ratio |", "|---|---|---|---|"]
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in self.rows]
        return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--rounds", type=int, default=3, help="turns per server (median)")
    parser.add_argument("--tokens", type=int, default=2000, help="tokens looked up in row 1")
    parser.add_argument(
        "--only", type=lambda t: {int(n) for n in t.split(",")}, default=set(), help="rows"
    )
    ns = parser.parse_args()
    pb.WRK = pb.ensure_wrk()
    server = pg.start_server()
    if server is None:
        raise SystemExit("PostgreSQL is not installed (apt-get install postgresql)")
    try:
        with tempfile.TemporaryDirectory(prefix="pkgate-store-bench-") as work:
            bench = Bench(Path(work), ns, server.create_database())
            try:
                bench.run()
            finally:
                print(bench.table())
    finally:
        server.destroy()


if __name__ == "__main__":
    main()
