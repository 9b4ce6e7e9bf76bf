"""The ``pkgate`` command: serve, and manage tokens and users against the same database."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TypeVar

from tokenapi import inputs
from tokenapi.downloads import build_query, history
from tokenapi.errors import InvalidInput, NotFound, PkgateError, StoreUnavailable
from tokenapi.issue import ensure_user, issue_token
from tokenapi.passwords import hash_password_async
from tokenapi.store import Store, Token, sqlite_path
from tokenapi.store.copy import copy_store
from tokenapi.store.postgres import masked
from tokenapi.store.sqlite import close_leftover_connections

from . import discover
from . import settings as settings_mod
from .settings import Settings, SettingsError
from .supplychain import cli as supplychain_cli


def _iso(ts: float | None) -> str | None:
    return (
        None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")
    )


def _store_settings(ns: argparse.Namespace) -> Settings:
    flags = {"config": ns.config, "data_dir": ns.data_dir, "database_url": ns.database_url}
    return settings_mod.load(flags)


async def _with_store(settings: Settings) -> Store:
    return await Store.open(settings.database)


T = TypeVar("T")
BUSY_RETRY_FOR = 60.0


async def _while_busy(work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work``, again after a short random pause while the database is too busy to take
    the write (many shells or a loaded server at once): a command waits, it does not fail."""
    deadline = time.monotonic() + BUSY_RETRY_FOR
    while True:
        try:
            return await work()
        except StoreUnavailable as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        await asyncio.sleep(random.uniform(0.05, 0.5))  # jitter, not a secret


async def _token_create(ns: argparse.Namespace) -> int:
    email = inputs.normalize_email(ns.email)
    name = inputs.token_name(ns.name)
    settings = _store_settings(ns)
    expires_in = None if ns.expires_in is None else _number(ns.expires_in, "--expires-in")
    expires_at = inputs.expiry(
        expires_in, ns.expires_at, now=time.time(), max_lifetime=settings.token_max_lifetime
    )
    listed = None if ns.scopes is None else ns.scopes.replace(",", " ").split()
    scopes = inputs.scopes(listed, field="--scopes")
    store = await _while_busy(lambda: _with_store(settings))
    try:

        async def create() -> tuple[Token, str]:
            user = await ensure_user(store, email)
            return await issue_token(store, user, name=name, expires_at=expires_at, scopes=scopes)

        token, secret = await _while_busy(create)
    finally:
        await store.close()
    limits = f"{','.join(token.scopes)}, expires {_iso(token.expires_at) or 'never'}"
    print(
        f"created token {token.id} ({token.prefix}…) for {token.email or email}: {limits}",
        file=sys.stderr,
    )
    print(secret)
    return 0


