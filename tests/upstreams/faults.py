"""Failures the fake upstreams can be switched to, shared by the npm registry and the index."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

Behaviour = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Faults:
    """Behaviours a test installs as overrides; ``release`` ends every ``hang``."""

    release: asyncio.Event

    async def hang(self, request: web.Request) -> web.StreamResponse:
        """Answer nothing until ``release`` is set (or the server closes)."""
        await self.release.wait()
        return web.json_response({"error": "released"}, status=503)

    @staticmethod
    def status(code: int) -> Behaviour:
        async def answer(request: web.Request) -> web.StreamResponse:
            return web.json_response({"error": f"status {code}"}, status=code)

        return answer

    @staticmethod
    async def broken_body(request: web.Request) -> web.StreamResponse:
        """Promise 1 MB, send a little, then cut the connection."""
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = 1024 * 1024
        await resp.prepare(request)
        await resp.write(b"x" * 1000)
        assert request.transport is not None
        request.transport.close()
        return resp
