"""pip, uv and poetry against pkgate with the supply-chain policy on.

What each client prints when pkgate refuses a release: a pinned requirement (``sc-demo==1.1``)
finds no such version on the page (pip: "No matching distribution", uv: "there is no version");
a file fetched directly (a locked file, a URL requirement) answers 403, and pip, uv and poetry all
print the status line, where pkgate puts the reason and the advisory id.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from proxy.supplychain.service import supplychain_key
from tests.conftest import Completed, isolated_env, run

from .conftest import PYPI_BLOCKED_ID, PYPI_BLOCKED_REASON, Policed, feed_records

pytestmark = pytest.mark.clients

MESSAGE = f"sc-demo@1.1 is blocked: {PYPI_BLOCKED_REASON} ({PYPI_BLOCKED_ID})"


def index_url(policed: Policed, secret: str) -> str:
    return f"http://token:{secret}@{policed.server.url.authority}/pypi/simple/"


async def refresh(policed: Policed, records: list[dict[str, Any]]) -> None:
    policed.write_feed(records)
    blocklist = policed.server.app[supplychain_key].blocklist
    assert blocklist is not None
    await blocklist.refresh()


def version_in(site: Path) -> str:
    text = (site / "sc_demo" / "__init__.py").read_text()
    return text.split("'")[1]


async def pip(tools: Path, tmp_path: Path, url: str, *args: str) -> Completed:
    return await run(
        tools / "pip",
        "install",
        "--no-cache-dir",
        "--index-url",
        url,
        "--target",
        tmp_path / "site",
        *args,
        env=isolated_env(tmp_path / "home"),
    )


async def uv_pip(tools: Path, tmp_path: Path, url: str, *args: str) -> Completed:
    return await run(
        tools / "uv",
        "pip",
        "install",
        "--no-cache",
        "--python",
        sys.executable,
        "--index-url",
        url,
        "--target",
        tmp_path / "site",
        *args,
        env=isolated_env(tmp_path / "home"),
    )


def uv_project(tmp_path: Path, policed: Policed, requirement: str) -> Path:
    project = tmp_path / "project"
    project.mkdir(parents=True, exist_ok=True)
    (project / "pyproject.toml").write_text(
        '[project]\nname = "consumer"\nversion = "0.1.0"\nrequires-python = ">=3.11"\n'
        f'dependencies = ["{requirement}"]\n\n[tool.uv]\npackage = false\n'
        '\n[[tool.uv.index]]\nname = "pkgate"\n'
        f'url = "http://{policed.server.url.authority}/pypi/simple"\n'
        'default = true\nauthenticate = "always"\n'
    )
    return project


async def uv(tools: Path, tmp_path: Path, project: Path, secret: str, *args: str) -> Completed:
    environ = isolated_env(
        tmp_path / "home", UV_INDEX_PKGATE_USERNAME="token", UV_INDEX_PKGATE_PASSWORD=secret
    )
    environ.pop("UV_NO_CONFIG")
    return await run(tools / "uv", *args, "--python", sys.executable, cwd=project, env=environ)


def poetry_project(tmp_path: Path, policed: Policed, constraint: str) -> Path:
    project = tmp_path / "project"
    project.mkdir(parents=True, exist_ok=True)
    (project / "pyproject.toml").write_text(
        "[tool.poetry]\npackage-mode = false\n\n"
        f'[tool.poetry.dependencies]\npython = ">=3.11,<4"\nsc-demo = "{constraint}"\n\n'
        '[[tool.poetry.source]]\nname = "pkgate"\n'
        f'url = "http://{policed.server.url.authority}/pypi/simple/"\npriority = "primary"\n'
    )
    return project


async def poetry(tools: Path, tmp_path: Path, project: Path, secret: str, *args: str) -> Completed:
    return await run(
        tools / "poetry",
        *args,
        "--no-interaction",
        cwd=project,
        env=isolated_env(
            tmp_path / "home",
            POETRY_HTTP_BASIC_PKGATE_USERNAME="token",
            POETRY_HTTP_BASIC_PKGATE_PASSWORD=secret,
        ),
    )


def site_packages(venv: Path) -> Path:
    return next(venv.glob("lib/python*/site-packages"))


def file_url(policed: Policed, secret: str, filename: str) -> str:
    """pkgate's URL of an upstream file (as its project page links it), with credentials."""
    path = policed.index.file_path(policed.index.find(filename))
    return f"http://token:{secret}@{policed.server.url.authority}/pypi/files/0{path}"


