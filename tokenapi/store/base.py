"""The store interface: every query pkgate makes, written once for both backends.

``Store`` holds the domain methods (users, tokens, usage, revocations, reset codes, sessions);
a backend (``sqlite.SqliteStore``, ``postgres.PostgresStore``) supplies connections, transactions,
error mapping and the few spellings that differ (``Dialect``).  SQL here is portable:

- placeholders are ``?`` (the PostgreSQL backend numbers them ``$1, $2, ...``; never put ``?``
  inside a string literal);
- case-blind comparison is ``{d.nocase('col')} = {d.nocase('?')}``; the larger of two values is
  ``{d.greatest('a', 'b')}``;
- a read whose rows the same transaction then changes ends in ``{d.for_update}`` (PostgreSQL runs
  writers concurrently; SQLite serialises them with ``BEGIN IMMEDIATE``);
- a parameter in a ``SELECT`` list gets a ``CAST(? AS ...)`` (PostgreSQL cannot infer its type);
- in ``ON CONFLICT ... DO UPDATE`` qualify the old row's columns with the table name.

Errors that mean the database cannot be used right now surface as ``StoreUnavailable`` (with a
message that names no secret), constraint violations as ``Conflict``.
"""

from __future__ import annotations

import asyncio
import hmac
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

from ..errors import NotFound
from ..tokens import ALL_SCOPES


@dataclass(frozen=True, slots=True)
class Dialect:
    """The spellings that differ between the backends."""

    name: str
    nocase: Callable[[str], str]
    greatest: Callable[[str, str], str]
    for_update: str


SQLITE = Dialect(
    "sqlite",
    nocase=lambda expr: f"{expr} COLLATE NOCASE",
    greatest=lambda a, b: f"max({a}, {b})",
    for_update="",
)
POSTGRESQL = Dialect(
    "postgresql",
    nocase=lambda expr: f"lower({expr})",
    greatest=lambda a, b: f"GREATEST({a}, {b})",
    for_update=" FOR UPDATE",
)


@dataclass(frozen=True, slots=True)
class User:
    id: str
    email: str
    language: str
    is_admin: bool
    password_hash: str | None
    created_at: float


@dataclass(frozen=True, slots=True)
class Token:
    id: str
    user_id: str
    name: str
    kind: str
    prefix: str
    created_at: float
    last_used_at: float | None
    revoked_at: float | None
    email: str = ""
    expires_at: float | None = None  # None: never expires
    scopes: tuple[str, ...] = ALL_SCOPES

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now


@dataclass(frozen=True, slots=True)
class Usage:
    ecosystem: str
    requests: int
    last_used_at: float


@dataclass(frozen=True, slots=True)
class UsageUpdate:
    """What the last-used recorder has gathered for one token since its previous flush."""

    token_id: str
    last_used_at: float
    counts: Mapping[str, tuple[int, float]]  # ecosystem -> (requests, last used)


class Download(NamedTuple):
    """One artifact served to a token (``package`` and ``version`` as the ecosystem spells them).

    A named tuple: one is made per tarball or file served, and it builds in a fraction of the time
    a frozen dataclass takes."""

    id: str
    token_id: str
    ecosystem: str
    package: str
    version: str
    filename: str
    downloaded_at: float


@dataclass(frozen=True, slots=True)
class DownloadRow:
    """A download with the token and owner it belongs to, as the history lists it."""

    download: Download
    token_name: str
    token_prefix: str
    user_id: str
    email: str


@dataclass(frozen=True, slots=True)
class DownloadQuery:
    """Filters of a history listing; ``after`` is the (time, id) of the last row already shown."""

    token_id: str | None = None
    user_id: str | None = None
    email: str | None = None
    ecosystem: str | None = None
    package: str | None = None  # as stored: PyPI names normalised by the caller
    version: str | None = None
    since: float | None = None
    before: float | None = None
    after: tuple[float, str] | None = None
    limit: int = 100


@dataclass(frozen=True, slots=True)
class Affected:
    """How often one token of a user who still holds an active token downloaded one version.

    Grouped in the database, so a popular package costs one row per token and version, not one
    per download.
    """

    user_id: str
    email: str
    language: str
    token_id: str
    token_name: str
    token_prefix: str
    ecosystem: str
    package: str
    version: str
    first: float
    last: float
    count: int


