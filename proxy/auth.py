"""Authentication of registry routes: every request carries a valid token (or anonymous is allowed).

A middleware per registry sub-application: it reads Bearer or Basic credentials, resolves them
through the validation cache, records the use in memory and stores the token on the request.
Failures are 401 with the ecosystem's challenge and a JSON error; the secret is never echoed.
"""

from __future__ import annotations

from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware

from tokenapi.credentials import MalformedCredentials, secret_from_header
from tokenapi.keys import REQUEST_TOKEN, recorder_key, validator_key

from .errors import Handler, json_error
from .keys import settings_key

NPM_CHALLENGE = 'Bearer realm="pkgate"'
PYPI_CHALLENGE = 'Basic realm="pkgate"'


def unauthorized(message: str, challenge: str) -> web.Response:
    return json_error(401, message, headers={hdrs.WWW_AUTHENTICATE: challenge})


def registry_auth_middleware(ecosystem: str, challenge: str) -> Middleware:
    """The middleware that guards one registry's routes."""

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            secret = secret_from_header(request.headers.get(hdrs.AUTHORIZATION))
        except MalformedCredentials as exc:
            return unauthorized(str(exc), challenge)
        if secret is None:
            if request.config_dict[settings_key].anonymous == "allow":
                return await handler(request)
            return unauthorized("Authentication required: send your pkgate token", challenge)
        token = await request.config_dict[validator_key].validate(secret)
        if token is None:
            return unauthorized("Invalid or revoked token", challenge)
        request.config_dict[recorder_key].record(token.id, ecosystem)
        request[REQUEST_TOKEN] = token
        return await handler(request)

    return authenticate