def served_files(policed: Policed) -> set[str]:
    return {
        r.path.rpartition("/")[2]
        for r in policed.index.file_requests()
        if r.method == "GET" and not r.path.endswith(".metadata")
    }


@pytest.mark.parametrize("client", ["pip", "uv", "poetry"])
async def test_the_newest_allowed_release_is_installed(
    tmp_path: Path, tools: Path, policed: Policed, client: str
) -> None:
    """1.1 is blocked, 1.2 was uploaded yesterday (min_release_age 3d), 1.3 needs Python 4."""
    secret = await policed.server.token()
    if client == "pip":
        result = await pip(tools, tmp_path, index_url(policed, secret), "sc-demo")
        site = tmp_path / "site"
    elif client == "uv":
        result = await uv_pip(tools, tmp_path, index_url(policed, secret), "sc-demo")
        site = tmp_path / "site"
    else:
        project = poetry_project(tmp_path, policed, "*")
        result = await poetry(tools, tmp_path, project, secret, "install", "--no-root")
        site = site_packages(project / ".venv")
    assert result.returncode == 0, result.output
    assert version_in(site) == "1.0"
    assert served_files(policed) <= {"sc_demo-1.0-py3-none-any.whl", "sc_demo-1.0.tar.gz"}


@pytest.mark.parametrize(
    ("client", "shown"),
    [
        ("pip", "No matching distribution found for sc-demo==1.1"),
        ("uv", "there is no version of sc-demo==1.1"),
    ],
)
async def test_a_blocked_release_pinned_is_not_found(
    tmp_path: Path, tools: Path, policed: Policed, client: str, shown: str
) -> None:
    url = index_url(policed, await policed.server.token())
    install = pip if client == "pip" else uv_pip
    result = await install(tools, tmp_path, url, "sc-demo==1.1")
    assert result.returncode != 0, result.output
    assert shown in result.output, result.output


async def test_pip_direct_file_url_of_a_blocked_release_shows_the_reason(
    tmp_path: Path, tools: Path, policed: Policed
) -> None:
    secret = await policed.server.token()
    url = file_url(policed, secret, "sc_demo-1.1-py3-none-any.whl")
    result = await pip(tools, tmp_path, index_url(policed, secret), url)
    assert result.returncode != 0, result.output
    assert f"403 Client Error: {MESSAGE}" in result.output, result.output
    assert "sc_demo-1.1-py3-none-any.whl" not in served_files(policed)


async def test_locked_releases_blocked_later_fail(
    tmp_path: Path, tools: Path, policed: Policed
) -> None:
    """uv and poetry show the reason (from the status line) when the locked file answers 403."""
    secret = await policed.server.token()
    await refresh(policed, [r for r in feed_records() if r["id"] != PYPI_BLOCKED_ID])
    uv_dir = uv_project(tmp_path / "uv", policed, "sc-demo==1.1")
    locked = await uv(tools, tmp_path / "uv", uv_dir, secret, "lock")
    assert locked.returncode == 0, locked.output
    poetry_dir = poetry_project(tmp_path / "poetry", policed, "1.1")
    locked = await poetry(tools, tmp_path / "poetry", poetry_dir, secret, "lock")
    assert locked.returncode == 0, locked.output
    await refresh(policed, feed_records())  # the advisory arrives

    result = await uv(tools, tmp_path / "uv", uv_dir, secret, "sync", "--frozen", "--no-cache")
    assert result.returncode != 0, result.output
    assert f"403 {MESSAGE}" in result.output, result.output
    result = await poetry(tools, tmp_path / "poetry", poetry_dir, secret, "install", "--no-root")
    assert result.returncode != 0, result.output
    assert f"403 Client Error: {MESSAGE}" in result.output, result.output
    assert "sc_demo-1.1-py3-none-any.whl" not in served_files(policed)
