"""Running pkgate as a real separate process, for tests of signals and several processes."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
from yarl import URL

from tests.conftest import free_port, run


class ServerProcess:
    """``python -m proxy serve`` on a free port, ready once /healthz answers."""

    def __init__(self, data_dir: Path, args: Sequence[str], env: dict[str, str] | None = None):
        self.data_dir = data_dir
        self.port = free_port()
        self.url = URL(f"http://127.0.0.1:{self.port}")
        self.args = list(args)
        self.env = {**os.environ, **(env or {})}
        self.proc: asyncio.subprocess.Process | None = None
        self.stderr = b""

    async def start(self, timeout: float = 20.0) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "proxy",
            "serve",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            *self.args,
            env=self.env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(timeout):
                while True:
                    if self.proc.returncode is not None:
                        assert self.proc.stderr is not None
                        raise RuntimeError(
                            f"pkgate exited early: {await self.proc.stderr.read()!r}"
                        )
                    try:
                        async with http.get(self.url / "healthz") as resp:
                            if resp.status == 200:
                                return
                    except aiohttp.ClientConnectionError:
                        pass
                    await asyncio.sleep(0.05)

    async def stop(self, sig: int = 15, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        _, err = await asyncio.wait_for(self.proc.communicate(), timeout)
        self.stderr = err or b""
        return self.proc.returncode or 0


def serve_args(
    port: int, data_dir: Path, *args: str, upstream: str = "http://127.0.0.1:9/"
) -> list[str]:
    """``serve`` arguments for pkgate on ``port`` with its data in ``data_dir``, the npm upstream
    ``upstream`` (by default a port nothing listens on) and the access log off; ``args`` follow."""
    return [
        "serve",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--npm-upstream",
        upstream,
        "--access-log",
        "false",
        *args,
    ]


class LoggedProcess:
    """A subprocess whose stderr lines are collected in ``lines`` as they come."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._new_line = asyncio.Event()
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def spawn(self, *cmd: str, cwd: Path | None = None) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *cmd, cwd=cwd, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip())
            self._new_line.set()

    async def next_line(self) -> None:
        """Wait until another stderr line arrives (or stderr ends)."""
        self._new_line.clear()
        await self._new_line.wait()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


@asynccontextmanager
async def running_nginx(
    binary: str | None, conf: Path, work: Path, port: int
) -> AsyncIterator[asyncio.subprocess.Process]:
    """nginx with ``conf`` (prefix ``work``), checked by ``nginx -t`` first, once it accepts
    connections on ``port``; terminated on exit."""
    assert binary is not None
    checked = await run(binary, "-t", "-c", conf, "-p", work)
    assert checked.returncode == 0, checked.output
    nginx = await asyncio.create_subprocess_exec(
        binary, "-c", str(conf), "-p", str(work), "-g", "daemon off;",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with asyncio.timeout(20):
            while True:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    assert nginx.returncode is None, (work / "error.log").read_text()
                    await asyncio.sleep(0.05)
                    continue
                writer.close()
                await writer.wait_closed()
                break
        yield nginx
    finally:
        if nginx.returncode is None:
            nginx.terminate()
        await nginx.wait()
