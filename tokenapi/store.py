"""The SQLite store: schema migrations, users, tokens, usage, revocations, reset codes and sessions.

All access goes through one aiosqlite connection in autocommit mode; every change that must be
atomic runs inside an explicit ``BEGIN IMMEDIATE`` transaction.  SQLite errors that mean the file
cannot be used (read-only, full, I/O error, locked too long) surface as ``StoreUnavailable``.
"""

from __future__ import annotations

import asyncio
import hmac
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from .errors import Conflict, NotFound, StoreUnavailable

BUSY_TIMEOUT_MS = 5000

# Numbered migrations; index + 1 is the schema version recorded in PRAGMA user_version.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE users (
        id TEXT PRIMARY KEY,
        email TEXT NOT NULL,
        language TEXT NOT NULL DEFAULT 'en',
        is_admin INTEGER NOT NULL DEFAULT 0,
        password_hash TEXT,
        created_at REAL NOT NULL
    );
    CREATE UNIQUE INDEX users_email ON users (email COLLATE NOCASE);
    CREATE TABLE tokens (
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('email', 'api')),
        digest TEXT NOT NULL,
        prefix TEXT NOT NULL,
        created_at REAL NOT NULL,
        last_used_at REAL,
        revoked_at REAL
    );
    CREATE UNIQUE INDEX tokens_digest ON tokens (digest);
    CREATE INDEX tokens_user ON tokens (user_id);
    CREATE UNIQUE INDEX tokens_one_active_email ON tokens (user_id)
        WHERE kind = 'email' AND revoked_at IS NULL;
    CREATE TABLE token_usage (
        token_id TEXT NOT NULL REFERENCES tokens (id) ON DELETE CASCADE,
        ecosystem TEXT NOT NULL,
        requests INTEGER NOT NULL DEFAULT 0,
        last_used_at REAL NOT NULL,
        PRIMARY KEY (token_id, ecosystem)
    );
    CREATE TABLE revocations (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        digest TEXT NOT NULL,
        revoked_at REAL NOT NULL
    );
    CREATE TABLE reset_codes (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
        digest TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        failed_attempts INTEGER NOT NULL DEFAULT 0,
        used_at REAL
    );
    CREATE INDEX reset_codes_user ON reset_codes (user_id);
    CREATE TABLE sessions (
        digest TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE INDEX sessions_user ON sessions (user_id);
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)


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


_TOKEN_COLUMNS = (
    "t.id, t.user_id, t.name, t.kind, t.prefix, t.created_at, t.last_used_at, t.revoked_at, u.email"
)


def _token(row: Iterable[Any]) -> Token:
    return Token(*row)


def _user(row: Any) -> User:
    return User(row[0], row[1], row[2], bool(row[3]), row[4], row[5])


def new_id() -> str:
    return str(uuid.uuid4())


