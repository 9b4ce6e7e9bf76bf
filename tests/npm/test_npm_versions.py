"""Version documents (``/npm/<name>/<version-or-tag>``) and ``-/package/<name>/dist-tags``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from tests.conftest import RunningServer, isolated_env, run
from tests.upstreams.npm_registry import NpmRegistry
from tokenapi.issue import ensure_user, issue_token

SCOPED = ["@acme%2fscoped", "@acme%2Fscoped", "@acme/scoped"]


async def get_json(
    http: aiohttp.ClientSession, path: str, **kwargs: Any
) -> tuple[aiohttp.ClientResponse, Any]:
    async with http.get(URL(path, encoded=True), **kwargs) as resp:
        return resp, json.loads(await resp.read())


async def test_version__exact_version_is_its_manifest_with_a_pkgate_tarball(
    server: RunningServer, registry: NpmRegistry, http: aiohttp.ClientSession
) -> None:
    resp, doc = await get_json(http, "/npm/pkg-plain/1.0.0")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/json"
    package = registry.package("pkg-plain", "1.0.0")
    assert doc["name"] == "pkg-plain"
    assert doc["version"] == "1.0.0"
    assert doc["_id"] == "pkg-plain@1.0.0"
    assert doc["dist"]["tarball"] == f"{server.url}/npm/pkg-plain/-/pkg-plain-1.0.0.tgz"
    assert doc["dist"]["integrity"] == package.integrity
    # Only the full packument was asked for: the version document is derived from it.
    assert [r.path for r in registry.requests] == ["/pkg-plain"]
    assert "vnd.npm.install" not in registry.requests[0].headers.get("Accept", "")


async def test_version__tarball_it_names_is_served_by_pkgate(
    registry: NpmRegistry, http: aiohttp.ClientSession
) -> None:
    _, doc = await get_json(http, "/npm/pkg-plain/1.1.0")
    async with http.get(URL(doc["dist"]["tarball"]).path) as resp:
        assert resp.status == 200
        assert await resp.read() == registry.package("pkg-plain", "1.1.0").tarball


async def test_version__dist_tag_latest_resolves_to_its_version(
    http: aiohttp.ClientSession,
) -> None:
    resp, doc = await get_json(http, "/npm/pkg-plain/latest")
    assert resp.status == 200
    assert doc["version"] == "1.1.0"


@pytest.mark.parametrize("spec", ["9.9.9", "beta"])
async def test_version__unknown_version_or_tag_is_404_json(
    http: aiohttp.ClientSession, spec: str
) -> None:
    resp, body = await get_json(http, f"/npm/pkg-plain/{spec}")
    assert resp.status == 404
    assert resp.headers["Content-Type"].startswith("application/json")
    assert body == {"error": f"pkg-plain@{spec}: not found"}


async def test_version__unknown_package_is_404(http: aiohttp.ClientSession) -> None:
    resp, body = await get_json(http, "/npm/no-such-package/1.0.0")
    assert resp.status == 404
    assert "not found" in body["error"]


@pytest.mark.parametrize("spec", ["%2e%2e", "-", "a%00", "%2e"])
async def test_version__impossible_version_is_400(
    registry: NpmRegistry, http: aiohttp.ClientSession, spec: str
) -> None:
    resp, body = await get_json(http, f"/npm/pkg-plain/{spec}")
    assert resp.status == 400
    assert body == {"error": "Invalid version"}
    assert registry.requests == []


@pytest.mark.parametrize("spelling", SCOPED)
async def test_version__scoped_name_in_every_spelling(
    server: RunningServer, registry: NpmRegistry, http: aiohttp.ClientSession, spelling: str
) -> None:
    resp, doc = await get_json(http, f"/npm/{spelling}/2.0.0")
    assert resp.status == 200
    assert doc["name"] == "@acme/scoped"
    assert doc["dist"]["tarball"] == f"{server.url}/npm/@acme/scoped/-/scoped-2.0.0.tgz"
    assert [r.path for r in registry.requests] == ["/@acme%2fscoped"]


async def test_version__etag_gives_304_and_answers_come_from_the_cache(
    registry: NpmRegistry, http: aiohttp.ClientSession
) -> None:
    async with http.get("/npm/pkg-plain/1.0.0") as first:
        body = await first.read()
        etag = first.headers["ETag"]
        assert first.headers["X-Cache"] == "MISS"
    async with http.get("/npm/pkg-plain/1.0.0", headers={"If-None-Match": etag}) as again:
        assert again.status == 304
        assert again.headers["ETag"] == etag
        assert await again.read() == b""
    async with http.get("/npm/pkg-plain/1.0.0", headers={"If-None-Match": '"other"'}) as other:
        assert other.status == 200
        assert other.headers["X-Cache"] == "HIT"
        assert await other.read() == body
    async with http.get("/npm/pkg-plain/latest") as tag:
        assert tag.headers["ETag"] != etag
    # One upstream fetch served the version, the 304, the hit and the dist-tag.
    assert [r.path for r in registry.requests] == ["/pkg-plain"]


async def test_version__reuses_a_cached_full_packument(
    registry: NpmRegistry, http: aiohttp.ClientSession
) -> None:
    resp, _ = await get_json(http, "/npm/pkg-plain")
    assert resp.status == 200
    resp, doc = await get_json(http, "/npm/pkg-plain/1.1.0")
    assert doc["version"] == "1.1.0"
    assert len(registry.requests) == 1


async def test_version__head_has_headers_only(http: aiohttp.ClientSession) -> None:
    async with http.head("/npm/pkg-plain/1.0.0") as resp:
        assert resp.status == 200
        assert resp.headers["ETag"]
        assert await resp.read() == b""


@pytest.mark.parametrize("spelling", ["pkg-plain", *SCOPED])
async def test_dist_tags__the_packuments_dist_tags(
    registry: NpmRegistry, http: aiohttp.ClientSession, spelling: str
) -> None:
    resp, body = await get_json(http, f"/npm/-/package/{spelling}/dist-tags")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/json"
    expected = "2.0.0" if spelling.startswith("@") else "1.1.0"
    assert body == {"latest": expected}
    # Derived from the packument: the upstream never saw the dist-tags path.
    assert all("dist-tags" not in r.path for r in registry.requests)


async def test_dist_tags__etag_gives_304(http: aiohttp.ClientSession) -> None:
    async with http.get("/npm/-/package/pkg-plain/dist-tags") as first:
        etag = first.headers["ETag"]
    headers = {"If-None-Match": etag}
    async with http.get("/npm/-/package/pkg-plain/dist-tags", headers=headers) as again:
        assert again.status == 304


@pytest.mark.parametrize(
    "path",
    [
        "/npm/-/package/pkg-plain/dist-tags/latest",
        "/npm/-/package/pkg-plain/1.0.0/dist-tags",
        "/npm/-/package/no-such-package/dist-tags",
    ],
)
async def test_dist_tags__other_shapes_and_unknown_packages_are_404(
    http: aiohttp.ClientSession, path: str
) -> None:
    resp, body = await get_json(http, path)
    assert resp.status == 404
    assert "error" in body


async def test_dist_tags__bad_name_is_400(
    registry: NpmRegistry, http: aiohttp.ClientSession
) -> None:
    resp, body = await get_json(http, "/npm/-/package/..%2f..%2fapi/dist-tags")
    assert resp.status == 400
    assert "error" in body
    assert registry.requests == []


@pytest.mark.parametrize("method", ["PUT", "DELETE", "POST"])
@pytest.mark.parametrize(
    "path", ["/npm/-/package/pkg-plain/dist-tags", "/npm/-/package/@acme%2fscoped/dist-tags"]
)
async def test_dist_tags__writes_are_read_only(
    registry: NpmRegistry, http: aiohttp.ClientSession, method: str, path: str
) -> None:
    async with http.request(method, URL(path, encoded=True), json="1.0.0") as resp:
        assert resp.status == 405
        assert await resp.json() == {"error": "This registry is read-only"}
    assert registry.requests == []


@pytest.mark.parametrize(
    "path", ["/npm/pkg-plain/1.0.0", "/npm/pkg-plain/latest", "/npm/-/package/pkg-plain/dist-tags"]
)
async def test_auth__revoked_token_is_401(
    server: RunningServer, registry: NpmRegistry, path: str
) -> None:
    token, secret = await issue_token(
        server.store, await ensure_user(server.store, "r@x.test"), name="ci"
    )
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {secret}"}) as http:
        async with http.get(server.url.with_path(path)) as ok:
            assert ok.status == 200
        server.validator.forget(await server.store.revoke_token(token.id))
        registry.clear()
        async with http.get(server.url.with_path(path)) as denied:
            assert denied.status == 401
            assert "error" in await denied.json()
    assert registry.requests == []


@pytest.mark.clients
async def test_npm__dist_tag_ls_through_pkgate(
    tmp_path: Path, server: RunningServer, registry: NpmRegistry
) -> None:
    home = tmp_path / "home"
    env = isolated_env(home)
    root = server.url / "npm"
    nerf = f"//{root.host}:{root.port}{root.path}/"
    token = await server.token()
    (home / ".npmrc").write_text(f"registry={root}/\n{nerf}:_authToken={token}\n")
    for name, latest in (("pkg-plain", "1.1.0"), ("@acme/scoped", "2.0.0")):
        result = await run("npm", "dist-tag", "ls", name, cwd=tmp_path, env=env)
        assert result.returncode == 0, result.output
        assert result.stdout.strip() == f"latest: {latest}"
    # npm asked pkgate's dist-tags route; pkgate answered it from the packuments alone.
    assert sorted(r.path for r in registry.requests) == ["/@acme%2fscoped", "/pkg-plain"]
