"""Prometheus metrics: one registry per app, the request-counting front step, and /metrics.

Every series is named ``pkgate_*`` and lives in the app's own ``CollectorRegistry`` (never the
process-global default), so two apps in one process, as in tests, never share counts.  Label values
come only from bounded sets: route templates (not paths), ecosystems, status codes, outcome names
and configured upstream origins, so no client input, and no secret, can become a label.

Values read at scrape time rather than counted: active tokens (one store query per scrape) and the
last-used recorder's flush count and last batch size.

Labels from the ``RegistryFacts`` a registry gate puts on its requests (``proxy.keys``):
- ``ecosystem``: ``npm`` or ``pypi`` (``none`` for every other request);
- ``cache``: ``"hit"``, ``"miss"`` or ``"stale"`` when the answer came from, missed, or fell back
  to the metadata/artifact cache; ``"revalidated"`` when the upstream confirmed a cached entry,
  ``"bypass"`` when the answer could not be cached (``note_cache``), ``"disk"`` when a metadata
  document came from the disk tier (``registry.metadisk``) without asking the upstream.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator

from aiohttp import web
from aiohttp.web_urldispatcher import AbstractRoute, SystemRoute
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from tokenapi.breach import BreachNotifier
from tokenapi.keys import breach_key, recorder_key, store_key
from tokenapi.lastused import UsageRecorder

from .accesslog import AccessLogSink, access_log_key
from .errors import Handler, answer_failure
from .keys import REQUEST_FACTS, RegistryFacts, metadata_cache_key
from .registry.metacache import MetadataCache
from .registry.metadisk import MetadataDisk

AUTH_OUTCOMES = ("ok", "missing", "invalid", "revoked", "expired", "out_of_scope")
CACHE_OUTCOMES = ("hit", "miss", "stale", "revalidated", "bypass", "disk")
# Status recorded when the client hung up before the answer was complete (nginx's convention).
CLIENT_CLOSED = 499

# Upstream answers usually take tens of milliseconds; slow registries take seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _ScrapeTimeCollector(Collector):
    """Series whose values are read from the running app when Prometheus scrapes."""

    def __init__(self) -> None:
        self.recorder: UsageRecorder | None = None
        self.breach: BreachNotifier | None = None
        self.tokens_active: int | None = None
        self.access_log: AccessLogSink | None = None
        self.metadata: MetadataCache | None = None

    def collect(self) -> Iterator[Metric]:
        recorder = self.recorder
        yield _single(
            CounterMetricFamily,
            "pkgate_last_used_flushes",
            "Batched last-used writes committed to the store",
            recorder.flushes if recorder else 0,
        )
        yield _single(
            GaugeMetricFamily,
            "pkgate_last_used_last_batch_size",
            "Tokens written by the most recent last-used flush",
            recorder.last_batch_size if recorder else 0,
        )
        yield _single(
            CounterMetricFamily,
            "pkgate_last_used_tokens_written",
            "Token rows written by all last-used flushes",
            recorder.tokens_written if recorder else 0,
        )
        cache = self.metadata
        if cache is not None:
            for name, doc, value in (
                ("entries", "Entries in the metadata cache", len(cache)),
                ("bytes", "Bytes the metadata cache is charged (bodies as stored)", cache.bytes),
                (
                    "identity_bytes",
                    "Bytes its entries' bodies would take uncompressed",
                    cache.identity_bytes(),
                ),
            ):
                yield _single(GaugeMetricFamily, f"pkgate_metadata_cache_{name}", doc, value)
            for name, doc, value in (
                (
                    "zstd_made",
                    "Entries given a zstd copy for clients that accept it",
                    cache.stats.zstd_made,
                ),
                ("zstd_answers", "Metadata answers sent in zstd", cache.stats.zstd_answers),
            ):
                yield _single(CounterMetricFamily, f"pkgate_metadata_cache_{name}", doc, value)
            if cache.disk is not None:
                yield from _disk_families(cache.disk)
        sink = self.access_log
        if sink is not None:
            for name, doc, value in (
                ("written", "Access log lines written", sink.lines_written),
                ("dropped", "Access log lines not kept: the buffer was full", sink.lines_dropped),
                ("lost", "Access log lines that could not be written", sink.lines_lost),
            ):
                yield _single(CounterMetricFamily, f"pkgate_access_log_lines_{name}", doc, value)
            yield _single(
                GaugeMetricFamily,
                "pkgate_access_log_pending_bytes",
                "Access log bytes waiting to be written",
                sink.pending_bytes,
            )
        yield from _history_families(recorder, self.breach)
        if self.tokens_active is not None:
            yield _single(
                GaugeMetricFamily,
                "pkgate_tokens_active",
                "Tokens that are not revoked",
                self.tokens_active,
            )


def _disk_families(disk: MetadataDisk) -> Iterator[Metric]:
    """The metadata cache's disk tier (``registry.metadisk``)."""
    stats = disk.stats
    for name, doc, value in (
        ("fresh", "Metadata documents taken from the disk tier without the upstream", stats.fresh),
        ("restored", "Entries restored from the disk tier's kept copies", stats.restored),
        ("rebuilt", "Entries built again from the disk tier's upstream bytes", stats.rebuilt),
        ("revalidated", "Disk tier copies the upstream confirmed with a 304", stats.revalidated),
        ("stale", "Disk tier copies served because the upstream failed", stats.stale),
        ("written", "Upstream metadata answers written to the disk tier", stats.written),
        ("rejected", "Disk tier files that failed a check and were deleted", stats.rejected),
        ("failures", "Disk tier reads and writes the disk refused", stats.failures),
        ("evicted", "Disk tier files deleted to stay within metadata_disk_bytes", stats.evicted),
    ):
        yield _single(CounterMetricFamily, f"pkgate_metadata_disk_{name}", doc, value)
    yield _single(
        GaugeMetricFamily,
        "pkgate_metadata_disk_bytes",
        "Bytes of the disk tier (as of its last listing)",
        disk.bytes,
    )


