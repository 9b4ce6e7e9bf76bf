"""The web page for people at ``<public path>/``: sign in, tokens, downloads, admin views.

Server-rendered with Jinja2 (aiohttp-jinja2) and one small script; every asset is served by
pkgate itself.  Page paths other than ``/`` live under ``/-/`` so that, with a registry on its
own host name (``npm_host``), no page can shadow a package name.
"""

from __future__ import annotations

import aiohttp_jinja2
import jinja2
from aiohttp import web

from tokenapi.keys import config_key

from .keys import jinja_key, static_key
from .pages import duration, setup_pages
from .static import StaticFiles


def setup_web(app: web.Application) -> None:
    """Add the pages and their assets to the main app (after ``tokenapi.http.setup``)."""
    base = app[config_key].public_url.path.rstrip("/")
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader(__package__, "templates"),
        app_key=jinja_key,
        default_helpers=False,
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    app[jinja_key].filters["duration"] = duration
    static = StaticFiles(f"{base}/-/static")
    app[static_key] = static
    app.router.add_get(f"{base}/-/static/{{name}}", static.handle)
    setup_pages(app, base)
