"""Wiring of the token side into an aiohttp application.

The API is a sub-application under ``<public path>/api`` whose routes answer their own errors; the
identity resources (store, validation cache, last-used recorder) and the mailer belong to the
root application so that the registry routes share them.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web

from . import admin_api, downloads_api, email_api, named_api, oidc, session_api
from .config import TokenApiConfig
from .context import identity_ctx
from .keys import api_state_key, config_key, mailer_key
from .mail import Mailer
from .mailqueue import mail_queue_ctx
from .openapi import openapi_handler
from .webauth import guarded
from .webio import ApiState, Endpoint, answering_errors


def endpoints(extra: Sequence[Endpoint] = ()) -> list[Endpoint]:
    """Every endpoint of the API, the OpenAPI document included.

    ``extra`` are endpoints the embedding server declares itself (e.g. the proxy's admin
    blocklist routes), documented and routed like the token API's own.
    """
    found: list[Endpoint] = [
        *email_api.ENDPOINTS,
        *named_api.ENDPOINTS,
        *session_api.ENDPOINTS,
        *admin_api.ENDPOINTS,
        *oidc.ENDPOINTS,
        *extra,
        *downloads_api.ENDPOINTS,
    ]
    found.append(
        Endpoint(
            "GET",
            "/openapi.json",
            openapi_handler(found),
            "This OpenAPI document",
            {200: "The document"},
            result={"type": "object"},
            tag="meta",
        )
    )
    return found


def api_app(extra: Sequence[Endpoint] = ()) -> web.Application:
    """The API sub-application with every declared route."""
    app = web.Application()
    for endpoint in endpoints(extra):
        # Authentication is the route's declaration, enforced here for every handler, and
        # every failure is an {"error": ...} answer.
        handler = answering_errors(guarded(endpoint.auth, endpoint.handler))
        app.router.add_route(endpoint.method, endpoint.path, handler)
    return app


def setup(app: web.Application, config: TokenApiConfig, extra: Sequence[Endpoint] = ()) -> None:
    """Open the identity resources with the app and add the token API routes (and ``extra``)."""
    app[config_key] = config
    app[mailer_key] = Mailer(config)
    app[api_state_key] = ApiState.from_config(config)
    app.cleanup_ctx.append(identity_ctx)
    app.cleanup_ctx.append(oidc.oidc_ctx)
    app.cleanup_ctx.append(mail_queue_ctx)
    app.add_subapp(f"{config.public_url.path.rstrip('/')}/api", api_app(extra))
