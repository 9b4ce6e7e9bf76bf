"""Running pkgate as a real separate process, for tests of signals and several processes."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import aiohttp
from yarl import URL

from tests.conftest import free_port


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
                        raise RuntimeError(
                            f"pkgate exited early: {await self.proc.stderr.read()!r}"
                        )  # type: ignore[union-attr]
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