def _single(
    kind: type[CounterMetricFamily] | type[GaugeMetricFamily], name: str, doc: str, value: float
) -> Metric:
    """A series of one unlabelled value."""
    family = kind(name, doc)
    family.add_metric([], value)
    return family


def _history_families(
    recorder: UsageRecorder | None, breach: BreachNotifier | None
) -> Iterator[Metric]:
    """Download history and breach mail series (SPEC 16)."""
    for name, doc, value in (
        (
            "pkgate_downloads_recorded",
            "Download records written to the history",
            recorder.downloads_written if recorder else 0,
        ),
        (
            "pkgate_downloads_dropped",
            "Download records dropped because the store stayed unavailable too long",
            recorder.downloads_dropped if recorder else 0,
        ),
        (
            "pkgate_breach_mails_queued",
            "Breach notifications queued",
            breach.queued if breach else 0,
        ),
        ("pkgate_breach_mails_sent", "Breach mails sent", breach.sent if breach else 0),
        (
            "pkgate_breach_mail_failures",
            "Breach notification mail attempts that failed (each is retried)",
            breach.failures if breach else 0,
        ),
        (
            "pkgate_breach_mails_failed",
            "Breach notifications given up after every retry failed",
            breach.gave_up if breach else 0,
        ),
    ):
        yield _single(CounterMetricFamily, name, doc, value)


class _Counts:
    """A labelled counter kept as plain integers; exposed by ``_HotCollector`` at scrape time.

    The request path runs on one event loop thread, so a dict increment needs no lock, and costs
    a fraction of a prometheus-client ``labels().inc()`` (validation, a lock, three calls).
    """

    __slots__ = ("doc", "labels", "name", "values")

    def __init__(self, name: str, doc: str, labels: tuple[str, ...]) -> None:
        self.name = name
        self.doc = doc
        self.labels = labels
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, *values: str, amount: float = 1.0) -> None:
        counts = self.values
        counts[values] = counts.get(values, 0.0) + amount

    def get(self, *values: str) -> float:
        """The current count for one label combination (0 when never counted)."""
        return self.values.get(values, 0.0)

    def family(self) -> Metric:
        metric = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        for values, count in sorted(self.values.items()):
            metric.add_metric(list(values), count)
        return metric


class _Durations:
    """A labelled histogram kept as plain bucket counts (see ``_Counts`` for why)."""

    __slots__ = ("bounds", "doc", "label", "name", "series")

    def __init__(self, name: str, doc: str, label: str, bounds: tuple[float, ...]) -> None:
        self.name = name
        self.doc = doc
        self.label = label
        self.bounds = bounds
        # label value -> [count per bucket (last is +Inf)..., sum]
        self.series: dict[str, list[float]] = {}

    def observe(self, value: str, seconds: float) -> None:
        series = self.series.get(value)
        if series is None:
            series = self.series[value] = [0.0] * (len(self.bounds) + 2)
        series[bisect_left(self.bounds, seconds)] += 1
        series[-1] += seconds

    def count(self, value: str) -> float:
        series = self.series.get(value)
        return sum(series[:-1]) if series else 0.0

    def family(self) -> Metric:
        metric = HistogramMetricFamily(self.name, self.doc, labels=(self.label,))
        for value, series in sorted(self.series.items()):
            running = 0.0
            buckets = []
            for bound, n in zip((*self.bounds, float("inf")), series[:-1], strict=True):
                running += n
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
            metric.add_metric([value], buckets, series[-1])
        return metric