@dataclass(frozen=True, slots=True)
class Notification:
    """A breach notification claimed for delivery."""

    advisory_id: str
    user_id: str
    email: str
    language: str
    summary: str
    first_seen: float
    details: str  # JSON written by the notifier
    attempts: int
    active_tokens: int


@dataclass(frozen=True, slots=True)
class NewNotification:
    advisory_id: str
    user_id: str
    summary: str
    first_seen: float
    details: str


_TOKEN_COLUMNS = (
    "t.id, t.user_id, t.name, t.kind, t.prefix, t.created_at, t.last_used_at, t.revoked_at,"
    " u.email, t.expires_at, t.scopes"
)


def _token(row: Sequence[Any]) -> Token:
    return Token(
        row[0],
        row[1],
        row[2],
        row[3],
        row[4],
        row[5],
        row[6],
        row[7],
        row[8],
        row[9],
        parse_scopes(row[10]),
    )


def parse_scopes(stored: str) -> tuple[str, ...]:
    """The stored, space-separated scopes as a tuple in canonical order."""
    found = set(stored.split())
    return tuple(s for s in ALL_SCOPES if s in found)


def store_scopes(scopes: Iterable[str]) -> str:
    wanted = set(scopes)
    unknown = wanted - set(ALL_SCOPES)
    if unknown or not wanted:
        raise ValueError(f"bad scopes: {sorted(unknown) or 'none'}")
    return " ".join(s for s in ALL_SCOPES if s in wanted)


def _user(row: Any) -> User:
    return User(row[0], row[1], row[2], bool(row[3]), row[4], row[5])


def new_id() -> str:
    return str(uuid.uuid4())


class Cursor:
    """The outcome of one statement: its rows (if any) and how many rows it changed."""

    __slots__ = ("rowcount", "rows")

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self.rows = rows
        self.rowcount = rowcount

    async def fetchone(self) -> Any:
        return self.rows[0] if self.rows else None

    async def fetchall(self) -> list[Any]:
        return list(self.rows)


class Execution:
    """``await tx.execute(...)`` or ``async with tx.execute(...) as cur`` (as aiosqlite)."""

    __slots__ = ("_awaitable",)

    def __init__(self, awaitable: Awaitable[Cursor]) -> None:
        self._awaitable = awaitable

    def __await__(self) -> Generator[Any, None, Cursor]:
        return self._awaitable.__await__()

    async def __aenter__(self) -> Cursor:
        return await self._awaitable

    async def __aexit__(self, *exc: object) -> None:
        return None


class Tx(ABC):
    """One open write transaction."""

    @abstractmethod
    def execute(self, sql: str, params: Iterable[Any] = ()) -> Execution: ...

    @abstractmethod
    async def executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> None: ...


