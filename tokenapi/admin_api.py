"""Admin endpoints (``/api/admin/tokens``): everyone's tokens, and revoking any of them."""

from __future__ import annotations

import uuid

from aiohttp import web

from . import inputs
from .errors import NotFound
from .keys import store_key, validator_key
from .named_api import listed
from .webauth import require_admin
from .webio import ApiError, Endpoint, json_response

_ADMIN_FAIL = {401: "Not logged in, or unknown/revoked token", 403: "Not an administrator"}


async def list_all(request: web.Request) -> web.Response:
    """Every active token with its owner's email, optionally for one address."""
    await require_admin(request)
    raw = request.query.get("email")
    email = inputs.normalize_email(raw) if raw else None
    found = await request.config_dict[store_key].list_tokens(email=email)
    return json_response([{**listed(request, t), "email": t.email} for t in found])


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
        result={
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "string", "format": "uuid"},
                    "email": {"type": "string"},
                    "name": {"type": "string"},
                    "kind": {"type": "string"},
                    "prefix": {"type": "string"},
                    "created_at": {"type": "string", "format": "date-time"},
                    "last_used_at": {"type": ["string", "null"], "format": "date-time"},
                },
            },
        },
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
