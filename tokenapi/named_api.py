"""Named tokens of the current user (``/api/tokens``): list, create, delete.

Authenticated by a Bearer token or the session cookie.  The secret appears only in the 201 answer
that creates it.  A token id that does not exist and one that belongs to someone else get the
same answer, so ids of other people's tokens cannot be probed.
"""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from . import inputs
from .email_api import token_json
from .errors import NotFound
from .issue import issue_token
from .keys import api_state_key, config_key, recorder_key, store_key, validator_key
from .store import Token
from .tokens import ALL_SCOPES
from .webauth import authenticate
from .webio import ApiError, Endpoint, iso, json_response, read_json, too_many

NOT_FOUND = "Token not found"
CREATE_FIELDS = ("name", "expires_in", "expires_at", "scopes")


def listed(request: web.Request, token: Token) -> dict[str, object]:
    """A token in a list: no secret; last use merged from memory."""
    out = token_json(token)
    recorder = request.config_dict[recorder_key]
    out["last_used_at"] = iso(recorder.last_used_at(token.id, token.last_used_at))
    return out


async def list_tokens(request: web.Request) -> web.Response:
    """The caller's active tokens, newest first."""
    caller = await authenticate(request)
    now = request.config_dict[config_key].clock()
    found = await request.config_dict[store_key].list_tokens(user_id=caller.user.id, now=now)
    return json_response([listed(request, t) for t in found])


async def create_token(request: web.Request) -> web.Response:
    """A new named token; its secret is in this answer only."""
    caller = await authenticate(request)
    body = await read_json(request, CREATE_FIELDS)
    name = inputs.token_name(body.get("name"))
    expires_at, scopes = limits(request, body, caller.token)
    store = request.config_dict[store_key]
    retry = await request.config_dict[api_state_key].token_create.hit(store, caller.user.id)
    if retry is not None:
        raise too_many(retry)
    token, secret = await issue_token(
        store,
        caller.user,
        name=name,
        kind="api",
        expires_at=expires_at,
        scopes=scopes,
    )
    return json_response(token_json(token, secret=secret), 201)


def limits(
    request: web.Request, body: dict[str, Any], creator: Token | None
) -> tuple[float | None, tuple[str, ...]]:
    """The expiry and scopes asked for in ``body`` (400 when bad or over token_max_lifetime).

    A token creating a token cannot give it more reach than its own: the new one inherits the
    creator's expiry and scopes by default and may not ask for a later expiry or other scopes
    (so a short-lived CI token cannot mint a long-lived one)."""
    config = request.config_dict[config_key]
    now = config.clock()
    expires_at = inputs.expiry(
        body.get("expires_in"),
        body.get("expires_at"),
        now=now,
        max_lifetime=config.token_max_lifetime,
    )
    scopes = inputs.scopes(body.get("scopes"))
    if creator is not None:
        if creator.expires_at is not None:
            if expires_at is None:
                expires_at = creator.expires_at
            elif expires_at > creator.expires_at:
                raise ApiError(403, "A token cannot create a token that outlives it")
        if body.get("scopes") is None:
            scopes = creator.scopes
        elif not set(scopes) <= set(creator.scopes):
            raise ApiError(403, "A token cannot create a token with scopes it does not have")
    return expires_at, scopes


def _token_id(request: web.Request) -> str:
    raw = request.match_info.get("id", "").strip()
    if not raw:
        raise ApiError(400, "Token ID is required")
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise ApiError(400, NOT_FOUND) from None


async def delete_token(request: web.Request) -> web.Response:
    """Revoke one of the caller's tokens."""
    caller = await authenticate(request)
    token_id = _token_id(request)
    try:
        digest = await request.config_dict[store_key].revoke_token(token_id, user_id=caller.user.id)
    except NotFound:
        raise ApiError(400, NOT_FOUND) from None
    request.config_dict[validator_key].forget(digest)
    return json_response({"message": "Token revoked"})


SCOPES_SCHEMA: dict[str, Any] = {
    "type": "array",
    "items": {"type": "string", "enum": list(ALL_SCOPES)},
    "minItems": 1,
    "uniqueItems": True,
    "description": "the registries the token works for",
}
LISTED: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "name": {"type": "string"},
        "kind": {"type": "string", "enum": ["email", "api"]},
        "prefix": {"type": "string"},
        "created_at": {"type": "string", "format": "date-time"},
        "last_used_at": {"type": ["string", "null"], "format": "date-time"},
        "expires_at": {
            "type": ["string", "null"],
            "format": "date-time",
            "description": "when the token stops working; null: never",
        },
        "scopes": SCOPES_SCHEMA,
    },
}
LIMITS_SCHEMA: dict[str, Any] = {
    "expires_in": {
        "type": "number",
        "exclusiveMinimum": 0,
        "description": "seconds until the token expires (at most token_max_lifetime)",
    },
    "expires_at": {
        "type": "string",
        "format": "date-time",
        "description": "when the token expires (ISO 8601; not with expires_in)",
    },
    "scopes": {**SCOPES_SCHEMA, "description": "default: every registry"},
}
_AUTH_FAIL = {
    401: "Not logged in, or unknown/revoked token",
    403: "Cookie without a matching Origin",
}
_CREATE_FAIL = {
    **_AUTH_FAIL,
    403: "Cookie without a matching Origin, or a token asking for more reach than its own",
}

ENDPOINTS = (
    Endpoint(
        "GET",
        "/tokens",
        list_tokens,
        "List the current user's tokens (never their secrets)",
        {200: "The tokens", 401: _AUTH_FAIL[401]},
        auth="bearer_or_cookie",
        result={"type": "array", "items": LISTED},
        tag="named tokens",
    ),
    Endpoint(
        "POST",
        "/tokens",
        create_token,
        "Create a named token; the secret is returned only here",
        {
            201: "The token with its secret",
            400: "Token name is required, or is invalid; bad expiry or scopes",
            413: "Body too large",
            415: "Body is not JSON",
            429: "Too many tokens created",
            **_CREATE_FAIL,
        },
        auth="bearer_or_cookie",
        body={
            "type": "object",
            "required": ["name"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "maxLength": inputs.MAX_NAME_LEN},
                **LIMITS_SCHEMA,
            },
        },
        result={**LISTED, "properties": {**LISTED["properties"], "token": {"type": "string"}}},
        tag="named tokens",
    ),
    Endpoint(
        "DELETE",
        "/tokens/",
        delete_token,
        "Without an id: answered 400",
        {400: "Token ID is required", **_AUTH_FAIL},
        auth="bearer_or_cookie",
        tag="named tokens",
    ),
    Endpoint(
        "DELETE",
        "/tokens/{id}",
        delete_token,
        "Revoke one of the current user's tokens",
        {200: "Token revoked", 400: "Token ID is required, or not found", **_AUTH_FAIL},
        auth="bearer_or_cookie",
        result={"type": "object", "properties": {"message": {"type": "string"}}},
        tag="named tokens",
    ),
)