def _number(text: str, flag: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InvalidInput(f"{flag} must be a number of seconds") from None


def _token_row(t: Token) -> dict[str, object]:
    return {
        "id": t.id,
        "email": t.email,
        "name": t.name,
        "kind": t.kind,
        "prefix": t.prefix,
        "created_at": _iso(t.created_at),
        "last_used_at": _iso(t.last_used_at),
        "expires_at": _iso(t.expires_at),
        "scopes": list(t.scopes),
    }


async def _token_list(ns: argparse.Namespace) -> int:
    email = inputs.normalize_email(ns.email) if ns.email else None
    store = await _with_store(_store_settings(ns))
    try:
        found = await store.list_tokens(email=email)
        rows = [_token_row(t) for t in found]
    finally:
        await store.close()
    if ns.json:
        print(json.dumps(rows, indent=2))
        return 0
    columns: tuple[str, ...] = ("id", "email", "name", "kind", "prefix", "created_at")
    columns += ("last_used_at", "expires_at", "scopes")
    shown = [{**r, "scopes": ",".join(t.scopes)} for r, t in zip(rows, found, strict=True)]
    widths = {c: max([len(c)] + [len(str(r[c] or "-")) for r in shown]) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for r in shown:
        print("  ".join(str(r[c] or "-").ljust(widths[c]) for c in columns))
    return 0


async def _token_revoke(ns: argparse.Namespace) -> int:
    store = await _with_store(_store_settings(ns))
    try:
        await store.revoke_token(ns.id)
    finally:
        await store.close()
    print(f"revoked token {ns.id}", file=sys.stderr)
    return 0


async def _downloads(ns: argparse.Namespace) -> int:
    params = {
        k: str(v)
        for k, v in (
            ("ecosystem", ns.ecosystem),
            ("package", ns.package),
            ("version", ns.version),
            ("email", ns.email),
            ("since", ns.since),
            ("limit", ns.limit),
        )
        if v is not None
    }
    query = build_query(params, params.keys(), email=inputs.normalize_email)
    store = await _with_store(_store_settings(ns))
    try:
        page = await history(store, None, query)
    finally:
        await store.close()
    rows = [
        {
            "downloaded_at": _iso(r.download.downloaded_at),
            "email": r.email,
            "token_id": r.download.token_id,
            "token": f"{r.token_name} ({r.token_prefix})",
            "ecosystem": r.download.ecosystem,
            "package": r.download.package,
            "version": r.download.version,
            "filename": r.download.filename,
        }
        for r in page.rows
    ]
    if ns.json:
        print(json.dumps(rows, indent=2))
        return 0
    columns = ("downloaded_at", "email", "token", "ecosystem", "package", "version", "filename")
    titles = {c: ("time" if c == "downloaded_at" else c).upper() for c in columns}
    widths = {c: max([len(titles[c])] + [len(str(r[c])) for r in rows]) for c in columns}
    print("  ".join(titles[c].ljust(widths[c]) for c in columns).rstrip())
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in columns).rstrip())
    if page.next_cursor is not None:
        more = f"(more than {query.limit} rows; narrow the filters or raise --limit)"
        print(more, file=sys.stderr)
    return 0


def _read_password(ns: argparse.Namespace) -> str:
    if ns.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat password: ") != password:
            raise InvalidInput("passwords do not match")
    if len(password) < 8:
        raise InvalidInput("password must be at least 8 characters")
    return password


async def _user_create(ns: argparse.Namespace) -> int:
    email = inputs.normalize_email(ns.email)
    password = _read_password(ns)
    password_hash = await hash_password_async(password)
    store = await _with_store(_store_settings(ns))
    try:
        user = await store.get_user_by_email(email)
        if user is None:
            user = await store.create_user(email, is_admin=ns.admin, password_hash=password_hash)
            print(
                f"created user {user.id} <{email}>{' (admin)' if ns.admin else ''}", file=sys.stderr
            )
        else:
            await store.update_user(user.id, is_admin=ns.admin or None, password_hash=password_hash)
            print(f"updated user {user.id} <{email}>", file=sys.stderr)
    finally:
        await store.close()
    print(user.id)
    return 0


def _serve(ns: argparse.Namespace) -> int:
    from .serve import serve

    settings = settings_mod.load(vars(ns))
    for line in settings_mod.unknown_env():
        print(f"pkgate: warning: {line}", file=sys.stderr, flush=True)
    settings = discover.fill_upstreams(
        settings, os.environ, lambda line: print(f"pkgate: {line}", file=sys.stderr, flush=True)
    )
    settings.require_upstream()
    return serve(settings)


def _blocklist_status(ns: argparse.Namespace) -> int:
    settings = _store_settings(ns)
    return supplychain_cli.blocklist_status(
        settings, ns.json, {"breach_notifications": asyncio.run(_breach_summary(settings))}
    )


async def _breach_summary(settings: Settings) -> dict[str, object]:
    """The breach mail queue as the admin status shows it (from the store, any server's)."""
    store = await _with_store(settings)
    try:
        counts, failing = await store.notification_summary()
    finally:
        await store.close()
    return {
        "notifications": counts,
        "failing": [
            {"advisory_id": a, "email": e, "attempts": n, "error": err} for a, e, n, err in failing
        ],
    }


async def _blocklist_refresh(ns: argparse.Namespace) -> int:
    return await supplychain_cli.blocklist_refresh(_store_settings(ns), _with_store, ns.wait)


