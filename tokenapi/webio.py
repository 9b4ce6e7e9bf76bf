"""HTTP plumbing shared by the token API handlers: JSON in and out, errors, endpoint declarations.

Each handler module declares its endpoints as ``Endpoint`` values: method, path, handler, and the
statuses it can answer.  The same declarations register the routes and build the OpenAPI
document, so the two cannot drift apart.  Errors are ``{"error": message}`` answers, made from
``ApiError`` and the domain errors by a wrapper on every route (``answering_errors``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import weakref
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from .config import TokenApiConfig
from .failures import failure_for, http_failure
from .ratelimit import StoreLimiter

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Schema = Mapping[str, Any]

MAX_BODY = 64 * 1024
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,23}")
JSON_TYPE = "application/json"


class ApiError(Exception):
    """An answer other than success: status, a message safe to show, optional headers."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def too_many(retry_after: int) -> ApiError:
    """A 429 with an integer Retry-After."""
    return ApiError(
        429, "Too many requests; try again later", {"Retry-After": str(int(retry_after))}
    )


def json_response(data: Any, status: int = 200) -> web.Response:
    """A JSON answer that no cache may keep (it may hold a secret)."""
    return web.Response(
        body=orjson.dumps(data),
        status=status,
        content_type=JSON_TYPE,
        headers={"Cache-Control": "no-store"},
    )


def _keep_header(name: str) -> bool:
    # Of an aiohttp HTTP error's headers the API keeps Allow (405) only.
    return name.lower() == "allow"


def error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    """``{"error": message}``."""
    response = json_response({"error": message}, status)
    response.headers.update(headers or {})
    return response


def iso(ts: float | None) -> str | None:
    """A Unix time as ISO 8601 UTC with a ``Z``, or None."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def _read_limited(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ApiError(413, "Request body is too large")
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(MAX_BODY + 1)
        if not chunk:
            break
        size += len(chunk)
        if size > MAX_BODY:
            raise ApiError(413, "Request body is too large")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: web.Request, allowed: Collection[str]) -> dict[str, Any]:
    """The request's JSON object, with no fields beyond ``allowed``; ApiError otherwise."""
    if request.content_type != JSON_TYPE:
        raise ApiError(415, "Content-Type must be application/json")
    raw = await _read_limited(request)
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiError(400, "Request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "Request body must be a JSON object")
    unknown = sorted(k for k in data if k not in allowed)
    if unknown:
        # Echo only what looks like a field name: a pasted secret used as a key must not come
        # back in an error message.
        name = unknown[0]
        if _FIELD_NAME.fullmatch(name) and not name.startswith("pkg_"):
            raise ApiError(400, f"Unknown field: {name!r}")
        raise ApiError(400, "Unknown field in the request body")
    return data


@dataclass(frozen=True)
class Endpoint:
    """One documented route of the API (``path`` is relative to ``<public path>/api``)."""

    method: str
    path: str
    handler: Handler
    summary: str
    responses: Mapping[int, str]
    auth: str = "none"  # none | bearer | bearer_or_cookie | admin
    body: Schema | None = None
    result: Schema | None = None
    tag: str = "tokens"
    query: tuple[Schema, ...] = ()  # OpenAPI parameter objects (in: query)


@dataclass
class ApiState:
    """State of the API: its limits (counted in the store, so shared by every worker and
    instance) and per-address locks (per process; the store's transactions do the rest)."""

    register_email: StoreLimiter
    register_ip: StoreLimiter
    token_create: StoreLimiter
    login_email: StoreLimiter
    login_ip: StoreLimiter
    reset_email: StoreLimiter
    reset_ip: StoreLimiter
    _locks: weakref.WeakValueDictionary[str, asyncio.Lock] = field(
        default_factory=weakref.WeakValueDictionary
    )

    @classmethod
    def from_config(cls, config: TokenApiConfig) -> ApiState:
        return cls(
            register_email=StoreLimiter(
                "register-email", config.register_per_email, config.register_window
            ),
            register_ip=StoreLimiter("register-ip", config.register_per_ip, config.register_window),
            token_create=StoreLimiter(
                "token-create", config.token_create_per_user, config.token_create_window
            ),
            login_email=StoreLimiter("login-email", config.login_failures, config.login_window),
            login_ip=StoreLimiter("login-ip", config.login_failures, config.login_window),
            reset_email=StoreLimiter("reset-email", config.reset_per_email, config.reset_window),
            reset_ip=StoreLimiter("reset-ip", config.reset_per_ip, config.reset_window),
        )

    def lock(self, key: str) -> asyncio.Lock:
        """A lock serialising work on one key (an address, a token) in this process."""
        lock = self._locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[key] = lock
        return lock


def answering_errors(handler: Handler) -> Handler:
    """``handler`` with every failure of its own made ``{"error": ...}`` with the right status:
    ``ApiError``, aiohttp's HTTP errors and the domain errors (``failures.failure_for``).

    A wrapper on each route rather than a middleware of the API's sub-application: any
    middleware makes aiohttp add layers to every request of the whole server (the registries'
    included).  Anything else is left to the server, which answers it as JSON too (as it does
    the router's 404 and 405).
    """

    async def answered(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return error_response(exc.status, exc.message, exc.headers)
        except web.HTTPException as exc:
            http = http_failure(exc, keep_header=_keep_header)
            if http is None:
                raise
            return error_response(http.status, http.message, http.headers)
        except Exception as exc:
            failure = failure_for(exc)
            if failure is None:
                raise
            return error_response(failure.status, failure.message, failure.headers)

    answered.__doc__ = handler.__doc__
    answered.__name__ = getattr(handler, "__name__", "handler")
    return answered
