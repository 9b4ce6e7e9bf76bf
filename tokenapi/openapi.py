"""The OpenAPI 3 document of the token API, built from the handler modules' declarations."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from .keys import config_key
from .webauth import SESSION_COOKIE
from .webio import Endpoint, Handler, json_response

OPENAPI_VERSION = "3.1.0"
_PARAM = re.compile(r"\{(\w+)\}")

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}},
}

_SECURITY: dict[str, list[dict[str, list[str]]]] = {
    "none": [],
    "bearer": [{"bearerAuth": []}],
    "bearer_or_cookie": [{"bearerAuth": []}, {"cookieAuth": []}],
    "admin": [{"bearerAuth": []}, {"cookieAuth": []}],
}


def _operation(endpoint: Endpoint) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, description in sorted(endpoint.responses.items()):
        schema = endpoint.result if status < 400 else _ERROR
        entry: dict[str, Any] = {"description": description}
        if schema is not None:
            entry["content"] = {"application/json": {"schema": schema}}
        if status == 429:
            entry["headers"] = {
                "Retry-After": {"schema": {"type": "integer"}, "description": "seconds to wait"}
            }
        responses[str(status)] = entry
    op: dict[str, Any] = {
        "summary": endpoint.summary,
        "operationId": f"{endpoint.method.lower()}_{endpoint.handler.__name__}"
        + ("_no_id" if endpoint.path.endswith("/") else ""),
        "tags": [endpoint.tag],
        "security": _SECURITY[endpoint.auth],
        "responses": responses,
    }
    params = _PARAM.findall(endpoint.path)
    parameters: list[Any] = [
        {"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params
    ]
    parameters.extend(dict(q) for q in endpoint.query)
    if parameters:
        op["parameters"] = parameters
    if endpoint.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": endpoint.body}},
        }
    return op


def build_document(endpoints: Iterable[Endpoint], server_url: str) -> dict[str, Any]:
    """The OpenAPI document for ``endpoints`` served under ``server_url`` (``<public>/api``)."""
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = _operation(endpoint)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "pkgate token API",
            "version": "1",
            "description": "Register, inspect, rotate and revoke the tokens that pkgate's "
            'npm and Python endpoints accept. Errors are {"error": message}.',
        },
        "servers": [{"url": server_url}],
        "components": {
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer"},
                "cookieAuth": {"type": "apiKey", "in": "cookie", "name": SESSION_COOKIE},
            },
            "schemas": {"Error": _ERROR},
        },
        "paths": paths,
    }


def openapi_handler(endpoints: list[Endpoint]) -> Handler:
    """A handler serving the document for ``endpoints`` (built once, on first use)."""
    cache: dict[str, Any] = {}

    async def openapi(request: web.Request) -> web.Response:
        """The OpenAPI document."""
        if "doc" not in cache:
            base = str(request.config_dict[config_key].public_url).rstrip("/")
            cache["doc"] = build_document(endpoints, f"{base}/api")
        return json_response(cache["doc"])

    return openapi
