"""Real npm and pip installing through pkgate with a token minted from a CI ID token, the way the
GitHub Actions and GitLab CI jobs in the README do it."""

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from tests.api_support import call
from tests.conftest import RunningServer, StartServer, isolated_env, run, upstreams
from tests.npm.test_npm_clients import assert_only_pkgate_reached, project
from tests.oidc_issuer import RUNNER_TOKEN, Issuer, serve_issuer
from tests.pypi.test_pypi_clients import (
    assert_fetched_through_pkgate,
    assert_installed,
    assert_refused,
    index_url,
    pip_install,
)
from tests.upstreams.npm_registry import NpmRegistry
from tests.upstreams.pypi_index import PypiIndex
from tokenapi.oidcconfig import parse_issuers

pytestmark = pytest.mark.clients


@pytest.fixture
async def issuer() -> AsyncIterator[Issuer]:
    async with serve_issuer() as found:
        yield found


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
    return await start_server(**upstreams(registry, index), oidc_issuers=parse_issuers([config]))


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


TOP = Path(__file__).resolve().parent.parent


def documented_jobs(readme: Path) -> tuple[str, list[str]]:
    """The GitHub Actions step script and the GitLab CI script of a README's CI section."""
    section = readme.read_text().split("## CI tokens", 1)[1]
    github, gitlab = (yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", section, re.S))
    step = next(s["run"] for s in github["jobs"]["build"]["steps"] if "oidc" in s.get("run", ""))
    assert github["jobs"]["build"]["permissions"]["id-token"] == "write"
    assert (
        gitlab["build"]["id_tokens"]["PKGATE_ID_TOKEN"]["aud"]
        == gitlab["build"]["variables"]["PKGATE"]
    )
    return step, gitlab["build"]["script"]


def for_loopback(script: str) -> str:
    """The documented scripts are for an https pkgate; the test one listens on plain http."""
    return script.replace("https://token:", "http://token:")


async def install_with_the_configured_clients(
    tmp_path: Path, tools: Path, server: RunningServer, home: Path, pip_index: str
) -> None:
    proj = project(tmp_path, tools, server)
    proj.home = home
    proj.write_package_json()  # no project .npmrc: the job configured npm for the user
    result = await proj.run("npm", "install", "--no-audit")
    assert result.returncode == 0, result.output
    proj.assert_installed()
    result, target = await pip_install(tools, tmp_path, pip_index)
    assert result.returncode == 0, result.output
    assert_installed(target)


def test_docs__deploy_readme_has_the_same_jobs() -> None:
    assert documented_jobs(TOP / "README.md") == documented_jobs(TOP / "deploy" / "README.md")


async def test_docs__github_actions_job_runs(
    tmp_path: Path,
    tools: Path,
    start_server: StartServer,
    issuer: Issuer,
    registry: NpmRegistry,
    index: PypiIndex,
) -> None:
    server = await ci_server(start_server, issuer, registry, index)
    step, _ = documented_jobs(TOP / "README.md")
    home = tmp_path / "runner-home"
    github_env = tmp_path / "github_env"
    github_env.write_text("")
    env = isolated_env(
        home,
        PKGATE=str(server.url),
        ACTIONS_ID_TOKEN_REQUEST_URL=f"{issuer.url}/github-token?api-version=2.0",
        ACTIONS_ID_TOKEN_REQUEST_TOKEN=RUNNER_TOKEN,
        GITHUB_ENV=str(github_env),
    )
    env["PATH"] = f"{tools}:{env['PATH']}"
    ran = await run("bash", "-euo", "pipefail", "-c", for_loopback(step), env=env)
    assert ran.returncode == 0, ran.output
    # The secret reaches the log only in the line that tells GitHub to mask it.
    shown = [line for line in ran.stdout.splitlines() if "pkg_" in line]
    assert len(shown) == 1
    assert shown[0].startswith("::add-mask::pkg_")
    exported = dict(line.split("=", 1) for line in github_env.read_text().splitlines())
    (token,) = await server.store.list_tokens(email="ci@example.com")
    assert token.name == "oidc:my-org/app@refs/heads/main run 123"
    await install_with_the_configured_clients(
        tmp_path, tools, server, home, exported["PIP_INDEX_URL"]
    )


async def test_docs__gitlab_ci_job_runs(
    tmp_path: Path,
    tools: Path,
    start_server: StartServer,
    issuer: Issuer,
    registry: NpmRegistry,
    index: PypiIndex,
) -> None:
    server = await ci_server(start_server, issuer, registry, index)
    _, script = documented_jobs(TOP / "README.md")
    # The image setup and the installs themselves are run below with the test's own clients.
    lines = [line for line in script if not line.startswith(("apt-get", "npm ci", "pip install"))]
    home = tmp_path / "runner-home"
    out = tmp_path / "exported"
    env = isolated_env(
        home,
        PKGATE=str(server.url),
        PKGATE_ID_TOKEN=issuer.sign(issuer.claims(str(server.url))),
    )
    env["PATH"] = f"{tools}:{env['PATH']}"
    body = for_loopback("\n".join(lines)) + f'\necho "$PIP_INDEX_URL" > {out}\n'
    ran = await run("bash", "-euo", "pipefail", "-c", body, env=env)
    assert ran.returncode == 0, ran.output
    await install_with_the_configured_clients(
        tmp_path, tools, server, home, out.read_text().strip()
    )
