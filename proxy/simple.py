"""The Python simple index endpoint under ``<public_url>/pypi/simple/``."""

from __future__ import annotations

from aiohttp import web

from .settings import Settings


def setup_routes(app: web.Application, settings: Settings) -> None:
    """Register the index routes."""
