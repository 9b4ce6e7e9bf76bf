"""A fresh machine (SPEC §20): with neither upstream set, pkgate finds both from npm's and pip's
configuration, says where each came from, and serves them; explicit settings and --no-discover
win.  Every configuration here points at the local fake upstreams."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import aiohttp
import pytest
from pip._internal.models.index import PyPI
from yarl import URL

from proxy import discover
from proxy.discover import Found, Missing
from tests.conftest import isolated_env, pkgate_cmd, run
from tests.procs import ServerProcess
from tests.requires import require
from tests.upstreams.npm_registry import NpmRegistry
from tests.upstreams.pypi_index import PypiIndex

NPM = shutil.which("npm")
OWN = URL("http://127.0.0.1:8080")


@pytest.fixture
def needs_npm() -> None:
    require(NPM, "npm")


def machine(home: Path, npm_registry: str | None, pip_index: str | None) -> dict[str, str]:
    """A user's environment whose npm and pip configuration name the given upstreams."""
    env = isolated_env(home)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    if npm_registry is not None:
        (home / ".npmrc").write_text(f"registry={npm_registry}\n")
    if pip_index is not None:
        (home / "pip.conf").write_text(f"[global]\nindex-url = {pip_index}\n")
        env["PIP_CONFIG_FILE"] = str(home / "pip.conf")
    return env


@pytest.mark.usefixtures("needs_npm")
@pytest.mark.parametrize("workers", ["1", "2"])
async def test_serve__discovers_both_upstreams_and_serves_them(
    tmp_path: Path, registry: NpmRegistry, index: PypiIndex, workers: str
) -> None:
    npm_url, pip_url = f"{registry.url}/", str(index.index_url)
    env = machine(tmp_path / "home", npm_url, pip_url)
    server = ServerProcess(tmp_path / "data", ["--workers", workers])
    server.env = env
    await server.start()
    try:
        made = await run(
            *pkgate_cmd("token", "create", "--email", "new@example.com"),
            "--data-dir",
            str(tmp_path / "data"),
            env=env,
        )
        secret = made.stdout.strip()
        async with aiohttp.ClientSession() as http:
            bearer = {"Authorization": f"Bearer {secret}"}
            async with http.get(server.url / "npm" / "pkg-plain", headers=bearer) as resp:
                assert resp.status == 200
                doc = await resp.json(content_type=None)
            tarball = doc["versions"]["1.1.0"]["dist"]["tarball"]
            assert tarball.startswith(f"{server.url}/npm/")
            async with http.get(tarball, headers=bearer) as resp:
                assert resp.status == 200
                assert len(await resp.read()) > 0
            basic = {"Authorization": aiohttp.encode_basic_auth("token", secret)}
            page_url = server.url / "pypi" / "simple" / "tinydep" / ""
            async with http.get(page_url, headers=basic) as resp:
                assert resp.status == 200
                assert "tinydep-1.0.0-py3-none-any.whl" in await resp.text()
    finally:
        await server.stop()
    lines = server.stderr.decode().splitlines()
    assert any(
        line.startswith(
            f"pkgate: npm upstream {npm_url} (discovered from `npm config get registry`"
        )
        for line in lines
    ), lines
    assert any(
        line.startswith(f"pkgate: PyPI upstream {pip_url} (discovered from index-url in [global]")
        and str(tmp_path / "home" / "pip.conf") in line
        for line in lines
    ), lines
    assert registry.requests
    assert index.requests


@pytest.mark.usefixtures("needs_npm")
async def test_serve__an_explicit_upstream_wins_and_nothing_is_discovered(
    tmp_path: Path, registry: NpmRegistry, index: PypiIndex
) -> None:
    env = machine(tmp_path / "home", f"{registry.url}/", str(index.index_url))
    server = ServerProcess(tmp_path / "data", ["--pypi-upstream", str(index.index_url)])
    server.env = env
    await server.start()
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(server.url / "npm" / "-" / "ping") as resp,
        ):
            assert resp.status == 404  # npm was not discovered: its routes do not exist
    finally:
        await server.stop()
    assert "discovered" not in server.stderr.decode()
    assert not registry.requests


