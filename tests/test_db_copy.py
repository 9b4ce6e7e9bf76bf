"""``pkgate db copy --to postgresql://...``: a whole SQLite store moves into an empty PostgreSQL
database, counts checked; tokens, revocations, usage, sessions keep working there; a non-empty
target is refused and left alone."""

from __future__ import annotations

from pathlib import Path

from tests.api_support import NPM_UPSTREAM, call
from tests.conftest import StartServer, pkgate_cmd, run
from tests.pg import PostgresServer
from tokenapi import tokens
from tokenapi.issue import ensure_user, issue_token
from tokenapi.store import Store, UsageUpdate


async def filled_sqlite(path: Path) -> dict[str, str]:
    """A store with something in every table the server writes; returns the secrets."""
    store = await Store.open(path)
    try:
        alive = await ensure_user(store, "alive@example.com")
        token, secret = await issue_token(store, alive, name="kept")
        revoked, revoked_secret = await issue_token(store, alive, name="gone")
        await store.revoke_token(revoked.id)
        await store.record_usage(
            [UsageUpdate(token.id, 100.0, {"npm": (7, 100.0), "pypi": (2, 50.0)})]
        )
        await store.create_session(tokens.digest("session-cookie"), alive.id, lifetime=3600)
        await store.create_reset_code(alive.id, "code-digest", ttl=3600)
        for n in range(30):
            user = await ensure_user(store, f"u{n}@example.com")
            await issue_token(store, user, name=f"t{n}")
    finally:
        await store.close()
    return {"alive": secret, "revoked": revoked_secret, "token_id": token.id}


async def test_db_copy__moves_everything_and_tokens_keep_working(
    tmp_path: Path, postgres_url: str, postgres: PostgresServer, start_server: StartServer
) -> None:
    data = tmp_path / "data"
    secrets = await filled_sqlite(data / "pkgate.db")
    source = await Store.open(data / "pkgate.db")
    try:
        expected = await source.table_counts()
        last_seq = await source.revocation_seq()
    finally:
        await source.close()
    done = await run(*pkgate_cmd("db", "copy", "--to", postgres_url, "--data-dir", str(data)))
    assert done.returncode == 0, done.output
    assert "row counts match" in done.stderr
    assert postgres.password not in done.output
    target = await Store.open(postgres_url)
    try:
        assert await target.table_counts() == expected
        assert expected["tokens"] == 32
        assert expected["revocations"] == 1
        usage = {
            u.ecosystem: (u.requests, u.last_used_at)
            for u in await target.usage(secrets["token_id"])
        }
        assert usage == {"npm": (7, 100.0), "pypi": (2, 50.0)}
        assert await target.session_user(tokens.digest("session-cookie")) is not None
    finally:
        await target.close()

    server = await start_server(npm_upstream=NPM_UPSTREAM, database_url=postgres_url)
    assert (await call(server, "GET", "/npm/-/whoami", token=secrets["alive"])).status == 200
    assert (await call(server, "GET", "/npm/-/whoami", token=secrets["revoked"])).status == 401
    # Serial keys continue after the copied ones: a new revocation and a new reset code insert.
    assert (await call(server, "DELETE", "/api/v1/tokens", token=secrets["alive"])).status == 200
    assert await server.store.revocation_seq() == last_seq + 1
    user = await server.store.get_user_by_email("u1@example.com")
    assert user is not None
    await server.store.create_reset_code(user.id, "another", ttl=60)


async def test_db_copy__refuses_a_target_that_is_not_empty(
    tmp_path: Path, postgres_url: str
) -> None:
    data = tmp_path / "data"
    await filled_sqlite(data / "pkgate.db")
    first = await run(*pkgate_cmd("db", "copy", "--to", postgres_url, "--data-dir", str(data)))
    assert first.returncode == 0, first.output
    target = await Store.open(postgres_url)
    try:
        before = await target.table_counts()
    finally:
        await target.close()
    again = await run(*pkgate_cmd("db", "copy", "--to", postgres_url, "--data-dir", str(data)))
    assert again.returncode == 1
    assert "not empty" in again.stderr
    assert "Traceback" not in again.output
    target = await Store.open(postgres_url)
    try:
        assert await target.table_counts() == before
    finally:
        await target.close()


async def test_db_copy__refuses_a_bad_or_same_target(tmp_path: Path) -> None:
    data = tmp_path / "data"
    await filled_sqlite(data / "pkgate.db")
    bad = await run(*pkgate_cmd("db", "copy", "--to", "mysql://x@y/z", "--data-dir", str(data)))
    assert bad.returncode == 2
    assert "--to" in bad.stderr
    same = await run(
        *pkgate_cmd(
            "db", "copy", "--to", f"sqlite:///{data / 'pkgate.db'}", "--data-dir", str(data)
        )
    )
    assert same.returncode == 2
    assert "is the source" in same.stderr


async def test_db_copy__unreachable_target_names_no_password(tmp_path: Path) -> None:
    data = tmp_path / "data"
    await filled_sqlite(data / "pkgate.db")
    url = "postgresql://pkgate:s3cret-pass-word@127.0.0.1:9/pkgate"
    done = await run(*pkgate_cmd("db", "copy", "--to", url, "--data-dir", str(data)))
    assert done.returncode == 1
    assert "cannot open database postgresql://pkgate@127.0.0.1:9/pkgate" in done.stderr
    assert "s3cret-pass-word" not in done.output
