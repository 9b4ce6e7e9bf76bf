"""Who is calling the token API: a Bearer token, or a login session cookie checked against CSRF.

A Bearer token wins over a cookie (a browser cannot be made to send a chosen Authorization
header, so such requests need no Origin check).  A cookie-authenticated request that changes
something must carry an ``Origin`` equal to the public URL's origin, else 403.  Every request
authenticated by a token records an ``api`` use of it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import hdrs, web

from .credentials import MalformedCredentials, secret_from_header
from .keys import config_key, recorder_key, store_key, validator_key
from .store import Token, User
from .webio import ApiError

SESSION_COOKIE = "pkgate_session"
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="pkgate"'}
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True, slots=True)
class Caller:
    user: User
    token: Token | None = None  # set when authenticated by Bearer
    session_digest: str | None = None  # set when authenticated by cookie
    session_expires_at: float | None = None


def session_digest(value: str) -> str:
    """The digest under which a session cookie value is stored."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def public_origin(request: web.Request) -> str:
    """``scheme://host[:port]`` of the public URL."""
    return str(request.config_dict[config_key].public_url.origin())


def check_origin(request: web.Request) -> None:
    """403 unless the request's Origin is the public URL's origin."""
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is None or origin.strip().lower() != public_origin(request).lower():
        raise ApiError(403, "Origin does not match this server")


def unauthorized(message: str) -> ApiError:
    return ApiError(401, message, CHALLENGE)


# What the request's credentials resolved to, kept so that they are resolved (and the use
# recorded) once per request: by the route's declared guard, then by the handler if it asks.
_BEARER: web.RequestKey[tuple[Token | None]] = web.RequestKey("pkgate_api_bearer", tuple)
_CALLER: web.RequestKey[Caller] = web.RequestKey("pkgate_api_caller", Caller)


async def bearer_token(request: web.Request) -> Token | None:
    """The token in the Authorization header; None without one; 401 when it is not valid."""
    found = request.get(_BEARER)
    if found is not None:
        remembered: Token | None = found[0]
        return remembered
    token = await _bearer_token(request)
    request[_BEARER] = (token,)
    return token


async def _bearer_token(request: web.Request) -> Token | None:
    try:
        secret = secret_from_header(request.headers.get(hdrs.AUTHORIZATION))
    except MalformedCredentials:
        raise unauthorized("Invalid or revoked token") from None
    if secret is None:
        return None
    token = await request.config_dict[validator_key].check(secret)
    if isinstance(token, str):
        raise unauthorized(token)  # invalid, revoked or expired (the API is in every scope)
    request.config_dict[recorder_key].record(token.id, "api")
    return token


async def require_token(request: web.Request) -> Token:
    """The request's valid Bearer token, or 401."""
    token = await bearer_token(request)
    if token is None:
        raise unauthorized("Authentication required: send Authorization: Bearer <token>")
    return token


async def authenticate(request: web.Request) -> Caller:
    """The caller by Bearer token or session cookie; 401 for neither, 403 for a bad Origin."""
    found = request.get(_CALLER)
    if isinstance(found, Caller):
        return found
    caller = await _authenticate(request)
    request[_CALLER] = caller
    return caller


async def _authenticate(request: web.Request) -> Caller:
    store = request.config_dict[store_key]
    token = await bearer_token(request)
    if token is not None:
        user = await store.get_user(token.user_id)
        if user is None:
            raise unauthorized("Invalid or revoked token")
        return Caller(user, token=token)
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        digest = session_digest(cookie)
        found = await store.session_user(digest)
        if found is not None:
            if request.method in UNSAFE_METHODS:
                check_origin(request)
            user, expires_at = found
            return Caller(user, session_digest=digest, session_expires_at=expires_at)
    raise unauthorized("Authentication required: log in or send Authorization: Bearer <token>")


async def require_admin(request: web.Request) -> Caller:
    """An authenticated admin; 403 for anyone else."""
    caller = await authenticate(request)
    if not caller.user.is_admin:
        raise ApiError(403, "Administrator rights are required")
    return caller


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
GUARDS: dict[str, Callable[[web.Request], Awaitable[object]] | None] = {
    "none": None,
    "bearer": require_token,
    "bearer_or_cookie": authenticate,
    "admin": require_admin,
}


def guarded(auth: str, handler: Handler) -> Handler:
    """``handler`` behind the authentication its route declares (``Endpoint.auth``).

    The check runs before the handler whatever the handler does; a handler that asks again
    (``authenticate``, ``require_token``, ``require_admin``) gets the same answer at no cost.
    """
    if auth not in GUARDS:
        raise ValueError(f"unknown Endpoint.auth {auth!r}")
    check = GUARDS[auth]
    if check is None:
        return handler

    async def guard(request: web.Request) -> web.StreamResponse:
        await check(request)
        return await handler(request)

    guard.__doc__ = handler.__doc__
    guard.__name__ = getattr(handler, "__name__", "handler")
    return guard
