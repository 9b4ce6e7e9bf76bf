"""Typed application keys of the web pages."""

from __future__ import annotations

import jinja2
from aiohttp import web

from .static import StaticFiles

jinja_key = web.AppKey("web_jinja", jinja2.Environment)
static_key = web.AppKey("web_static", StaticFiles)
