"""A second install through a warm pkgate is served from its caches, for every npm client.

A real ``pkgate serve`` process in its default configuration (default metadata cache bound,
access log to a file) in front of the fake upstream; each client installs a small tree twice,
from a fresh project, home and client cache each time, each round with a token of its own so the
access log tells the rounds apart.  The log of the second round must show at least 95% of its
package documents and tarballs answered from pkgate's caches (in practice all of them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.npm.test_npm_clients import CLIENTS, Project
from tests.procs import ServerProcess
from tests.upstreams.npm_registry import NpmPackage, build_package, serve_registry
from tokenapi.issue import ensure_user, issue_token
from tokenapi.store import Store

pytestmark = pytest.mark.clients

LEAVES = 24
MIDS = 6
ROUNDS = ("cold", "warm")


def tree() -> tuple[list[NpmPackage], dict[str, str]]:
    """Leaves in three versions each, scoped packages depending on some of them, and the roots."""
    packages = [
        build_package(f"leaf-{i:02d}", version)
        for i in range(LEAVES)
        for version in ("1.0.0", "1.1.0", "2.0.0")
    ]
    for m in range(MIDS):
        deps = {f"leaf-{(m * 4 + j) % LEAVES:02d}": "^1.0.0" for j in range(6)}
        packages.append(build_package(f"@tree/mid-{m}", "1.0.0", dependencies=deps))
    roots = {f"@tree/mid-{m}": "^1.0.0" for m in range(MIDS)}
    roots |= {f"leaf-{i:02d}": "^2.0.0" for i in range(0, LEAVES, 3)}
    return packages, roots


class TreeProject(Project):
    """A project depending on ``deps`` instead of the standard set."""

    deps: dict[str, str]

    def write_package_json(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        manifest = {"name": "tree", "version": "1.0.0", "private": True, "dependencies": self.deps}
        (self.dir / "package.json").write_text(json.dumps(manifest))


async def round_tokens(data_dir: Path) -> dict[str, tuple[str, str]]:
    """One token (id, secret) per install round."""
    store = await Store.open(data_dir / "pkgate.db")
    try:
        user = await ensure_user(store, "ci@example.com")
        out = {}
        for name in ROUNDS:
            token, secret = await issue_token(store, user, name=name)
            out[name] = (token.id, secret)
        return out
    finally:
        await store.close()


def package_lines(log: Path, token_id: str) -> list[dict[str, Any]]:
    """The access log lines of one token's package documents and tarballs."""
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    return [
        line
        for line in lines
        if line.get("token_id") == token_id
        and line["path"].startswith("/npm/")
        and not line["path"].startswith("/npm/-/")
    ]


def install_command(proj: Project, client: str) -> tuple[str, ...]:
    if client == "npm":
        return ("npm", "install", "--no-audit")
    if client == "yarn":
        return ("yarn", "install")
    if client == "pnpm":
        return ("pnpm", "install", "--no-frozen-lockfile", "--store-dir", str(proj.home / "store"))
    return ("bun", "install")


@pytest.mark.parametrize("client", CLIENTS)
async def test_warm__second_install_is_served_from_the_cache(
    tmp_path: Path, tools: Path, client: str
) -> None:
    packages, roots = tree()
    data_dir = tmp_path / "data"
    tokens = await round_tokens(data_dir)
    log = tmp_path / "access.log"
    async with serve_registry(packages=packages) as registry:
        server = ServerProcess(
            data_dir, ["--npm-upstream", f"{registry.url}/", "--access-log-file", str(log)]
        )
        await server.start()
        upstream_before_warm = 0
        try:
            for name in ROUNDS:
                proj = TreeProject(
                    tmp_path / name, tmp_path / f"{name}-home", tools, server.url / "npm"
                )
                proj.deps = roots
                proj.configure(client, tokens[name][1])
                upstream_before_warm = len(registry.requests)
                result = await proj.run(*install_command(proj, client))
                assert result.returncode == 0, result.output
                assert (proj.dir / "node_modules" / "@tree" / "mid-5" / "package.json").exists()
            async with aiohttp.ClientSession() as http, http.get(server.url / "metrics") as resp:
                metrics = await resp.text()
        finally:
            # SIGTERM writes out every access log line before the process exits.
            assert await server.stop() == 0
        warm_upstream = registry.requests[upstream_before_warm:]
    cold = package_lines(log, tokens["cold"][0])
    warm = package_lines(log, tokens["warm"][0])
    # The warm round asked for the whole tree again (every tarball: the client cache was empty)...
    tarballs = {line["path"] for line in warm if line["path"].endswith(".tgz")}
    assert len(tarballs) == len({line["path"] for line in cold if line["path"].endswith(".tgz")})
    assert len(tarballs) >= LEAVES + MIDS
    assert all(line["status"] == 200 for line in warm)
    # ...and the access log says pkgate answered (nearly) all of it from its caches.
    hits = [line for line in warm if line["cache"] == "hit"]
    others = [(line["path"], line["cache"]) for line in warm if line["cache"] != "hit"]
    assert len(hits) >= 0.95 * len(warm), others
    fetched = [r.path for r in warm_upstream if not r.path.startswith("/-/")]
    assert len(fetched) <= 0.05 * len(warm), fetched
    # bun accepts zstd: its warm round got the documents' zstd copies its cold round had pkgate
    # make (and installed from them); the others accept gzip only and never get zstd.
    zstd_answers = metric(metrics, "pkgate_metadata_cache_zstd_answers_total")
    if client == "bun":
        assert zstd_answers > 0
    else:
        assert zstd_answers == 0


def metric(text: str, name: str) -> float:
    """The value of the unlabelled sample ``name`` in a Prometheus text exposition."""
    (line,) = [line for line in text.splitlines() if line.startswith(f"{name} ")]
    return float(line.split()[1])
