"""The PostgreSQL backend (asyncpg): a connection pool, migrations under an advisory lock, and a
LISTEN connection that tells this instance about revocations made by any other.

Several pkgate instances may share one database.  Each revocation inserts into the ``revocations``
log and sends ``NOTIFY pkgate_revocations`` in the same transaction (delivered at commit).  The
listener bumps a counter on every notification and on every (re)connection; the validator's watch
re-reads the log from the last sequence number it saw whenever the counter moved, so a revocation
made while the listener was cut off is found when it comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from functools import lru_cache
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from yarl import URL

from ..errors import Conflict, StoreUnavailable
from .base import POSTGRESQL, Cursor, Execution, Store, Tx
from .migrations import MIGRATIONS

log = logging.getLogger(__name__)

CHANNEL = "pkgate_revocations"
MIGRATION_LOCK = 0x706B67617465  # "pkgate": pg_advisory_xact_lock key for migrations
CONNECT_TIMEOUT = 5.0
COMMAND_TIMEOUT = 30.0
CLOSE_TIMEOUT = 5.0  # then connections are cut: an unreachable server must not hold up exit
LISTEN_KEEPALIVE = 2.0  # seconds between checks that the listening connection is alive

# What a broken, refused or vanished database raises (all map to StoreUnavailable).
_UNAVAILABLE = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)


def masked(url: str) -> str:
    """A database URL fit for logs and messages: no password, no query string."""
    try:
        parsed = URL(url)
    except ValueError:
        return "postgresql://(unparseable URL)"
    return str(parsed.with_password(None).with_query(None).with_fragment(None))


def describe(exc: BaseException) -> str:
    """A short, secret-free description of a database failure.

    asyncpg's messages carry no password, but a ``detail`` can quote row values; only the class
    and the primary message are kept.
    """
    if isinstance(exc, asyncpg.PostgresError):
        text = exc.args[0] if exc.args else ""
        return f"{type(exc).__name__}: {text}".strip(": ")
    if isinstance(exc, OSError):
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"


@lru_cache(maxsize=1024)
def numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1, $2, ...`` (outside quoted strings)."""
    out: list[str] = []
    n = 0
    for part in re.split(r"('(?:[^']|'')*')", sql):
        if part.startswith("'"):
            out.append(part)
            continue
        pieces = part.split("?")
        for i, piece in enumerate(pieces):
            if i:
                n += 1
                out.append(f"${n}")
            out.append(piece)
    return "".join(out)


def _rowcount(status: str) -> int:
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


def _returns_rows(sql: str) -> bool:
    head = sql.lstrip()[:6].upper()
    return head in ("SELECT", "WITH  ") or head.startswith("WITH") or " RETURNING " in sql.upper()


