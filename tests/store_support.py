"""Recording the statements a store runs, for tests that prove what requests did (or did not) ask.

The server's background tasks (the revocation watch, the blocklist refresh watch, the mail and
breach senders) poll the store on their own schedule.  Only statements run by tasks that started
after recording began (the handlers of the requests under test) are kept, so a poll that lands
during a test cannot change what the requests are seen to do.
"""

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from tokenapi.store import Store


def record_statements(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every SQL statement the store runs from now on, in order, by request tasks only."""
    seen: list[str] = []
    transaction: Callable[[], Any] = store.transaction
    fetchall = store._fetchall

    background = asyncio.all_tasks()

    def ours() -> bool:
        return asyncio.current_task() not in background

    def note(sql: str) -> None:
        if ours():
            seen.append(sql)

    class Recording:
        def __init__(self, tx: Any) -> None:
            self._tx = tx

        def execute(self, sql: str, params: Any = ()) -> Any:
            note(sql)
            return self._tx.execute(sql, params)

        async def executemany(self, sql: str, rows: Any) -> None:
            note(sql)
            await self._tx.executemany(sql, rows)

    @asynccontextmanager
    async def recorded() -> AsyncIterator[Any]:
        if not ours():
            async with transaction() as tx:
                yield tx
            return
        seen.append("BEGIN")
        async with transaction() as tx:
            yield Recording(tx)
        seen.append("COMMIT")

    async def read(sql: str, params: Any = ()) -> list[Any]:
        note(sql)
        return await fetchall(sql, params)

    monkeypatch.setattr(store, "transaction", recorded)
    monkeypatch.setattr(store, "_fetchall", read)
    return seen
