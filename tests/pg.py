"""A throwaway PostgreSQL server for the tests: the distribution's binaries, run as an unprivileged
user (``postgres`` when the tests run as root) on a free loopback port, data in a temporary
directory, password authentication, removed at the end.

``tests/run.sh`` installs the package when it is missing; the fixtures in ``conftest.py`` start one
server per test session and hand each test a fresh database.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

USER = "pkgate"


def bindir() -> Path | None:
    """Where initdb/pg_ctl/psql live: the newest /usr/lib/postgresql/N/bin, else PATH."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One PostgreSQL cluster; ``url()`` names a database on it."""

    def __init__(self, bin_dir: Path, root: Path | None = None) -> None:
        self.bin = bin_dir
        self.root = Path(root or tempfile.mkdtemp(prefix="pkgate-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = _free_port()
        self.password = secrets.token_urlsafe(18)
        self._names = itertools.count(1)
        self.as_user: str | None = None
        if os.geteuid() == 0:
            # PostgreSQL refuses to run as root: run it as the package's unprivileged user.
            self.as_user = "postgres" if _user_exists("postgres") else "nobody"

    def _cmd(self, *args: str | Path) -> list[str]:
        cmd = [str(a) for a in args]
        if self.as_user:
            return ["runuser", "-u", self.as_user, "--", *cmd]
        return cmd

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if self.as_user:
            entry = pwd.getpwnam(self.as_user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        subprocess.run(
            self._cmd(
                self.bin / "initdb",
                "-D",
                self.data,
                "-U",
                USER,
                "--pwfile",
                pwfile,
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
            ),
            check=True,
            capture_output=True,
        )
        pwfile.unlink()

    def start(self) -> None:
        options = " ".join(
            [
                f"-p {self.port}",
                "-c listen_addresses=127.0.0.1",
                "-c unix_socket_directories=''",
                "-c max_connections=300",
                "-c fsync=off",  # the tests kill pkgate, never PostgreSQL's host
                "-c full_page_writes=off",
                "-c shared_buffers=32MB",
            ]
        )
        subprocess.run(
            self._cmd(
                self.bin / "pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w", "start"
            ),
            check=True,
            capture_output=True,
        )

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(
            self._cmd(self.bin / "pg_ctl", "-D", self.data, "-m", mode, "-w", "stop"),
            check=False,
            capture_output=True,
        )

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{USER}:{self.password}@127.0.0.1:{self.port}/{dbname}"

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        done = subprocess.run(
            [
                str(self.bin / "psql"),
                "-X",
                "-q",
                "-t",
                "-A",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
                self.url(dbname),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        return done.stdout.strip()

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        name = f"t{os.getpid()}_{next(self._names)}"
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def start_server() -> PostgresServer | None:
    """A running throwaway server, or None when PostgreSQL is not installed."""
    found = bindir()
    if found is None:
        return None
    server = PostgresServer(found)
    try:
        server.init()
        server.start()
    except BaseException:
        with contextlib.suppress(Exception):
            server.destroy()
        raise
    return server
