"""Typed application keys for the registry-facing side."""

from __future__ import annotations

from aiohttp import web

from .settings import Settings
from .upstream import Upstream

settings_key = web.AppKey("settings", Settings)
upstream_key = web.AppKey("upstream", Upstream)
