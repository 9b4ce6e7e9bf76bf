"""pkgate behind a real nginx built from deploy/nginx.conf, over TLS, with a real npm client."""

import json
import shutil
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from ipaddress import ip_network
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from proxy.accesslog import AccessLogSink, access_log_class, access_logger
from proxy.app import create_app
from proxy.server import SafeAppRunner
from proxy.settings import Settings
from tests.conftest import free_port, free_socket, isolated_env, run
from tests.procs import running_nginx
from tests.requires import require
from tests.upstreams.npm_registry import NpmRegistry, serve_registry
from tokenapi.issue import ensure_user, issue_token
from tokenapi.keys import store_key

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
# Clients reach nginx from this loopback address, nginx reaches pkgate from 127.0.0.1.
CLIENT_ADDRESS = "127.0.0.5"


@pytest.fixture(autouse=True)
def _needs_nginx() -> None:
    require(NGINX, "nginx")


def render_site(https_port: int, http_port: int, pkgate_port: int, cert: Path, key: Path) -> str:
    """deploy/nginx.conf with its placeholders filled for loopback ports and a scratch log."""
    text = (DEPLOY / "nginx.conf").read_text()
    for placeholder, value in {
        "@SERVER_NAMES@": "127.0.0.1 localhost",
        "@HTTPS_LISTEN@": f"127.0.0.1:{https_port}",
        "@TLS_CERT@": str(cert),
        "@TLS_KEY@": str(key),
        "@PKGATE@": f"127.0.0.1:{pkgate_port}",
    }.items():
        assert placeholder in text
        text = text.replace(placeholder, value)
    # The parts an operator keeps as they are but a test cannot: port 80 and /var/log.
    assert "listen 80;" in text
    text = text.replace("listen 80;", f"listen 127.0.0.1:{http_port};")
    return text.replace("/var/log/nginx/pkgate.access.log", str(cert.parent / "access.log"))


def main_config(work: Path, site: Path) -> str:
    """The minimal nginx.conf around the site file, as /etc/nginx/nginx.conf is around conf.d."""
    return f"""
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 64; }}
http {{
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    include {site};
}}
"""


async def self_signed(work: Path) -> tuple[Path, Path]:
    cert, key = work / "cert.pem", work / "key.pem"
    result = await run(
        "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        "-keyout", key, "-out", cert,
    )  # fmt: skip
    assert result.returncode == 0, result.output
    return cert, key


@dataclass
class Stack:
    url: URL
    cert: Path
    app: web.Application
    log: AccessLogSink
    log_path: Path
    registry: NpmRegistry

    async def token(self) -> tuple[str, str]:
        user = await ensure_user(self.app[store_key], "dev@example.com")
        token, secret = await issue_token(self.app[store_key], user, name="nginx")
        return token.id, secret

    def log_lines(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.log_text().splitlines()]

    def log_text(self) -> str:
        assert self.log.flush()
        return self.log_path.read_text()


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    work = tmp_path / "nginx"
    work.mkdir()
    cert, key = await self_signed(work)
    https_port, http_port = free_port(), free_port()
    async with serve_registry() as registry:
        sock = free_socket()
        settings = Settings(
            host="127.0.0.1",
            port=sock.getsockname()[1],
            data_dir=tmp_path / "data",
            public_url=f"https://127.0.0.1:{https_port}",
            npm_upstream=f"{registry.url}/",
            trusted_proxies=(ip_network("127.0.0.1/32"),),
            last_used_flush=0.2,
        )
        log_path = tmp_path / "pkgate-access.log"
        log = AccessLogSink(path=log_path)
        app = create_app(settings)
        runner = SafeAppRunner(
            app,
            access_log=access_logger(),
            access_log_class=access_log_class(settings, log),
            handle_signals=False,
        )
        await runner.setup()
        await web.SockSite(runner, sock).start()
        site = work / "pkgate.conf"
        site.write_text(render_site(https_port, http_port, settings.port, cert, key))
        conf = work / "nginx.conf"
        conf.write_text(main_config(work, site))
        try:
            async with running_nginx(NGINX, conf, work, https_port):
                yield Stack(
                    URL(f"https://127.0.0.1:{https_port}"), cert, app, log, log_path, registry
                )
        finally:
            await runner.cleanup()
            log.close()


async def test_deploy_nginx__config_passes_nginx_t(stack: Stack) -> None:
    # The fixture refuses to start unless `nginx -t` accepted the rendered deploy/nginx.conf.
    async with aiohttp.ClientSession() as http:
        ctx = ssl.create_default_context(cafile=str(stack.cert))
        async with http.get(stack.url / "healthz", ssl=ctx) as resp:
            assert resp.status == 200


async def test_deploy_nginx__large_download_streams_through_with_forwarded_client_ip(
    stack: Stack,
) -> None:
    token_id, secret = await stack.token()
    big = stack.registry.package("pkg-big", "1.0.0")
    ctx = ssl.create_default_context(cafile=str(stack.cert))
    connector = aiohttp.TCPConnector(ssl=ctx, local_addr=(CLIENT_ADDRESS, 0))
    async with aiohttp.ClientSession(connector=connector) as http:
        async with http.get(
            stack.url / "npm" / "pkg-big" / "-" / big.file,
            headers={"Authorization": f"Bearer {secret}", "X-Forwarded-For": "10.6.6.6"},
        ) as resp:
            assert resp.status == 200
            body = await resp.read()
        async with http.get(
            stack.url / "npm/-/whoami", headers={"Authorization": f"Bearer {secret}"}
        ) as resp:
            assert await resp.json() == {"username": "dev@example.com"}
    assert body == big.tarball
    assert len(body) > 1024 * 1024
    [line] = [entry for entry in stack.log_lines() if "pkg-big" in str(entry["path"])]
    # nginx replaced the client's forged X-Forwarded-For with the address it saw.
    assert line["client_ip"] == CLIENT_ADDRESS
    assert line["token_id"] == token_id
    assert secret not in stack.log_text()


@pytest.mark.clients
async def test_deploy_nginx__npm_installs_through_tls_proxy(stack: Stack, tmp_path: Path) -> None:
    _, secret = await stack.token()
    home = tmp_path / "home"
    env = isolated_env(home)
    registry = f"{stack.url}/npm/"
    (home / ".npmrc").write_text(
        f"registry={registry}\n"
        f"//{stack.url.host}:{stack.url.port}/npm/:_authToken={secret}\n"
        f"cafile={stack.cert}\n"
        "audit=false\n"
    )
    project = tmp_path / "project"
    project.mkdir()
    (project / "package.json").write_text('{"name": "app", "version": "1.0.0"}')
    result = await run("npm", "install", "pkg-deps", "pkg-big", cwd=project, env=env)
    assert result.returncode == 0, result.output
    for name in ("pkg-deps", "pkg-plain", "@acme/scoped", "pkg-big"):
        assert (project / "node_modules" / name / "package.json").is_file(), name
    lock = json.loads((project / "package-lock.json").read_text())
    resolved = [p["resolved"] for p in lock["packages"].values() if "resolved" in p]
    assert resolved
    assert all(r.startswith(registry) for r in resolved)
    assert stack.registry.violations == []
