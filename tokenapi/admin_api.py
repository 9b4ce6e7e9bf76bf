"""Admin endpoints (``/api/admin/tokens``): everyone's tokens, and revoking any of them."""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from . import inputs
from .email_api import token_json
from .errors import NotFound
from .issue import ensure_user, issue_token
from .keys import api_state_key, config_key, store_key, validator_key
from .named_api import CREATE_FIELDS, LIMITS_SCHEMA, LISTED, limits, listed
from .webauth import require_admin
from .webio import ApiError, Endpoint, json_response, read_json, too_many

_ADMIN_FAIL = {401: "Not logged in, or unknown/revoked token", 403: "Not an administrator"}
_OWNED: dict[str, Any] = {
    **LISTED,
    "properties": {**LISTED["properties"], "email": {"type": "string"}},
}


async def list_all(request: web.Request) -> web.Response:
    """Every active token with its owner's email, optionally for one address."""
    await require_admin(request)
    raw = request.query.get("email")
    email = inputs.normalize_email(raw) if raw else None
    now = request.config_dict[config_key].clock()
    found = await request.config_dict[store_key].list_tokens(email=email, now=now)
    return json_response([{**listed(request, t), "email": t.email} for t in found])


async def create_for(request: web.Request) -> web.Response:
    """A named token for any address (the user is created if needed); the secret only here."""
    admin = await require_admin(request)
    body = await read_json(request, ("email", *CREATE_FIELDS))
    email = inputs.normalize_email(body.get("email"))
    name = inputs.token_name(body.get("name"))
    # The admin's own token (when authenticated by one) bounds what it can create.
    expires_at, scopes = limits(request, body, admin.token)
    store = request.config_dict[store_key]
    retry = await request.config_dict[api_state_key].token_create.hit(store, admin.user.id)
    if retry is not None:
        raise too_many(retry)
    user = await ensure_user(store, email)
    token, secret = await issue_token(
        store, user, name=name, kind="api", expires_at=expires_at, scopes=scopes
    )
    return json_response({**token_json(token, secret=secret), "email": user.email}, 201)


async def revoke_any(request: web.Request) -> web.Response:
    """Revoke anyone's token."""
    await require_admin(request)
    try:
        token_id = str(uuid.UUID(request.match_info["id"].strip()))
        digest = await request.config_dict[store_key].revoke_token(token_id)
    except (ValueError, NotFound):
        raise ApiError(404, "Token not found") from None
    request.config_dict[validator_key].forget(digest)
    return json_response({"message": "Token revoked"})


ENDPOINTS = (
    Endpoint(
        "GET",
        "/admin/tokens",
        list_all,
        "Every user's active tokens with owner email (filter with ?email=)",
        {200: "The tokens", 400: "Bad email filter", **_ADMIN_FAIL},
        auth="admin",
        result={"type": "array", "items": _OWNED},
        tag="admin",
    ),
    Endpoint(
        "POST",
        "/admin/tokens",
        create_for,
        "Create a named token for any address (creating the user if needed)",
        {
            201: "The token with its secret",
            400: "Bad email, name, expiry or scopes",
            413: "Body too large",
            415: "Body is not JSON",
            429: "Too many tokens created",
            **_ADMIN_FAIL,
        },
        auth="admin",
        body={
            "type": "object",
            "required": ["email", "name"],
            "additionalProperties": False,
            "properties": {
                "email": {"type": "string", "format": "email"},
                "name": {"type": "string", "maxLength": inputs.MAX_NAME_LEN},
                **LIMITS_SCHEMA,
            },
        },
        result={**_OWNED, "properties": {**_OWNED["properties"], "token": {"type": "string"}}},
        tag="admin",
    ),
    Endpoint(
        "DELETE",
        "/admin/tokens/{id}",
        revoke_any,
        "Revoke any user's token",
        {200: "Token revoked", 404: "No such active token", **_ADMIN_FAIL},
        auth="admin",
        result={"type": "object", "properties": {"message": {"type": "string"}}},
        tag="admin",
    ),
)
