"""Login sessions (``/api/session``): log in with email and password, see who you are, log out.

The cookie holds a random value; the store keeps only its digest and expiry.  The cookie is
HttpOnly and SameSite=Strict, Secure when the public URL is https, and scoped to the public
path (the API and the web page at ``<public path>/``).
Failed logins are counted per address and per client IP; over the limit, logins are refused with
429 before the password is even checked.
"""

from __future__ import annotations

import asyncio
import logging
import secrets

from aiohttp import hdrs, web

from . import inputs
from .clientip import client_ip
from .errors import InvalidInput, NotFound, StoreUnavailable
from .keys import api_state_key, config_key, store_key
from .passwords import hash_password_async, needs_rehash, verify_password_async
from .store import Store, User
from .webauth import SESSION_COOKIE, authenticate, check_origin, session_digest
from .webio import ApiError, ApiState, Endpoint, iso, json_response, read_json, too_many

log = logging.getLogger(__name__)

BAD_LOGIN = "Invalid email or password"
MAX_PASSWORD_LEN = 1024


def _user_json(user: User) -> dict[str, object]:
    return {
        "id": user.id,
        "email": user.email,
        "language": user.language,
        "is_admin": user.is_admin,
    }


def _cookie_path(request: web.Request) -> str:
    # The whole public path: the web page at <P>/ reads the session as the API does.
    return f"{request.config_dict[config_key].public_url.path.rstrip('/')}/"


def _secure(request: web.Request) -> bool:
    return request.config_dict[config_key].public_url.scheme == "https"


async def login(request: web.Request) -> web.Response:
    """Check email and password and set the session cookie."""
    # A login form posted from another site must not log the browser in (login CSRF).
    if hdrs.ORIGIN in request.headers:
        check_origin(request)
    body = await read_json(request, ("email", "password"))
    password = body.get("password")
    if not isinstance(password, str) or not password or len(password) > MAX_PASSWORD_LEN:
        raise ApiError(400, "email and password are required")
    try:
        email = inputs.normalize_email(body.get("email"))
    except InvalidInput:
        raise ApiError(400, "email and password are required") from None
    config = request.config_dict[config_key]
    state = request.config_dict[api_state_key]
    ip = client_ip(request, config.trusted_proxies)
    # Each attempt is counted before its password is checked, so a concurrent burst cannot slip
    # past the limit while earlier guesses are still hashing; an attempt that does not turn out
    # to be a wrong password gives its count back.
    store = request.config_dict[store_key]
    retry = await state.login_ip.hit(store, ip)
    if retry is not None:
        raise too_many(retry)
    retry = await state.login_email.hit(store, email)
    if retry is not None:
        await state.login_ip.refund(store, ip)
        raise too_many(retry)
    wrong = False
    try:
        user = await store.get_user_by_email(email)
        ok = await verify_password_async(password, user.password_hash if user else None)
        wrong = user is None or not ok
    finally:
        if not wrong:
            await asyncio.shield(_refund_login(state, store, ip, email))
    if user is None or not ok:
        raise ApiError(401, BAD_LOGIN)
    await state.login_email.reset(store, email)
    if needs_rehash(user.password_hash):
        # An old (scrypt) hash: the password is at hand only now, so upgrade it to Argon2id.
        try:
            await store.update_user(user.id, password_hash=await hash_password_async(password))
        except (StoreUnavailable, NotFound) as exc:
            log.warning("password hash upgrade skipped: %s", type(exc).__name__)
    value = secrets.token_urlsafe(32)
    expires_at = await store.create_session(
        session_digest(value), user.id, lifetime=config.session_lifetime
    )
    response = json_response({"user": _user_json(user), "expires_at": iso(expires_at)})
    response.set_cookie(
        SESSION_COOKIE,
        value,
        max_age=int(config.session_lifetime),
        path=_cookie_path(request),
        httponly=True,
        samesite="Strict",
        secure=_secure(request),
    )
    return response


async def _refund_login(state: ApiState, store: Store, ip: str, email: str) -> None:
    await state.login_ip.refund(store, ip)
    await state.login_email.refund(store, email)


async def whoami(request: web.Request) -> web.Response:
    """The logged-in user (by cookie or Bearer token)."""
    caller = await authenticate(request)
    return json_response(
        {"user": _user_json(caller.user), "expires_at": iso(caller.session_expires_at)}
    )


async def logout(request: web.Request) -> web.Response:
    """End the session of the cookie and clear it."""
    caller = await authenticate(request)
    if caller.session_digest is None:
        raise ApiError(400, "Not authenticated by a session cookie")
    await request.config_dict[store_key].delete_session(caller.session_digest)
    response = json_response({"message": "Logged out"})
    response.del_cookie(
        SESSION_COOKIE,
        path=_cookie_path(request),
        secure=_secure(request),
        httponly=True,
        samesite="Strict",
    )
    return response


_USER = {
    "type": "object",
    "properties": {
        "user": {
            "type": "object",
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "email": {"type": "string"},
                "language": {"type": "string"},
                "is_admin": {"type": "boolean"},
            },
        },
        "expires_at": {"type": ["string", "null"], "format": "date-time"},
    },
}

ENDPOINTS = (
    Endpoint(
        "POST",
        "/session",
        login,
        "Log in; sets the HttpOnly, SameSite=Strict session cookie",
        {
            200: "Logged in",
            400: "Missing or malformed email or password",
            401: BAD_LOGIN,
            403: "Origin does not match this server",
            413: "Body too large",
            415: "Body is not JSON",
            429: "Too many failed logins for this address or client IP",
        },
        body={
            "type": "object",
            "required": ["email", "password"],
            "additionalProperties": False,
            "properties": {
                "email": {"type": "string", "format": "email"},
                "password": {"type": "string", "maxLength": MAX_PASSWORD_LEN},
            },
        },
        result=_USER,
        tag="sessions",
    ),
    Endpoint(
        "GET",
        "/session",
        whoami,
        "The current user",
        {200: "The user", 401: "Not logged in"},
        auth="bearer_or_cookie",
        result=_USER,
        tag="sessions",
    ),
    Endpoint(
        "DELETE",
        "/session",
        logout,
        "Log out",
        {
            200: "Logged out",
            400: "Authenticated by a token, not a session",
            401: "Not logged in",
            403: "Origin does not match this server",
        },
        auth="bearer_or_cookie",
        result={"type": "object", "properties": {"message": {"type": "string"}}},
        tag="sessions",
    ),
)
