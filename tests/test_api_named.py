import pytest

from tests.api_support import NPM_UPSTREAM, call, snapshot, tokens_in
from tests.conftest import RunningServer, StartServer


@pytest.fixture
async def server(start_server: StartServer) -> RunningServer:
    return await start_server(npm_upstream=NPM_UPSTREAM)


async def test_named_tokens__create_returns_secret_once(server: RunningServer) -> None:
    me = await server.token("me@example.com")
    created = await call(server, "POST", "/api/tokens", json={"name": "ci"}, token=me)
    assert created.status == 201
    secret = created.body["token"]
    assert tokens_in(secret) == [secret]
    assert created.body["name"] == "ci"
    assert created.body["kind"] == "api"
    who = await call(server, "GET", "/npm/-/whoami", token=secret)
    assert who.body == {"username": "me@example.com"}
    listed = await call(server, "GET", "/api/tokens", token=me)
    assert listed.status == 200
    assert {t["name"] for t in listed.body} == {"test", "ci"}
    assert secret not in listed.raw.decode()
    assert all("token" not in t for t in listed.body)
    assert listed.headers["Cache-Control"] == "no-store"


async def test_named_tokens__list_shows_only_own_active_tokens(server: RunningServer) -> None:
    me = await server.token("me@example.com")
    await server.token("other@example.com", name="theirs")
    extra = await call(server, "POST", "/api/tokens", json={"name": "gone"}, token=me)
    await call(server, "DELETE", f"/api/tokens/{extra.body['id']}", token=me)
    listed = await call(server, "GET", "/api/tokens", token=me)
    assert [t["name"] for t in listed.body] == ["test"]


async def test_named_tokens__list_shows_fresh_last_use(start_server: StartServer) -> None:
    server = await start_server(npm_upstream=NPM_UPSTREAM, last_used_flush=3600)
    me = await server.token("me@example.com")
    await call(server, "GET", "/npm/-/whoami", token=me)
    listed = await call(server, "GET", "/api/tokens", token=me)
    assert listed.body[0]["last_used_at"] is not None
    assert server.recorder.flushes == 0


async def test_named_tokens__name_required(server: RunningServer) -> None:
    me = await server.token()
    for body in ({}, {"name": ""}, {"name": "   "}, {"name": None}, {"name": 5}):
        answer = await call(server, "POST", "/api/tokens", json=body, token=me)
        assert (answer.status, answer.body) == (400, {"error": "Token name is required"})


async def test_named_tokens__delete_revokes_at_once(server: RunningServer) -> None:
    me = await server.token()
    created = await call(server, "POST", "/api/tokens", json={"name": "ci"}, token=me)
    secret = created.body["token"]
    assert (await call(server, "GET", "/npm/-/whoami", token=secret)).status == 200
    answer = await call(server, "DELETE", f"/api/tokens/{created.body['id']}", token=me)
    assert (answer.status, answer.body) == (200, {"message": "Token revoked"})
    assert (await call(server, "GET", "/npm/-/whoami", token=secret)).status == 401
    assert (await call(server, "GET", "/api/tokens", token=secret)).status == 401


async def test_named_tokens__other_users_id_answered_like_missing(server: RunningServer) -> None:
    me = await server.token("me@example.com")
    theirs = await server.token("other@example.com")
    other_list = await call(server, "GET", "/api/tokens", token=theirs)
    their_id = other_list.body[0]["id"]
    before = snapshot(server.settings.db_path)
    foreign = await call(server, "DELETE", f"/api/tokens/{their_id}", token=me)
    missing = await call(
        server, "DELETE", "/api/tokens/00000000-0000-4000-8000-000000000000", token=me
    )
    garbage = await call(server, "DELETE", "/api/tokens/not-a-uuid", token=me)
    assert foreign.status == missing.status == garbage.status == 400
    assert foreign.body == missing.body == garbage.body == {"error": "Token not found"}
    assert snapshot(server.settings.db_path) == before
    assert (await call(server, "GET", "/npm/-/whoami", token=theirs)).status == 200


async def test_named_tokens__delete_without_id(server: RunningServer) -> None:
    me = await server.token()
    for path in ("/api/tokens/", "/api/tokens/%20"):
        answer = await call(server, "DELETE", path, token=me)
        assert (answer.status, answer.body) == (400, {"error": "Token ID is required"})


async def test_named_tokens__unauthenticated_401(server: RunningServer) -> None:
    for method, path in (("GET", "/api/tokens"), ("POST", "/api/tokens")):
        answer = await call(server, method, path, json={"name": "x"})
        assert answer.status == 401
        assert "error" in answer.body
    bad = await call(server, "GET", "/api/tokens", headers={"Authorization": "Bearer nonsense"})
    assert bad.status == 401


async def test_named_tokens__creation_rate_limited_per_user(start_server: StartServer) -> None:
    server = await start_server(npm_upstream=NPM_UPSTREAM, token_create_limit=2)
    me = await server.token("me@example.com")
    other = await server.token("other@example.com")
    for name in ("a", "b"):
        created = await call(server, "POST", "/api/tokens", json={"name": name}, token=me)
        assert created.status == 201
    before = snapshot(server.settings.db_path)
    over = await call(server, "POST", "/api/tokens", json={"name": "c"}, token=me)
    assert over.status == 429
    assert int(over.headers["Retry-After"]) >= 1
    assert "error" in over.body
    assert snapshot(server.settings.db_path) == before
    ok = await call(server, "POST", "/api/tokens", json={"name": "c"}, token=other)
    assert ok.status == 201
