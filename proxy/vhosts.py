"""Where the registries are mounted: under the public URL's path, and optionally on their own hosts.

The default layout serves npm at ``<public_url>/npm/`` and the index at
``<public_url>/pypi/simple/``: routes of the main app under that path, so a warm request is
resolved once, by the main router.  With ``npm_host`` and/or ``pypi_host`` set, the same registry
is also served at the root of that host name (``https://npm.example.com/``,
``https://pypi.example.com/simple/``), as hosted registry proxies do, chosen by the request's
``Host`` header: a sub-application of its own there.  Routes of the main app itself (the token
API, ops) keep answering on every host: aiohttp tries host-matched sub-apps before anything else,
so the host rule here yields whenever a main-app route matches the request.

Each mount is a ``RegistryMount``: the router its routes go to, the path prefix, the absolute URL
at which it is reached (scheme and port from ``public_url``, for handlers that write URLs into
responses) and the gate (``proxy.gate``) every one of its routes is behind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from aiohttp import hdrs, web
from aiohttp.web_urldispatcher import AbstractResource, Domain
from yarl import URL

from .compat import add_domain_subapp
from .errors import Step
from .gate import RegistryGate
from .registry.pipeline import Registry, registry_key
from .settings import Settings


@dataclass(slots=True)
class RegistryMount:
    """Where one registry's routes go, and the gate in front of every one of them."""

    router: web.UrlDispatcher
    prefix: str  # path of the mount without trailing slash: "/npm", "/base/npm" or ""
    base: URL  # absolute URL of the mount, with a trailing slash
    registry: Registry
    gate: RegistryGate
    resources: list[AbstractResource] = field(default_factory=list)

    def add(self, method: str, path: str, handler: Step) -> None:
        """Route ``method`` on ``path`` (below the mount) to ``handler``, behind the gate; GET
        routes answer HEAD too."""
        guarded = self.gate.guard(handler)
        if method == hdrs.METH_GET:
            route = self.router.add_get(self.prefix + path, guarded)
        else:
            route = self.router.add_route(method, self.prefix + path, guarded)
        assert route.resource is not None  # a route the router made has its resource
        self.resources.append(route.resource)


# On the main app: the resources of the registries' mounts (which a host rule ignores).
registry_resources_key: Final = web.AppKey("registry_resources", list[AbstractResource])

RouteSetup = Callable[[RegistryMount, Settings], None]


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
            # its sub-apps (the token API), but not the registries' mounts: their path mounts
            # would claim package names such as "npm" for the main host, and their host mounts
            # are rules like this one.
            mounts = {id(r) for r in self._main.get(registry_resources_key, ())}
            self._own = [r for r in self._main.router.resources() if id(r) not in mounts]
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


def _registry(root: web.Application) -> Registry:
    registry = root.get(registry_key)
    if registry is None:
        registry = root[registry_key] = Registry(root)
    return registry


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
    mount = RegistryMount(
        app.router,
        base.path.rstrip("/"),
        base,
        _registry(app),
        RegistryGate(name, challenge, app),
    )
    setup_routes(mount, settings)
    if registry_resources_key not in app:
        app[registry_resources_key] = []
    mounts = app[registry_resources_key]
    mounts.extend(mount.resources)
    if host:
        sub = web.Application()
        vhost = RegistryMount(
            sub.router, "", vhost_base(settings, host), _registry(app),
            RegistryGate(name, challenge, app),
        )  # fmt: skip
        setup_routes(vhost, settings)
        # Application.add_domain with our own rule: aiohttp takes no custom rule publicly.
        mounts.append(add_domain_subapp(app, YieldingHost(host, app), sub))
