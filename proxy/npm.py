"""The npm registry endpoint under ``<public_url>/npm/``."""

from __future__ import annotations

from aiohttp import web

from tokenapi.keys import request_token

from .settings import Settings


async def ping(request: web.Request) -> web.Response:
    """``npm ping`` (and pnpm's ``?write=true``)."""
    return web.json_response({})


async def whoami(request: web.Request) -> web.Response:
    """``npm whoami``: the email of the token's owner."""
    token = request_token(request)
    if token is None:
        return web.json_response({"error": "Not logged in"}, status=401)
    return web.json_response({"username": token.email})


def setup_routes(app: web.Application, settings: Settings) -> None:
    app.router.add_get("/-/ping", ping)
    app.router.add_get("/-/whoami", whoami)
