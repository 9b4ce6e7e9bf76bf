"""``pkgate db copy``: every row of one store into another, empty one (SQLite -> PostgreSQL).

Both stores are opened (so both are migrated to the same schema) before anything is copied.  The
target must be empty; all rows go in one transaction on the target, read from one snapshot of the
source, table by table in foreign-key order and in bounded batches; then the row counts of every
table are compared.  Serial keys (the revocation log's sequence numbers, ...) are kept, and the
target's sequences moved past them, so watchers' positions and later inserts stay right.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import Conflict, StoreUnavailable
from .base import Store

BATCH = 2000


@dataclass(frozen=True, slots=True)
class CopyReport:
    counts: dict[str, int]  # rows per table, equal on both sides

    @property
    def rows(self) -> int:
        return sum(self.counts.values())


async def copy_store(source: Store, target: Store) -> CopyReport:
    """Copy all of ``source`` into the empty ``target``; raises Conflict when it is not empty.

    The source should not be written meanwhile (stop the servers): the copy is one snapshot.
    """
    if await source.schema_version() != await target.schema_version():
        raise Conflict("source and target are at different schema versions")
    tables = await source.tables()
    target_tables = set(await target.tables())
    missing = [t for t in tables if t not in target_tables]
    if missing:
        raise Conflict(f"target has no table {missing[0]}")
    for table, n in (await target.table_counts()).items():
        if n:
            raise Conflict(f"target database is not empty ({table}: {n} rows); nothing copied")
    async with source.snapshot():
        expected = await source.table_counts()
        async with target.transaction() as tx:
            for table in tables:
                columns = [
                    c for c in await source.columns(table) if c in await target.columns(table)
                ]
                names = ", ".join(f'"{c}"' for c in columns)
                marks = ", ".join("?" for _ in columns)
                insert = f'INSERT INTO "{table}" ({names}) VALUES ({marks})'
                offset = 0
                while True:
                    rows = await source._fetchall(
                        f'SELECT {names} FROM "{table}" ORDER BY {names} LIMIT ? OFFSET ?',
                        (BATCH, offset),
                    )
                    if not rows:
                        break
                    await tx.executemany(insert, [tuple(r) for r in rows])
                    offset += len(rows)
            await target._after_bulk_load(tx, tables)
    copied = await target.table_counts()
    wrong = {
        t: (expected.get(t), copied.get(t)) for t in tables if expected.get(t) != copied.get(t)
    }
    if wrong:
        table, (want, got) = next(iter(wrong.items()))
        raise StoreUnavailable(f"copy incomplete: {table} has {got} rows, expected {want}")
    return CopyReport({t: copied[t] for t in tables})
