"""The SQLite backend: one file, a writer and a reader connection (aiosqlite), WAL mode.

Writes run one at a time inside ``BEGIN IMMEDIATE`` on the writer; reads run on the reader, each to
its end in one call.  Opening checks the file's integrity (``PRAGMA quick_check``) so a damaged
database stops start-up instead of failing every request later.
"""

from __future__ import annotations

import asyncio
import sqlite3
import warnings
import weakref
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import aiosqlite

from ..errors import Conflict, StoreUnavailable
from .base import SQLITE, Cursor, Execution, Store, Tx
from .migrations import MIGRATIONS

BUSY_TIMEOUT_MS = 5000

# Every store not yet closed: each connection owns a non-daemon thread that keeps the process
# alive until it is stopped, so the server makes sure none is left (close_leftover_connections).
_OPEN: weakref.WeakSet[SqliteStore] = weakref.WeakSet()


def close_leftover_connections() -> int:
    """Stop the thread of every connection still open (a close that failed or never ran).

    Called once the event loop is gone, as the process is about to exit; returns how many.
    """
    stopped = 0
    for store in list(_OPEN):
        for conn in (store._reader, store._db):
            if conn._running:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    conn.stop()  # the thread closes the sqlite3 connection and ends
                stopped += 1
        _OPEN.discard(store)
    return stopped


class SqliteTx(Tx):
    __slots__ = ("_db",)

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    def execute(self, sql: str, params: Iterable[Any] = ()) -> Execution:
        return Execution(self._run(sql, tuple(params)))

    async def _run(self, sql: str, params: tuple[Any, ...]) -> Cursor:
        try:
            cur = await self._db.execute(sql, params)
            try:
                rows = list(await cur.fetchall())
                return Cursor(rows, cur.rowcount)
            finally:
                await cur.close()
        except ValueError as exc:  # aiosqlite: the store was closed under the transaction
            raise StoreUnavailable(str(exc)) from exc

    async def executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> None:
        try:
            await self._db.executemany(sql, [tuple(r) for r in rows])
        except ValueError as exc:
            raise StoreUnavailable(str(exc)) from exc


