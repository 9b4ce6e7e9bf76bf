"""Token lifetimes and scopes (SPEC 18): creation through the API, the admin API and the CLI,
refusal with the reason in both ecosystems, and a validation cache that never outlives an expiry."""

import json
import sqlite3
from base64 import b64encode
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from tests.api_support import call
from tests.clock import FakeClock
from tests.conftest import RunningServer, StartServer, pkgate_cmd, run
from tokenapi import tokens
from tokenapi.issue import ensure_user, issue_token
from tokenapi.store import MIGRATIONS, Store, sqlite_path
from tokenapi.validation import EXPIRED, TokenValidator

UNREACHABLE = "http://127.0.0.1:9/"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def server(start_server: StartServer, clock: FakeClock, database_url: str) -> RunningServer:
    """A pkgate on each store backend, with a controllable clock."""
    return await start_server(
        npm_upstream=UNREACHABLE,
        pypi_upstream=UNREACHABLE + "simple/",
        clock=clock,
        database_url=database_url,
    )


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


async def registry(server: RunningServer, ecosystem: str, secret: str) -> tuple[int, dict, str]:
    """A registry request with ``secret``: npm whoami (answered locally) or a simple page
    (its upstream is unreachable, so anything but 401 means authentication passed)."""
    async with aiohttp.ClientSession() as http:
        if ecosystem == "npm":
            url, auth = server.url / "npm" / "-" / "whoami", f"Bearer {secret}"
        else:
            cred = b64encode(f"token:{secret}".encode()).decode()
            url, auth = server.url / "pypi" / "simple" / "six" / "", f"Basic {cred}"
        async with http.get(url, headers={"Authorization": auth}) as resp:
            body = await resp.json() if resp.content_type == "application/json" else {}
            return resp.status, body, resp.headers.get("WWW-Authenticate", "")


async def test_create__expires_in_and_scopes_are_kept_and_shown(
    server: RunningServer, clock: FakeClock
) -> None:
    me = await server.token("me@example.com")
    made = await call(
        server,
        "POST",
        "/api/tokens",
        json={"name": "ci", "expires_in": 3600, "scopes": ["npm"]},
        token=me,
    )
    assert made.status == 201, made.body
    assert made.body["scopes"] == ["npm"]
    assert ts(made.body["expires_at"]) == pytest.approx(clock.now + 3600, abs=0.01)
    listed = await call(server, "GET", "/api/tokens", token=me)
    row = next(t for t in listed.body if t["name"] == "ci")
    assert (row["scopes"], row["expires_at"]) == (["npm"], made.body["expires_at"])
    mine = next(t for t in listed.body if t["name"] == "test")
    assert (mine["scopes"], mine["expires_at"]) == (["npm", "pypi"], None)
    status = await call(server, "GET", "/api/v1/tokens/status", token=made.body["token"])
    assert (status.body["scopes"], status.body["expires_at"]) == (["npm"], made.body["expires_at"])


async def test_create__expires_at_in_iso_8601(server: RunningServer, clock: FakeClock) -> None:
    me = await server.token()
    when = datetime.fromtimestamp(int(clock.now) + 86400, UTC)
    for text in (when.isoformat(), when.isoformat().replace("+00:00", "Z")):
        made = await call(
            server, "POST", "/api/tokens", json={"name": "x", "expires_at": text}, token=me
        )
        assert made.status == 201, made.body
        assert ts(made.body["expires_at"]) == when.timestamp()
        assert made.body["scopes"] == ["npm", "pypi"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"expires_in": 60, "expires_at": "2099-01-01T00:00:00Z"}, "not both"),
        ({"expires_in": 0}, "positive"),
        ({"expires_in": -5}, "positive"),
        ({"expires_in": "60"}, "number of seconds"),
        ({"expires_in": True}, "number of seconds"),
        ({"expires_at": "2001-01-01T00:00:00Z"}, "in the future"),
        ({"expires_at": "tomorrow"}, "ISO 8601"),
        ({"expires_at": 5}, "ISO 8601"),
        ({"scopes": []}, "scopes"),
        ({"scopes": ["npm", "maven"]}, "scopes"),
        ({"scopes": "npm"}, "scopes"),
        ({"scopes": [1]}, "scopes"),
    ],
)
async def test_create__bad_limits_are_400(
    server: RunningServer, extra: dict[str, object], message: str
) -> None:
    me = await server.token()
    answer = await call(server, "POST", "/api/tokens", json={"name": "x", **extra}, token=me)
    assert answer.status == 400
    assert message in answer.body["error"]
    assert len(await server.store.list_tokens()) == 1


