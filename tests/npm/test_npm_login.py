"""``npm login`` against pkgate ends with how to get a pkgate token, with or without a token
configured (not npm's circular "try logging in again", not E405 read-only)."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from tests.conftest import RunningServer, isolated_env, run

ADVICE = "pkgate does not log in with npm: get a pkgate token from its web page at"


async def npm_login(tmp_path: Path, server: RunningServer, token: str | None) -> str:
    home = tmp_path / "home"
    env = isolated_env(home)
    if token is not None:
        home.joinpath(".npmrc").write_text(
            f"//{server.url.host}:{server.url.port}/npm/:_authToken={token}\n"
        )
    result = await run("npm", "login", "--registry", f"{server.url}/npm/", env=env, timeout=120)
    assert result.returncode != 0
    return result.output


@pytest.mark.clients
@pytest.mark.parametrize("with_token", [False, True])
async def test_npm_login__prints_how_to_get_a_token(
    tmp_path: Path, server: RunningServer, with_token: bool
) -> None:
    token = await server.token() if with_token else None
    output = await npm_login(tmp_path, server, token)
    assert "npm error code E501" in output
    assert ADVICE in output
    assert f"{server.url}/api/v1/tokens" in output
    assert "try logging in again" not in output
    assert "E405" not in output
    assert "read-only" not in output


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/npm/-/v1/login"),
        ("PUT", "/npm/-/user/org.couchdb.user:alice"),
        ("PUT", "/npm/-/user/org.couchdb.user:someone%40example.com"),
    ],
)
async def test_npm_login__both_login_flows_answer_without_credentials(
    server: RunningServer, method: str, path: str
) -> None:
    body = {"name": "alice", "password": "hunter2", "email": "a@example.com"}
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, server.url.with_path(path, encoded=True), json=body) as resp,
    ):
        assert resp.status == 501
        answer = await resp.json()
    assert answer["error"].startswith(ADVICE)
    assert "hunter2" not in answer["error"]


async def test_npm_login__other_writes_stay_read_only(server: RunningServer) -> None:
    token = await server.token()
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http,
        http.put(server.url / "npm" / "pkg-plain", json={}) as resp,
    ):
        assert resp.status == 405
    async with (
        aiohttp.ClientSession() as http,
        http.get(server.url.with_path("/npm/-/user/org.couchdb.user:alice")) as resp,
    ):
        assert resp.status == 401  # only the login methods are answered before authentication
