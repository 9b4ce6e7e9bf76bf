"""Wiring of the token side into an aiohttp application."""

from __future__ import annotations

from aiohttp import web

from .config import TokenApiConfig
from .context import identity_ctx
from .keys import config_key


def setup(app: web.Application, config: TokenApiConfig) -> None:
    """Open the identity resources with the app and add the token API routes."""
    app[config_key] = config
    app.cleanup_ctx.append(identity_ctx)
