"""Admin API: ``GET /api/admin/blocklist`` and ``POST /api/admin/blocklist/refresh``.

Declared as token-API endpoints (``tokenapi.webio.Endpoint``), so they sit under ``/api``, take
the same admin authentication (Bearer or session cookie) and appear in the OpenAPI document.
The status is this process's: with several workers each holds its own copy of the feeds; a
refresh request is also written to the database, which every process watches (like
revocations), so all of them re-read their feeds within a second.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from aiohttp import web

from tokenapi.keys import breach_key, store_key
from tokenapi.webauth import require_admin
from tokenapi.webio import ApiError, Endpoint, json_response

from .service import SupplyChain, supplychain_key

TIME_FIELDS: Final = frozenset({"last_refresh", "last_attempt", "last_success"})
_ADMIN_FAIL = {401: "Not logged in, or unknown/revoked token", 403: "Not an administrator"}


def _iso(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC).isoformat().replace("+00:00", "Z")
    return value


def with_iso_times(data: Any) -> Any:
    """``data`` with epoch-second time fields as ISO 8601 strings."""
    if isinstance(data, dict):
        return {k: _iso(v) if k in TIME_FIELDS else with_iso_times(v) for k, v in data.items()}
    if isinstance(data, list):
        return [with_iso_times(v) for v in data]
    return data


def _chain(request: web.Request) -> SupplyChain:
    return request.config_dict[supplychain_key]


async def _status(request: web.Request) -> dict[str, Any]:
    """The chain's status with the breach notifications' (SPEC 16: failures visible here)."""
    status = _chain(request).status()
    notifier = request.config_dict.get(breach_key)
    if notifier is not None:
        status["breach_notifications"] = await notifier.status()
    return status


async def blocklist_status(request: web.Request) -> web.Response:
    """Sources, entry counts, last refresh and its outcome, errors, policy counters."""
    await require_admin(request)
    return json_response(with_iso_times(await _status(request)))


async def blocklist_refresh(request: web.Request) -> web.Response:
    """Re-read every feed now (this process), and ask every other process to do the same."""
    await require_admin(request)
    chain = _chain(request)
    if chain.blocklist is None:
        raise ApiError(409, "No blocklist is configured: set blocklist_feeds or blocklist_file")
    store = request.config_dict.get(store_key)
    if store is not None:
        await store.request_blocklist_refresh()  # the other processes
    await chain.blocklist.refresh()
    return json_response(with_iso_times(await _status(request)))


_SOURCE = {
    "type": "object",
    "properties": {
        "source": {"type": "string", "description": "URL (without credentials) or path"},
        "kind": {"type": "string", "enum": ["url", "path", "manual"]},
        "entries": {"type": "integer"},
        "records": {"type": "integer"},
        "malformed": {"type": "integer", "description": "records skipped as malformed"},
        "last_attempt": {"type": ["string", "null"], "format": "date-time"},
        "last_success": {"type": ["string", "null"], "format": "date-time"},
        "outcome": {"type": "string", "enum": ["ok", "not-modified", "error", "never"]},
        "error": {"type": ["string", "null"]},
        "serving": {"type": "string", "enum": ["current", "last-good", "nothing"]},
    },
}
STATUS_SCHEMA: Final = {
    "type": "object",
    "properties": {
        "kinds": {"type": "string", "enum": ["malicious", "all"]},
        "refresh_interval": {"type": "number", "description": "seconds"},
        "last_refresh": {"type": ["string", "null"], "format": "date-time"},
        "outcome": {"type": "string", "enum": ["ok", "error", "never", "off"]},
        "refreshes": {"type": "integer"},
        "entries": {"type": "integer"},
        "packages": {"type": "integer"},
        "entries_by_ecosystem": {"type": "object"},
        "allows": {"type": "integer"},
        "sources": {"type": "array", "items": _SOURCE},
        "errors": {"type": "array", "items": {"type": "string"}},
        "min_release_age": {
            "type": "object",
            "properties": {"npm": {"type": "number"}, "pypi": {"type": "number"}},
        },
        "min_release_age_exempt": {"type": "array", "items": {"type": "string"}},
        "decisions": {"type": "array", "items": {"type": "object"}},
        "unknown_publish_times": {"type": "object"},
        "breach_notifications": {
            "type": "object",
            "description": "mails to past downloaders of newly blocked versions (SPEC 16)",
            "properties": {
                "notifications": {
                    "type": "object",
                    "description": "count by state: pending, sent, failed (gave up), skipped",
                    "additionalProperties": {"type": "integer"},
                },
                "send_failures": {"type": "integer", "description": "failed attempts (retried)"},
                "last_error": {"type": ["string", "null"]},
                "failing": {"type": "array", "items": {"type": "object"}},
            },
        },
    },
}

ENDPOINTS: Final = (
    Endpoint(
        "GET",
        "/admin/blocklist",
        blocklist_status,
        "Blocklist sources, entry counts, last refresh and its outcome, errors",
        {200: "The status", **_ADMIN_FAIL},
        auth="admin",
        result=STATUS_SCHEMA,
        tag="admin",
    ),
    Endpoint(
        "POST",
        "/admin/blocklist/refresh",
        blocklist_refresh,
        "Re-read every blocklist feed now (every server process, within a second)",
        {200: "Refreshed; the new status", 409: "No blocklist configured", **_ADMIN_FAIL},
        auth="admin",
        result=STATUS_SCHEMA,
        tag="admin",
    ),
)