class Store(ABC):
    """Every query pkgate makes; a backend subclass supplies the connections."""

    dialect: ClassVar[Dialect]
    queries: int  # incremented per statement; tests use it to prove the cache works

    @staticmethod
    async def open(target: Path | str, *, pool_size: int = 10) -> Store:
        """Open (creating and migrating if needed) the store a path or database URL names.

        ``pool_size``: connections kept to PostgreSQL (SQLite always uses a writer and a reader).
        """
        from . import open_store

        return await open_store(target, pool_size=pool_size)

    # -- what a backend provides ----------------------------------------------------------

    @property
    def d(self) -> Dialect:
        return self.dialect

    @abstractmethod
    async def close(self) -> None:
        """Close every connection; safe to call twice, and never leaves one open on error."""

    @abstractmethod
    async def _fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        """Run one read to its end outside any transaction."""

    @abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[Tx]:
        """One write transaction; rolled back whole on any error."""

    @abstractmethod
    async def data_version(self) -> int:
        """A number that changes whenever another connection may have revoked something.

        SQLite: ``PRAGMA data_version``.  PostgreSQL: a counter bumped by each notification on the
        revocation channel and by every (re)connection of the listener, so that a watcher re-reads
        the revocation log after any gap.
        """

    async def wait_for_change(self, at_most: float) -> None:
        """Return after ``at_most`` seconds, or earlier when the backend is told of a change."""
        await asyncio.sleep(at_most)

    async def _notify_revoked(self, tx: Tx) -> None:
        """Tell other instances that the revocation log grew (PostgreSQL: NOTIFY)."""
        return None

    async def ping(self) -> None:
        """Raise StoreUnavailable unless tokens can be validated: the token lookup answers."""
        await self._fetchone(
            "SELECT t.id FROM tokens t JOIN users u ON u.id = t.user_id"
            " WHERE t.digest = ? AND t.revoked_at IS NULL",
            ("-",),
        )

    async def table_counts(self) -> dict[str, int]:
        """Rows per table (``pkgate db copy`` checks them)."""
        return {t: await self.count_rows(t) for t in await self.tables()}

    @abstractmethod
    async def schema_version(self) -> int:
        """The number of the last migration applied."""

    @abstractmethod
    async def columns(self, table: str) -> list[str]:
        """A table's column names in their order."""

    async def _after_bulk_load(self, tx: Tx, tables: list[str]) -> None:
        """Called in the transaction that loaded rows with their own keys (``db copy``)."""
        return None

    def snapshot(self) -> AbstractAsyncContextManager[None]:
        """Reads inside the block see one consistent state of the database."""
        return nullcontext()

    @abstractmethod
    async def tables(self) -> list[str]:
        """pkgate's tables, each after the tables its foreign keys point at."""

    async def count_rows(self, table: str) -> int:
        row = await self._fetchone(f'SELECT count(*) FROM "{table}"')
        return int(row[0])

    # -- plumbing -------------------------------------------------------------------------

    async def _fetchone(self, sql: str, params: Iterable[Any] = ()) -> Any:
        rows = await self._fetchall(sql, params)
        return rows[0] if rows else None

    # -- users ----------------------------------------------------------------------------

    async def get_user(self, user_id: str) -> User | None:
        row = await self._fetchone(
            "SELECT id, email, language, is_admin, password_hash, created_at FROM users"
            " WHERE id = ?",
            (user_id,),
        )
        return _user(row) if row else None

    async def get_user_by_email(self, email: str) -> User | None:
        row = await self._fetchone(
            "SELECT id, email, language, is_admin, password_hash, created_at FROM users"
            f" WHERE {self.d.nocase('email')} = {self.d.nocase('?')}",
            (email,),
        )
        return _user(row) if row else None

    async def create_user(
        self,
        email: str,
        *,
        language: str = "en",
        is_admin: bool = False,
        password_hash: str | None = None,
    ) -> User:
        user = User(new_id(), email, language, is_admin, password_hash, time.time())
        async with self.transaction() as db:
            await db.execute(
                "INSERT INTO users (id, email, language, is_admin, password_hash, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (user.id, user.email, user.language, int(is_admin), password_hash, user.created_at),
            )
        return user

    async def update_user(
        self,
        user_id: str,
        *,
        language: str | None = None,
        is_admin: bool | None = None,
        password_hash: str | None = None,
    ) -> None:
        sets: list[str] = []
        params: list[Any] = []
        if language is not None:
            sets.append("language = ?")
            params.append(language)
        if is_admin is not None:
            sets.append("is_admin = ?")
            params.append(int(is_admin))
        if password_hash is not None:
            sets.append("password_hash = ?")
            params.append(password_hash)
        if not sets:
            return
        async with self.transaction() as db:
            cur = await db.execute(
                f"UPDATE users SET {', '.join(sets)} WHERE id = ?",
                (*params, user_id),
            )
            if cur.rowcount == 0:
                raise NotFound("user not found")

    # -- tokens ---------------------------------------------------------------------------

    async def create_token(
        self,
        user_id: str,
        *,
        name: str,
        kind: str,
        digest: str,
        prefix: str,
        expires_at: float | None = None,
        scopes: Iterable[str] = ALL_SCOPES,
    ) -> Token:
        """Insert a token; for ``kind='email'`` the user must not have an active one."""
        async with self.transaction() as db:
            return await self._insert_token(
                db, user_id, name, kind, digest, prefix, expires_at=expires_at, scopes=scopes
            )

    async def _insert_token(
        self,
        db: Tx,
        user_id: str,
        name: str,
        kind: str,
        digest: str,
        prefix: str,
        *,
        expires_at: float | None = None,
        scopes: Iterable[str] = ALL_SCOPES,
    ) -> Token:
        now = time.time()
        token_id = new_id()
        stored_scopes = store_scopes(scopes)
        await db.execute(
            "INSERT INTO tokens"
            " (id, user_id, name, kind, digest, prefix, created_at, expires_at, scopes)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (token_id, user_id, name, kind, digest, prefix, now, expires_at, stored_scopes),
        )
        async with db.execute("SELECT email FROM users WHERE id = ?", (user_id,)) as cur:
            row = await cur.fetchone()
        return Token(
            token_id,
            user_id,
            name,
            kind,
            prefix,
            now,
            None,
            None,
            row[0] if row else "",
            expires_at,
            parse_scopes(stored_scopes),
        )

    async def lookup_digest(self, digest: str) -> Token | None:
        """The unrevoked token with this digest, or None (unknown or revoked).

        An expired token is returned (callers say "token expired"): check ``Token.expired``.
        """
        row = await self._fetchone(
            f"SELECT {_TOKEN_COLUMNS} FROM tokens t JOIN users u ON u.id = t.user_id"
            " WHERE t.digest = ? AND t.revoked_at IS NULL",
            (digest,),
        )
        return _token(row) if row else None

    async def digest_revoked(self, digest: str) -> bool:
        """Whether a token with this digest existed and was revoked (for failure metrics only)."""
        row = await self._fetchone(
            "SELECT 1 FROM tokens WHERE digest = ? AND revoked_at IS NOT NULL", (digest,)
        )
        return row is not None

    async def get_token(self, token_id: str) -> Token | None:
        row = await self._fetchone(
            f"SELECT {_TOKEN_COLUMNS} FROM tokens t JOIN users u ON u.id = t.user_id"
            " WHERE t.id = ?",
            (token_id,),
        )
        return _token(row) if row else None

    async def active_email_token(self, user_id: str) -> Token | None:
        row = await self._fetchone(
            f"SELECT {_TOKEN_COLUMNS} FROM tokens t JOIN users u ON u.id = t.user_id"
            " WHERE t.user_id = ? AND t.kind = 'email' AND t.revoked_at IS NULL",
            (user_id,),
        )
        return _token(row) if row else None

    async def list_tokens(
        self,
        *,
        user_id: str | None = None,
        email: str | None = None,
        kind: str | None = None,
        now: float | None = None,
    ) -> list[Token]:
        """Active (unrevoked, unexpired at ``now``) tokens, newest first, optionally filtered by
        owner id, owner email or kind."""
        where = ["t.revoked_at IS NULL", "(t.expires_at IS NULL OR t.expires_at > ?)"]
        params: list[Any] = [time.time() if now is None else now]
        if user_id is not None:
            where.append("t.user_id = ?")
            params.append(user_id)
        if email is not None:
            where.append(f"{self.d.nocase('u.email')} = {self.d.nocase('?')}")
            params.append(email)
        if kind is not None:
            where.append("t.kind = ?")
            params.append(kind)
        rows = await self._fetchall(
            f"SELECT {_TOKEN_COLUMNS} FROM tokens t JOIN users u ON u.id = t.user_id"
            f" WHERE {' AND '.join(where)} ORDER BY t.created_at DESC, t.id",
            params,
        )
        return [_token(r) for r in rows]

    async def count_active_tokens(self, now: float | None = None) -> int:
        row = await self._fetchone(
            "SELECT count(*) FROM tokens WHERE revoked_at IS NULL"
            " AND (expires_at IS NULL OR expires_at > ?)",
            (time.time() if now is None else now,),
        )
        return int(row[0])

    async def _revoke_in(self, db: Tx, token_id: str, now: float) -> str | None:
        async with db.execute(
            "SELECT digest FROM tokens WHERE id = ? AND revoked_at IS NULL" + self.d.for_update,
            (token_id,),
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        await db.execute("UPDATE tokens SET revoked_at = ? WHERE id = ?", (now, token_id))
        await db.execute(
            "INSERT INTO revocations (digest, revoked_at) VALUES (?, ?)", (row[0], now)
        )
        await self._notify_revoked(db)
        return str(row[0])

    async def revoke_token(self, token_id: str, *, user_id: str | None = None) -> str:
        """Revoke an active token (of ``user_id`` when given); return its digest.

        Raises NotFound when the token does not exist, is already revoked or is someone else's.
        """
        async with self.transaction() as db:
            if user_id is not None:
                async with db.execute(
                    "SELECT 1 FROM tokens WHERE id = ? AND user_id = ?" + self.d.for_update,
                    (token_id, user_id),
                ) as cur:
                    if await cur.fetchone() is None:
                        raise NotFound("token not found")
            digest = await self._revoke_in(db, token_id, time.time())
        if digest is None:
            raise NotFound("token not found")
        return digest

    async def replace_token(
        self,
        old_token_id: str | None,
        user_id: str,
        *,
        name: str,
        kind: str,
        digest: str,
        prefix: str,
        expires_at: float | None = None,
        scopes: Iterable[str] = ALL_SCOPES,
    ) -> tuple[Token, str | None]:
        """Revoke ``old_token_id`` (if active) and create its successor in one transaction.

        Returns the new token and the old digest (None when nothing was revoked).
        """
        async with self.transaction() as db:
            old_digest = None
            if old_token_id is not None:
                old_digest = await self._revoke_in(db, old_token_id, time.time())
            token = await self._insert_token(
                db, user_id, name, kind, digest, prefix, expires_at=expires_at, scopes=scopes
            )
        return token, old_digest

    async def revocation_seq(self) -> int:
        row = await self._fetchone("SELECT coalesce(max(seq), 0) FROM revocations")
        return int(row[0])

    async def revocations_since(self, seq: int) -> tuple[int, list[str]]:
        """Digests revoked after ``seq``, and the newest sequence number seen."""
        rows = await self._fetchall(
            "SELECT seq, digest FROM revocations WHERE seq > ? ORDER BY seq", (seq,)
        )
        if not rows:
            return seq, []
        return int(rows[-1][0]), [str(r[1]) for r in rows]

    # -- blocklist refresh requests --------------------------------------------------------

    async def request_blocklist_refresh(self) -> int:
        """Ask every server sharing this database to re-read its blocklist feeds now.

        Signalled like a revocation (a commit other connections see; NOTIFY on PostgreSQL), so
        watchers of ``data_version`` notice it within their poll interval.  Returns its number.
        """
        async with self.transaction() as db:
            await db.execute(
                "INSERT INTO blocklist_refreshes (requested_at) VALUES (?)", (time.time(),)
            )
            await self._notify_revoked(db)
        return await self.blocklist_refresh_seq()

    async def blocklist_refresh_seq(self) -> int:
        """The number of the latest blocklist refresh request (0: none yet)."""
        row = await self._fetchone("SELECT coalesce(max(seq), 0) FROM blocklist_refreshes")
        return int(row[0])

    # -- usage ----------------------------------------------------------------------------

    async def record_usage(
        self, updates: Iterable[UsageUpdate], downloads: Iterable[Download] = ()
    ) -> int:
        """Write last-used updates and downloads in one transaction; returns tokens written."""
        batch = list(updates)
        served = list(downloads)
        if not batch and not served:
            return 0
        async with self.transaction() as db:
            if served:
                await db.executemany(
                    "INSERT INTO downloads"
                    " (id, token_id, ecosystem, package, version, filename, downloaded_at)"
                    " SELECT CAST(? AS TEXT), id, CAST(? AS TEXT), CAST(? AS TEXT),"
                    " CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS DOUBLE PRECISION)"
                    " FROM tokens WHERE id = ? ON CONFLICT (id) DO NOTHING",
                    [
                        (
                            d.id,
                            d.ecosystem,
                            d.package,
                            d.version,
                            d.filename,
                            d.downloaded_at,
                            d.token_id,
                        )
                        for d in served
                    ],
                )
            if not batch:
                return 0
            await db.executemany(
                "UPDATE tokens SET last_used_at ="
                f" {self.d.greatest('coalesce(last_used_at, 0)', '?')} WHERE id = ?",
                [(u.last_used_at, u.token_id) for u in batch],
            )
            await db.executemany(
                "INSERT INTO token_usage (token_id, ecosystem, requests, last_used_at)"
                " SELECT id, CAST(? AS TEXT), CAST(? AS INTEGER), CAST(? AS DOUBLE PRECISION)"
                " FROM tokens WHERE id = ?"
                " ON CONFLICT (token_id, ecosystem) DO UPDATE SET"
                " requests = token_usage.requests + excluded.requests,"
                " last_used_at ="
                f" {self.d.greatest('token_usage.last_used_at', 'excluded.last_used_at')}",
                [(eco, n, last, u.token_id) for u in batch for eco, (n, last) in u.counts.items()],
            )
        return len(batch)

    async def usage(self, token_id: str) -> list[Usage]:
        rows = await self._fetchall(
            "SELECT ecosystem, requests, last_used_at FROM token_usage WHERE token_id = ?"
            " ORDER BY ecosystem",
            (token_id,),
        )
        return [Usage(str(r[0]), int(r[1]), float(r[2])) for r in rows]

    # -- registration ---------------------------------------------------------------------

    async def create_user_with_token(
        self, email: str, *, language: str, name: str, kind: str, digest: str, prefix: str
    ) -> tuple[User, Token]:
        """A new user and their first token, in one transaction (both or neither)."""
        user = User(new_id(), email, language, False, None, time.time())
        async with self.transaction() as db:
            await db.execute(
                "INSERT INTO users (id, email, language, is_admin, password_hash, created_at)"
                " VALUES (?, ?, ?, 0, NULL, ?)",
                (user.id, user.email, user.language, user.created_at),
            )
            token = await self._insert_token(db, user.id, name, kind, digest, prefix)
        return user, token

    # -- reset codes ----------------------------------------------------------------------

    async def create_reset_code(self, user_id: str, digest: str, *, ttl: float) -> None:
        """Store a new reset code for a user; any older one stops working."""
        now = time.time()
        async with self.transaction() as db:
            await db.execute("DELETE FROM reset_codes WHERE user_id = ?", (user_id,))
            await db.execute(
                "INSERT INTO reset_codes (user_id, digest, created_at, expires_at)"
                " VALUES (?, ?, ?, ?)",
                (user_id, digest, now, now + ttl),
            )

    # -- sessions -------------------------------------------------------------------------

    async def create_session(self, digest: str, user_id: str, *, lifetime: float) -> float:
        """Store a login session; returns when it expires.  Expired sessions are purged."""
        now = time.time()
        async with self.transaction() as db:
            await db.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,))
            await db.execute(
                "INSERT INTO sessions (digest, user_id, created_at, expires_at)"
                " VALUES (?, ?, ?, ?)",
                (digest, user_id, now, now + lifetime),
            )
        return now + lifetime

    async def session_user(self, digest: str) -> tuple[User, float] | None:
        """The user of a live session and its expiry, or None."""
        row = await self._fetchone(
            "SELECT u.id, u.email, u.language, u.is_admin, u.password_hash, u.created_at,"
            " s.expires_at FROM sessions s JOIN users u ON u.id = s.user_id"
            " WHERE s.digest = ? AND s.expires_at > ?",
            (digest, time.time()),
        )
        return (_user(row), float(row[6])) if row else None

    async def delete_session(self, digest: str) -> bool:
        """End a session; True when it existed."""
        async with self.transaction() as db:
            cur = await db.execute("DELETE FROM sessions WHERE digest = ?", (digest,))
            return cur.rowcount > 0

    # -- download history -----------------------------------------------------------------

    async def list_downloads(self, query: DownloadQuery) -> list[DownloadRow]:
        """Downloads matching ``query``, newest first (time, then id, both descending)."""
        where: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("d.token_id", query.token_id),
            ("t.user_id", query.user_id),
            ("d.ecosystem", query.ecosystem),
            ("d.package", query.package),
            ("d.version", query.version),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if query.email is not None:
            where.append(f"{self.d.nocase('u.email')} = {self.d.nocase('?')}")
            params.append(query.email)
        if query.since is not None:
            where.append("d.downloaded_at >= ?")
            params.append(query.since)
        if query.before is not None:
            where.append("d.downloaded_at < ?")
            params.append(query.before)
        if query.after is not None:
            at, last_id = query.after
            where.append("(d.downloaded_at < ? OR (d.downloaded_at = ? AND d.id < ?))")
            params.extend((at, at, last_id))
        sql = (
            "SELECT d.id, d.token_id, d.ecosystem, d.package, d.version, d.filename,"
            " d.downloaded_at, t.name, t.prefix, t.user_id, u.email"
            " FROM downloads d JOIN tokens t ON t.id = d.token_id JOIN users u ON u.id = t.user_id"
            + (f" WHERE {' AND '.join(where)}" if where else "")
            + " ORDER BY d.downloaded_at DESC, d.id DESC LIMIT ?"
        )
        rows = await self._fetchall(sql, (*params, query.limit))
        return [_download_row(r) for r in rows]

    async def token_owners(self, token_ids: Iterable[str]) -> dict[str, tuple[str, str, str, str]]:
        """For each known token id: (name, prefix, user id, owner email), revoked ones included."""
        ids = sorted(set(token_ids))
        if not ids:
            return {}
        marks = ", ".join("?" for _ in ids)
        rows = await self._fetchall(
            "SELECT t.id, t.name, t.prefix, t.user_id, u.email FROM tokens t"
            f" JOIN users u ON u.id = t.user_id WHERE t.id IN ({marks})",
            ids,
        )
        return {str(r[0]): (str(r[1]), str(r[2]), str(r[3]), str(r[4])) for r in rows}

    async def prune_downloads(self, before: float) -> int:
        """Delete downloads older than ``before``; returns how many went."""
        async with self.transaction() as db:
            cur = await db.execute("DELETE FROM downloads WHERE downloaded_at < ?", (before,))
            return int(cur.rowcount)

    async def prune_expired_tokens(self, before: float) -> int:
        """Delete tokens that expired before ``before`` (their usage and history go with them);
        revoked tokens stay, as their owners' record.  Returns how many went."""
        async with self.transaction() as db:
            cur = await db.execute(
                "DELETE FROM tokens WHERE expires_at IS NOT NULL AND expires_at < ?", (before,)
            )
            return int(cur.rowcount)

    async def downloaded_packages(self) -> set[tuple[str, str]]:
        """Every (ecosystem, package) the history holds (read off the package index)."""
        rows = await self._fetchall("SELECT DISTINCT ecosystem, package FROM downloads")
        return {(str(r[0]), str(r[1])) for r in rows}

    async def package_downloads(
        self, ecosystem: str, package: str, *, before: float
    ) -> list[Affected]:
        """Downloads of a package before a time, per (token, version), by users who still hold
        an active token."""
        rows = await self._fetchall(
            "SELECT t.user_id, u.email, u.language, d.token_id, t.name, t.prefix, d.version,"
            " min(d.downloaded_at), max(d.downloaded_at), count(*)"
            " FROM downloads d JOIN tokens t ON t.id = d.token_id JOIN users u ON u.id = t.user_id"
            " WHERE d.ecosystem = ? AND d.package = ? AND d.downloaded_at < ?"
            " AND EXISTS (SELECT 1 FROM tokens a WHERE a.user_id = t.user_id"
            " AND a.revoked_at IS NULL)"
            " GROUP BY t.user_id, u.email, u.language, d.token_id, t.name, t.prefix, d.version"
            " ORDER BY min(d.downloaded_at), d.token_id, d.version",
            (ecosystem, package, before),
        )
        return [
            Affected(
                str(r[0]),
                str(r[1]),
                str(r[2]),
                str(r[3]),
                str(r[4]),
                str(r[5]),
                ecosystem,
                package,
                str(r[6]),
                float(r[7]),
                float(r[8]),
                int(r[9]),
            )
            for r in rows
        ]

    # -- breach notifications -------------------------------------------------------------

    async def add_notifications(self, items: Iterable[NewNotification], now: float) -> int:
        """Queue notifications; one per (advisory, user) ever, so repeats are ignored."""
        batch = list(items)
        if not batch:
            return 0
        created = 0
        async with self.transaction() as db:
            for n in batch:
                cur = await db.execute(
                    "INSERT INTO breach_notifications (advisory_id, user_id, summary, first_seen,"
                    " details, next_attempt_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (advisory_id, user_id) DO NOTHING",
                    (n.advisory_id, n.user_id, n.summary, n.first_seen, n.details, now, now),
                )
                created += max(cur.rowcount, 0)
        return created

    async def claim_notifications(
        self, now: float, *, lease: float, limit: int = 20
    ) -> list[Notification]:
        """Due pending notifications, leased to this caller so no other process sends them."""
        async with self.transaction() as db:
            async with db.execute(
                "SELECT n.advisory_id, n.user_id, u.email, u.language, n.summary, n.first_seen,"
                " n.details, n.attempts FROM breach_notifications n"
                " JOIN users u ON u.id = n.user_id"
                " WHERE n.state = 'pending' AND n.next_attempt_at <= ?"
                " AND (n.claimed_until IS NULL OR n.claimed_until <= ?)"
                f" ORDER BY n.next_attempt_at LIMIT ?{self.d.for_update}",
                (now, now, limit),
            ) as cur:
                rows = list(await cur.fetchall())
            claimed = []
            for r in rows:
                await db.execute(
                    "UPDATE breach_notifications SET claimed_until = ?"
                    " WHERE advisory_id = ? AND user_id = ?",
                    (now + lease, r[0], r[1]),
                )
                async with db.execute(
                    "SELECT count(*) FROM tokens WHERE user_id = ? AND revoked_at IS NULL",
                    (r[1],),
                ) as cur:
                    active = await cur.fetchone()
                claimed.append(
                    Notification(
                        str(r[0]),
                        str(r[1]),
                        str(r[2]),
                        str(r[3]),
                        str(r[4]),
                        float(r[5]),
                        str(r[6]),
                        int(r[7]),
                        int(active[0]),
                    )
                )
        return claimed

    async def finish_notification(
        self, advisory_id: str, user_id: str, *, state: str, now: float, error: str | None = None
    ) -> None:
        """Mark a notification sent, skipped or failed for good."""
        async with self.transaction() as db:
            await db.execute(
                "UPDATE breach_notifications SET state = ?, finished_at = ?, claimed_until = NULL,"
                " last_error = coalesce(CAST(? AS TEXT), last_error), attempts = attempts + ?"
                " WHERE advisory_id = ? AND user_id = ?",
                (state, now, error, 0 if state == "skipped" else 1, advisory_id, user_id),
            )

    async def retry_notification(
        self, advisory_id: str, user_id: str, *, at: float, error: str
    ) -> None:
        """Count a failed attempt and schedule the next one."""
        async with self.transaction() as db:
            await db.execute(
                "UPDATE breach_notifications SET attempts = attempts + 1, last_error = ?,"
                " next_attempt_at = ?, claimed_until = NULL WHERE advisory_id = ? AND user_id = ?",
                (error, at, advisory_id, user_id),
            )

    async def next_notification_due(self) -> float | None:
        """When the earliest pending notification may be tried (leases included)."""
        row = await self._fetchone(
            f"SELECT min({self.d.greatest('next_attempt_at', 'coalesce(claimed_until, 0)')})"
            " FROM breach_notifications WHERE state = 'pending'"
        )
        return None if row is None or row[0] is None else float(row[0])

    async def notification_summary(self) -> tuple[dict[str, int], list[tuple[str, str, int, str]]]:
        """Counts by state, and the unsent ones that failed (advisory, email, attempts, error)."""
        counts = {state: 0 for state in ("pending", "sent", "failed", "skipped")}
        for r in await self._fetchall(
            "SELECT state, count(*) FROM breach_notifications GROUP BY state"
        ):
            counts[str(r[0])] = int(r[1])
        failing = await self._fetchall(
            "SELECT n.advisory_id, u.email, n.attempts, n.last_error"
            " FROM breach_notifications n JOIN users u ON u.id = n.user_id"
            " WHERE n.state IN ('pending', 'failed') AND n.last_error IS NOT NULL"
            " ORDER BY n.created_at DESC LIMIT 20"
        )
        return counts, [(str(r[0]), str(r[1]), int(r[2]), str(r[3])) for r in failing]


def _download_row(r: Any) -> DownloadRow:
    download = Download(
        str(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), str(r[5]), float(r[6])
    )
    return DownloadRow(download, str(r[7]), str(r[8]), str(r[9]), str(r[10]))


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