class _HotCollector(Collector):
    """Exposes the plain-integer series of a Metrics object."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        for counts in (m.requests, m.auth, m.cache, m.upstream_errors):
            yield counts.family()
        yield m.request_duration.family()
        yield m.upstream_latency.family()
        in_flight = GaugeMetricFamily(
            "pkgate_requests_in_flight", "Requests being answered right now"
        )
        in_flight.add_metric([], m.in_flight)
        yield in_flight


class Metrics:
    """Every pkgate metric, exposed from a registry of its own."""

    __slots__ = (
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
        self.requests = _Counts(
            "pkgate_requests",
            "HTTP requests answered, by ecosystem, route template and status",
            ("ecosystem", "route", "status"),
        )
        self.request_duration = _Durations(
            "pkgate_request_duration_seconds",
            "Time to answer a request (to the end of the body for streamed answers)",
            "ecosystem",
            LATENCY_BUCKETS,
        )
        self.in_flight = 0
        self.auth = _Counts(
            "pkgate_auth", "Registry authentication outcomes", ("ecosystem", "outcome")
        )
        self.upstream_latency = _Durations(
            "pkgate_upstream_request_duration_seconds",
            "Time from sending an upstream request to its response headers",
            "origin",
            LATENCY_BUCKETS,
        )
        self.upstream_errors = _Counts(
            "pkgate_upstream_errors",
            "Failed upstream requests: timeout, connection or 5xx status",
            ("origin", "kind"),
        )
        self.cache = _Counts(
            "pkgate_cache",
            "Cache lookups by outcome: hit, miss, revalidated (upstream said unchanged), "
            "stale (served stale after an upstream failure) or bypass (not cacheable)",
            ("ecosystem", "outcome"),
        )
        self.registry.register(_HotCollector(self))
        self._scrape = _ScrapeTimeCollector()
        self.registry.register(self._scrape)

    def auth_outcome(self, ecosystem: str, outcome: str) -> None:
        """Count one registry authentication outcome (one of AUTH_OUTCOMES)."""
        self.auth.inc(ecosystem, outcome)

    def upstream_answered(self, origin: str, seconds: float, status: int) -> None:
        """Record one upstream response's header latency (and a 5xx as an error)."""
        self.upstream_latency.observe(origin, seconds)
        if status >= 500:
            self.upstream_errors.inc(origin, "status")

    def upstream_failed(self, origin: str, kind: str) -> None:
        """Count one upstream request that got no response (``timeout`` or ``connection``)."""
        self.upstream_errors.inc(origin, kind)

    async def render(self, app: web.Application) -> bytes:
        """The text exposition, with the scrape-time values read from ``app`` first."""
        self._scrape.recorder = app.get(recorder_key)
        self._scrape.access_log = app.get(access_log_key)
        self._scrape.metadata = app.get(metadata_cache_key)
        self._scrape.breach = app.get(breach_key)
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


def front(metrics: Metrics) -> Callable[[Handler], Handler]:
    """The server's first step around the app (``proxy.compat.front_key``): every request
    counted in ``metrics`` with its final status, duration and cache outcome; every failure,
    the router's 404 and 405 included, made a JSON answer (``proxy.errors.answer_failure``)
    inside the count, so the count has the answer's status.

    Around the app's own handler rather than an aiohttp middleware: with no middleware anywhere
    aiohttp calls a route's handler directly, where each middleware layer costs a wrapper and a
    coroutine on every request (and the first makes it add a second, which sets the request's
    current app).
    """
    requests = metrics.requests.values
    cache = metrics.cache.values
    # Route -> its label, for the routes the app declares (aiohttp makes a new route object for
    # every unmatched request: those are labelled afresh, and never kept).
    labels: dict[AbstractRoute, str] = {}
    durations = metrics.request_duration
    perf_counter = time.perf_counter

    def wrap(handler: Handler) -> Handler:
        async def front(request: web.Request) -> web.StreamResponse:
            start = perf_counter()
            status = 500
            metrics.in_flight += 1
            try:
                try:
                    response = await handler(request)
                except Exception as exc:
                    response = answer_failure(request, exc)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            except (ConnectionResetError, asyncio.CancelledError):
                status = CLIENT_CLOSED
                raise
            finally:
                metrics.in_flight -= 1
                try:
                    facts: RegistryFacts | None = request[REQUEST_FACTS]
                except KeyError:  # not a registry request
                    facts = None
                ecosystem = "none" if facts is None else facts.ecosystem
                match_info = request.match_info
                if match_info is not None:
                    route = match_info.route
                    label = labels.get(route)
                    if label is None:
                        label = route_label(request)
                        if not isinstance(route, SystemRoute):
                            labels[route] = label
                else:  # the router itself failed
                    label = "unmatched"
                counted = (ecosystem, label, str(status))
                requests[counted] = requests.get(counted, 0.0) + 1.0
                durations.observe(ecosystem, perf_counter() - start)
                if facts is not None and facts.cache in CACHE_OUTCOMES:
                    outcome = (ecosystem, facts.cache)
                    cache[outcome] = cache.get(outcome, 0.0) + 1.0

        return front

    return wrap


async def metrics_handler(request: web.Request) -> web.Response:
    """The Prometheus text exposition of this process's metrics."""
    body = await request.app[metrics_key].render(request.app)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
