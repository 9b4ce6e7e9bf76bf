"""Authentication of registry routes: every request carries a valid token (or anonymous is allowed).

A middleware per registry sub-application: it reads Bearer or Basic credentials, resolves them
through the validation cache, records the use in memory and stores the token on the request.
Failures are 401 with the ecosystem's challenge and a JSON error naming the reason (invalid or
revoked, "token expired", "token not valid for <ecosystem>"); the secret is never echoed.
"""

from __future__ import annotations

from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware
from cachetools import TTLCache

from tokenapi import tokens
from tokenapi.credentials import MalformedCredentials, secret_from_header
from tokenapi.errors import StoreUnavailable
from tokenapi.keys import REQUEST_TOKEN, recorder_key, store_key, validator_key
from tokenapi.store import Token
from tokenapi.validation import EXPIRED, INVALID, out_of_scope

from .errors import Handler, json_error
from .keys import REQUEST_AUTH_FAILURE, REQUEST_ECOSYSTEM, REQUEST_PRESENTED, settings_key
from .metrics import metrics_key

NPM_CHALLENGE = 'Bearer realm="pkgate"'
PYPI_CHALLENGE = 'Basic realm="pkgate"'


def unauthorized(message: str, challenge: str) -> web.Response:
    return json_error(401, message, headers={hdrs.WWW_AUTHENTICATE: challenge})


def registry_auth_middleware(ecosystem: str, challenge: str, root: web.Application) -> Middleware:
    """The middleware that guards one registry's routes; shared state is read from ``root``."""

    # Failure path only: remembers which rejected digests were revoked (rather than unknown), so
    # a client retrying a dead token costs one store query per minute, not one per request.
    revoked_seen: TTLCache[str, bool] = TTLCache(maxsize=4096, ttl=60.0)

    async def failure_outcome(request: web.Request, secret: str) -> str:
        if not tokens.is_well_formed(secret):
            return "invalid"
        digest = tokens.digest(secret)
        revoked = revoked_seen.get(digest)
        if revoked is None:
            try:
                revoked = await root[store_key].digest_revoked(digest)
            except StoreUnavailable:
                return "invalid"
            revoked_seen[digest] = revoked
        return "revoked" if revoked else "invalid"

    def count(request: web.Request, outcome: str) -> None:
        metrics = root.get(metrics_key)
        if metrics is not None:
            metrics.auth_outcome(ecosystem, outcome)

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        request[REQUEST_ECOSYSTEM] = ecosystem
        presented = request.get(REQUEST_PRESENTED)
        if presented is not None and presented.cached is not None:
            # The rate limiter resolved it from the cache with no await since: no work twice.
            secret: str | None = presented.secret
            token: Token | None = presented.cached
        else:
            try:
                secret = secret_from_header(request.headers.get(hdrs.AUTHORIZATION))
            except MalformedCredentials as exc:
                request[REQUEST_AUTH_FAILURE] = "invalid"
                count(request, "invalid")
                return unauthorized(str(exc), challenge)
            token = None

        if secret is None:
            count(request, "missing")
            if root[settings_key].anonymous == "allow":
                return await handler(request)
            return unauthorized("Authentication required: send your pkgate token", challenge)
        if token is None:
            checked = await root[validator_key].check(secret, ecosystem)
            if checked == INVALID:
                outcome = await failure_outcome(request, secret)
                request[REQUEST_AUTH_FAILURE] = outcome
                count(request, outcome)
                return unauthorized(INVALID, challenge)
            if isinstance(checked, str):
                # A token pkgate issued, expired or used out of scope: not a guess.
                outcome = "expired" if checked == EXPIRED else "out_of_scope"
                request[REQUEST_AUTH_FAILURE] = outcome
                count(request, outcome)
                return unauthorized(checked, challenge)
            token = checked
        elif ecosystem not in token.scopes:
            request[REQUEST_AUTH_FAILURE] = "out_of_scope"
            count(request, "out_of_scope")
            return unauthorized(out_of_scope(ecosystem), challenge)
        metrics = root.get(metrics_key)
        if metrics is not None:
            metrics.auth_outcome(ecosystem, "ok")
        root[recorder_key].record(token.id, ecosystem)
        request[REQUEST_TOKEN] = token
        return await handler(request)

    return authenticate
