"""Real npm and pip installing through pkgate with a token minted from a CI ID token, the way the
GitHub Actions and GitLab CI jobs in the README do it."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.api_support import call
from tests.conftest import RunningServer, StartServer
from tests.npm.test_npm_clients import assert_only_pkgate_reached, project
from tests.oidc_issuer import Issuer, serve_issuer
from tests.pypi.test_pypi_clients import (
    assert_fetched_through_pkgate,
    assert_installed,
    assert_refused,
    index_url,
    pip_install,
)
from tests.upstreams.npm_registry import NpmRegistry, serve_registry
from tests.upstreams.pypi_index import PypiIndex, serve_index
from tokenapi.oidcconfig import parse_issuers

pytestmark = pytest.mark.clients


@pytest.fixture
async def issuer() -> AsyncIterator[Issuer]:
    async with serve_issuer() as found:
        yield found


@pytest.fixture
async def registry() -> AsyncIterator[NpmRegistry]:
    async with serve_registry() as reg:
        yield reg


@pytest.fixture
async def index() -> AsyncIterator[PypiIndex]:
    async with serve_index() as idx:
        yield idx


async def ci_server(
    start_server: StartServer,
    issuer: Issuer,
    registry: NpmRegistry,
    index: PypiIndex,
    **entry: object,
) -> RunningServer:
    config = {
        "issuer": issuer.issuer,
        "owner": "ci@example.com",
        "claims": {"repository": "my-org/*"},
        **entry,
    }
    return await start_server(
        npm_upstream=str(registry.url) + "/",
        pypi_upstream=str(index.index_url),
        pypi_files_upstream=(str(index.files_url) + "/",),
        oidc_issuers=parse_issuers([config]),
    )


async def minted(server: RunningServer, issuer: Issuer) -> str:
    id_token = issuer.sign(issuer.claims(str(server.url)), "ec-1")
    answer = await call(server, "POST", "/api/v1/oidc/token", json={"id_token": id_token})
    assert answer.status == 201, answer.body
    secret: str = answer.body["token"]
    return secret


async def test_ci_token__npm_and_pip_install(
    tmp_path: Path,
    tools: Path,
    start_server: StartServer,
    issuer: Issuer,
    registry: NpmRegistry,
    index: PypiIndex,
) -> None:
    server = await ci_server(start_server, issuer, registry, index)
    secret = await minted(server, issuer)

    proj = project(tmp_path, tools, server)
    proj.configure("npm", secret)
    result = await proj.install("npm")
    assert result.returncode == 0, result.output
    proj.assert_installed()
    assert_only_pkgate_reached(registry)

    result, target = await pip_install(tools, tmp_path, index_url(server, secret))
    assert result.returncode == 0, result.output
    assert_installed(target)
    assert_fetched_through_pkgate(index)


async def test_ci_token__scoped_to_npm_is_refused_by_pip(
    tmp_path: Path,
    tools: Path,
    start_server: StartServer,
    issuer: Issuer,
    registry: NpmRegistry,
    index: PypiIndex,
) -> None:
    server = await ci_server(start_server, issuer, registry, index, scopes=["npm"])
    secret = await minted(server, issuer)
    result, _ = await pip_install(tools, tmp_path, index_url(server, secret))
    assert_refused(result, index)
