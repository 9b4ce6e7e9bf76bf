"""The download history lists what each real client downloaded through pkgate (SPEC 16).

npm, yarn (berry), pnpm and bun install from the fake npm registry; pip, uv and poetry from the fake
index.  Each uses its own token; the history of that token must hold exactly the artifacts the
install needed (tarballs and wheels, never metadata or ``.metadata`` files), as ``GET
/api/v1/tokens/downloads`` lists them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.api_support import call
from tests.conftest import RunningServer
from tests.npm.test_npm_clients import CLIENTS, INSTALLED, project
from tests.pypi.test_pypi_clients import (
    EXPECTED_WHEELS,
    index_url,
    pip_install,
    poetry_install,
    poetry_project,
    uv_pip_install,
)
from tests.upstreams.npm_registry import NpmRegistry
from tests.upstreams.pypi_index import PypiIndex

pytestmark = pytest.mark.clients


async def history(server: RunningServer, secret: str) -> list[dict[str, str]]:
    answer = await call(server, "GET", "/api/v1/tokens/downloads?limit=1000", token=secret)
    assert answer.status == 200, answer.body
    assert answer.body["next_cursor"] is None
    rows: list[dict[str, str]] = answer.body["downloads"]
    return rows


@pytest.mark.parametrize("client", CLIENTS)
async def test_history__lists_what_an_npm_family_client_installed(
    tmp_path: Path, tools: Path, server: RunningServer, registry: NpmRegistry, client: str
) -> None:
    secret = await server.token(f"{client}@example.com", name=client)
    proj = project(tmp_path, tools, server)
    proj.configure(client, secret)
    result = await proj.install(client)
    assert result.returncode == 0, result.output

    rows = await history(server, secret)
    assert {(r["package"], r["version"]) for r in rows} == set(INSTALLED.items())
    for r in rows:
        assert r["ecosystem"] == "npm"
        assert r["filename"] == registry.package(r["package"], r["version"]).file
        assert r["token_name"] == client


async def assert_pypi_history(server: RunningServer, secret: str) -> None:
    rows = await history(server, secret)
    assert {r["filename"] for r in rows} == EXPECTED_WHEELS
    assert {(r["package"], r["version"]) for r in rows} == {
        ("demo-app", "1.0.0"),
        ("tinydep", "1.0.0"),
    }
    assert all(r["ecosystem"] == "pypi" for r in rows)


async def test_history__lists_what_pip_installed(
    tmp_path: Path, tools: Path, server: RunningServer, index: PypiIndex
) -> None:
    secret = await server.token("pip@example.com", name="pip")
    result, _ = await pip_install(tools, tmp_path, index_url(server, secret))
    assert result.returncode == 0, result.output
    # pip read each wheel's .metadata first: that is not a download.
    assert any(r.path.endswith(".whl.metadata") for r in index.file_requests())
    await assert_pypi_history(server, secret)


async def test_history__lists_what_uv_installed(
    tmp_path: Path, tools: Path, server: RunningServer, index: PypiIndex
) -> None:
    secret = await server.token("uv@example.com", name="uv")
    result, _ = await uv_pip_install(tools, tmp_path, index_url(server, secret))
    assert result.returncode == 0, result.output
    await assert_pypi_history(server, secret)


async def test_history__lists_what_poetry_installed(
    tmp_path: Path, tools: Path, server: RunningServer, index: PypiIndex
) -> None:
    secret = await server.token("poetry@example.com", name="poetry")
    result = await poetry_install(
        tools,
        tmp_path,
        poetry_project(tmp_path, server),
        POETRY_HTTP_BASIC_PKGATE_USERNAME="token",
        POETRY_HTTP_BASIC_PKGATE_PASSWORD=secret,
    )
    assert result.returncode == 0, result.output
    await assert_pypi_history(server, secret)


async def test_history__each_users_own_and_the_admin_view_of_all(
    tmp_path: Path, tools: Path, server: RunningServer
) -> None:
    npm_secret = await server.token("dev@example.com", name="npm")
    pip_secret = await server.token("dev@example.com", name="pip")
    proj = project(tmp_path, tools, server)
    proj.configure("npm", npm_secret)
    assert (await proj.install("npm")).returncode == 0
    result, _ = await pip_install(tools, tmp_path / "pip", index_url(server, pip_secret))
    assert result.returncode == 0, result.output

    mine = await call(server, "GET", "/api/downloads?limit=1000", token=npm_secret)
    assert {r["package"] for r in mine.body["downloads"]} == {*INSTALLED, "demo-app", "tinydep"}
    await server.store.create_user("root@example.com", is_admin=True)
    admin = await server.token("root@example.com")
    who = await call(server, "GET", "/api/admin/downloads?package=tinydep", token=admin)
    assert [(r["email"], r["token_name"]) for r in who.body["downloads"]] == [
        ("dev@example.com", "pip")
    ]
