"""Shared fixtures: settings, a real pkgate server on loopback, tokens and the test clients."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp import web
from yarl import URL

from proxy.app import create_app
from proxy.server import SafeAppRunner
from proxy.settings import Settings
from tests import pg
from tests.requires import require
from tokenapi.issue import ensure_user, issue_token
from tokenapi.keys import config_key, recorder_key, store_key, validator_key
from tokenapi.lastused import UsageRecorder
from tokenapi.store import Store
from tokenapi.validation import TokenValidator

if TYPE_CHECKING:  # these import helpers from here: load them lazily
    from tests.smtp import SmtpServer
    from tests.upstreams.npm_registry import NpmRegistry
    from tests.upstreams.pypi_index import PypiIndex

TOP = Path(__file__).resolve().parent.parent


def free_socket() -> socket.socket:
    """A listening loopback socket on a free port, for a server to take over."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningServer:
    """A pkgate app served over real HTTP in the test's event loop."""

    url: URL
    app: web.Application
    settings: Settings
    runner: web.AppRunner

    @property
    def store(self) -> Store:
        return self.app[store_key]

    @property
    def validator(self) -> TokenValidator:
        return self.app[validator_key]

    @property
    def recorder(self) -> UsageRecorder:
        return self.app[recorder_key]

    async def token(self, email: str = "dev@example.com", name: str = "test") -> str:
        """Create a user (if needed) and a token; returns the secret."""
        user = await ensure_user(self.store, email)
        _, secret = await issue_token(self.store, user, name=name)
        return secret

    async def close(self) -> None:
        await self.runner.cleanup()


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        base: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "host": "127.0.0.1",
            "port": 0,
            "last_used_flush": 0.2,
        }
        base.update(overrides)
        return Settings(**base)

    return make


StartServer = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def start_server(make_settings: Callable[..., Settings]) -> AsyncIterator[StartServer]:
    """Start pkgate on a free port; keyword arguments override settings (``clock=`` replaces
    the token side's wall clock)."""
    started: list[RunningServer] = []

    async def start(**overrides: Any) -> RunningServer:
        sock = free_socket()
        port = sock.getsockname()[1]
        overrides.setdefault("public_url", f"http://127.0.0.1:{port}")
        clock = overrides.pop("clock", None)
        settings = make_settings(port=port, **overrides)
        app = create_app(settings)
        if clock is not None:  # a controllable wall clock for token expiry and OIDC checks
            app[config_key] = replace(app[config_key], clock=clock)
        runner = SafeAppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.SockSite(runner, sock)
        await site.start()
        server = RunningServer(URL(str(settings.base_url)), app, settings, runner)
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        await server.close()


@pytest.fixture
def mail() -> Iterator[SmtpServer]:
    """A real SMTP server (aiosmtpd, tests/smtp.py) on a free port; its ``inbox`` holds the mail."""
    from tests.smtp import smtp_server

    with smtp_server() as server:
        yield server


@pytest.fixture
async def registry() -> AsyncIterator[NpmRegistry]:
    """The fake npm registry (tests/upstreams/npm_registry.py) on a free port."""
    from tests.upstreams.npm_registry import serve_registry

    async with serve_registry() as reg:
        yield reg


@pytest.fixture
async def index() -> AsyncIterator[PypiIndex]:
    """The fake PyPI index and files host (tests/upstreams/pypi_index.py) on free ports."""
    from tests.upstreams.pypi_index import serve_index

    async with serve_index() as idx:
        yield idx


def upstreams(registry: NpmRegistry | None, index: PypiIndex | None = None) -> dict[str, Any]:
    """The settings that point pkgate at the given fake upstreams, for ``start_server(**...)``."""
    settings: dict[str, Any] = {}
    if registry is not None:
        settings["npm_upstream"] = str(registry.url) + "/"
    if index is not None:
        settings["pypi_upstream"] = str(index.index_url)
        settings["pypi_files_upstream"] = (str(index.files_url) + "/",)
    return settings


