"""``python tests/exit_launcher.py FAULT serve ...``: ``pkgate serve`` with one fault injected, for
the tests that a SIGTERM always ends the process (tests/test_exit.py).  FAULT is one of:

- ``none``: nothing changed;
- ``slow-flush``: each last-used flush first runs a 3-second query on the writer connection,
  announcing ``FAULT: flush started`` on stderr;
- ``slow-poll``: the revocation watch's first poll runs a 3-second query on the reader connection,
  announcing ``FAULT: poll started``;
- ``failing-close:N``: the Nth database connection close raises (its thread would stay alive;
  closes 1 and 2 are the start-up migration's, 3 and later the server's).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

import aiosqlite

from proxy.cli import main
from tokenapi.store.sqlite import SqliteStore, SqliteTx

SLOW = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000)"
    " SELECT count(*) FROM c"
)


def announce(what: str) -> None:
    print(f"FAULT: {what}", file=sys.stderr, flush=True)


def slow_flush() -> None:
    original = SqliteStore.record_usage

    async def record_usage(self: SqliteStore, updates: Iterable[Any], *rest: Any) -> int:
        batch = list(updates)
        if batch:
            announce("flush started")
            async with self.transaction() as tx:
                assert isinstance(tx, SqliteTx)
                await tx.execute(SLOW)
        return await original(self, batch, *rest)

    SqliteStore.record_usage = record_usage  # type: ignore[method-assign]


def slow_poll() -> None:
    original = SqliteStore.data_version
    calls = 0

    async def data_version(self: SqliteStore) -> int:
        nonlocal calls
        calls += 1
        if calls == 2:  # the first poll after start_watching
            announce("poll started")
            await self._fetchall(SLOW)
        return await original(self)

    SqliteStore.data_version = data_version  # type: ignore[method-assign]


def failing_close(nth: int) -> None:
    original = aiosqlite.Connection.close
    calls = 0

    async def close(self: aiosqlite.Connection) -> None:
        nonlocal calls
        calls += 1
        if calls == nth:
            announce("close fails")
            raise RuntimeError("injected close failure")
        await original(self)

    aiosqlite.Connection.close = close  # type: ignore[method-assign]


FAULTS = {"none": lambda: None, "slow-flush": slow_flush, "slow-poll": slow_poll}

if __name__ == "__main__":
    fault = sys.argv[1]
    if fault.startswith("failing-close:"):
        failing_close(int(fault.split(":", 1)[1]))
    else:
        FAULTS[fault]()
    sys.exit(main(sys.argv[2:]))
