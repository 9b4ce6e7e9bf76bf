"""A real `npm install` against the npm registry served at the root of its own host name.

npm cannot resolve invented names, so the virtual host is ``127.0.0.1`` while the public URL
names ``localhost``: requests to ``http://127.0.0.1:PORT/`` hit the virtual host (the Host header
decides), and the path layout stays reachable under the other name.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from proxy.app import create_app
from proxy.server import SafeAppRunner
from proxy.settings import Settings
from tests.conftest import RunningServer, free_socket, isolated_env, run
from tests.upstreams.npm_registry import NpmRegistry

pytestmark = pytest.mark.clients


@pytest.fixture
async def server(
    make_settings: Callable[..., Settings], registry: NpmRegistry
) -> AsyncIterator[RunningServer]:
    # start_server picks the public URL itself; this one names a host other than the vhost's.
    sock = free_socket()
    port = sock.getsockname()[1]
    settings = make_settings(
        port=port,
        npm_upstream=str(registry.url) + "/",
        public_url=f"http://localhost:{port}",
        npm_host="127.0.0.1",
    )
    app = create_app(settings)
    runner = SafeAppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    try:
        yield RunningServer(URL(str(settings.base_url)), app, settings, runner)
    finally:
        await runner.cleanup()


async def test_vhost__npm_install_from_the_registry_root(
    tmp_path: Path, server: RunningServer, registry: NpmRegistry
) -> None:
    root = f"http://127.0.0.1:{server.settings.port}/"
    project = tmp_path / "proj"
    project.mkdir()
    (project / "package.json").write_text(
        json.dumps({"name": "proj", "version": "1.0.0", "dependencies": {"pkg-deps": "^1.0.0"}})
    )
    token = await server.token()
    (project / ".npmrc").write_text(
        f"registry={root}\n//127.0.0.1:{server.settings.port}/:_authToken={token}\n"
    )
    result = await run(
        "npm", "install", "--no-audit", cwd=project, env=isolated_env(tmp_path / "home")
    )
    assert result.returncode == 0, result.output
    installed = json.loads((project / "node_modules/@acme/scoped/package.json").read_text())
    assert installed["version"] == "2.0.0"
    lock = json.loads((project / "package-lock.json").read_text())
    resolved = {entry["resolved"] for path, entry in lock["packages"].items() if path}
    assert resolved == {
        f"{root}pkg-deps/-/pkg-deps-1.0.0.tgz",
        f"{root}pkg-plain/-/pkg-plain-1.1.0.tgz",
        f"{root}@acme/scoped/-/scoped-2.0.0.tgz",
    }
    assert registry.violations == []


async def test_vhost__path_layout_still_answers_on_the_public_name(
    server: RunningServer, registry: NpmRegistry
) -> None:
    token = await server.token()
    port = server.settings.port
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"http://127.0.0.1:{port}/npm/pkg-plain",
            headers={"Host": f"localhost:{port}", "Authorization": f"Bearer {token}"},
        ) as resp,
    ):
        assert resp.status == 200
        doc = await resp.json()
    tarball = doc["versions"]["1.0.0"]["dist"]["tarball"]
    assert tarball == f"http://localhost:{port}/npm/pkg-plain/-/pkg-plain-1.0.0.tgz"
