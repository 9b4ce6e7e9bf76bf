"""The setup the welcome mail (and the web page) gives, pasted as it is into a project, installs
with the real npm, yarn berry, yarn classic (1.x), pnpm and bun over plain http."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import RunningServer
from tests.npm.test_npm_clients import (
    Project,
    assert_every_tarball_fetched,
    assert_only_pkgate_reached,
)
from tests.upstreams.npm_registry import NpmRegistry
from tokenapi.clientsetup import snippets

pytestmark = pytest.mark.clients

FILES = {
    "npm": ".npmrc",
    "yarn": ".yarnrc.yml",
    "yarn classic": ".npmrc",
    "pnpm": ".npmrc",
    "bun": "bunfig.toml",
}
# What a test adds to the pasted setup: nothing about the registry or the token.
TEST_ONLY = {
    "yarn": (
        "enableGlobalCache: false\nenableTelemetry: false\nenableImmutableInstalls: false\n"
        "nodeLinker: node-modules\n"
    ),
}


def pasted(proj: Project, server: RunningServer, client: str, secret: str) -> None:
    (snippet,) = [s for s in snippets(server.url, secret) if s.client == client]
    proj.write_package_json()
    (proj.dir / FILES[client]).write_text(snippet.text + TEST_ONLY.get(client, ""))


async def install(proj: Project, client: str, tools: Path) -> str:
    if client == "yarn classic":
        result = await proj.run(
            "yarn1", "install", "--non-interactive", "--cache-folder", str(proj.home / "y1")
        )
    else:
        result = await proj.install(client)
    assert result.returncode == 0, result.output
    return result.output


@pytest.mark.parametrize("client", sorted(FILES))
async def test_setup__pasted_snippet_installs(
    tmp_path: Path, tools: Path, server: RunningServer, registry: NpmRegistry, client: str
) -> None:
    proj = Project(tmp_path / "proj", tmp_path / "home", tools, server.url / "npm")
    pasted(proj, server, client, await server.token())
    output = await install(proj, client, tools)
    assert "YN0081" not in output  # yarn berry: plain http is whitelisted by the snippet
    proj.assert_installed()
    assert_only_pkgate_reached(registry)
    assert_every_tarball_fetched(registry)


async def test_setup__yarn_classic_with_the_npm_snippet_alone_is_refused(
    tmp_path: Path, tools: Path, server: RunningServer
) -> None:
    # Why yarn 1 has its own snippet: without always-auth it sends no token at all.
    proj = Project(tmp_path / "proj", tmp_path / "home", tools, server.url / "npm")
    (npm,) = [s for s in snippets(server.url, await server.token()) if s.client == "npm"]
    proj.write_package_json()
    (proj.dir / ".npmrc").write_text(npm.text)
    result = await proj.run(
        "yarn1", "install", "--non-interactive", "--cache-folder", str(proj.home / "y1")
    )
    assert result.returncode != 0
    assert "Authentication required" in result.output


async def test_setup__revoked_token_fails_yarn_classic_with_401(
    tmp_path: Path, tools: Path, server: RunningServer
) -> None:
    proj = Project(tmp_path / "proj", tmp_path / "home", tools, server.url / "npm")
    secret = await server.token()
    pasted(proj, server, "yarn classic", secret)
    (token,) = await server.store.list_tokens()
    server.validator.forget(await server.store.revoke_token(token.id))
    result = await proj.run(
        "yarn1", "install", "--non-interactive", "--cache-folder", str(proj.home / "y1")
    )
    assert result.returncode != 0
    assert "Invalid or revoked token" in result.output
