"""Real npm, yarn, pnpm and bun against pkgate with the supply-chain policy on.

What each client prints when pkgate refuses a version (checked below):
- a lockfile pins the version (it was fine when locked): the tarball answers 403; npm prints the
  JSON ``error``, yarn and pnpm print the status line's reason phrase (pkgate puts the message
  there too), bun prints only the status code;
- ``package.json`` pins it: the version is not in the packument, so every client reports that no
  such version exists; npm also prints the packument's ``npm-notice`` header (``npm notice pkgate
  withheld pkg-sc@1.1.0 is blocked: ... (MAL-...)``), the others show no reason.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from proxy.supplychain.service import supplychain_key
from tests.conftest import Completed
from tests.npm.test_npm_clients import CLIENTS, Project

from .conftest import BLOCKED_ID, BLOCKED_REASON, Policed, feed_records

pytestmark = pytest.mark.clients

MESSAGE = f"pkg-sc@1.1.0 is blocked: {BLOCKED_REASON} ({BLOCKED_ID})"
REFUSAL_SHOWN = {"npm": MESSAGE, "yarn": MESSAGE, "pnpm": MESSAGE, "bun": "pkg-sc-1.1.0.tgz - 403"}
NO_SUCH_VERSION = {
    "npm": "No matching version found for pkg-sc@1.1.0",
    "yarn": "pkg-sc@npm:1.1.0: No candidates found",
    "pnpm": "No matching version found for pkg-sc@1.1.0",
    "bun": 'No version matching "1.1.0" found for specifier "pkg-sc"',
}


def project(tmp_path: Path, tools: Path, policed: Policed) -> Project:
    return Project(tmp_path / "proj", tmp_path / "home", tools, policed.server.url / "npm")


def write_deps(proj: Project, deps: dict[str, str]) -> None:
    manifest = {"name": "proj", "version": "1.0.0", "private": True, "dependencies": deps}
    (proj.dir / "package.json").write_text(json.dumps(manifest))


def installed(proj: Project, name: str) -> str:
    place = proj.dir / "node_modules" / name
    if not place.exists():  # pnpm keeps transitive packages in its virtual store
        pnpm = proj.dir / "node_modules" / ".pnpm"
        (place,) = pnpm.glob(f"{name}@*/node_modules/{name}")
    version: str = json.loads((place / "package.json").read_text())["version"]
    return version


async def refresh(policed: Policed, records: list[dict[str, Any]]) -> None:
    policed.write_feed(records)
    blocklist = policed.server.app[supplychain_key].blocklist
    assert blocklist is not None
    await blocklist.refresh()


async def frozen_install(proj: Project, client: str) -> Completed:
    if client == "npm":
        return await proj.run("npm", "ci", "--no-audit")
    if client == "yarn":
        return await proj.run("yarn", "install", "--immutable")
    if client == "pnpm":
        return await proj.run(
            "pnpm", "install", "--frozen-lockfile", "--store-dir", str(proj.home / "store")
        )
    return await proj.run("bun", "install", "--frozen-lockfile")


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_range_gets_the_newest_allowed_version(
    tmp_path: Path, tools: Path, policed: Policed, client: str
) -> None:
    """1.1.0 is blocked and 1.2.0 was published yesterday (min_release_age 3d): ^1.0.0 is 1.0.0."""
    proj = project(tmp_path, tools, policed)
    proj.configure(client, await policed.server.token())
    write_deps(proj, {"pkg-app": "^1.0.0", "pkg-sc": "^1.0.0"})
    result = await proj.install(client)
    assert result.returncode == 0, result.output
    assert installed(proj, "pkg-sc") == "1.0.0"
    assert installed(proj, "pkg-app") == "1.0.0"
    fetched = {r.path.rpartition("/")[2] for r in policed.registry.tarball_requests()}
    assert fetched == {"pkg-sc-1.0.0.tgz", "pkg-app-1.0.0.tgz"}


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_locked_version_blocked_later_fails_with_the_reason(
    tmp_path: Path, tools: Path, policed: Policed, client: str
) -> None:
    proj = project(tmp_path, tools, policed)
    proj.configure(client, await policed.server.token())
    await refresh(policed, feed_records()[1:])  # not yet known to be malicious
    write_deps(proj, {"pkg-sc": "1.1.0"})
    locked = await proj.install(client)
    assert locked.returncode == 0, locked.output
    await refresh(policed, feed_records())  # the advisory arrives
    shutil.rmtree(proj.dir / "node_modules")
    shutil.rmtree(proj.home)  # every client cache: the tarball must come from pkgate again
    shutil.rmtree(proj.dir / ".yarn", ignore_errors=True)
    result = await frozen_install(proj, client)
    assert result.returncode != 0, result.output
    assert REFUSAL_SHOWN[client] in result.output, result.output


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_blocked_version_pinned_in_package_json_is_not_found(
    tmp_path: Path, tools: Path, policed: Policed, client: str
) -> None:
    proj = project(tmp_path, tools, policed)
    proj.configure(client, await policed.server.token())
    write_deps(proj, {"pkg-sc": "1.1.0"})
    result = await proj.install(client)
    assert result.returncode != 0, result.output
    assert NO_SUCH_VERSION[client] in result.output, result.output
    assert policed.registry.tarball_requests() == []


async def test_npm_install_of_a_blocked_version_names_the_advisory(
    tmp_path: Path, tools: Path, policed: Policed
) -> None:
    """``npm install pkg-sc@1.1.0``: npm prints the packument's ``npm-notice`` with the reason."""
    proj = project(tmp_path, tools, policed)
    proj.configure("npm", await policed.server.token())
    write_deps(proj, {})
    for _ in range(2):  # the second time npm has a cache: the answer was not stored in it
        result = await proj.run("npm", "install", "--no-audit", "pkg-sc@1.1.0")
        assert result.returncode != 0, result.output
        assert NO_SUCH_VERSION["npm"] in result.output, result.output
        assert f"npm notice pkgate withheld {MESSAGE}" in result.output, result.output
        assert BLOCKED_ID in result.output
    assert policed.registry.tarball_requests() == []
