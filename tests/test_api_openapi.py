"""The OpenAPI document is kept true: every API route is in it, and every documented answer
status is produced by exercising the endpoint."""

import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from yarl import URL

from tests.api_support import NPM_UPSTREAM, Answer, call
from tests.conftest import RunningServer, StartServer, free_port
from tests.oidc_issuer import Issuer, serve_issuer
from tests.smtp import SmtpServer
from tokenapi.http import endpoints
from tokenapi.oidcconfig import parse_issuers
from tokenapi.passwords import hash_password_async

PASSWORD = "pw-for-openapi-test"


def api_routes(app: web.Application) -> set[tuple[str, str]]:
    """(method, path) of every route under /api, sub-applications included."""
    found: set[tuple[str, str]] = set()
    for resource in app.router.resources():
        if isinstance(resource, web.PrefixedSubAppResource):
            info = resource.get_info()
            found |= api_routes(info["app"])
            continue
        for route in resource:
            if route.method in {"HEAD", "*"}:
                continue
            # Once the app is frozen a sub-application's resources carry the full path.
            found.add((route.method, resource.canonical))
    return {(m, p) for m, p in found if p.startswith("/api/")}


async def test_openapi__served_and_lists_every_route(start_server: StartServer) -> None:
    server = await start_server(npm_upstream=NPM_UPSTREAM)
    answer = await call(server, "GET", "/api/openapi.json")
    assert answer.status == 200
    doc = answer.body
    assert doc["openapi"].startswith("3.")
    assert doc["servers"] == [{"url": f"{server.url}/api"}]
    documented = {
        (method.upper(), "/api" + path) for path, ops in doc["paths"].items() for method in ops
    }
    routes = api_routes(server.app)
    assert routes
    assert routes == documented
    for path, ops in doc["paths"].items():
        for op in ops.values():
            for param in re.findall(r"\{(\w+)\}", path):
                assert {"name": param, "in": "path"}.items() <= op["parameters"][0].items()
            for status, response in op["responses"].items():
                assert response["description"]
                if int(status) == 429:
                    assert "Retry-After" in response["headers"]


# -- every documented status, produced -------------------------------------------------------

Scenario = Callable[["Ctx"], Awaitable[Answer]]


class Ctx:
    """A fresh server for one scenario, with helpers to make users and tokens."""

    def __init__(self, server: RunningServer) -> None:
        self.server = server
        self.origin = {"Origin": str(server.url.origin())}

    async def token(self, email: str = "u@example.com") -> str:
        return await self.server.token(email)

    async def admin_token(self) -> str:
        await self.server.store.create_user("root@example.com", is_admin=True)
        return await self.server.token("root@example.com")

    async def cookie(self) -> dict[str, str]:
        await self.server.store.create_user(
            "c@example.com", password_hash=await hash_password_async(PASSWORD)
        )
        answer = await call(
            self.server,
            "POST",
            "/api/session",
            json={"email": "c@example.com", "password": PASSWORD},
        )
        value = answer.headers["Set-Cookie"].split(";")[0]
        return {"Cookie": value}

    def __call__(self, method: str, path: str, **kw: Any) -> Awaitable[Answer]:
        return call(self.server, method, path, **kw)


async def _registered_with_code(c: Ctx) -> None:
    await c("POST", "/api/v1/tokens", json={"email": "r@example.com"})


HUGE = {"pad": "x" * 100_000}


def generic(method: str, path: str, status: int, authed: bool) -> Scenario | None:
    """Statuses every endpoint of a kind produces the same way."""

    async def send(c: Ctx, **kw: Any) -> Answer:
        token = await c.token() if authed else None
        return await c(method, path, token=token, **kw)

    if status == 415:
        return lambda c: send(c, data="x=1", headers={"Content-Type": "text/plain"})
    if status == 413:
        return lambda c: send(c, json=HUGE)
    return None


async def _login_401(c: Ctx) -> Answer:
    return await c("POST", "/api/session", json={"email": "n@example.com", "password": "x"})


async def _login_429(c: Ctx) -> Answer:
    await _login_401(c)
    return await _login_401(c)