async def test_create__capped_by_token_max_lifetime(
    start_server: StartServer, clock: FakeClock
) -> None:
    server = await start_server(npm_upstream=UNREACHABLE, token_max_lifetime=7200, clock=clock)
    me = await server.token()
    over = await call(
        server, "POST", "/api/tokens", json={"name": "x", "expires_in": 7201}, token=me
    )
    assert over.status == 400
    assert "at most 2 hours" in over.body["error"]
    ok = await call(server, "POST", "/api/tokens", json={"name": "x", "expires_in": 7200}, token=me)
    assert ok.status == 201
    # Without an expiry a capped token gets the longest one allowed.
    default = await call(server, "POST", "/api/tokens", json={"name": "y"}, token=me)
    assert ts(default.body["expires_at"]) == pytest.approx(clock.now + 7200, abs=0.01)


async def test_scopes__refused_outside_with_the_reason(server: RunningServer) -> None:
    user = await ensure_user(server.store, "s@example.com")
    _, npm_only = await issue_token(server.store, user, name="n", scopes=("npm",))
    _, pypi_only = await issue_token(server.store, user, name="p", scopes=("pypi",))
    assert (await registry(server, "npm", npm_only))[0] == 200
    status, body, challenge = await registry(server, "pypi", npm_only)
    assert (status, body) == (401, {"error": "token not valid for pypi"})
    assert challenge == 'Basic realm="pkgate"'
    status, body, challenge = await registry(server, "npm", pypi_only)
    assert (status, body) == (401, {"error": "token not valid for npm"})
    assert challenge == 'Bearer realm="pkgate"'
    assert (await registry(server, "pypi", pypi_only))[0] != 401
    # Also when the token was already in the validation cache from an in-scope use.
    assert (await registry(server, "pypi", npm_only))[:2] == (
        401,
        {"error": "token not valid for pypi"},
    )
    # The token API is not a registry: a scoped token still reads its own status.
    assert (await call(server, "GET", "/api/v1/tokens/status", token=npm_only)).status == 200


async def test_expiry__refused_on_time_in_both_ecosystems(
    server: RunningServer, clock: FakeClock
) -> None:
    me = await server.token()
    made = await call(
        server, "POST", "/api/tokens", json={"name": "short", "expires_in": 600}, token=me
    )
    secret = made.body["token"]
    for eco in ("npm", "pypi"):
        assert (await registry(server, eco, secret))[0] != 401  # now cached as valid
    lookups = server.validator.store_lookups
    clock.advance(599.9)
    assert (await registry(server, "npm", secret))[0] == 200
    clock.advance(0.1)
    for eco in ("npm", "pypi"):
        status, body, _ = await registry(server, eco, secret)
        assert (status, body) == (401, {"error": EXPIRED})
    api = await call(server, "GET", "/api/v1/tokens/status", token=secret)
    assert (api.status, api.body) == (401, {"error": EXPIRED})
    # Refused from the cache, which held the token but not past its expiry.
    assert server.validator.store_lookups == lookups
    listed = await call(server, "GET", "/api/tokens", token=me)
    assert [t["name"] for t in listed.body] == ["test"]


async def test_expiry__cache_entry_never_outlives_expiry(database_url: str) -> None:
    clock = FakeClock()
    store = await Store.open(database_url)
    try:
        validator = TokenValidator(store, ttl=3600, clock=clock)
        user = await ensure_user(store, "c@example.com")
        _, secret = await issue_token(store, user, name="c", expires_at=clock.now + 30)
        assert await validator.validate(secret) is not None
        assert validator.cached(secret) is not None
        clock.advance(30)
        assert validator.cached(secret) is None
        assert await validator.validate(secret) is None
        assert await validator.check(secret, "npm") == EXPIRED
        assert await validator.check(secret) == EXPIRED
    finally:
        await store.close()


