"""The supply-chain policy inside the server: lifecycle, the policy seam, metrics, status.

``setup`` builds the blocklist (feeds, manual file) and the release-age rule from the settings,
installs ``SupplyChainPolicy`` as the registry pipeline's policy (``Registry.policy``: the pipeline
asks it about every metadata answer and artifact; see ``gate.py``), registers the metrics, and
adds a cleanup context that starts the blocklist (last good copies, first refresh, refresh loop)
and watches the database for ``pkgate blocklist refresh`` requests.

Metrics (read at scrape time): ``pkgate_policy_decisions_total{ecosystem,rule,action}`` (versions
withheld: ``filtered`` from metadata or ``refused`` with a 403), ``pkgate_policy_unknown_publish_
times_total{ecosystem}``, ``pkgate_blocklist_entries{ecosystem}``, ``pkgate_blocklist_refreshes_
total``, ``pkgate_blocklist_sources_failing``, ``pkgate_blocklist_malformed_records`` and
``pkgate_blocklist_last_refresh_timestamp_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Final

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tokenapi.errors import StoreUnavailable
from tokenapi.keys import store_key
from tokenapi.store import Store

from ..registry.pipeline import registry_key
from ..settings import Settings
from .blocklist import Blocklist
from .gate import SupplyChainPolicy
from .policy import AgeRule, Engine
from .versions import NPM, PYPI

log = logging.getLogger("pkgate.policy")

WATCH_INTERVAL: Final = 0.25  # seconds between looks at the database for refresh requests


def age_rule(settings: Settings) -> AgeRule:
    default = settings.min_release_age
    npm = settings.npm_min_release_age
    pypi = settings.pypi_min_release_age
    return AgeRule(
        npm=default if npm is None else npm,
        pypi=default if pypi is None else pypi,
        exempt=settings.min_release_age_exempt,
    )


def blocklist_from(settings: Settings) -> Blocklist | None:
    if not settings.blocklist_feeds and settings.blocklist_file is None:
        return None
    return Blocklist(
        settings.blocklist_feeds,
        settings.blocklist_file,
        kinds=settings.blocklist_kinds,
        data_dir=settings.data_dir,
        refresh=settings.blocklist_refresh,
    )


class SupplyChain:
    """The policy engine bound to one server process."""

    def __init__(
        self,
        blocklist: Blocklist | None,
        age: AgeRule,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.blocklist = blocklist
        self.engine = Engine(blocklist, age, clock=clock)
        self.policy = SupplyChainPolicy(self.engine)
        self.enabled = self.engine.enabled

    @classmethod
    def from_settings(cls, settings: Settings) -> SupplyChain:
        return cls(blocklist_from(settings), age_rule(settings))

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if self.blocklist is not None:
            await self.blocklist.start()

    async def close(self) -> None:
        if self.blocklist is not None:
            await self.blocklist.close()

    def status(self) -> dict[str, Any]:
        """The admin API's answer: the blocklist's status plus the age rule and the counters."""
        blocklist = (
            self.blocklist.status()
            if self.blocklist is not None
            else {"sources": [], "entries": 0, "outcome": "off", "errors": []}
        )
        return {
            **blocklist,
            "min_release_age": {"npm": self.engine.age.npm, "pypi": self.engine.age.pypi},
            "min_release_age_exempt": list(self.engine.age.exempt),
            "decisions": [
                {"ecosystem": e, "rule": r, "action": a, "count": n}
                for (e, r, a), n in sorted(self.policy.decisions.items())
            ],
            "unknown_publish_times": dict(self.policy.unknown_times),
        }


class PolicyCollector(Collector):
    """The policy's counters and the blocklist's state, read at scrape time."""

    def __init__(self, chain: SupplyChain) -> None:
        self.chain = chain

    def collect(self) -> Iterator[Metric]:
        chain = self.chain
        decisions = CounterMetricFamily(
            "pkgate_policy_decisions",
            "Versions the supply-chain policy withheld: filtered from metadata or refused (403)",
            labels=("ecosystem", "rule", "action"),
        )
        for (eco, rule, action), count in sorted(chain.policy.decisions.items()):
            decisions.add_metric([eco, rule, action], count)
        yield decisions
        unknown = CounterMetricFamily(
            "pkgate_policy_unknown_publish_times",
            "Versions kept because their publish (upload) time is unknown",
            labels=("ecosystem",),
        )
        for eco, count in sorted(chain.policy.unknown_times.items()):
            unknown.add_metric([eco], count)
        yield unknown
        blocklist = chain.blocklist
        if blocklist is None:
            return
        entries = GaugeMetricFamily(
            "pkgate_blocklist_entries", "Blocklist entries in force", labels=("ecosystem",)
        )
        counts = {NPM: 0, PYPI: 0}
        for (eco, _), found in blocklist.index.by_package.items():
            counts[eco] = counts.get(eco, 0) + len(found)
        for eco, count in sorted(counts.items()):
            entries.add_metric([eco], count)
        yield entries
        refreshes = CounterMetricFamily("pkgate_blocklist_refreshes", "Blocklist refreshes run")
        refreshes.add_metric([], blocklist.refreshes)
        yield refreshes
        failing = GaugeMetricFamily(
            "pkgate_blocklist_sources_failing", "Sources whose last read failed (last good in use)"
        )
        malformed = GaugeMetricFamily(
            "pkgate_blocklist_malformed_records", "Records skipped as malformed in the sources"
        )
        states = [*blocklist.states]
        if blocklist.manual_state is not None:
            states.append(blocklist.manual_state)
        failing.add_metric([], sum(1 for s in states if s.outcome == "error"))
        malformed.add_metric([], sum(s.malformed for s in blocklist.states))
        yield failing
        yield malformed
        last = GaugeMetricFamily(
            "pkgate_blocklist_last_refresh_timestamp_seconds", "When the last refresh ended"
        )
        last.add_metric([], blocklist.last_refresh or 0)
        yield last


supplychain_key: Final = web.AppKey("supplychain", SupplyChain)


class RefreshWatch:
    """Refresh a blocklist whenever a refresh request lands in the database (from any process).

    Polls the store's ``data_version`` (no I/O on SQLite; a notification counter on PostgreSQL)
    and reads the request log only when it moved.  ``prime()`` notes where the log stands;
    requests after that are acted on by ``run()``.
    """

    def __init__(self, store: Store, blocklist: Blocklist) -> None:
        self.store = store
        self.blocklist = blocklist
        self.version = 0
        self.seen = 0

    async def prime(self) -> None:
        self.version = await self.store.data_version()
        self.seen = await self.store.blocklist_refresh_seq()

    async def check(self) -> None:
        try:
            now = await self.store.data_version()
            if now == self.version:
                return
            self.version = now
            latest = await self.store.blocklist_refresh_seq()
        except StoreUnavailable as exc:
            log.warning("blocklist: cannot read refresh requests: %s", exc)
            return
        if latest > self.seen:
            self.seen = latest
            self.blocklist.request_refresh()

    async def run(self, interval: float = WATCH_INTERVAL) -> None:
        while True:
            await self.store.wait_for_change(interval)
            await self.check()


async def supplychain_ctx(app: web.Application) -> AsyncIterator[None]:
    """Start the blocklist (last good copies, first refresh, refresh loop) with the app, and
    the watch for refresh requests written to the database."""
    chain = app[supplychain_key]
    await chain.start()
    store = app.get(store_key)
    watch: asyncio.Task[None] | None = None
    if store is not None and chain.blocklist is not None:
        watcher = RefreshWatch(store, chain.blocklist)
        await watcher.prime()
        watch = asyncio.create_task(watcher.run(), name="pkgate-blocklist-watch")
    try:
        yield
    finally:
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        await chain.close()


def setup(app: web.Application, settings: Settings, registry: Any | None = None) -> SupplyChain:
    """Put a ``SupplyChain`` on ``app`` (``registry``: a Prometheus registry for its metrics)."""
    chain = SupplyChain.from_settings(settings)
    app[supplychain_key] = chain
    if chain.enabled:
        app[registry_key].policy = chain.policy
    if registry is not None:
        registry.register(PolicyCollector(chain))
    app.cleanup_ctx.append(supplychain_ctx)
    return chain
