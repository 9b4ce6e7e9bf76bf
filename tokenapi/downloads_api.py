"""Download history endpoints: the caller's token, the logged-in user's tokens, and admins'.

``GET /api/v1/tokens/downloads`` (the presented token), ``GET /api/downloads`` (every token of the
caller), ``GET /api/admin/downloads`` (everyone, with owner email).  All are paginated with
``limit`` and an opaque ``cursor`` and list newest first.
"""

from __future__ import annotations

from dataclasses import replace

from aiohttp import web

from . import inputs
from .downloads import MAX_LIMIT, Page, build_query, history
from .keys import recorder_key, store_key
from .store import DownloadQuery, DownloadRow
from .webauth import authenticate, require_admin, require_token
from .webio import Endpoint, iso, json_response

_FILTERS = ("ecosystem", "package", "version", "since")


def _row(row: DownloadRow, *, admin: bool) -> dict[str, object]:
    d = row.download
    out: dict[str, object] = {
        "id": d.id,
        "token_id": d.token_id,
        "token_name": row.token_name,
        "token_prefix": row.token_prefix,
        "ecosystem": d.ecosystem,
        "package": d.package,
        "version": d.version,
        "filename": d.filename,
        "downloaded_at": iso(d.downloaded_at),
    }
    if admin:
        out["email"] = row.email
    return out


async def _answer(request: web.Request, query: DownloadQuery, *, admin: bool) -> web.Response:
    page: Page = await history(
        request.config_dict[store_key], request.config_dict.get(recorder_key), query
    )
    return json_response(
        {
            "downloads": [_row(r, admin=admin) for r in page.rows],
            "next_cursor": page.next_cursor,
        }
    )


async def token_downloads(request: web.Request) -> web.Response:
    """What the presented token downloaded, newest first."""
    token = await require_token(request)
    query = build_query(request.query, _FILTERS)
    return await _answer(request, replace(query, token_id=token.id), admin=False)


async def user_downloads(request: web.Request) -> web.Response:
    """What any of the caller's tokens downloaded, newest first."""
    caller = await authenticate(request)
    query = build_query(request.query, _FILTERS)
    return await _answer(request, replace(query, user_id=caller.user.id), admin=False)


async def admin_downloads(request: web.Request) -> web.Response:
    """Who downloaded what, newest first, filtered by package, version, owner and time."""
    await require_admin(request)
    query = build_query(request.query, (*_FILTERS, "email"), email=inputs.normalize_email)
    return await _answer(request, query, admin=True)


def _params(*, email: bool) -> tuple[dict[str, object], ...]:
    described = [
        ("ecosystem", {"type": "string", "enum": ["npm", "pypi"]}, "only this ecosystem"),
        ("package", {"type": "string"}, "package name (PyPI names compare normalised)"),
        ("version", {"type": "string"}, "exact version (PyPI versions compare normalised)"),
        ("since", {"type": "string"}, "ISO 8601 time or Unix seconds: downloads at or after it"),
    ]
    if email:
        described.append(("email", {"type": "string", "format": "email"}, "owner's address"))
    described += [
        (
            "limit",
            {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 100},
            "rows per page",
        ),
        ("cursor", {"type": "string"}, "next_cursor of the previous page"),
    ]
    return tuple(
        {"name": n, "in": "query", "required": False, "schema": s, "description": d}
        for n, s, d in described
    )


def _result(*, email: bool) -> dict[str, object]:
    item: dict[str, object] = {
        "id": {"type": "string"},
        "token_id": {"type": "string", "format": "uuid"},
        "token_name": {"type": "string"},
        "token_prefix": {"type": "string"},
        "ecosystem": {"type": "string", "enum": ["npm", "pypi"]},
        "package": {"type": "string"},
        "version": {"type": "string"},
        "filename": {"type": "string"},
        "downloaded_at": {"type": "string", "format": "date-time"},
    }
    if email:
        item["email"] = {"type": "string"}
    return {
        "type": "object",
        "required": ["downloads", "next_cursor"],
        "properties": {
            "downloads": {
                "type": "array",
                "items": {"type": "object", "required": sorted(item), "properties": item},
            },
            "next_cursor": {
                "type": ["string", "null"],
                "description": "pass as cursor for the next page; null on the last page",
            },
        },
    }


_BAD_PARAMS = "A bad or unknown query parameter"

ENDPOINTS = (
    Endpoint(
        "GET",
        "/v1/tokens/downloads",
        token_downloads,
        "Files the presented token downloaded, newest first",
        {
            200: "One page of the history",
            400: _BAD_PARAMS,
            401: "Missing, unknown or revoked token",
        },
        auth="bearer",
        result=_result(email=False),
        tag="email tokens",
        query=_params(email=False),
    ),
    Endpoint(
        "GET",
        "/downloads",
        user_downloads,
        "Files any of the caller's tokens downloaded, newest first",
        {200: "One page of the history", 400: _BAD_PARAMS, 401: "Not logged in"},
        auth="bearer_or_cookie",
        result=_result(email=False),
        query=_params(email=False),
    ),
    Endpoint(
        "GET",
        "/admin/downloads",
        admin_downloads,
        "Who downloaded what (with owner email), newest first",
        {
            200: "One page of the history",
            400: _BAD_PARAMS,
            401: "Not logged in, or unknown/revoked token",
            403: "Not an administrator",
        },
        auth="admin",
        result=_result(email=True),
        tag="admin",
        query=_params(email=True),
    ),
)