async def test_token_cannot_mint_a_token_with_more_reach(
    server: RunningServer, clock: FakeClock
) -> None:
    user = await ensure_user(server.store, "m@example.com")
    _, short = await issue_token(
        server.store, user, name="ci", expires_at=clock.now + 600, scopes=("npm",)
    )
    inherited = await call(server, "POST", "/api/tokens", json={"name": "child"}, token=short)
    assert inherited.status == 201
    assert inherited.body["scopes"] == ["npm"]
    assert ts(inherited.body["expires_at"]) == pytest.approx(clock.now + 600, abs=0.01)
    for extra in ({"expires_in": 601}, {"scopes": ["npm", "pypi"]}, {"scopes": ["pypi"]}):
        answer = await call(
            server, "POST", "/api/tokens", json={"name": "wider", **extra}, token=short
        )
        assert answer.status == 403, (extra, answer.body)
    shorter = await call(
        server, "POST", "/api/tokens", json={"name": "c2", "expires_in": 60}, token=short
    )
    assert shorter.status == 201


async def test_admin_create__for_any_address_with_limits(
    server: RunningServer, clock: FakeClock
) -> None:
    await server.store.create_user("root@example.com", is_admin=True)
    admin = await server.token("root@example.com")
    made = await call(
        server,
        "POST",
        "/api/admin/tokens",
        json={"email": "New@Example.com", "name": "deploy", "scopes": ["pypi"], "expires_in": 60},
        token=admin,
    )
    assert made.status == 201, made.body
    assert made.body["email"] == "new@example.com"
    assert (await registry(server, "npm", made.body["token"]))[:2] == (
        401,
        {"error": "token not valid for npm"},
    )
    listed = await call(server, "GET", "/api/admin/tokens?email=new@example.com", token=admin)
    assert [(t["name"], t["scopes"], t["expires_at"]) for t in listed.body] == [
        ("deploy", ["pypi"], made.body["expires_at"])
    ]
    other = await server.token("plain@example.com")
    refused = await call(
        server,
        "POST",
        "/api/admin/tokens",
        json={"email": "x@example.com", "name": "x"},
        token=other,
    )
    assert refused.status == 403


async def cli(data_dir: Path, *args: str, env: dict[str, str] | None = None):
    import os

    return await run(
        *pkgate_cmd(*args, "--data-dir", str(data_dir)), env={**os.environ, **(env or {})}
    )


async def test_cli__create_with_limits_and_list_shows_them(tmp_path: Path) -> None:
    made = await cli(
        tmp_path,
        "token",
        "create",
        "--email",
        "c@example.com",
        "--name",
        "ci",
        "--expires-in",
        "3600",
        "--scopes",
        "pypi",
    )
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip().startswith("pkg_")
    rows = json.loads((await cli(tmp_path, "token", "list", "--json")).stdout)
    assert [(r["name"], r["scopes"]) for r in rows] == [("ci", ["pypi"])]
    assert ts(rows[0]["expires_at"]) > datetime.now(UTC).timestamp() + 3500
    table = (await cli(tmp_path, "token", "list")).stdout
    assert "EXPIRES_AT" in table
    assert "SCOPES" in table
    assert rows[0]["expires_at"] in table


async def test_cli__refuses_over_the_cap_and_bad_scopes(tmp_path: Path) -> None:
    env = {"PKGATE_TOKEN_MAX_LIFETIME": "600"}
    over = await cli(
        tmp_path, "token", "create", "--email", "c@example.com", "--expires-in", "601", env=env
    )
    assert over.returncode == 1
    assert "at most 10 minutes" in over.stderr
    assert "Traceback" not in over.stderr
    bad = await cli(tmp_path, "token", "create", "--email", "c@example.com", "--scopes", "maven")
    assert bad.returncode == 1
    assert "--scopes" in bad.stderr
    capped = await cli(tmp_path, "token", "create", "--email", "c@example.com", env=env)
    assert capped.returncode == 0
    (row,) = json.loads((await cli(tmp_path, "token", "list", "--json")).stdout)
    assert row["expires_at"] is not None


OLD_USER = "INSERT INTO users (id, email, created_at) VALUES ('u1', 'old@example.com', 1.0)"
OLD_TOKEN = (
    "INSERT INTO tokens (id, user_id, name, kind, digest, prefix, created_at)"
    " VALUES ('t1', 'u1', 'old', 'api', '{digest}', '{prefix}', 1.0)"
)


