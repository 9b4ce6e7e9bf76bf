"""Where the registries are mounted: under the public URL's path, and optionally on their own hosts.

The default layout serves npm at ``<public_url>/npm/`` and the index at
``<public_url>/pypi/simple/``.  With ``npm_host`` and/or ``pypi_host`` set, the same registry is
also served at the root of that host name (``https://npm.example.com/``,
``https://pypi.example.com/simple/``), as hosted registry proxies do, chosen by the request's
``Host`` header.  Routes of the main app itself (the token API, ops) keep answering on every host:
aiohttp tries host-matched sub-apps before anything else, so the host rule here yields whenever a
main-app route matches the request.

Each mounted registry app carries ``registry_base_key``: the absolute URL at which that mount is
reached (scheme and port from ``public_url``), for handlers that write URLs into responses.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from aiohttp.web_urldispatcher import AbstractResource, Domain
from yarl import URL

from .compat import add_domain_subapp
from .gate import EarlyAnswer, early_answers_key, registry_gate
from .keys import registry_base_key
from .registry.pipeline import Registry, registry_key
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


class YieldingHost(Domain):
    """A host-name rule that gives way to the routes the main app itself defines."""

    def __init__(self, domain: str, main: web.Application) -> None:
        super().__init__(domain)
        self._main = main
        self._own: list[AbstractResource] | None = None

    def _own_resources(self) -> list[AbstractResource]:
        if self._own is None:
            # Read once the app is running (all routes are in): the main app's plain routes and
            # its sub-apps (the token API), but not the registries' path mounts, which would
            # claim package names such as "npm" for the main host.
            self._own = [
                r
                for r in self._main.router.resources()
                if not (isinstance(r, web.PrefixedSubAppResource) and _is_registry(r))
            ]
        return self._own

    async def match(self, request: web.Request) -> bool:
        if not await super().match(request):
            return False
        for resource in self._own_resources():
            found, _ = await resource.resolve(request)
            # A sub-app resolves every path under its prefix; only a route it has counts (so a
            # package called "api" is still the registry's).
            if found is not None and found.http_exception is None:
                return False
        return True


def _is_registry(resource: web.PrefixedSubAppResource) -> bool:
    app = resource.get_info().get("app")
    return isinstance(app, web.Application) and registry_base_key in app


def registry_app(
    root: web.Application,
    ecosystem: str,
    challenge: str,
    setup_routes: RouteSetup,
    settings: Settings,
    base: URL,
) -> web.Application:
    """One registry's sub-application: its gate (``proxy.gate``), its routes, and where it lives.

    The gate reads the shared state (validator, limiters, metrics) from ``root`` directly:
    ``request.config_dict`` builds a new chain view on every access, which the warm path feels.
    """
    early: list[EarlyAnswer] = []
    sub = web.Application(middlewares=[registry_gate(ecosystem, challenge, root, early)])
    sub[early_answers_key] = early
    sub[registry_base_key] = base
    registry = root.get(registry_key)
    if registry is None:
        registry = Registry(root)
        root[registry_key] = registry
    sub[registry_key] = registry
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
    sub = registry_app(app, name, challenge, setup_routes, settings, base)
    app.add_subapp(base.path.rstrip("/"), sub)
    if host:
        vhost = registry_app(
            app, name, challenge, setup_routes, settings, vhost_base(settings, host)
        )
        rule = YieldingHost(host, app)
        # Application.add_domain with our own rule: aiohttp takes no custom rule publicly.
        add_domain_subapp(app, rule, vhost)