async def _enter_wal(db: aiosqlite.Connection) -> None:
    """Switch the file to WAL, waiting out other processes that hold it as they open it too.

    Changing the journal mode needs the file to itself and SQLite answers "database is locked"
    at once, without calling the busy handler, so the wait is ours: short, growing pauses up to
    the same ``BUSY_TIMEOUT_MS`` every other statement gets.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BUSY_TIMEOUT_MS / 1000
    pause = 0.005
    while True:
        try:
            async with db.execute("PRAGMA journal_mode = WAL") as cur:
                row = await cur.fetchone()
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or loop.time() + pause > deadline:
                raise
            await asyncio.sleep(pause)  # a lock held by another process cannot be awaited
            pause = min(pause * 2, 0.1)
            continue
        if row is None or str(row[0]).lower() != "wal":
            raise sqlite3.OperationalError(f"journal mode stays {row[0] if row else 'unknown'}")
        return


async def _close_all(conns: Iterable[aiosqlite.Connection]) -> None:
    """Close every connection even if one close fails or is cancelled: each one's thread is
    non-daemon, so a connection left open keeps the process from exiting."""
    first: BaseException | None = None
    for conn in conns:
        try:
            await asyncio.shield(conn.close())
        except BaseException as exc:
            first = first or exc
    if first is not None:
        raise first


class SqliteStore(Store):
    """Async facade over the SQLite database file."""

    dialect = SQLITE

    def __init__(self, db: aiosqlite.Connection, reader: aiosqlite.Connection, path: Path) -> None:
        self._db = db  # writes, each in an explicit transaction
        self._reader = reader  # reads; WAL lets it run beside a write and never see one half-done
        self.path = path
        self._write_lock = asyncio.Lock()
        self._closed = False
        self.queries = 0
        _OPEN.add(self)

    @classmethod
    async def connect(cls, path: Path) -> SqliteStore:
        """Open (creating if needed) the database, check it and apply pending migrations."""
        path.parent.mkdir(parents=True, exist_ok=True)
        opened: list[aiosqlite.Connection] = []
        try:
            for _ in range(2):
                conn = await aiosqlite.connect(path, isolation_level=None)
                opened.append(conn)
                await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                await conn.execute("PRAGMA foreign_keys = ON")
            db, reader = opened
            await _enter_wal(db)
            await db.execute("PRAGMA synchronous = FULL")
            # A queued mail holds its token until sent; a deleted row is overwritten with zeros.
            await db.execute("PRAGMA secure_delete = ON")
            rows = list(await reader.execute_fetchall("PRAGMA quick_check"))
            if [tuple(r) for r in rows] != [("ok",)]:
                problem = str(rows[0][0]) if rows else "no answer"
                raise StoreUnavailable(f"database {path} is damaged (quick_check: {problem})")
            store = cls(db, reader, path)
            await store._migrate()
        except sqlite3.Error as exc:
            await _close_all(opened)
            raise StoreUnavailable(f"cannot open database {path}: {exc}") from exc
        except BaseException:
            await _close_all(opened)
            raise
        return store

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await _close_all((self._reader, self._db))
        _OPEN.discard(self)

    async def _migrate(self) -> None:
        for number, migration in enumerate(MIGRATIONS, start=1):
            if await self._schema_version() >= number:
                continue
            # executescript commits any open transaction first, so the whole migration,
            # version bump included, is one script; BEGIN IMMEDIATE serialises processes.
            try:
                script = migration.sqlite
                await self._db.executescript(
                    f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;"
                )
            except sqlite3.Error:
                if self._db.in_transaction:
                    await self._db.execute("ROLLBACK")
                # Another process may have applied it between our check and our BEGIN.
                if await self._schema_version() < number:
                    raise

    async def _schema_version(self) -> int:
        async with self._db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def schema_version(self) -> int:
        return await self._schema_version()

    async def _fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        self.queries += 1
        try:
            # One call on the reader's thread runs the statement to its end.  A cursor held open
            # across an await would let concurrent reads overlap on this connection, and while
            # any statement is active SQLite keeps the connection's read snapshot: under steady
            # load it was never released, so revocations and new tokens stayed invisible.
            return list(await self._reader.execute_fetchall(sql, tuple(params)))
        except (sqlite3.DatabaseError, ValueError) as exc:  # ValueError: connection closed
            raise StoreUnavailable(str(exc)) from exc

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        async with self._write_lock:
            self.queries += 1
            try:
                await self._db.execute("BEGIN IMMEDIATE")
            except (sqlite3.DatabaseError, ValueError) as exc:
                raise StoreUnavailable(str(exc)) from exc
            try:
                yield SqliteTx(self._db)
                try:
                    await self._db.execute("COMMIT")
                except ValueError as exc:  # closed under the transaction
                    raise StoreUnavailable(str(exc)) from exc
            except BaseException as exc:
                with suppress(sqlite3.Error, ValueError):
                    await self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.IntegrityError):
                    raise Conflict(str(exc)) from exc
                if isinstance(exc, sqlite3.DatabaseError):
                    raise StoreUnavailable(str(exc)) from exc
                raise

    async def data_version(self) -> int:
        """SQLite's counter of commits made by other connections (other processes included)."""
        row = await self._fetchone("PRAGMA data_version")
        return int(row[0])

    async def tables(self) -> list[str]:
        rows = await self._fetchall(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            " ORDER BY rowid"
        )
        names = [str(r[0]) for r in rows]
        parents: dict[str, set[str]] = {}
        for name in names:
            fks = await self._fetchall(f'PRAGMA foreign_key_list("{name}")')
            parents[name] = {str(fk[2]) for fk in fks} - {name}
        ordered: list[str] = []
        while len(ordered) < len(names):
            ready = [n for n in names if n not in ordered and parents[n] <= set(ordered)]
            if not ready:  # a cycle: keep creation order for the rest
                ready = [n for n in names if n not in ordered]
            ordered.extend(ready)
        return ordered

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[None]:
        """One read transaction on the reader: every read in the block sees the same commit."""
        await self._reader.execute("BEGIN")
        try:
            yield
        finally:
            await self._reader.execute("COMMIT")

    async def columns(self, table: str) -> list[str]:
        rows = await self._fetchall(f'PRAGMA table_info("{table}")')
        return [str(r[1]) for r in rows]