async def _db_copy(ns: argparse.Namespace) -> int:
    settings = _store_settings(ns)
    try:
        target_url = settings_mod.FIELDS["database_url"].metadata["parse"](ns.to)
    except ValueError as exc:
        raise SettingsError(f"--to: {exc}") from None
    if str(settings.database) == str(target_url) or settings.database == sqlite_path(target_url):
        raise SettingsError("--to: the target is the source database")
    source = await _with_store(settings)
    try:
        target = await Store.open(target_url)
        try:
            report = await copy_store(source, target)
        finally:
            await target.close()
    finally:
        await source.close()
    for table, n in report.counts.items():
        print(f"{table:24} {n:>10}", file=sys.stderr)
    print(f"copied {report.rows} rows into {masked(target_url)}; row counts match", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pkgate", description="Authenticating proxy for npm and Python package registries"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve_p = sub.add_parser("serve", help="run the server")
    settings_mod.add_arguments(serve_p)
    serve_p.add_argument(
        "--no-discover",
        dest="discover",
        action="store_const",
        const="false",
        help="do not look for upstreams on this machine (npm and pip configuration)",
    )
    serve_p.set_defaults(func=_serve)

    def store_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", metavar="FILE", help="TOML settings file")
        p.add_argument("--data-dir", dest="data_dir", help="data directory [env PKGATE_DATA_DIR]")
        p.add_argument(
            "--database-url",
            dest="database_url",
            help="sqlite:///PATH or postgresql://... [env PKGATE_DATABASE_URL]",
        )

    token_p = sub.add_parser("token", help="manage tokens").add_subparsers(
        dest="action", required=True
    )
    create = token_p.add_parser("create", help="create a token; prints only the secret")
    create.add_argument("--email", required=True)
    create.add_argument("--name", default="cli")
    create.add_argument(
        "--expires-in", metavar="SECONDS", help="the token stops working after SECONDS"
    )
    create.add_argument(
        "--expires-at", metavar="ISO8601", help="the token stops working at this time (UTC)"
    )
    create.add_argument(
        "--scopes", metavar="LIST", help="registries it works for: npm,pypi (default both)"
    )
    store_args(create)
    create.set_defaults(coro=_token_create)
    listing = token_p.add_parser("list", help="list active tokens")
    listing.add_argument("--email")
    listing.add_argument("--json", action="store_true")
    store_args(listing)
    listing.set_defaults(coro=_token_list)
    revoke = token_p.add_parser("revoke", help="revoke a token by id")
    revoke.add_argument("id")
    store_args(revoke)
    revoke.set_defaults(coro=_token_revoke)

    downloads = sub.add_parser("downloads", help="list the download history, newest first")
    downloads.add_argument("--package")
    downloads.add_argument("--version")
    downloads.add_argument("--email", help="owner of the tokens")
    downloads.add_argument("--ecosystem", choices=("npm", "pypi"))
    downloads.add_argument("--since", help="ISO 8601 time or Unix seconds")
    downloads.add_argument("--limit", type=int, default=1000, help="at most this many rows")
    downloads.add_argument("--json", action="store_true")
    store_args(downloads)
    downloads.set_defaults(coro=_downloads)

    user_p = sub.add_parser("user", help="manage users").add_subparsers(
        dest="action", required=True
    )
    ucreate = user_p.add_parser("create", help="create a user who can log in")
    ucreate.add_argument("--email", required=True)
    ucreate.add_argument("--admin", action="store_true")
    ucreate.add_argument("--password-stdin", action="store_true")
    store_args(ucreate)
    ucreate.set_defaults(coro=_user_create)

    db_p = sub.add_parser("db", help="the database").add_subparsers(dest="action", required=True)
    dcopy = db_p.add_parser(
        "copy", help="copy the whole store into an empty database (e.g. SQLite -> PostgreSQL)"
    )
    dcopy.add_argument("--to", required=True, metavar="URL", help="postgresql://user:pass@host/db")
    store_args(dcopy)
    dcopy.set_defaults(coro=_db_copy)

    supplychain_cli.add_commands(sub, store_args, _blocklist_status, _blocklist_refresh)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        if hasattr(ns, "coro"):
            return int(asyncio.run(ns.coro(ns)))
        return int(ns.func(ns))
    except SettingsError as exc:
        print(f"pkgate: {exc}", file=sys.stderr)
        return 2
    except NotFound as exc:
        print(f"pkgate: {exc}", file=sys.stderr)
        return 1
    except PkgateError as exc:
        print(f"pkgate: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        # A store whose close failed would keep the process alive (non-daemon threads).
        close_leftover_connections()


if __name__ == "__main__":
    sys.exit(main())
