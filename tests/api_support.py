"""Helpers for the token API tests: a mail-capable server, a small HTTP client, DB snapshots."""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from tests.conftest import RunningServer

TOKEN_RE = re.compile(r"pkg_[0-9A-Za-z]{36}")
CODE_RE = re.compile(r"^\s{4}([A-Z2-9]{8})$", re.M)
NPM_UPSTREAM = "http://127.0.0.1:9/"
PYPI_UPSTREAM = "http://127.0.0.1:9/simple/"


@dataclass
class Answer:
    status: int
    body: Any
    raw: bytes
    headers: Any


async def call(
    server: RunningServer,
    method: str,
    path: str,
    *,
    json: Any = None,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    data: bytes | str | None = None,
    session: aiohttp.ClientSession | None = None,
) -> Answer:
    """One request to ``<server>/<path>``; the body is parsed as JSON when it is JSON."""
    hdrs = dict(headers or {})
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    own = session is None
    http = session or aiohttp.ClientSession()
    try:
        url = URL(str(server.url).rstrip("/") + "/" + path.lstrip("/"), encoded=True)
        async with http.request(method, url, json=json, data=data, headers=hdrs) as resp:
            raw = await resp.read()
            body: Any = None
            if resp.content_type == "application/json":
                body = await resp.json()
            return Answer(resp.status, body, raw, resp.headers)
    finally:
        if own:
            await http.close()


def tokens_in(text: str) -> list[str]:
    return TOKEN_RE.findall(text)


def code_in(text: str) -> str:
    match = CODE_RE.search(text)
    assert match, text
    return match.group(1)


# Everything a token API call may change, except last-used bookkeeping (plain SQL: both backends).
SNAPSHOT_QUERIES = {
    "users": "SELECT id, email, language, is_admin, password_hash FROM users ORDER BY id",
    "tokens": "SELECT id, user_id, name, kind, digest, revoked_at FROM tokens ORDER BY id",
    "reset_codes": "SELECT * FROM reset_codes ORDER BY id",
    "sessions": "SELECT * FROM sessions ORDER BY digest",
    "revocations": "SELECT * FROM revocations ORDER BY seq",
}


def snapshot(db_path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Everything a token API call may change, read from the SQLite file itself."""
    with sqlite3.connect(db_path) as db:
        return {name: db.execute(sql).fetchall() for name, sql in SNAPSHOT_QUERIES.items()}


def execute(db_path: Path, sql: str, params: tuple[Any, ...] = ()) -> None:
    """Change the database behind the server's back (e.g. to make a code expire)."""
    with sqlite3.connect(db_path) as db:
        db.execute(sql, params)