async def _register_429(c: Ctx) -> Answer:
    await c("POST", "/api/v1/tokens", json={"email": "r@example.com"})
    await c("POST", "/api/v1/tokens", json={"email": "r@example.com"})
    return await c("POST", "/api/v1/tokens", json={"email": "r@example.com"})


async def _reset_200(c: Ctx) -> Answer:
    from tests.api_support import code_in

    await c("POST", "/api/v1/tokens", json={"email": "r@example.com"})
    await c("POST", "/api/v1/tokens", json={"email": "r@example.com"})
    code = code_in(c.mail.inbox.text())  # type: ignore[attr-defined]
    return await c("POST", "/api/v1/tokens/reset", json={"email": "r@example.com", "code": code})


async def _reset_429(c: Ctx) -> Answer:
    body = {"email": "a@b.cd", "code": "AAAAAAAA"}
    await c("POST", "/api/v1/tokens/reset", json=body)
    return await c("POST", "/api/v1/tokens/reset", json=body)


async def _create_429(c: Ctx) -> Answer:
    t = await c.token()
    await c("POST", "/api/tokens", json={"name": "a"}, token=t)
    return await c("POST", "/api/tokens", json={"name": "b"}, token=t)


async def _delete_200(c: Ctx) -> Answer:
    t = await c.token()
    made = await c("POST", "/api/tokens", json={"name": "a"}, token=t)
    return await c("DELETE", f"/api/tokens/{made.body['id']}", token=t)


async def _admin_delete_200(c: Ctx) -> Answer:
    admin = await c.admin_token()
    await c.token()
    tokens = await c("GET", "/api/admin/tokens?email=u@example.com", token=admin)
    return await c("DELETE", f"/api/admin/tokens/{tokens.body[0]['id']}", token=admin)


async def _with_token(c: Ctx, method: str, path: str) -> Answer:
    return await c(method, path, token=await c.token())


async def _cookie_no_origin(c: Ctx, method: str, path: str, **kw: Any) -> Answer:
    return await c(method, path, headers=await c.cookie(), **kw)


async def _admin_create(c: Ctx, body: dict[str, Any], token: str | None = None) -> Answer:
    body = {"name": "ci", "scopes": ["npm"], "expires_in": 600, **body}
    return await c("POST", "/api/admin/tokens", json=body, token=token or await c.admin_token())


async def _admin_raw(c: Ctx, data: str) -> Answer:
    headers = {"Content-Type": "text/plain"}
    return await c(
        "POST", "/api/admin/tokens", data=data, headers=headers, token=await c.admin_token()
    )


async def _admin_create_429(c: Ctx) -> Answer:
    admin = await c.admin_token()
    await _admin_create(c, {"email": "n@example.com"}, admin)
    return await _admin_create(c, {"email": "n@example.com"}, admin)


DEAD_ISSUER = f"http://127.0.0.1:{free_port()}"


async def _oidc(c: Ctx, issuer: Issuer, aud: str | None = None) -> Answer:
    id_token = issuer.sign(issuer.claims(aud or str(c.server.url)))
    return await c("POST", "/api/v1/oidc/token", json={"id_token": id_token})


async def _oidc_429(c: Ctx) -> Answer:
    await c("POST", "/api/v1/oidc/token", json={"id_token": "x"})
    return await c("POST", "/api/v1/oidc/token", json={"id_token": "x"})


async def _oidc_dead(c: Ctx) -> Answer:
    dead = Issuer()
    dead.url = URL(DEAD_ISSUER)
    return await _oidc(c, dead)


ANY_ID = "00000000-0000-4000-8000-000000000000"