class Store:
    """Async facade over the SQLite database file."""

    def __init__(self, db: aiosqlite.Connection, reader: aiosqlite.Connection, path: Path) -> None:
        self._db = db  # writes, each in an explicit transaction
        self._reader = reader  # reads; WAL lets it run beside a write and never see one half-done
        self.path = path
        self._write_lock = asyncio.Lock()
        self.queries = 0  # incremented per statement; tests use it to prove the cache works

    @classmethod
    async def open(cls, path: Path) -> Store:
        """Open (creating if needed) the database and apply pending migrations."""
        path.parent.mkdir(parents=True, exist_ok=True)
        opened: list[aiosqlite.Connection] = []
        try:
            for _ in range(2):
                conn = await aiosqlite.connect(path, isolation_level=None)
                opened.append(conn)
                await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                await conn.execute("PRAGMA foreign_keys = ON")
            db, reader = opened
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute("PRAGMA synchronous = FULL")
            store = cls(db, reader, path)
            await store._migrate()
        except sqlite3.Error as exc:
            for conn in opened:
                await conn.close()
            raise StoreUnavailable(f"cannot open database {path}: {exc}") from exc
        except BaseException:
            for conn in opened:
                await conn.close()
            raise
        return store

    async def close(self) -> None:
        await self._reader.close()
        await self._db.close()

    async def _migrate(self) -> None:
        for number, script in enumerate(MIGRATIONS, start=1):
            if await self._schema_version() >= number:
                continue
            # executescript commits any open transaction first, so the whole migration,
            # version bump included, is one script; BEGIN IMMEDIATE serialises processes.
            try:
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

    # -- plumbing -------------------------------------------------------------------------

    async def _fetchone(self, sql: str, params: Iterable[Any] = ()) -> Any:
        rows = await self._fetchall(sql, params)
        return rows[0] if rows else None

    async def _fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        self.queries += 1
        try:
            # One call on the reader's thread runs the statement to its end.  A cursor held open
            # across an await would let concurrent reads overlap on this connection, and while
            # any statement is active SQLite keeps the connection's read snapshot: under steady
            # load it was never released, so revocations and new tokens stayed invisible.
            return list(await self._reader.execute_fetchall(sql, tuple(params)))
        except sqlite3.DatabaseError as exc:
            raise StoreUnavailable(str(exc)) from exc

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction; rolled back whole on any error."""
        async with self._write_lock:
            self.queries += 1
            try:
                await self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.DatabaseError as exc:
                raise StoreUnavailable(str(exc)) from exc
            try:
                yield self._db
                await self._db.execute("COMMIT")
            except BaseException as exc:
                with suppress(sqlite3.Error):
                    await self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.IntegrityError):
                    raise Conflict(str(exc)) from exc
                if isinstance(exc, sqlite3.DatabaseError):
                    raise StoreUnavailable(str(exc)) from exc
                raise

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the database answers a trivial read."""
        await self._fetchone("SELECT 1")

    async def data_version(self) -> int:
        """SQLite's counter of commits made by other connections (other processes included)."""
        row = await self._fetchone("PRAGMA data_version")
        return int(row[0])

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
            " WHERE email = ? COLLATE NOCASE",
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
                f"UPDATE users SET {', '.join(sets)} WHERE id = ?",  # noqa: S608 - fixed columns
                (*params, user_id),
            )
            if cur.rowcount == 0:
                raise NotFound("user not found")

    # -- tokens ---------------------------------------------------------------------------

    async def create_token(
        self, user_id: str, *, name: str, kind: str, digest: str, prefix: str
    ) -> Token:
        """Insert a token; for ``kind='email'`` the user must not have an active one."""
        async with self.transaction() as db:
            return await self._insert_token(db, user_id, name, kind, digest, prefix)

    async def _insert_token(
        self, db: aiosqlite.Connection, user_id: str, name: str, kind: str, digest: str, prefix: str
    ) -> Token:
        now = time.time()
        token_id = new_id()
        await db.execute(
            "INSERT INTO tokens (id, user_id, name, kind, digest, prefix, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (token_id, user_id, name, kind, digest, prefix, now),
        )
        async with db.execute("SELECT email FROM users WHERE id = ?", (user_id,)) as cur:
            row = await cur.fetchone()
        return Token(token_id, user_id, name, kind, prefix, now, None, None, row[0] if row else "")

    async def lookup_digest(self, digest: str) -> Token | None:
        """The active token with this digest, or None (unknown or revoked)."""
        row = await self._fetchone(
            f"SELECT {_TOKEN_COLUMNS} FROM tokens t JOIN users u ON u.id = t.user_id"  # noqa: S608
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
            f"SELECT {_TOKEN_COLUMNS} FROM tokens t JOIN users u ON u.id = t.user_id"  # noqa: S608
            " WHERE t.id = ?",
            (token_id,),
        )
        return _token(row) if row else None

    async def active_email_token(self, user_id: str) -> Token | None:
        row = await self._fetchone(
            f"SELECT {_TOKEN_COLUMNS} FROM tokens t JOIN users u ON u.id = t.user_id"  # noqa: S608
            " WHERE t.user_id = ? AND t.kind = 'email' AND t.revoked_at IS NULL",
            (user_id,),
        )
        return _token(row) if row else None

    async def list_tokens(
        self, *, user_id: str | None = None, email: str | None = None, kind: str | None = None
    ) -> list[Token]:
        """Active tokens, newest first, optionally filtered by owner id, owner email or kind."""
        where = ["t.revoked_at IS NULL"]
        params: list[Any] = []
        if user_id is not None:
            where.append("t.user_id = ?")
            params.append(user_id)
        if email is not None:
            where.append("u.email = ? COLLATE NOCASE")
            params.append(email)
        if kind is not None:
            where.append("t.kind = ?")
            params.append(kind)
        rows = await self._fetchall(
            f"SELECT {_TOKEN_COLUMNS} FROM tokens t JOIN users u ON u.id = t.user_id"  # noqa: S608
            f" WHERE {' AND '.join(where)} ORDER BY t.created_at DESC, t.id",
            params,
        )
        return [_token(r) for r in rows]

    async def count_active_tokens(self) -> int:
        row = await self._fetchone("SELECT count(*) FROM tokens WHERE revoked_at IS NULL")
        return int(row[0])

    async def _revoke_in(self, db: aiosqlite.Connection, token_id: str, now: float) -> str | None:
        async with db.execute(
            "SELECT digest FROM tokens WHERE id = ? AND revoked_at IS NULL", (token_id,)
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        await db.execute("UPDATE tokens SET revoked_at = ? WHERE id = ?", (now, token_id))
        await db.execute(
            "INSERT INTO revocations (digest, revoked_at) VALUES (?, ?)", (row[0], now)
        )
        return str(row[0])

    async def revoke_token(self, token_id: str, *, user_id: str | None = None) -> str:
        """Revoke an active token (of ``user_id`` when given); return its digest.

        Raises NotFound when the token does not exist, is already revoked or is someone else's.
        """
        async with self.transaction() as db:
            if user_id is not None:
                async with db.execute(
                    "SELECT 1 FROM tokens WHERE id = ? AND user_id = ?", (token_id, user_id)
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
    ) -> tuple[Token, str | None]:
        """Revoke ``old_token_id`` (if active) and create its successor in one transaction.

        Returns the new token and the old digest (None when nothing was revoked).
        """
        async with self.transaction() as db:
            old_digest = None
            if old_token_id is not None:
                old_digest = await self._revoke_in(db, old_token_id, time.time())
            token = await self._insert_token(db, user_id, name, kind, digest, prefix)
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

    # -- usage ----------------------------------------------------------------------------

    async def record_usage(self, updates: Iterable[UsageUpdate]) -> int:
        """Write a batch of last-used updates in one transaction; returns tokens written."""
        batch = list(updates)
        if not batch:
            return 0
        async with self.transaction() as db:
            await db.executemany(
                "UPDATE tokens SET last_used_at = max(coalesce(last_used_at, 0), ?) WHERE id = ?",
                [(u.last_used_at, u.token_id) for u in batch],
            )
            await db.executemany(
                "INSERT INTO token_usage (token_id, ecosystem, requests, last_used_at)"
                " SELECT ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM tokens WHERE id = ?)"
                " ON CONFLICT (token_id, ecosystem) DO UPDATE SET"
                " requests = requests + excluded.requests,"
                " last_used_at = max(last_used_at, excluded.last_used_at)",
                [
                    (u.token_id, eco, n, last, u.token_id)
                    for u in batch
                    for eco, (n, last) in u.counts.items()
                ],
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

    async def redeem_reset_code(
        self,
        user_id: str,
        code_digest: str,
        *,
        max_attempts: int,
        name: str,
        digest: str,
        prefix: str,
    ) -> tuple[Token, str | None] | None:
        """Use a live code: replace the user's email token in the same transaction.

        Returns the new token and the old token's digest, or None when the code is wrong,
        used, expired or exhausted; a wrong code counts a failed attempt against live codes.
        """
        now = time.time()
        async with self.transaction() as db:
            async with db.execute(
                "SELECT id, digest FROM reset_codes WHERE user_id = ? AND used_at IS NULL"
                " AND expires_at > ? AND failed_attempts < ?",
                (user_id, now, max_attempts),
            ) as cur:
                live = list(await cur.fetchall())
            match = next((r for r in live if _same(str(r[1]), code_digest)), None)
            if match is None:
                if live:
                    await db.execute(
                        "UPDATE reset_codes SET failed_attempts = failed_attempts + 1"
                        " WHERE user_id = ? AND used_at IS NULL AND expires_at > ?",
                        (user_id, now),
                    )
                return None
            await db.execute("UPDATE reset_codes SET used_at = ? WHERE id = ?", (now, match[0]))
            async with db.execute(
                "SELECT id FROM tokens WHERE user_id = ? AND kind = 'email' AND revoked_at IS NULL",
                (user_id,),
            ) as cur:
                old = await cur.fetchone()
            old_digest = await self._revoke_in(db, str(old[0]), now) if old else None
            token = await self._insert_token(db, user_id, name, "email", digest, prefix)
        return token, old_digest

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


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
