"""Real npm, yarn (berry), pnpm and bun installing through pkgate from a fake upstream registry."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from yarl import URL

from proxy.registry.upstream import USER_AGENT
from tests.conftest import Completed, RunningServer, StartServer, isolated_env, run
from tests.upstreams.npm_registry import NpmRegistry
from tokenapi.issue import ensure_user, issue_token

pytestmark = pytest.mark.clients

CLIENTS = ("npm", "yarn", "pnpm", "bun")
DEPENDENCIES = {"pkg-deps": "^1.0.0", "pkg-big": "^1.0.0"}
# How each client reports a 401 answer (yarn's YN0041 is its "Invalid authentication" for 401).
UNAUTHORIZED = {"npm": "E401", "yarn": "YN0041", "pnpm": "ERR_PNPM_FETCH_401", "bun": "401"}
INSTALLED = {"pkg-deps": "1.0.0", "pkg-plain": "1.1.0", "@acme/scoped": "2.0.0", "pkg-big": "1.0.0"}


@dataclass
class Project:
    """A temporary project configured for one client against one registry URL."""

    dir: Path
    home: Path
    tools: Path
    registry: URL  # the npm root, without a trailing slash

    def write_package_json(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        manifest: dict[str, object] = {"name": "proj", "version": "1.0.0", "private": True}
        (self.dir / "package.json").write_text(
            json.dumps({**manifest, "dependencies": DEPENDENCIES})
        )

    def configure(self, client: str, token: str | None, *, always_auth: bool = True) -> None:
        """Write the configuration a user of ``client`` would write (see the setup emails)."""
        self.write_package_json()
        if client in ("npm", "pnpm"):
            lines = [f"registry={self.registry}/"]
            if token is not None:
                nerf = f"//{self.registry.host}:{self.registry.port}{self.registry.path}/"
                lines.append(f"{nerf}:_authToken={token}")
            (self.dir / ".npmrc").write_text("\n".join(lines) + "\n")
        elif client == "yarn":
            config = {
                "npmRegistryServer": str(self.registry),
                "npmAlwaysAuth": always_auth,
                "unsafeHttpWhitelist": [self.registry.host],
                "enableGlobalCache": False,
                "enableTelemetry": False,
                "enableImmutableInstalls": False,
                "nodeLinker": "node-modules",
            }
            if token is not None:
                config["npmAuthToken"] = token
            (self.dir / ".yarnrc.yml").write_text(json.dumps(config) + "\n")
        elif client == "bun":
            auth = f', token = "{token}"' if token is not None else ""
            (self.dir / "bunfig.toml").write_text(
                f'[install]\nregistry = {{ url = "{self.registry}/"{auth} }}\n'
            )

    async def run(self, *args: str, **extra_env: str) -> Completed:
        env = isolated_env(self.home, **extra_env)
        env["PATH"] = f"{self.tools}:{env['PATH']}"
        return await run(*args, cwd=self.dir, env=env)

    async def install(self, client: str) -> Completed:
        if client == "npm":
            return await self.run("npm", "install", "--no-audit")
        if client == "yarn":
            return await self.run("yarn", "install")
        if client == "pnpm":
            return await self.run(
                "pnpm", "install", "--no-frozen-lockfile", "--store-dir", str(self.home / "store")
            )
        return await self.run("bun", "install")

    def assert_installed(self) -> None:
        modules = self.dir / "node_modules"
        for name, version in INSTALLED.items():
            place = modules / name
            if not place.exists():
                # pnpm's isolated layout keeps transitive packages in its virtual store.
                place = modules / ".pnpm" / f"{name.replace('/', '+')}@{version}" / "node_modules"
                place = place / name
            manifest = json.loads((place / "package.json").read_text())
            assert manifest["version"] == version, name
        assert (modules / "pkg-big" / "payload.bin").stat().st_size == 3 * 1024 * 1024


def project(tmp_path: Path, tools: Path, server: RunningServer, name: str = "proj") -> Project:
    return Project(tmp_path / name, tmp_path / f"{name}-home", tools, server.url / "npm")


def assert_only_pkgate_reached(registry: NpmRegistry) -> None:
    assert registry.violations == []
    assert registry.requests
    assert {r.headers.get("User-Agent") for r in registry.requests} == {USER_AGENT}


def assert_every_tarball_fetched(registry: NpmRegistry) -> None:
    fetched = {r.path for r in registry.tarball_requests()}
    wanted = {registry.tarball_path(registry.package(n, v)) for n, v in INSTALLED.items()}
    assert wanted <= fetched


@pytest.mark.parametrize("client", CLIENTS)
async def test_install__through_pkgate_with_a_token(
    tmp_path: Path, tools: Path, server: RunningServer, registry: NpmRegistry, client: str
) -> None:
    proj = project(tmp_path, tools, server)
    proj.configure(client, await server.token())
    result = await proj.install(client)
    assert result.returncode == 0, result.output
    proj.assert_installed()
    assert_only_pkgate_reached(registry)
    assert_every_tarball_fetched(registry)


async def test_npm__lockfile_resolves_to_pkgate_and_ci_reinstalls(
    tmp_path: Path, tools: Path, server: RunningServer, registry: NpmRegistry
) -> None:
    proj = project(tmp_path, tools, server)
    proj.configure("npm", await server.token())
    assert (await proj.install("npm")).returncode == 0
    lock = json.loads((proj.dir / "package-lock.json").read_text())
    resolved = {path: entry["resolved"] for path, entry in lock["packages"].items() if path}
    assert len(resolved) == len(INSTALLED)
    assert all(url.startswith(f"{server.url}/npm/") for url in resolved.values()), resolved
    assert all(entry.get("integrity") for path, entry in lock["packages"].items() if path)

    shutil.rmtree(proj.dir / "node_modules")
    registry.clear()
    result = await proj.run("npm", "ci", "--no-audit", npm_config_cache=str(tmp_path / "fresh"))
    assert result.returncode == 0, result.output
    proj.assert_installed()
    # With an empty npm cache every tarball came from pkgate, which had verified them on disk.
    assert registry.tarball_requests() == []
    assert registry.violations == []


async def test_npm__lockfile_made_against_the_upstream_installs_through_pkgate(
    tmp_path: Path, tools: Path, server: RunningServer, registry: NpmRegistry
) -> None:
    assert registry.url is not None
    direct = Project(tmp_path / "direct", tmp_path / "direct-home", tools, registry.url)
    direct.configure("npm", None)
    made = await direct.run("npm", "install", "--package-lock-only", "--no-audit")
    assert made.returncode == 0, made.output
    lockfile = (direct.dir / "package-lock.json").read_text()
    assert str(registry.url) in lockfile

    proj = project(tmp_path, tools, server)
    proj.configure("npm", await server.token())
    (proj.dir / "package-lock.json").write_text(lockfile)
    # The stand-in upstream is not the default public host, which npm rewrites on its own.
    with (proj.dir / ".npmrc").open("a") as npmrc:
        npmrc.write("replace-registry-host=always\n")
    registry.clear()
    result = await proj.run("npm", "ci", "--no-audit")
    assert result.returncode == 0, result.output
    proj.assert_installed()
    assert_only_pkgate_reached(registry)
    assert_every_tarball_fetched(registry)


async def revoked_token(server: RunningServer) -> str:
    user = await ensure_user(server.store, "gone@example.com")
    token, secret = await issue_token(server.store, user, name="old")
    server.validator.forget(await server.store.revoke_token(token.id))
    return secret


@pytest.mark.parametrize("client", CLIENTS)
async def test_install__revoked_token_fails_with_401(
    tmp_path: Path, tools: Path, server: RunningServer, registry: NpmRegistry, client: str
) -> None:
    proj = project(tmp_path, tools, server)
    proj.configure(client, await revoked_token(server))
    result = await proj.install(client)
    assert result.returncode != 0
    assert UNAUTHORIZED[client] in result.output, result.output
    assert registry.requests == []


@pytest.mark.parametrize("client", CLIENTS)
async def test_install__missing_token_fails_with_401(
    tmp_path: Path, tools: Path, server: RunningServer, registry: NpmRegistry, client: str
) -> None:
    proj = project(tmp_path, tools, server)
    # yarn only sends requests without credentials when it is not told to always authenticate.
    proj.configure(client, None, always_auth=False)
    result = await proj.install(client)
    assert result.returncode != 0
    assert UNAUTHORIZED[client] in result.output, result.output
    assert registry.requests == []


@pytest.mark.parametrize("client", ["npm", "pnpm"])
async def test_install__anonymous_allowed_needs_no_token(
    tmp_path: Path, tools: Path, start_server: StartServer, registry: NpmRegistry, client: str
) -> None:
    server = await start_server(npm_upstream=str(registry.url) + "/", anonymous="allow")
    proj = project(tmp_path, tools, server)
    proj.configure(client, None)
    result = await proj.install(client)
    assert result.returncode == 0, result.output
    proj.assert_installed()
    assert_only_pkgate_reached(registry)


async def test_npm__whoami_and_ping(tmp_path: Path, tools: Path, server: RunningServer) -> None:
    proj = project(tmp_path, tools, server)
    proj.configure("npm", await server.token(email="who@example.com"))
    whoami = await proj.run("npm", "whoami")
    assert whoami.returncode == 0, whoami.output
    assert whoami.stdout.strip() == "who@example.com"
    ping = await proj.run("npm", "ping")
    assert ping.returncode == 0, ping.output
    assert "PONG" in ping.output


async def test_npm__audit_sends_gzip_body_through_pkgate(
    tmp_path: Path, tools: Path, server: RunningServer, registry: NpmRegistry
) -> None:
    advisory = {
        "id": 4242,
        "url": "https://advisories.example.test/4242",
        "title": "Test advisory for pkg-plain",
        "severity": "high",
        "vulnerable_versions": "<2.0.0",
        "cwe": ["CWE-1"],
        "cvss": {"score": 7.5, "vectorString": None},
    }
    registry.advisories["pkg-plain"] = [advisory]
    proj = project(tmp_path, tools, server)
    proj.configure("npm", await server.token())
    assert (await proj.install("npm")).returncode == 0
    registry.clear()
    result = await proj.run("npm", "audit", "--json")
    report = json.loads(result.stdout)
    assert result.returncode == 1, result.output  # npm audit fails when it finds something
    assert report["vulnerabilities"]["pkg-plain"]["severity"] == "high"
    (payload,) = registry.audit_payloads
    assert payload["pkg-plain"] == ["1.1.0"]
    assert set(payload) == set(INSTALLED)
    assert_only_pkgate_reached(registry)
