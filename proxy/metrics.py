"""Prometheus metrics: one registry per app, a request-counting middleware, and /metrics.

Every series is named ``pkgate_*`` and lives in the app's own ``CollectorRegistry`` (never the
process-global default), so two apps in one process, as in tests, never share counts.  Label values
come only from bounded sets: route templates (not paths), ecosystems, status codes, outcome names
and configured upstream origins, so no client input, and no secret, can become a label.

Values read at scrape time rather than counted: active tokens (one store query per scrape) and the
last-used recorder's flush count and last batch size.

Per-request keys the handlers set (``web.RequestKey``s from ``proxy.keys``):
- ``REQUEST_ECOSYSTEM``: ``npm`` or ``pypi``; set by the registry auth middleware.
- ``REQUEST_CACHE``: ``request[REQUEST_CACHE] = "hit"``, ``"miss"`` or ``"stale"`` when the answer
  came from, missed, or fell back to the metadata/artifact cache; ``"revalidated"`` when the
  upstream confirmed a cached entry, ``"bypass"`` when the answer could not be cached.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from tokenapi.keys import recorder_key, store_key
from tokenapi.lastused import UsageRecorder

from .errors import Handler
from .keys import REQUEST_CACHE, REQUEST_ECOSYSTEM

AUTH_OUTCOMES = ("ok", "missing", "invalid", "revoked")
CACHE_OUTCOMES = ("hit", "miss", "stale", "revalidated", "bypass")
# Status recorded when the client hung up before the answer was complete (nginx's convention).
CLIENT_CLOSED = 499

# Upstream answers usually take tens of milliseconds; slow registries take seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _ScrapeTimeCollector(Collector):
    """Series whose values are read from the running app when Prometheus scrapes."""

    def __init__(self) -> None:
        self.recorder: UsageRecorder | None = None
        self.tokens_active: int | None = None

    def collect(self) -> Iterator[Metric]:
        flushes = CounterMetricFamily(
            "pkgate_last_used_flushes", "Batched last-used writes committed to the store"
        )
        batch = GaugeMetricFamily(
            "pkgate_last_used_last_batch_size", "Tokens written by the most recent last-used flush"
        )
        written = CounterMetricFamily(
            "pkgate_last_used_tokens_written", "Token rows written by all last-used flushes"
        )
        recorder = self.recorder
        flushes.add_metric([], recorder.flushes if recorder else 0)
        batch.add_metric([], recorder.last_batch_size if recorder else 0)
        written.add_metric([], recorder.tokens_written if recorder else 0)
        yield flushes
        yield batch
        yield written
        if self.tokens_active is not None:
            active = GaugeMetricFamily("pkgate_tokens_active", "Tokens that are not revoked")
            active.add_metric([], self.tokens_active)
            yield active


class Metrics:
    """Every pkgate metric, in a registry of its own."""

    __slots__ = (
        "_children",
        "_scrape",
        "auth",
        "cache",
        "in_flight",
        "registry",
        "request_duration",
        "requests",
        "upstream_errors",
        "upstream_latency",
    )

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.requests = Counter(
            "pkgate_requests",
            "HTTP requests answered, by ecosystem, route template and status",
            ["ecosystem", "route", "status"],
            registry=reg,
        )
        self.request_duration = Histogram(
            "pkgate_request_duration_seconds",
            "Time to answer a request (to the end of the body for streamed answers)",
            ["ecosystem"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.in_flight = Gauge(
            "pkgate_requests_in_flight", "Requests being answered right now", registry=reg
        )
        self.auth = Counter(
            "pkgate_auth",
            "Registry authentication outcomes",
            ["ecosystem", "outcome"],
            registry=reg,
        )
        self.upstream_latency = Histogram(
            "pkgate_upstream_request_duration_seconds",
            "Time from sending an upstream request to its response headers",
            ["origin"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.upstream_errors = Counter(
            "pkgate_upstream_errors",
            "Failed upstream requests: timeout, connection or 5xx status",
            ["origin", "kind"],
            registry=reg,
        )
        self.cache = Counter(
            "pkgate_cache",
            "Cache lookups by outcome: hit, miss, revalidated (upstream said unchanged), "
            "stale (served stale after an upstream failure) or bypass (not cacheable)",
            ["ecosystem", "outcome"],
            registry=reg,
        )
        self._scrape = _ScrapeTimeCollector()
        reg.register(self._scrape)
        # Label children memoised: ``labels()`` validates and locks on every call, which shows up
        # on the warm path; label values come from bounded sets, so this stays small.
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def child(self, metric: Counter | Histogram, *values: str) -> Any:
        """The labelled child of ``metric``, created once."""
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def auth_outcome(self, ecosystem: str, outcome: str) -> None:
        """Count one registry authentication outcome (one of AUTH_OUTCOMES)."""
        self.child(self.auth, ecosystem, outcome).inc()

    def upstream_answered(self, origin: str, seconds: float, status: int) -> None:
        """Record one upstream response's header latency (and a 5xx as an error)."""
        self.child(self.upstream_latency, origin).observe(seconds)
        if status >= 500:
            self.child(self.upstream_errors, origin, "status").inc()

    def upstream_failed(self, origin: str, kind: str) -> None:
        """Count one upstream request that got no response (``timeout`` or ``connection``)."""
        self.child(self.upstream_errors, origin, kind).inc()

    async def render(self, app: web.Application) -> bytes:
        """The text exposition, with the scrape-time values read from ``app`` first."""
        self._scrape.recorder = app.get(recorder_key)
        store = app.get(store_key)
        self._scrape.tokens_active = await store.count_active_tokens() if store else None
        return generate_latest(self.registry)


metrics_key = web.AppKey("metrics", Metrics)


def route_label(request: web.Request) -> str:
    """The matched route's template, never the raw path (bounded, and free of client input)."""
    match_info = request.match_info
    if match_info.http_exception is not None:
        return "unmatched"
    route = match_info.route
    resource = route.resource
    return resource.canonical if resource is not None else "unmatched"


def ecosystem_label(request: web.Request) -> str:
    ecosystem: str = request.get(REQUEST_ECOSYSTEM, "none")
    return ecosystem


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every request with its final status, duration and cache outcome."""
    metrics = request.app[metrics_key]
    start = time.perf_counter()
    status = 500
    metrics.in_flight.inc()
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except (ConnectionResetError, asyncio.CancelledError):
        status = CLIENT_CLOSED
        raise
    finally:
        metrics.in_flight.dec()
        ecosystem = ecosystem_label(request)
        metrics.child(metrics.requests, ecosystem, route_label(request), str(status)).inc()
        metrics.child(metrics.request_duration, ecosystem).observe(time.perf_counter() - start)
        cache = request.get(REQUEST_CACHE)
        if cache in CACHE_OUTCOMES:
            metrics.child(metrics.cache, ecosystem, cache).inc()


async def metrics_handler(request: web.Request) -> web.Response:
    """The Prometheus text exposition of this process's metrics."""
    body = await request.app[metrics_key].render(request.app)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def setup_metrics(app: web.Application) -> Metrics:
    """Give ``app`` its own Metrics (the app factory places the middleware, ops the route)."""
    metrics = Metrics()
    app[metrics_key] = metrics
    return metrics