@pytest.mark.usefixtures("needs_npm")
async def test_serve__no_discover_refuses_with_one_line(tmp_path: Path) -> None:
    env = machine(tmp_path / "home", "http://127.0.0.1:9/", "http://127.0.0.1:9/simple/")
    result = await run(*pkgate_cmd("serve", "--no-discover", "--data-dir", str(tmp_path)), env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "npm_upstream" in lines[0]
    assert "discovered" not in lines[0]


def test_fill_upstreams__nothing_found_is_one_line_saying_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from proxy.settings import Settings, SettingsError

    monkeypatch.setattr(discover, "pypi_index", lambda env, own: Missing("pip is not importable"))
    with pytest.raises(SettingsError) as err:
        discover.fill_upstreams(Settings(), {"PATH": str(tmp_path)}, print)
    message = str(err.value)
    assert "\n" not in message
    assert "npm: npm is not on PATH; PyPI: pip is not importable" in message
    assert "npm_upstream" in message


@pytest.mark.usefixtures("needs_npm")
def test_npm_registry__from_npm_config(tmp_path: Path) -> None:
    env = machine(tmp_path, "http://127.0.0.1:4873/npm", None)
    found = discover.npm_registry(env, OWN)
    assert found == Found("http://127.0.0.1:4873/npm/", f"`npm config get registry` ({NPM})")


@pytest.mark.usefixtures("needs_npm")
@pytest.mark.parametrize(
    ("configured", "why"),
    [
        ("http://127.0.0.1:8080/npm/", "points at pkgate itself"),
        ("http://localhost:8080/npm/", "points at pkgate itself"),
        ("https://127.0.0.1:8080/", "points at pkgate itself"),
        ("file:///srv/npm/", "is not an http(s) URL"),
    ],
)
def test_npm_registry__unusable_urls_are_not_taken(
    tmp_path: Path, configured: str, why: str
) -> None:
    found = discover.npm_registry(machine(tmp_path, configured, None), OWN)
    assert isinstance(found, Missing)
    assert why in found.reason
    assert "secret" not in found.reason


def test_pypi_index__from_the_pip_config_file(tmp_path: Path) -> None:
    env = machine(tmp_path, None, "http://127.0.0.1:3141/root/pypi/+simple/")
    found = discover.pypi_index(env, OWN)
    assert isinstance(found, Found)
    assert found.url == "http://127.0.0.1:3141/root/pypi/+simple/"
    assert found.source == f"index-url in [global] of {tmp_path / 'pip.conf'}"
    assert found.files == ()


def test_pypi_index__install_section_beats_global_and_env_beats_both(tmp_path: Path) -> None:
    env = machine(tmp_path, None, "http://127.0.0.1:1/simple/")
    with (tmp_path / "pip.conf").open("a") as fh:
        fh.write("[install]\nindex-url = http://127.0.0.1:2/simple/\n")
    found = discover.pypi_index(env, OWN)
    assert isinstance(found, Found)
    assert found.url == "http://127.0.0.1:2/simple/"
    assert found.source.startswith("index-url in [install]")
    env["PIP_INDEX_URL"] = "http://127.0.0.1:3/simple"
    found = discover.pypi_index(env, OWN)
    assert found == Found("http://127.0.0.1:3/simple/", "PIP_INDEX_URL")


def test_pypi_index__the_default_index_of_our_pip_with_its_file_storage(tmp_path: Path) -> None:
    env = machine(tmp_path, None, None)  # PIP_CONFIG_FILE=/dev/null: no configuration at all
    found = discover.pypi_index(env, OWN)
    assert isinstance(found, Found)
    assert found.url == PyPI.simple_url.rstrip("/") + "/"
    assert found.files == (f"https://{PyPI.file_storage_domain}/",)
    assert found.source.startswith("the default index of pip ")
    assert sys.prefix in found.source


def test_pypi_index__an_index_with_credentials_is_not_taken_nor_echoed(tmp_path: Path) -> None:
    env = machine(tmp_path, None, "http://token:pkg_hunter2@127.0.0.1:8080/pypi/simple/")
    found = discover.pypi_index(env, OWN)
    assert isinstance(found, Missing)
    assert "carries credentials" in found.reason
    assert "hunter2" not in found.reason


def test_fill_upstreams__explicit_setting_or_off_means_no_discovery(tmp_path: Path) -> None:
    from proxy.settings import Settings

    said: list[str] = []
    explicit = Settings(npm_upstream="http://127.0.0.1:9/")
    assert discover.fill_upstreams(explicit, {"PATH": ""}, said.append) is explicit
    off = Settings(discover=False)
    assert discover.fill_upstreams(off, {"PATH": ""}, said.append) is off
    assert said == []


def test_fill_upstreams__default_index_brings_its_file_origin(tmp_path: Path) -> None:
    from proxy.settings import Settings

    env = machine(tmp_path, None, None)
    env["PATH"] = str(tmp_path)  # no npm
    said: list[str] = []
    filled = discover.fill_upstreams(Settings(), env, said.append)
    assert filled.npm_upstream is None
    assert filled.pypi_upstream == PyPI.simple_url.rstrip("/") + "/"
    assert filled.pypi_files_upstream == (f"https://{PyPI.file_storage_domain}/",)
    assert said[0] == "no npm upstream: npm is not on PATH (set npm_upstream to serve npm)"
    assert said[1].startswith(
        f"PyPI upstream {PyPI.simple_url.rstrip('/') + '/'} (discovered from the default"
    )
    assert json.dumps(said)  # plain text lines
