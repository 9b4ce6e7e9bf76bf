"""Where the registries are mounted: under the public URL's path, and optionally on their own hosts.

The default layout serves npm at ``<public_url>/npm/`` and the index at
``<public_url>/pypi/simple/``.  With ``npm_host`` and/or ``pypi_host`` set, the same registry is
also served at the root of that host name (``https://npm.example.com/``,
``https://pypi.example.com/simple/``), as hosted registry proxies do, chosen by the request's
``Host`` header.  Routes of the main app (the token API, ops) are matched first, so they answer on
every host.

Each mounted registry app carries ``registry_base_key``: the absolute URL at which that mount is
reached (scheme and port from ``public_url``), for handlers that write URLs into responses.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from yarl import URL

from .auth import registry_auth_middleware
from .keys import registry_base_key
from .settings import Settings

RouteSetup = Callable[[web.Application, Settings], None]


def vhost_base(settings: Settings, host: str) -> URL:
    """The root URL of a registry served on its own host name."""
    base = settings.base_url
    return base.with_host(host).with_port(base.explicit_port).with_path("/")


def path_base(settings: Settings, name: str) -> URL:
    """The URL of a registry mounted under the public URL's path, with a trailing slash."""
    base = settings.base_url
    return base.with_path(base.path.rstrip("/") + f"/{name}/")


def registry_app(
    ecosystem: str, challenge: str, setup_routes: RouteSetup, settings: Settings, base: URL
) -> web.Application:
    """One registry's sub-application: its auth middleware, its routes, and where it lives."""
    sub = web.Application(middlewares=[registry_auth_middleware(ecosystem, challenge)])
    sub[registry_base_key] = base
    setup_routes(sub, settings)
    return sub


def mount_registry(
    app: web.Application,
    settings: Settings,
    *,
    name: str,
    challenge: str,
    setup_routes: RouteSetup,
    host: str | None,
) -> None:
    """Serve a registry at ``<public_url>/<name>/``, and at the root of ``host`` when set."""
    base = path_base(settings, name)
    sub = registry_app(name, challenge, setup_routes, settings, base)
    app.add_subapp(base.path.rstrip("/"), sub)
    if host:
        vhost = vhost_base(settings, host)
        app.add_domain(host, registry_app(name, challenge, setup_routes, settings, vhost))