class PgTx(Tx):
    __slots__ = ("_conn",)

    def __init__(self, conn: asyncpg.Connection[Any] | PoolConnectionProxy[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Iterable[Any] = ()) -> Execution:
        return Execution(self._run(sql, tuple(params)))

    async def _run(self, sql: str, params: tuple[Any, ...]) -> Cursor:
        query = numbered(sql)
        if _returns_rows(sql):
            rows = list(await self._conn.fetch(query, *params))
            return Cursor(rows, len(rows))
        status = await self._conn.execute(query, *params)
        return Cursor([], _rowcount(status))

    async def executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> None:
        args = [tuple(r) for r in rows]
        if args:
            await self._conn.executemany(numbered(sql), args)


async def _keep_session(conn: asyncpg.Connection[Any]) -> None:
    """Pool reset on release: nothing beyond asyncpg's own rollback of an open transaction.

    The default runs ``RESET ALL; UNLISTEN *; CLOSE ALL; pg_advisory_unlock_all()`` after every
    query: one more round trip per lookup.  Pool connections hold no session state (no LISTEN:
    the listener has its own connection; only transaction-scoped advisory locks; no SET).
    """
    return None


def _unavailable(exc: BaseException) -> StoreUnavailable:
    return StoreUnavailable(describe(exc))


class PostgresStore(Store):
    """pkgate's tables in a PostgreSQL database shared by any number of instances."""

    dialect = POSTGRESQL

    def __init__(self, pool: asyncpg.Pool, url: str) -> None:
        self._pool = pool
        self.url = url
        self.queries = 0
        self._version = 0
        self._listener: asyncio.Task[None] | None = None
        self._listen_conn: asyncpg.Connection | None = None
        self.listening = asyncio.Event()
        self._changed = asyncio.Event()
        self.listen_problem: str | None = None
        self._closed = False

    @classmethod
    async def connect(cls, url: str, *, max_size: int = 10) -> PostgresStore:
        try:
            pool = await asyncpg.create_pool(
                url,
                min_size=1,
                max_size=max_size,
                timeout=CONNECT_TIMEOUT,
                command_timeout=COMMAND_TIMEOUT,
                server_settings={"application_name": "pkgate"},
                reset=_keep_session,
            )
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"cannot open database {masked(url)}: {describe(exc)}") from None
        store = cls(pool, url)
        try:
            await store._migrate()
        except BaseException:
            await store.close()
            raise
        return store

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
        conn, self._listen_conn = self._listen_conn, None
        if conn is not None:
            conn.terminate()
        try:
            await asyncio.wait_for(asyncio.shield(self._pool.close()), CLOSE_TIMEOUT)
        except (TimeoutError, Exception):
            self._pool.terminate()

    # -- migrations -----------------------------------------------------------------------

    async def _migrate(self) -> None:
        """Apply pending migrations in one transaction holding an advisory lock, so instances
        starting together apply each migration exactly once."""
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS pkgate_schema (version INTEGER NOT NULL)"
                )
                current = await conn.fetchval("SELECT max(version) FROM pkgate_schema") or 0
                for number, migration in enumerate(MIGRATIONS, start=1):
                    if number <= current:
                        continue
                    await conn.execute(migration.postgresql)
                    await conn.execute("DELETE FROM pkgate_schema")
                    await conn.execute("INSERT INTO pkgate_schema (version) VALUES ($1)", number)
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(
                f"cannot migrate database {masked(self.url)}: {describe(exc)}"
            ) from None

    async def schema_version(self) -> int:
        row = await self._fetchone("SELECT max(version) FROM pkgate_schema")
        return int(row[0] or 0)

    # -- plumbing -------------------------------------------------------------------------

    async def _fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        self.queries += 1
        try:
            return list(await self._pool.fetch(numbered(sql), *params))
        except _UNAVAILABLE as exc:
            raise _unavailable(exc) from None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        self.queries += 1
        try:
            conn = await self._pool.acquire()
        except _UNAVAILABLE as exc:
            raise _unavailable(exc) from None
        try:
            tr = conn.transaction()
            try:
                await tr.start()
            except _UNAVAILABLE as exc:
                raise _unavailable(exc) from None
            try:
                yield PgTx(conn)
                await tr.commit()
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    await tr.rollback()
                if isinstance(exc, asyncpg.IntegrityConstraintViolationError):
                    raise Conflict(describe(exc)) from None
                if isinstance(exc, _UNAVAILABLE):
                    raise _unavailable(exc) from None
                raise
        finally:
            await self._pool.release(conn)

    async def _notify_revoked(self, tx: Tx) -> None:
        await tx.execute(f"NOTIFY {CHANNEL}")

    async def tables(self) -> list[str]:
        rows = await self._fetchall(
            "SELECT c.relname, coalesce(array_agg(DISTINCT p.relname)"
            "   FILTER (WHERE p.relname IS NOT NULL AND p.relname <> c.relname), '{}')"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " LEFT JOIN pg_constraint k ON k.conrelid = c.oid AND k.contype = 'f'"
            " LEFT JOIN pg_class p ON p.oid = k.confrelid"
            " WHERE n.nspname = current_schema() AND c.relkind = 'r'"
            " AND c.relname <> 'pkgate_schema'"
            " GROUP BY c.relname, c.oid ORDER BY c.oid"
        )
        parents = {str(r[0]): set(r[1]) for r in rows}
        ordered: list[str] = []
        while len(ordered) < len(parents):
            ready = [n for n in parents if n not in ordered and parents[n] <= set(ordered)]
            ordered.extend(ready or [n for n in parents if n not in ordered])
        return ordered

    async def columns(self, table: str) -> list[str]:
        rows = await self._fetchall(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = ? ORDER BY ordinal_position",
            (table,),
        )
        return [str(r[0]) for r in rows]

    async def _after_bulk_load(self, tx: Tx, tables: list[str]) -> None:
        """Rows came with their own serial keys: move each identity past the largest one."""
        async with tx.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND is_identity = 'YES'"
        ) as cur:
            identities = [(str(r[0]), str(r[1])) for r in await cur.fetchall()]
        for table, column in identities:
            if table not in tables:
                continue
            await tx.execute(
                f'SELECT setval(pg_get_serial_sequence(?, ?), coalesce(max("{column}"), 0) + 1,'
                f' false) FROM "{table}"',
                (table, column),
            )

    # -- revocations from other instances -------------------------------------------------

    async def data_version(self) -> int:
        if self._listener is None and not self._closed:
            self._listener = asyncio.create_task(self._listen(), name="pkgate-pg-listen")
        if not self.listening.is_set():
            # Cut off from notifications: every check re-reads the log until the listener is back.
            self._version += 1
        return self._version

    def _notified(self, *_: object) -> None:
        self._version += 1
        self._changed.set()

    async def wait_for_change(self, at_most: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), at_most)
        self._changed.clear()

    async def _listen(self) -> None:
        delay = 0.05
        while True:
            lost = asyncio.Event()
            try:
                conn = await asyncpg.connect(
                    self.url,
                    timeout=CONNECT_TIMEOUT,
                    server_settings={"application_name": "pkgate-listen"},
                )
            except _UNAVAILABLE as exc:
                self._lost(describe(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            self._listen_conn = conn
            try:
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, self._notified)
                # Listening from here on; bump so the watcher reads what happened meanwhile.
                self._version += 1
                self._changed.set()
                self.listen_problem = None
                self.listening.set()
                delay = 0.05
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), LISTEN_KEEPALIVE)
                    if not lost.is_set():
                        await conn.fetchval("SELECT 1", timeout=LISTEN_KEEPALIVE)
                self._lost("connection lost")
            except _UNAVAILABLE as exc:
                self._lost(describe(exc))
            finally:
                self._listen_conn = None
                conn.terminate()
            await asyncio.sleep(delay)

    def _lost(self, problem: str) -> None:
        if self.listening.is_set() or self.listen_problem is None:
            log.warning("revocation listener on %s: %s; reconnecting", masked(self.url), problem)
        self.listening.clear()
        self.listen_problem = problem
        self._version += 1
        self._changed.set()

    async def ping(self) -> None:
        await super().ping()
        if self._listener is not None and not self.listening.is_set():
            raise StoreUnavailable(
                f"revocation listener disconnected ({self.listen_problem or 'connecting'})"
            )