@pytest.fixture
async def server(
    start_server: StartServer, registry: NpmRegistry, index: PypiIndex
) -> RunningServer:
    """pkgate in front of both fake upstreams, with default settings otherwise."""
    return await start_server(**upstreams(registry, index))


async def serve_app(app: web.Application) -> tuple[web.AppRunner, URL]:
    """Serve any aiohttp app (fake upstreams, decoys) on a free loopback port."""
    sock = free_socket()
    runner = SafeAppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    return runner, URL(f"http://127.0.0.1:{sock.getsockname()[1]}")


@pytest.fixture(scope="session")
def postgres() -> Iterator[pg.PostgresServer]:
    """One throwaway PostgreSQL server for the session (see tests/pg.py).

    Skipped when PostgreSQL is not installed, except under tests/run.sh or CI (tests/requires.py).
    """
    server = pg.start_server()
    require(server, "PostgreSQL")
    assert server is not None
    yield server
    server.destroy()


@pytest.fixture
def postgres_url(postgres: pg.PostgresServer) -> str:
    """A fresh, empty PostgreSQL database for one test."""
    return postgres.create_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The store URL of a fresh database, once per backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db' / 'pkgate.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture(scope="session")
def tools() -> Path:
    """Directory of the pinned client executables (pnpm, yarn, bun, pip, uv, poetry)."""
    dest = Path(os.environ.get("PKGATE_TOOLS", TOP / ".tools"))
    subprocess.run(
        ["bash", str(TOP / "tests" / "tools" / "install.sh")],
        check=True,
        env={**os.environ, "PKGATE_TOOLS": str(dest), "PYTHON": sys.executable},
    )
    return dest / "bin"


@dataclass
class Completed:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


async def run(
    *args: str | Path,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    input: bytes | None = None,
    timeout: float = 240,
) -> Completed:
    """Run a command without blocking the event loop (the server under test lives in it)."""
    proc = await asyncio.create_subprocess_exec(
        *[str(a) for a in args],
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(input), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return Completed(
        proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")
    )


def pkgate_cmd(*args: str) -> list[str]:
    """The pkgate CLI as a subprocess command line using this interpreter."""
    return [sys.executable, "-m", "proxy", *args]


def isolated_env(home: Path, **extra: str) -> dict[str, str]:
    """An environment for client subprocesses that ignores the machine's own configuration."""
    home.mkdir(parents=True, exist_ok=True)
    keep = {
        k: v for k, v in os.environ.items() if k in {"PATH", "LANG", "LC_ALL", "TERM", "TMPDIR"}
    }
    env = {
        **keep,
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "npm_config_userconfig": str(home / ".npmrc"),
        "npm_config_globalconfig": str(home / ".npmrc-global"),
        "npm_config_cache": str(home / ".npm"),
        "npm_config_update_notifier": "false",
        "npm_config_fund": "false",
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_INPUT": "1",
        "UV_NO_CONFIG": "1",
        "UV_CACHE_DIR": str(home / ".uv-cache"),
        "UV_PYTHON_DOWNLOADS": "never",
        "POETRY_CONFIG_DIR": str(home / ".poetry-config"),
        "POETRY_CACHE_DIR": str(home / ".poetry-cache"),
        "POETRY_VIRTUALENVS_IN_PROJECT": "true",
        "POETRY_NO_INTERACTION": "1",
        "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring",
        "YARN_ENABLE_TELEMETRY": "0",
        "YARN_ENABLE_GLOBAL_CACHE": "false",
        "BUN_INSTALL_CACHE_DIR": str(home / ".bun-cache"),
        "DO_NOT_TRACK": "1",
        "CI": "true",
    }
    env.update(extra)
    return env


__all__ = [
    "Completed",
    "RunningServer",
    "StartServer",
    "free_port",
    "isolated_env",
    "pkgate_cmd",
    "replace",
    "run",
    "serve_app",
]


@pytest.fixture
def needs_linux() -> None:
    """Tests that read /proc: skipped elsewhere, a failure under tests/run.sh and CI."""
    require(sys.platform.startswith("linux"), "Linux (/proc)")
