"""The npm endpoint over real HTTP against a fake upstream registry (no package-manager clients)."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from yarl import URL

from proxy.registry.upstream import USER_AGENT
from tests.conftest import RunningServer, StartServer, free_port
from tests.upstreams.npm_registry import CORGI, NpmRegistry, serve_registry
from tokenapi.issue import ensure_user, issue_token


@pytest.fixture
async def http(server: RunningServer) -> AsyncIterator[aiohttp.ClientSession]:
    token = await server.token()
    async with aiohttp.ClientSession(
        base_url=server.url,
        headers={"Authorization": f"Bearer {token}"},
        auto_decompress=False,
    ) as session:
        yield session


async def get_json(
    http: aiohttp.ClientSession, path: str, **kwargs: Any
) -> tuple[aiohttp.ClientResponse, Any]:
    async with http.get(path, **kwargs) as resp:
        return resp, json.loads(decoded(resp, await resp.read()))


def decoded(resp: aiohttp.ClientResponse, raw: bytes) -> bytes:
    """The body of an answer read with auto_decompress off (metadata comes gzipped)."""
    return gzip.decompress(raw) if resp.headers.get("Content-Encoding") == "gzip" else raw


def no_leaks(registry: NpmRegistry) -> None:
    assert registry.violations == []
    assert all(r.headers.get("User-Agent") == USER_AGENT for r in registry.requests)


async def test_packument__tarball_urls_point_at_pkgate_and_integrity_is_kept(
    server: RunningServer, registry: NpmRegistry, http: aiohttp.ClientSession
) -> None:
    resp, doc = await get_json(http, "/npm/pkg-plain")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("application/json")
    # aiohttp's client accepts gzip by default, so that is what a cached packument comes in.
    assert resp.headers["Content-Encoding"] == "gzip"
    assert set(doc["versions"]) == {"1.0.0", "1.1.0"}
    for version, manifest in doc["versions"].items():
        package = registry.package("pkg-plain", version)
        assert manifest["dist"] == {
            "tarball": f"{server.url}/npm/pkg-plain/-/pkg-plain-{version}.tgz",
            "integrity": package.integrity,
            "shasum": package.shasum,
            "signatures": [{"keyid": "SHA256:test", "sig": "c2lnbmF0dXJl"}],
        }
    assert doc["time"]["1.0.0"]
    no_leaks(registry)


async def test_packument__abbreviated_form_keeps_its_content_type(
    registry: NpmRegistry, http: aiohttp.ClientSession
) -> None:
    accept = f"{CORGI}; q=1.0, application/json; q=0.8, */*"
    resp, doc = await get_json(http, "/npm/pkg-plain", headers={"Accept": accept})
    assert resp.status == 200
    assert resp.headers["Content-Type"] == CORGI
    assert "time" not in doc
    # The upstream is asked for exactly the form the cache key names (issue 11, item 7).
    assert registry.requests[-1].headers["Accept"] == CORGI


@pytest.mark.parametrize("spelling", ["@acme%2fscoped", "@acme%2Fscoped", "@acme/scoped"])
async def test_packument__scoped_name_in_every_spelling(
    server: RunningServer, registry: NpmRegistry, http: aiohttp.ClientSession, spelling: str
) -> None:
    resp, doc = await get_json(http, URL(f"/npm/{spelling}", encoded=True))
    assert resp.status == 200
    assert doc["name"] == "@acme/scoped"
    tarball = doc["versions"]["2.0.0"]["dist"]["tarball"]
    assert tarball == f"{server.url}/npm/@acme/scoped/-/scoped-2.0.0.tgz"
    assert registry.requests[-1].path == "/@acme%2fscoped"


@pytest.mark.parametrize(
    "path",
    ["/npm/@acme/scoped/-/scoped-2.0.0.tgz", "/npm/@acme%2fscoped/-/scoped-2.0.0.tgz"],
)
async def test_tarball__scoped_streams_exact_bytes(
    registry: NpmRegistry, http: aiohttp.ClientSession, path: str
) -> None:
    package = registry.package("@acme/scoped", "2.0.0")
    async with http.get(URL(path, encoded=True)) as resp:
        body = await resp.read()
    assert resp.status == 200
    assert body == package.tarball
    assert resp.headers["Content-Length"] == str(len(package.tarball))
    assert resp.headers["Content-Type"] == "application/octet-stream"
    assert "Content-Encoding" not in resp.headers


async def test_tarball__big_one_matches_its_published_integrity(
    registry: NpmRegistry, http: aiohttp.ClientSession
) -> None:
    _, doc = await get_json(http, "/npm/pkg-big")
    dist = doc["versions"]["1.0.0"]["dist"]
    async with http.get(URL(dist["tarball"]).path) as resp:
        body = await resp.read()
    assert len(body) > 3 * 1024 * 1024
    assert int(resp.headers["Content-Length"]) == len(body)
    digest = base64.b64encode(hashlib.sha512(body).digest()).decode()
    assert dist["integrity"] == f"sha512-{digest}"
    assert registry.tarball_requests()[-1].headers.get("Accept-Encoding") == "identity"


async def test_tarball__head_gives_length_without_body(
    registry: NpmRegistry, http: aiohttp.ClientSession
) -> None:
    package = registry.package("pkg-plain", "1.0.0")
    async with http.head("/npm/pkg-plain/-/pkg-plain-1.0.0.tgz") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(len(package.tarball))
        assert await resp.read() == b""


async def test_packument__etag_of_rewritten_body_gives_304(
    registry: NpmRegistry, http: aiohttp.ClientSession
) -> None:
    async with http.get("/npm/pkg-deps") as first:
        body = await first.read()
        etag = first.headers["ETag"]
    upstream_etag = registry.requests[-1]
    assert upstream_etag is not None
    async with http.get("/npm/pkg-deps", headers={"If-None-Match": etag}) as again:
        assert again.status == 304
        assert again.headers["ETag"] == etag
        assert await again.read() == b""
    async with http.get("/npm/pkg-deps", headers={"If-None-Match": f"W/{etag}"}) as weak:
        assert weak.status == 304
    async with http.get("/npm/pkg-deps", headers={"If-None-Match": '"stale"'}) as stale:
        assert stale.status == 200
        assert await stale.read() == body
    # The upstream never saw the client's validator: it belongs to the rewritten body.
    assert all("If-None-Match" not in r.headers for r in registry.requests)


async def test_packument__forms_have_different_etags(http: aiohttp.ClientSession) -> None:
    async with http.get("/npm/pkg-plain") as full:
        full_etag = full.headers["ETag"]
    async with http.get("/npm/pkg-plain", headers={"Accept": CORGI}) as corgi:
        assert corgi.headers["ETag"] != full_etag
        assert "Accept" in corgi.headers["Vary"]
    async with http.get(
        "/npm/pkg-plain", headers={"Accept": CORGI, "If-None-Match": full_etag}
    ) as mixed:
        assert mixed.status == 200


@pytest.mark.parametrize("encoding", ["gzip", "identity", "unlabelled"])
async def test_packument__upstream_encodings_are_decoded(
    start_server: StartServer, encoding: str
) -> None:
    async with serve_registry(metadata_encoding=encoding) as registry:
        server = await start_server(npm_upstream=str(registry.url) + "/")
        token = await server.token()
        async with (
            aiohttp.ClientSession(auto_decompress=False) as http,
            http.get(
                server.url / "npm" / "pkg-plain", headers={"Authorization": f"Bearer {token}"}
            ) as resp,
        ):
            assert resp.status == 200
            # Whatever the upstream sent, pkgate answers with its own stored gzip.
            assert resp.headers["Content-Encoding"] == "gzip"
            doc = json.loads(gzip.decompress(await resp.read()))
        assert doc["name"] == "pkg-plain"
        if encoding == "gzip":
            assert registry.requests[-1].headers["Accept-Encoding"] == "gzip, deflate"


async def test_upstream__never_sees_client_credentials(
    registry: NpmRegistry, http: aiohttp.ClientSession
) -> None:
    headers = {"Cookie": "session=secret", "npm-otp": "123456", "X-Custom": "x"}
    for path in ("/npm/pkg-plain", "/npm/pkg-plain/-/pkg-plain-1.0.0.tgz", "/npm/-/npm/v1/keys"):
        async with http.get(path, headers=headers) as resp:
            assert resp.status == 200
    assert len(registry.requests) == 3
    assert all("X-Custom" not in r.headers for r in registry.requests)
    no_leaks(registry)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/npm/pkg-plain"),
        ("PUT", "/npm/@acme%2fscoped"),
        ("DELETE", "/npm/pkg-plain/-rev/3-abc"),
        ("PUT", "/npm/-/package/pkg-plain/dist-tags/latest"),
        ("DELETE", "/npm/-/package/pkg-plain/dist-tags/beta"),
        ("POST", "/npm/pkg-plain"),
        ("DELETE", "/npm/-/user/org.couchdb.user:dev"),  # PUT is npm login: test_npm_login.py
        ("PATCH", "/npm/pkg-plain/-/pkg-plain-1.0.0.tgz"),
    ],
)
async def test_writes__are_refused_as_read_only(
    registry: NpmRegistry, http: aiohttp.ClientSession, method: str, path: str
) -> None:
    async with http.request(method, URL(path, encoded=True), json={"x": 1}) as resp:
        assert resp.status == 405
        assert await resp.json() == {"error": "This registry is read-only"}
    assert registry.requests == []


async def test_writes__need_a_token_first(server: RunningServer) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.put(server.url / "npm" / "pkg-plain", json={}) as resp,
    ):
        assert resp.status == 401


@pytest.mark.parametrize(
    "path",
    [
        "/npm/..%2f..%2fetc%2fpasswd",
        "/npm/%2e%2e",
        "/npm/@acme",
        "/npm/.hidden",
        "/npm/%252e",
        "/npm/pkg%00",
        "/npm/pkg-plain/-/evil.exe",
        "/npm/%ff",
    ],
)
async def test_paths__bad_names_are_400(
    registry: NpmRegistry, http: aiohttp.ClientSession, path: str
) -> None:
    resp, body = await get_json(http, URL(path, encoded=True))
    assert resp.status == 400
    assert "error" in body
    assert registry.requests == []


@pytest.mark.parametrize(
    "path",
    ["/npm/pkg-plain/1.0.0/x", "/npm/-/nothing", "/npm/", "/npm/pkg-plain/-/..%2fx.tgz"],
)
async def test_paths__unknown_shapes_are_404(
    registry: NpmRegistry, http: aiohttp.ClientSession, path: str
) -> None:
    resp, body = await get_json(http, URL(path, encoded=True))
    assert resp.status == 404
    assert "error" in body
    assert registry.requests == []


async def test_upstream__404_is_404(registry: NpmRegistry, http: aiohttp.ClientSession) -> None:
    resp, body = await get_json(http, "/npm/no-such-package")
    assert resp.status == 404
    assert "not found" in body["error"]
    resp, body = await get_json(http, "/npm/pkg-plain/-/pkg-plain-9.9.9.tgz")
    assert resp.status == 404


@pytest.mark.parametrize(
    ("path", "what"),
    [("/pkg-plain", "npm upstream"), ("/pkg-plain/-/pkg-plain-1.0.0.tgz", "artifact upstream")],
)
async def test_upstream__5xx_is_502(
    registry: NpmRegistry, http: aiohttp.ClientSession, path: str, what: str
) -> None:
    registry.overrides[path] = NpmRegistry.status(503)
    resp, body = await get_json(http, "/npm" + path)
    assert resp.status == 502
    assert body == {"error": f"{what} answered 503"}


async def test_upstream__timeout_is_504(start_server: StartServer, registry: NpmRegistry) -> None:
    registry.overrides["/pkg-plain"] = registry.hang
    server = await start_server(npm_upstream=str(registry.url) + "/", upstream_timeout=0.3)
    token = await server.token()
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            server.url / "npm" / "pkg-plain", headers={"Authorization": f"Bearer {token}"}
        ) as resp,
    ):
        assert resp.status == 504
        body = await resp.json()
    assert body == {"error": "npm upstream timed out"}


async def test_upstream__refused_connection_is_502(start_server: StartServer) -> None:
    server = await start_server(npm_upstream=f"http://127.0.0.1:{free_port()}/")
    token = await server.token()
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            server.url / "npm" / "pkg-plain", headers={"Authorization": f"Bearer {token}"}
        ) as resp,
    ):
        assert resp.status == 502
        body = await resp.json()
    assert body["error"].startswith("npm upstream connection failed")
    assert "Traceback" not in body["error"]


async def test_upstream__invalid_packument_is_502(
    registry: NpmRegistry, http: aiohttp.ClientSession
) -> None:
    async def not_json(request: Any) -> aiohttp.web.Response:
        return aiohttp.web.Response(body=b"<html>", content_type="application/json")

    registry.overrides["/pkg-plain"] = not_json
    resp, body = await get_json(http, "/npm/pkg-plain")
    assert resp.status == 502
    assert "unusable packument" in body["error"]


async def test_upstream__slow_request_does_not_block_others(
    registry: NpmRegistry, http: aiohttp.ClientSession
) -> None:
    registry.overrides["/pkg-big"] = registry.hang
    slow = asyncio.ensure_future(get_json(http, "/npm/pkg-big"))
    resp, doc = await get_json(http, "/npm/pkg-plain")
    assert resp.status == 200
    assert doc["name"] == "pkg-plain"
    assert not slow.done()
    registry.release.set()
    slow_resp, _ = await slow
    assert slow_resp.status == 502


async def test_tarball__upstream_breaking_off_cuts_the_client_short(
    registry: NpmRegistry, http: aiohttp.ClientSession
) -> None:
    registry.overrides["/pkg-plain/-/pkg-plain-1.0.0.tgz"] = NpmRegistry.broken_body
    async with http.get("/npm/pkg-plain/-/pkg-plain-1.0.0.tgz") as resp:
        assert resp.headers["Content-Length"] == str(1024 * 1024)
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


async def test_audit__gzip_body_reaches_upstream_decoded(
    registry: NpmRegistry, http: aiohttp.ClientSession
) -> None:
    advisory = {"id": 1, "title": "bad", "severity": "high", "vulnerable_versions": "<2.0.0"}
    registry.advisories["pkg-plain"] = [advisory]
    payload = {"pkg-plain": ["1.0.0"], "@acme/scoped": ["2.0.0"]}
    async with http.post(
        "/npm/-/npm/v1/security/advisories/bulk",
        data=gzip.compress(json.dumps(payload).encode()),
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("application/json")
        assert "Content-Encoding" not in resp.headers
        assert json.loads(await resp.read()) == {"pkg-plain": [advisory]}
    assert registry.audit_payloads == [payload]
    assert "Content-Encoding" not in registry.requests[-1].headers
    no_leaks(registry)


async def test_audit__plain_body_and_quick_endpoint(
    registry: NpmRegistry, http: aiohttp.ClientSession
) -> None:
    async with http.post("/npm/-/npm/v1/security/audits/quick", json={"name": "x"}) as resp:
        assert resp.status == 200
        assert (await resp.json())["advisories"] == {}
    assert registry.audit_payloads == [{"name": "x"}]


async def test_audit__upstream_client_error_is_passed_on(
    registry: NpmRegistry, http: aiohttp.ClientSession
) -> None:
    registry.overrides["/-/npm/v1/security/advisories/bulk"] = NpmRegistry.status(410)
    async with http.post("/npm/-/npm/v1/security/advisories/bulk", json={}) as resp:
        assert resp.status == 410
        assert await resp.json() == {"error": "status 410"}


async def test_audit__get_is_not_allowed(http: aiohttp.ClientSession) -> None:
    resp, body = await get_json(http, "/npm/-/npm/v1/security/advisories/bulk")
    assert resp.status == 405
    assert "error" in body


async def test_keys__passed_through(http: aiohttp.ClientSession) -> None:
    resp, body = await get_json(http, "/npm/-/npm/v1/keys")
    assert resp.status == 200
    assert body["keys"][0]["keyid"] == "SHA256:test"


async def test_search__query_passed_through(
    registry: NpmRegistry, http: aiohttp.ClientSession
) -> None:
    resp, body = await get_json(http, "/npm/-/v1/search?text=pkg-&size=20")
    assert resp.status == 200
    assert [o["package"]["name"] for o in body["objects"]] == ["pkg-big", "pkg-deps", "pkg-plain"]
    assert registry.requests[-1].path == "/-/v1/search?text=pkg-&size=20"


async def test_whoami__names_the_token_owner(http: aiohttp.ClientSession) -> None:
    resp, body = await get_json(http, "/npm/-/whoami")
    assert resp.status == 200
    assert body == {"username": "dev@example.com"}


@pytest.mark.parametrize("path", ["/npm/-/ping", "/npm/-/ping?write=true"])
async def test_ping__answers_empty_object(http: aiohttp.ClientSession, path: str) -> None:
    resp, body = await get_json(http, path)
    assert resp.status == 200
    assert body == {}


@pytest.mark.parametrize(
    "path", ["/npm/pkg-plain", "/npm/pkg-plain/-/pkg-plain-1.0.0.tgz", "/npm/-/ping"]
)
async def test_auth__missing_token_is_401_with_bearer_challenge(
    server: RunningServer, registry: NpmRegistry, path: str
) -> None:
    async with aiohttp.ClientSession() as http, http.get(server.url.with_path(path)) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == 'Bearer realm="pkgate"'
        assert "error" in await resp.json()
    assert registry.requests == []


async def test_auth__revoked_token_is_401(server: RunningServer, registry: NpmRegistry) -> None:
    token, secret = await issue_token(
        server.store, await ensure_user(server.store, "r@x.test"), name="ci"
    )
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {secret}"}) as http:
        async with http.get(server.url / "npm" / "pkg-plain") as ok:
            assert ok.status == 200
        server.validator.forget(await server.store.revoke_token(token.id))
        async with http.get(server.url / "npm" / "pkg-plain/-/pkg-plain-1.0.0.tgz") as denied:
            assert denied.status == 401
    assert registry.tarball_requests() == []


async def test_auth__anonymous_allowed_serves_without_token(
    start_server: StartServer, registry: NpmRegistry
) -> None:
    server = await start_server(npm_upstream=str(registry.url) + "/", anonymous="allow")
    async with aiohttp.ClientSession() as http:
        async with http.get(server.url / "npm" / "pkg-plain") as resp:
            assert resp.status == 200
        async with http.get(server.url / "npm" / "-" / "whoami") as who:
            assert who.status == 401
        async with http.get(
            server.url / "npm" / "pkg-plain", headers={"Authorization": "Bearer pkg_bad"}
        ) as bad:
            assert bad.status == 401


async def test_public_url__prefix_and_host_come_from_settings(
    start_server: StartServer, registry: NpmRegistry
) -> None:
    server = await start_server(
        npm_upstream=str(registry.url) + "/", public_url="https://registry.example.test/base"
    )
    token = await server.token()
    local = URL(f"http://127.0.0.1:{server.settings.port}")
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            local / "base" / "npm" / "pkg-plain",
            headers={
                "Authorization": f"Bearer {token}",
                "Host": "evil.test",
                "X-Forwarded-Host": "evil.test",
            },
        ) as resp,
    ):
        assert resp.status == 200
        doc = await resp.json()
    tarball = doc["versions"]["1.0.0"]["dist"]["tarball"]
    assert tarball == "https://registry.example.test/base/npm/pkg-plain/-/pkg-plain-1.0.0.tgz"