SPECIFIC: dict[tuple[str, str, int], Scenario] = {
    ("POST", "/v1/tokens", 202): lambda c: c("POST", "/api/v1/tokens", json={"email": "a@b.cd"}),
    ("POST", "/v1/tokens", 400): lambda c: c("POST", "/api/v1/tokens", json={"email": "x"}),
    ("POST", "/v1/tokens", 429): _register_429,
    ("POST", "/v1/tokens", 503): lambda c: c("POST", "/api/v1/tokens", json={"email": "a@b.cd"}),
    ("GET", "/v1/tokens/status", 200): lambda c: _with_token(c, "GET", "/api/v1/tokens/status"),
    ("POST", "/v1/tokens/regenerate", 200): lambda c: _with_token(
        c, "POST", "/api/v1/tokens/regenerate"
    ),
    ("POST", "/v1/tokens/reset", 200): _reset_200,
    ("POST", "/v1/tokens/reset", 400): lambda c: c(
        "POST", "/api/v1/tokens/reset", json={"email": "a@b.cd", "code": "AAAAAAAA"}
    ),
    ("POST", "/v1/tokens/reset", 429): _reset_429,
    ("DELETE", "/v1/tokens", 200): lambda c: _with_token(c, "DELETE", "/api/v1/tokens"),
    ("GET", "/tokens", 200): lambda c: _with_token(c, "GET", "/api/tokens"),
    ("POST", "/tokens", 201): lambda c: _post_name(c, "ci"),
    ("POST", "/tokens", 400): lambda c: _post_name(c, ""),
    ("POST", "/tokens", 403): lambda c: _cookie_no_origin(c, "POST", "/api/tokens", json={}),
    ("POST", "/tokens", 429): _create_429,
    ("DELETE", "/tokens/", 400): lambda c: _with_token(c, "DELETE", "/api/tokens/"),
    ("DELETE", "/tokens/", 403): lambda c: _cookie_no_origin(c, "DELETE", "/api/tokens/"),
    ("DELETE", "/tokens/{id}", 200): _delete_200,
    ("DELETE", "/tokens/{id}", 400): lambda c: _with_token(c, "DELETE", f"/api/tokens/{ANY_ID}"),
    ("DELETE", "/tokens/{id}", 403): lambda c: _cookie_no_origin(
        c, "DELETE", f"/api/tokens/{ANY_ID}"
    ),
    ("POST", "/session", 200): lambda c: _login_ok(c),
    ("POST", "/session", 400): lambda c: c("POST", "/api/session", json={"email": "a@b.cd"}),
    ("POST", "/session", 401): _login_401,
    ("POST", "/session", 403): lambda c: c(
        "POST", "/api/session", json={}, headers={"Origin": "http://evil.example"}
    ),
    ("POST", "/session", 429): _login_429,
    ("GET", "/session", 200): lambda c: _with_token(c, "GET", "/api/session"),
    ("DELETE", "/session", 200): lambda c: _logout(c),
    ("DELETE", "/session", 400): lambda c: _with_token(c, "DELETE", "/api/session"),
    ("DELETE", "/session", 403): lambda c: _cookie_no_origin(c, "DELETE", "/api/session"),
    ("GET", "/admin/tokens", 200): lambda c: _admin(c, "GET", "/api/admin/tokens"),
    ("GET", "/admin/tokens", 400): lambda c: _admin(c, "GET", "/api/admin/tokens?email=x"),
    ("GET", "/admin/tokens", 403): lambda c: _with_token(c, "GET", "/api/admin/tokens"),
    ("DELETE", "/admin/tokens/{id}", 200): _admin_delete_200,
    ("DELETE", "/admin/tokens/{id}", 404): lambda c: _admin(
        c, "DELETE", f"/api/admin/tokens/{ANY_ID}"
    ),
    ("DELETE", "/admin/tokens/{id}", 403): lambda c: _with_token(
        c, "DELETE", f"/api/admin/tokens/{ANY_ID}"
    ),
    ("POST", "/admin/tokens", 201): lambda c: _admin_create(c, {"email": "n@example.com"}),
    ("POST", "/admin/tokens", 400): lambda c: _admin_create(c, {"email": "x"}),
    ("POST", "/admin/tokens", 403): lambda c: _with_token(c, "POST", "/api/admin/tokens"),
    ("POST", "/admin/tokens", 429): _admin_create_429,
    ("POST", "/admin/tokens", 413): lambda c: _admin_create(c, HUGE),
    ("POST", "/admin/tokens", 415): lambda c: _admin_raw(c, "x=1"),
    ("GET", "/openapi.json", 200): lambda c: c("GET", "/api/openapi.json"),
    ("GET", "/v1/tokens/downloads", 200): lambda c: _with_token(
        c, "GET", "/api/v1/tokens/downloads"
    ),
    ("GET", "/v1/tokens/downloads", 400): lambda c: _with_token(
        c, "GET", "/api/v1/tokens/downloads?limit=0"
    ),
    ("GET", "/downloads", 200): lambda c: _with_token(c, "GET", "/api/downloads"),
    ("GET", "/downloads", 400): lambda c: _with_token(c, "GET", "/api/downloads?cursor=x"),
    ("GET", "/admin/downloads", 200): lambda c: _admin(c, "GET", "/api/admin/downloads"),
    ("GET", "/admin/downloads", 400): lambda c: _admin(c, "GET", "/api/admin/downloads?since=x"),
    ("GET", "/admin/downloads", 403): lambda c: _with_token(c, "GET", "/api/admin/downloads"),
    ("POST", "/v1/oidc/token", 201): lambda c: _oidc(c, c.issuer),  # type: ignore[attr-defined]
    ("POST", "/v1/oidc/token", 400): lambda c: c("POST", "/api/v1/oidc/token", json={}),
    ("POST", "/v1/oidc/token", 401): lambda c: _oidc(c, c.issuer, aud="elsewhere"),  # type: ignore[attr-defined]
    ("POST", "/v1/oidc/token", 429): _oidc_429,
    ("POST", "/v1/oidc/token", 503): lambda c: _oidc_dead(c),
}


