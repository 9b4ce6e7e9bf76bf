"""pip, uv and poetry installing through pkgate's simple index from a fake upstream index.

The upstream serves ``demo-app`` (files on a second origin, a yanked and a Python-4-only release,
one release on an origin pkgate does not know) depending on ``tinydep`` (files on the index's own
origin, relative links); each client must resolve ``demo-app 1.0.0`` + ``tinydep 1.0.0``, fetch
every page, ``.metadata`` and file through pkgate and verify the published hashes.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from proxy.keys import metadata_cache_key
from proxy.registry.upstream import USER_AGENT
from tests.conftest import Completed, RunningServer, isolated_env, run
from tests.upstreams.pypi_index import PypiIndex
from tokenapi.issue import ensure_user, issue_token

pytestmark = pytest.mark.clients

EXPECTED_WHEELS = {"demo_app-1.0.0-py3-none-any.whl", "tinydep-1.0.0-py3-none-any.whl"}


def index_url(server: RunningServer, secret: str | None = None) -> str:
    host = server.url.authority if secret is None else f"token:{secret}@{server.url.authority}"
    return f"http://{host}/pypi/simple/"


def assert_fetched_through_pkgate(index: PypiIndex) -> None:
    """Every upstream request came from pkgate, none with credentials, none to the stranger."""
    assert index.violations == []
    assert index.requests
    for recorded in index.requests:
        assert recorded.headers.get("User-Agent") == USER_AGENT, recorded
        assert recorded.server != "foreign", recorded
    fetched = {r.path.rsplit("/", 1)[-1] for r in index.file_requests() if r.method == "GET"}
    assert fetched >= EXPECTED_WHEELS


def assert_installed(site: Path) -> None:
    assert (site / "demo_app" / "__init__.py").read_text() == "VERSION = '1.0.0'\n"
    assert (site / "tinydep" / "__init__.py").read_text() == "VERSION = '1.0.0'\n"


def assert_refused(result: Completed, index: PypiIndex) -> None:
    assert result.returncode != 0, result.output
    assert "401" in result.output, result.output
    # pkgate refused before asking the upstream anything.
    assert index.requests == []


async def revoked_secret(server: RunningServer) -> str:
    user = await ensure_user(server.store, "revoked@example.com")
    token, secret = await issue_token(server.store, user, name="revoked")
    server.validator.forget(await server.store.revoke_token(token.id))
    return secret


Credential = Callable[[RunningServer], Awaitable[str | None]]


async def no_token(server: RunningServer) -> str | None:
    return None


REFUSED = pytest.mark.parametrize("credential", [no_token, revoked_secret], ids=["none", "revoked"])


# --- pip -------------------------------------------------------------------------------------


async def pip_install(tools: Path, tmp_path: Path, url: str) -> tuple[Completed, Path]:
    target = tmp_path / "site"
    result = await run(
        tools / "pip",
        "install",
        # -vv: pip logs a refused index page only at debug level.
        "-vv",
        "--no-cache-dir",
        "--index-url",
        url,
        "--target",
        target,
        "demo-app",
        env=isolated_env(tmp_path / "home"),
    )
    return result, target


async def test_pip__installs_through_pkgate_with_token_in_index_url(
    tools: Path, tmp_path: Path, server: RunningServer, index: PypiIndex
) -> None:
    result, target = await pip_install(tools, tmp_path, index_url(server, await server.token()))
    assert result.returncode == 0, result.output
    assert_installed(target)
    assert_fetched_through_pkgate(index)
    # pip took the core metadata from the .metadata file (PEP 658) before the wheel.
    assert any(r.path.endswith(".whl.metadata") for r in index.file_requests())


@REFUSED
async def test_pip__fails_with_401_without_valid_token(
    tools: Path, tmp_path: Path, server: RunningServer, index: PypiIndex, credential: Credential
) -> None:
    secret = await credential(server)
    url = index_url(server) if secret is None else index_url(server, secret)
    result, _ = await pip_install(tools, tmp_path, url)
    assert_refused(result, index)


# --- uv --------------------------------------------------------------------------------------


async def uv_pip_install(tools: Path, tmp_path: Path, url: str) -> tuple[Completed, Path]:
    target = tmp_path / "site"
    result = await run(
        tools / "uv",
        "pip",
        "install",
        "--no-cache",
        "--python",
        sys.executable,
        "--index-url",
        url,
        "--target",
        target,
        "demo-app",
        env=isolated_env(tmp_path / "home"),
    )
    return result, target


async def test_uv_pip__installs_through_pkgate(
    tools: Path, tmp_path: Path, server: RunningServer, index: PypiIndex
) -> None:
    result, target = await uv_pip_install(tools, tmp_path, index_url(server, await server.token()))
    assert result.returncode == 0, result.output
    assert_installed(target)
    assert_fetched_through_pkgate(index)


async def test_uv_pip__gets_the_index_pages_in_zstd_once_made(
    tools: Path, tmp_path: Path, server: RunningServer, index: PypiIndex
) -> None:
    # uv accepts zstd: its first install has pkgate make the pages' zstd copies, the next one
    # gets them (and must read them: the install is checked).
    cache = server.app[metadata_cache_key]
    url = index_url(server, await server.token())
    first, _ = await uv_pip_install(tools, tmp_path / "first", url)
    assert first.returncode == 0, first.output
    await cache.zstd_settled()
    assert cache.stats.zstd_made >= 1
    assert cache.stats.zstd_answers == 0
    again, target = await uv_pip_install(tools, tmp_path / "again", url)
    assert again.returncode == 0, again.output
    assert_installed(target)
    assert cache.stats.zstd_answers >= cache.stats.zstd_made


@REFUSED
async def test_uv_pip__fails_with_401_without_valid_token(
    tools: Path, tmp_path: Path, server: RunningServer, index: PypiIndex, credential: Credential
) -> None:
    secret = await credential(server)
    url = index_url(server) if secret is None else index_url(server, secret)
    result, _ = await uv_pip_install(tools, tmp_path, url)
    assert_refused(result, index)


def uv_project(tmp_path: Path, server: RunningServer, *, named_index: bool) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    text = (
        '[project]\nname = "consumer"\nversion = "0.1.0"\nrequires-python = ">=3.11"\n'
        'dependencies = ["demo-app"]\n\n[tool.uv]\npackage = false\n'
    )
    if named_index:
        text += (
            '\n[[tool.uv.index]]\nname = "pkgate"\n'
            f'url = "http://{server.url.authority}/pypi/simple"\n'
            'default = true\nauthenticate = "always"\n'
        )
    (project / "pyproject.toml").write_text(text)
    return project


async def uv_sync(tools: Path, tmp_path: Path, project: Path, **env: str) -> Completed:
    environ = isolated_env(tmp_path / "home", **env)
    # The project's own pyproject.toml carries the index configuration under test.
    environ.pop("UV_NO_CONFIG")
    return await run(
        tools / "uv", "sync", "--no-cache", "--python", sys.executable, cwd=project, env=environ
    )


def site_packages(venv: Path) -> Path:
    return next(venv.glob("lib/python*/site-packages"))


async def test_uv_sync__named_index_with_env_credentials(
    tools: Path, tmp_path: Path, server: RunningServer, index: PypiIndex
) -> None:
    project = uv_project(tmp_path, server, named_index=True)
    secret = await server.token()
    result = await uv_sync(
        tools, tmp_path, project, UV_INDEX_PKGATE_USERNAME="token", UV_INDEX_PKGATE_PASSWORD=secret
    )
    assert result.returncode == 0, result.output
    assert_installed(site_packages(project / ".venv"))
    assert_fetched_through_pkgate(index)
    lock = (project / "uv.lock").read_text()
    assert f"http://{server.url.authority}/pypi/files/1/packages/" in lock
    assert secret not in lock
    assert index.find("demo_app-1.0.0-py3-none-any.whl").dist.sha256 in lock


async def test_uv_sync__plain_uv_index_url(
    tools: Path, tmp_path: Path, server: RunningServer, index: PypiIndex
) -> None:
    project = uv_project(tmp_path, server, named_index=False)
    url = index_url(server, await server.token())
    result = await uv_sync(tools, tmp_path, project, UV_INDEX_URL=url)
    assert result.returncode == 0, result.output
    assert_installed(site_packages(project / ".venv"))
    assert_fetched_through_pkgate(index)


@REFUSED
async def test_uv_sync__named_index_fails_with_401_without_valid_token(
    tools: Path, tmp_path: Path, server: RunningServer, index: PypiIndex, credential: Credential
) -> None:
    project = uv_project(tmp_path, server, named_index=True)
    secret = await credential(server)
    creds = {} if secret is None else {"UV_INDEX_PKGATE_PASSWORD": secret}
    result = await uv_sync(tools, tmp_path, project, UV_INDEX_PKGATE_USERNAME="token", **creds)
    assert result.returncode != 0, result.output
    assert index.requests == []
    if secret is None:
        # authenticate = "always": uv refuses to ask without credentials at all.
        assert "Missing credentials" in result.output, result.output
    else:
        assert "401" in result.output, result.output


@REFUSED
async def test_uv_sync__plain_uv_index_url_fails_with_401_without_valid_token(
    tools: Path, tmp_path: Path, server: RunningServer, index: PypiIndex, credential: Credential
) -> None:
    project = uv_project(tmp_path, server, named_index=False)
    secret = await credential(server)
    url = index_url(server) if secret is None else index_url(server, secret)
    result = await uv_sync(tools, tmp_path, project, UV_INDEX_URL=url)
    assert_refused(result, index)


# --- poetry ----------------------------------------------------------------------------------


def poetry_project(tmp_path: Path, server: RunningServer) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text(
        "[tool.poetry]\npackage-mode = false\n\n"
        '[tool.poetry.dependencies]\npython = ">=3.11,<4"\ndemo-app = "*"\n\n'
        '[[tool.poetry.source]]\nname = "pkgate"\n'
        f'url = "http://{server.url.authority}/pypi/simple/"\npriority = "primary"\n'
    )
    return project


async def poetry_install(tools: Path, tmp_path: Path, project: Path, **env: str) -> Completed:
    return await run(
        tools / "poetry",
        "install",
        "--no-root",
        "--no-interaction",
        cwd=project,
        env=isolated_env(tmp_path / "home", **env),
    )


async def test_poetry__installs_through_pkgate_with_http_basic(
    tools: Path, tmp_path: Path, server: RunningServer, index: PypiIndex
) -> None:
    project = poetry_project(tmp_path, server)
    result = await poetry_install(
        tools,
        tmp_path,
        project,
        POETRY_HTTP_BASIC_PKGATE_USERNAME="token",
        POETRY_HTTP_BASIC_PKGATE_PASSWORD=await server.token(),
    )
    assert result.returncode == 0, result.output
    assert_installed(site_packages(project / ".venv"))
    assert_fetched_through_pkgate(index)
    lock = (project / "poetry.lock").read_text()
    assert index.find("demo_app-1.0.0-py3-none-any.whl").dist.sha256 in lock


@REFUSED
async def test_poetry__fails_with_401_without_valid_token(
    tools: Path, tmp_path: Path, server: RunningServer, index: PypiIndex, credential: Credential
) -> None:
    project = poetry_project(tmp_path, server)
    secret = await credential(server)
    creds = {} if secret is None else {"POETRY_HTTP_BASIC_PKGATE_PASSWORD": secret}
    result = await poetry_install(
        tools, tmp_path, project, POETRY_HTTP_BASIC_PKGATE_USERNAME="token", **creds
    )
    assert result.returncode != 0, result.output
    assert "Authorization error accessing" in result.output, result.output
    assert index.requests == []
