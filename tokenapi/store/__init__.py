"""The store: one interface (``Store``), two backends (SQLite, PostgreSQL), chosen by URL.

``open_store(target)`` takes a path (SQLite), ``sqlite:///relative.db`` / ``sqlite:////abs.db``, or
``postgresql://user:password@host:port/dbname``.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import StoreUnavailable
from .base import (
    POSTGRESQL,
    SQLITE,
    Affected,
    Cursor,
    Dialect,
    Download,
    DownloadQuery,
    DownloadRow,
    NewNotification,
    Notification,
    Store,
    Token,
    Tx,
    Usage,
    UsageUpdate,
    User,
    new_id,
)
from .migrations import MIGRATIONS, SCHEMA_VERSION, Migration, both
from .sqlite import BUSY_TIMEOUT_MS, SqliteStore

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def sqlite_path(url: str) -> Path | None:
    """The file a ``sqlite:///`` URL names, or None for any other URL."""
    if not url.startswith("sqlite:///"):
        return None
    return Path(url[len("sqlite:///") :])


def is_postgres(url: str) -> bool:
    return url.startswith(POSTGRES_SCHEMES)


async def open_store(target: Path | str, *, pool_size: int = 10) -> Store:
    """Open (creating and migrating if needed) the store a path or database URL names."""
    if isinstance(target, Path):
        return await SqliteStore.connect(target)
    path = sqlite_path(target)
    if path is not None:
        return await SqliteStore.connect(path)
    if is_postgres(target):
        from .postgres import PostgresStore

        return await PostgresStore.connect(target, max_size=pool_size)
    raise StoreUnavailable("database_url must start with sqlite:/// or postgresql://")


__all__ = [
    "BUSY_TIMEOUT_MS",
    "MIGRATIONS",
    "POSTGRESQL",
    "SCHEMA_VERSION",
    "SQLITE",
    "Affected",
    "Cursor",
    "Dialect",
    "Download",
    "DownloadQuery",
    "DownloadRow",
    "Migration",
    "NewNotification",
    "Notification",
    "SqliteStore",
    "Store",
    "Token",
    "Tx",
    "Usage",
    "UsageUpdate",
    "User",
    "both",
    "is_postgres",
    "new_id",
    "open_store",
    "sqlite_path",
]