async def test_migration__existing_tokens_keep_working_unlimited(database_url: str) -> None:
    secret = tokens.generate()
    old_token = OLD_TOKEN.format(digest=tokens.digest(secret), prefix=tokens.display_prefix(secret))
    path = sqlite_path(database_url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(path) as db:
            db.executescript(MIGRATIONS[0].sqlite)
            db.execute(OLD_USER)
            db.execute(old_token)
            db.execute("PRAGMA user_version = 1")
    else:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(MIGRATIONS[0].postgresql)
            await conn.execute("CREATE TABLE pkgate_schema (version INTEGER NOT NULL)")
            await conn.execute("INSERT INTO pkgate_schema (version) VALUES (1)")
            await conn.execute(OLD_USER)
            await conn.execute(old_token)
        finally:
            await conn.close()
    store = await Store.open(database_url)
    try:
        token = await store.lookup_digest(tokens.digest(secret))
        assert token is not None
        assert (token.expires_at, token.scopes) == (None, ("npm", "pypi"))
    finally:
        await store.close()


async def test_regenerate__keeps_expiry_and_scopes(server: RunningServer, clock: FakeClock) -> None:
    user = await ensure_user(server.store, "r@example.com")
    old, secret = await issue_token(
        server.store, user, name="ci", expires_at=clock.now + 300, scopes=("pypi",)
    )
    new = await call(server, "POST", "/api/v1/tokens/regenerate", token=secret)
    assert new.status == 200, new.body
    assert new.body["scopes"] == ["pypi"]
    assert ts(new.body["expires_at"]) == pytest.approx(old.expires_at, abs=0.01)
    clock.advance(300)
    assert (await registry(server, "pypi", new.body["token"]))[:2] == (401, {"error": EXPIRED})


async def test_store__limits_kept_listed_and_counted_on_both_backends(database_url: str) -> None:
    store = await Store.open(database_url)
    try:
        user = await ensure_user(store, "b@example.com")
        now = 1_000_000.0
        short, _ = await issue_token(
            store, user, name="short", expires_at=now + 10, scopes=("pypi",)
        )
        await issue_token(store, user, name="forever")
        found = await store.get_token(short.id)
        assert found is not None
        assert (found.expires_at, found.scopes) == (now + 10, ("pypi",))
        assert {t.name for t in await store.list_tokens(user_id=user.id, now=now)} == {
            "short",
            "forever",
        }
        assert [t.name for t in await store.list_tokens(user_id=user.id, now=now + 10)] == [
            "forever"
        ]
        assert await store.count_active_tokens(now=now + 10) == 1
        new, _ = await store.replace_token(
            short.id,
            user.id,
            name="short",
            kind="api",
            digest=tokens.digest(tokens.generate()),
            prefix="pkg_xxxx",
            expires_at=found.expires_at,
            scopes=found.scopes,
        )
        assert (new.expires_at, new.scopes) == (now + 10, ("pypi",))
        with pytest.raises(ValueError, match="scopes"):
            await issue_token(store, user, name="bad", scopes=("maven",))
    finally:
        await store.close()


async def test_openapi__token_answers_document_every_field(server: RunningServer) -> None:
    doc = (await call(server, "GET", "/api/openapi.json")).body

    def documented(path: str, method: str, status: str) -> set[str]:
        schema = doc["paths"][path][method]["responses"][status]["content"]["application/json"]
        schema = schema["schema"]
        return set((schema.get("items") or schema)["properties"])

    await server.store.create_user("root@example.com", is_admin=True)
    admin = await server.token("root@example.com")
    made = await call(
        server, "POST", "/api/tokens", json={"name": "x", "scopes": ["npm"]}, token=admin
    )
    answers = {
        ("/tokens", "post", "201"): made.body,
        ("/tokens", "get", "200"): (await call(server, "GET", "/api/tokens", token=admin)).body[0],
        ("/v1/tokens/status", "get", "200"): (
            await call(server, "GET", "/api/v1/tokens/status", token=made.body["token"])
        ).body,
        ("/admin/tokens", "get", "200"): (
            await call(server, "GET", "/api/admin/tokens", token=admin)
        ).body[0],
        ("/v1/tokens/regenerate", "post", "200"): (
            await call(server, "POST", "/api/v1/tokens/regenerate", token=made.body["token"])
        ).body,
    }
    for (path, method, status), body in answers.items():
        assert {"expires_at", "scopes"} <= set(body), path
        assert set(body) <= documented(path, method, status), path
