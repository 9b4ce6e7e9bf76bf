"""deploy/compose-ha.yaml's topology as processes (no containers): PostgreSQL, two pkgate
instances, nginx from deploy/nginx-ha.conf.template balancing them; a real npm installs through
nginx while one instance is stopped and started again, then while the other is."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from yarl import URL

from proxy.settings import ENV_PREFIX, FIELDS
from tests.conftest import free_port, isolated_env, pkgate_cmd, run
from tests.procs import ServerProcess, running_nginx
from tests.requires import require
from tests.test_deploy_nginx import NGINX, main_config
from tests.upstreams.npm_registry import NpmRegistry, serve_registry

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def render(listen: str, a: str, b: str) -> str:
    text = (DEPLOY / "nginx-ha.conf.template").read_text()
    for name, value in {"NGINX_LISTEN": listen, "PKGATE_A": a, "PKGATE_B": b}.items():
        assert "${" + name + "}" in text
        text = text.replace("${" + name + "}", value)
    assert "${" not in text
    return text.replace("/var/log/nginx/pkgate.access.log", "off")


def test_compose_ha__postgres_two_instances_and_nginx_agree() -> None:
    compose = yaml.safe_load((DEPLOY / "compose-ha.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "pkgate-a", "pkgate-b", "nginx"}
    pg_env = services["postgres"]["environment"]
    for name in ("pkgate-a", "pkgate-b"):
        service = services[name]
        env = service["environment"]
        for key in env:  # every variable is a real setting
            assert key.startswith(ENV_PREFIX)
            assert key[len(ENV_PREFIX) :].lower() in FIELDS, key
        url = env["PKGATE_DATABASE_URL"]
        assert url.startswith(f"postgresql://{pg_env['POSTGRES_USER']}:")
        assert url.endswith(f"@postgres:5432/{pg_env['POSTGRES_DB']}")
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert [v.split(":")[1] for v in service["volumes"]] == ["/data"]
    # Each instance has a cache volume of its own.
    assert services["pkgate-a"]["volumes"] != services["pkgate-b"]["volumes"]
    nginx = services["nginx"]
    (mount,) = nginx["volumes"]
    source, target = mount.split(":")[:2]
    assert (DEPLOY / source).resolve() == (DEPLOY / "nginx-ha.conf.template").resolve()
    assert target == "/etc/nginx/templates/default.conf.template"
    template = (DEPLOY / source).read_text()
    upstreams = {nginx["environment"]["PKGATE_A"], nginx["environment"]["PKGATE_B"]}
    assert upstreams == {"pkgate-a:8080", "pkgate-b:8080"}
    assert set(re.findall(r"\$\{(\w+)\}", template)) == set(nginx["environment"])


@dataclass
class Topology:
    url: URL
    instances: list[ServerProcess]
    registry: NpmRegistry
    secret: str

    async def restart(self, n: int) -> None:
        """SIGTERM instance n, wait until it has exited, start it again on the same port."""
        old = self.instances[n]
        assert await old.stop(signal.SIGTERM) == 0, old.stderr[-2000:]
        new = ServerProcess(old.data_dir, old.args)
        new.port, new.url = old.port, old.url
        await new.start()
        self.instances[n] = new


@pytest.fixture
async def topology(tmp_path: Path, postgres_url: str) -> AsyncIterator[Topology]:
    require(NGINX, "nginx")
    work = tmp_path / "nginx"
    work.mkdir()
    listen = free_port()
    url = URL(f"http://127.0.0.1:{listen}")
    created = await run(
        *pkgate_cmd("token", "create", "--email", "dev@example.com"),
        "--data-dir",
        str(tmp_path / "cli"),
        "--database-url",
        postgres_url,
    )
    assert created.returncode == 0, created.output
    async with serve_registry() as registry:
        instances = [
            ServerProcess(
                tmp_path / f"data-{name}",
                [
                    "--database-url",
                    postgres_url,
                    "--npm-upstream",
                    f"{registry.url}/",
                    "--public-url",
                    str(url),
                    "--trusted-proxies",
                    "127.0.0.1/32",
                    "--access-log",
                    "false",
                    "--shutdown-grace",
                    "5",
                ],
            )
            for name in ("a", "b")
        ]
        try:
            for instance in instances:
                await instance.start()
            site = work / "pkgate.conf"
            site.write_text(
                render(f"127.0.0.1:{listen}", *(f"127.0.0.1:{i.port}" for i in instances))
            )
            conf = work / "nginx.conf"
            conf.write_text(main_config(work, site))
            async with running_nginx(NGINX, conf, work, listen):
                yield Topology(url, instances, registry, created.stdout.strip())
        finally:
            for instance in instances:  # the list restart() updates
                if instance.proc is not None and instance.proc.returncode is None:
                    await instance.stop(signal.SIGTERM)


async def npm_install(topo: Topology, tmp: Path, name: str, *packages: str) -> Path:
    home = tmp / f"home-{name}"
    env = isolated_env(home)
    registry = f"{topo.url}/npm/"
    (home / ".npmrc").write_text(
        f"registry={registry}\n"
        f"//{topo.url.host}:{topo.url.port}/npm/:_authToken={topo.secret}\n"
        "audit=false\n"
    )
    project = tmp / f"project-{name}"
    project.mkdir()
    (project / "package.json").write_text('{"name": "app", "version": "1.0.0"}')
    result = await run("npm", "install", *packages, cwd=project, env=env)
    assert result.returncode == 0, result.output
    lock = json.loads((project / "package-lock.json").read_text())
    resolved = [p["resolved"] for p in lock["packages"].values() if "resolved" in p]
    assert resolved
    assert all(r.startswith(registry) for r in resolved)
    return project


@pytest.mark.clients
async def test_deploy_ha__npm_installs_through_nginx_while_instances_restart(
    topology: Topology, tmp_path: Path
) -> None:
    packages = ("pkg-deps", "pkg-big")
    for n in (0, 1):
        # The install runs while instance n goes down and comes back.
        install = asyncio.ensure_future(npm_install(topology, tmp_path, f"during-{n}", *packages))
        await topology.restart(n)
        project = await install
        for name in ("pkg-deps", "pkg-plain", "@acme/scoped", "pkg-big"):
            assert (project / "node_modules" / name / "package.json").is_file(), name
    # And with one instance down for the whole install.
    down = topology.instances[0]
    assert await down.stop(signal.SIGTERM) == 0
    await npm_install(topology, tmp_path, "one-down", *packages)
    assert topology.registry.violations == []