async def _post_name(c: Ctx, name: str) -> Answer:
    return await c("POST", "/api/tokens", json={"name": name}, token=await c.token())


async def _login_ok(c: Ctx) -> Answer:
    await c.server.store.create_user(
        "l@example.com", password_hash=await hash_password_async(PASSWORD)
    )
    return await c("POST", "/api/session", json={"email": "l@example.com", "password": PASSWORD})


async def _logout(c: Ctx) -> Answer:
    return await c("DELETE", "/api/session", headers={**await c.cookie(), **c.origin})


async def _admin(c: Ctx, method: str, path: str) -> Answer:
    return await c(method, path, token=await c.admin_token())


def documented() -> list[tuple[str, str, int]]:
    return sorted((e.method, e.path, status) for e in endpoints() for status in e.responses)


@pytest.mark.parametrize(("method", "path", "status"), documented())
async def test_openapi__documented_status_is_produced(
    start_server: StartServer, mail: SmtpServer, method: str, path: str, status: int
) -> None:
    smtp_url = f"smtp://127.0.0.1:{free_port()}" if status == 503 else mail.url
    async with serve_issuer() as issuer:
        server = await start_server(
            npm_upstream=NPM_UPSTREAM,
            smtp_url=smtp_url,
            register_limit_email=2,
            token_create_limit=1,
            login_limit=1,
            reset_limit_email=1,
            oidc_issuers=parse_issuers(
                [
                    {"issuer": issuer.issuer, "owner": "ci@example.com"},
                    {"issuer": DEAD_ISSUER, "owner": "ci@example.com"},
                ]
            ),
            oidc_limit_ip=1 if status == 429 else 60,
        )
        ctx = Ctx(server)
        ctx.mail = mail  # type: ignore[attr-defined]
        ctx.issuer = issuer  # type: ignore[attr-defined]
        await _produce(ctx, method, path, status)


async def _produce(ctx: Ctx, method: str, path: str, status: int) -> None:
    api_path = "/api" + path
    (endpoint,) = [e for e in endpoints() if (e.method, e.path) == (method, path)]
    scenario = SPECIFIC.get((method, path, status)) or generic(
        method, api_path, status, endpoint.auth != "none"
    )
    if scenario is None and status == 401:
        scenario = lambda c: c(method, api_path.replace("{id}", ANY_ID))  # noqa: E731
    assert scenario is not None, f"no scenario produces {status} for {method} {path}"
    answer = await scenario(ctx)
    assert answer.status == status, answer.body
    if status >= 400:
        assert isinstance(answer.body["error"], str)
