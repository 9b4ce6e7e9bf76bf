"""Operational endpoints: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from aiohttp import web

from tokenapi.errors import StoreUnavailable
from tokenapi.keys import store_key

from .metrics import metrics_handler


async def healthz(request: web.Request) -> web.Response:
    """The process is alive and serving."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when tokens can be validated: the token lookup answers and, on PostgreSQL, the
    revocation listener is connected; otherwise 503 saying what is wrong (never a secret)."""
    try:
        await request.app[store_key].ping()
    except StoreUnavailable as exc:
        return web.json_response(
            {"status": "unavailable", "error": "store unreachable", "detail": str(exc)},
            status=503,
        )
    return web.json_response({"status": "ready"})


def setup_ops(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
