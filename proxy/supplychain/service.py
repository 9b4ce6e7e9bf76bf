"""The supply-chain policy inside the server: views of cached metadata, 403s, metrics, logs.

The registry handlers (``proxy/npm/routes.py``, ``proxy/pypi/routes.py``) call in at four points:

- ``npm_packument`` / ``pypi_page``: a metadata answer about to be served (a ``Cached`` from the
  metadata cache) becomes the policy's view of it: the same ``Cached`` when nothing is withheld,
  one with a filtered entry, or a 403 when nothing is left;
- ``npm_full_view``: the view of a full packument, for version documents and dist-tags;
- ``npm_tarball`` / ``pypi_file``: a 403 for an artifact of a withheld version, else None.

Views are memoised per cache entry: a warm request costs a dict lookup and two comparisons (the
entry object is the one the view was made from, the blocklist generation is unchanged, and no
quarantine has ended since).  A packument whose package has no blocklist entry, with the age rule
off for it, is never parsed at all.  So a feed change reaches cached metadata at the next request
after the refresh, and a quarantined version appears the moment it comes of age.

Every decision that changes an answer is counted in ``/metrics``
(``pkgate_policy_decisions_total{ecosystem,rule,action}``) and logged as one line on the
``pkgate.policy`` logger with the token id, ecosystem, package, version(s), rule and advisory id.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson
from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tokenapi.errors import StoreUnavailable
from tokenapi.keys import request_token, store_key
from tokenapi.store import Store

from ..errors import json_error
from ..registry.metacache import Cached, MetaEntry, body_etag
from ..settings import Settings
from . import npmview, pypiview
from .blocklist import Blocklist
from .npmview import NpmView
from .policy import AgeRule, Decision, Engine, package_denial_message
from .pypiview import PypiView
from .versions import NPM, PYPI

log = logging.getLogger("pkgate.policy")

POLICY_HEADER: Final = "X-Pkgate-Policy"
# Parsing a packument this large would stall other requests: do it on a worker thread.
OFF_LOOP_BYTES: Final = 512 * 1024
# Views kept (one per cache entry that the policy had to look into).
MEMO_ENTRIES: Final = 20_000
WATCH_INTERVAL: Final = 0.25  # seconds between looks at the database for refresh requests
FILTERED: Final = "filtered"
REFUSED: Final = "refused"

FullEntry = Callable[[], Awaitable[MetaEntry]]


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


@dataclass(slots=True)
class _Memo:
    source: MetaEntry  # the cache entry the view was made from
    generation: int
    valid_until: float
    view: Any  # NpmView | PypiView
    entry: MetaEntry  # what to serve: ``source`` itself, or a filtered copy


def filtered_entry(source: MetaEntry, body: bytes) -> MetaEntry:
    """A copy of a cache entry with another body (its own ETag; the headers are rebuilt)."""
    return dataclasses.replace(source, body=body, etag=body_etag(body), _answer_headers={})


def refusal(message: str, rule: str) -> web.Response:
    return json_error(403, message, headers={POLICY_HEADER: rule})


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
        self.clock = clock
        self.enabled = self.engine.enabled
        self._memo: OrderedDict[object, _Memo] = OrderedDict()
        self.decisions: dict[tuple[str, str, str], int] = {}
        self.unknown_times: dict[str, int] = {NPM: 0, PYPI: 0}

    @classmethod
    def from_settings(cls, settings: Settings) -> SupplyChain:
        return cls(blocklist_from(settings), age_rule(settings))

    # -- bookkeeping ------------------------------------------------------------------------

    def applies(self, ecosystem: str, name: str) -> bool:
        """Whether the policy may withhold anything of this package (cheap)."""
        if self.engine.needs_times(ecosystem, name):
            return True
        return self.blocklist is not None and self.blocklist.lookup(ecosystem, name) is not None

    def _memo_get(self, key: object, source: MetaEntry) -> _Memo | None:
        memo = self._memo.get(key)
        if (
            memo is not None
            and memo.source is source
            and memo.generation == self.engine.generation
            and self.clock() < memo.valid_until
        ):
            return memo
        return None

    def _memo_put(self, key: object, memo: _Memo) -> None:
        self._memo[key] = memo
        self._memo.move_to_end(key)
        while len(self._memo) > MEMO_ENTRIES:
            self._memo.popitem(last=False)

    def _record(
        self,
        request: web.Request,
        ecosystem: str,
        name: str,
        decisions: Mapping[str, Decision],
        action: str,
    ) -> None:
        token = request_token(request)
        token_id = token.id if token is not None else "-"
        by_rule: dict[str, list[Decision]] = {}
        for decision in decisions.values():
            by_rule.setdefault(decision.rule, []).append(decision)
        for rule, listed in by_rule.items():
            key = (ecosystem, rule, action)
            self.decisions[key] = self.decisions.get(key, 0) + len(listed)
            advisories = sorted({d.advisory for d in listed if d.advisory})
            log.info(
                "policy %s token=%s ecosystem=%s package=%s version=%s rule=%s advisory=%s",
                action,
                token_id,
                ecosystem,
                name,
                ",".join(d.version for d in listed),
                rule,
                ",".join(advisories) or "-",
            )

    def _refuse(
        self, request: web.Request, ecosystem: str, name: str, decision: Decision, message: str
    ) -> web.Response:
        self._record(request, ecosystem, name, {decision.version: decision}, REFUSED)
        return refusal(message, decision.rule)

    # -- npm --------------------------------------------------------------------------------

    async def _npm_view(
        self, key: object, name: str, source: MetaEntry, full: FullEntry | None
    ) -> _Memo:
        memo = self._memo_get(key, source)
        if memo is not None:
            return memo
        generation = self.engine.generation
        times: dict[str, float | None] | None = None
        if full is not None and self.engine.needs_times(NPM, name):
            full_entry = await full()
            times = await self._off_loop(full_entry.body, _times_of, full_entry.body)
        view: NpmView = await self._off_loop(
            source.body, npmview.view, self.engine, name, source.body, times
        )
        unknown = view.evaluation.unknown_times
        if unknown:
            self.unknown_times[NPM] += unknown
        entry = filtered_entry(source, view.body) if view.body is not None else source
        memo = _Memo(source, generation, view.evaluation.valid_until, view, entry)
        self._memo_put(key, memo)
        return memo

    @staticmethod
    async def _off_loop(body: bytes, fn: Callable[..., Any], *args: Any) -> Any:
        if len(body) > OFF_LOOP_BYTES:
            return await asyncio.to_thread(fn, *args)
        return fn(*args)

    def _npm_denied(self, request: web.Request, name: str, view: NpmView) -> web.Response | None:
        if view.denied is None:
            return None
        return self._refuse(
            request, NPM, name, view.denied, package_denial_message(name, view.denied)
        )

    async def npm_packument(
        self,
        request: web.Request,
        name: str,
        key: object,
        cached: Cached,
        full: FullEntry | None,
    ) -> Cached | web.Response:
        """The packument as the policy lets it be served.

        ``full`` fetches the full packument (for publish times) when ``cached`` is the
        abbreviated form; None when ``cached`` is the full one.
        """
        if not self.applies(NPM, name):
            return cached
        memo = await self._npm_view(key, name, cached.entry, full)
        view: NpmView = memo.view
        denied = self._npm_denied(request, name, view)
        if denied is not None:
            return denied
        if memo.entry is cached.entry:
            return cached
        self._record(request, NPM, name, view.evaluation.withheld, FILTERED)
        return Cached(memo.entry, cached.state)

    async def npm_full_view(
        self, request: web.Request, name: str, key: object, full: FullEntry
    ) -> NpmView | None:
        """The policy's view of the full packument; None when it changes nothing for the package."""
        if not self.applies(NPM, name):
            return None
        memo = await self._npm_view(key, name, await full(), None)
        view: NpmView = memo.view
        if view.body is None and view.denied is None:
            return None
        return view

    def npm_version_refusal(
        self, request: web.Request, name: str, spec: str, view: NpmView
    ) -> web.Response | None:
        """A 403 for a version document of a withheld version (or of a package with none left)."""
        denied = self._npm_denied(request, name, view)
        if denied is not None:
            return denied
        decision = view.evaluation.withheld.get(spec)
        if decision is None:
            return None
        return self._refuse(request, NPM, name, decision, decision.message(name))

    async def npm_tarball(
        self, request: web.Request, name: str, file: str, key: object, full: FullEntry
    ) -> web.Response | None:
        """A 403 for a tarball of a withheld version, else None."""
        if not self.applies(NPM, name):
            return None
        memo = await self._npm_view(key, name, await full(), None)
        view: NpmView = memo.view
        decision = view.files.get(file)
        if decision is None:
            return None
        if view.denied is not None and decision.version not in view.evaluation.withheld:
            return self._npm_denied(request, name, view)
        return self._refuse(request, NPM, name, decision, decision.message(name))

    # -- PyPI -------------------------------------------------------------------------------

    async def _pypi_view(self, name: str, json_entry: FullEntry) -> tuple[_Memo, PypiView]:
        key = (PYPI, name)
        source = await json_entry()
        memo = self._memo_get(key, source)
        if memo is None:
            generation = self.engine.generation
            files = await self._off_loop(source.body, pypiview.files_of_json, source.body)
            view = pypiview.view(self.engine, name, files)
            if view.evaluation.unknown_times:
                self.unknown_times[PYPI] += view.evaluation.unknown_times
            memo = _Memo(source, generation, view.evaluation.valid_until, view, source)
            self._memo_put(key, memo)
        pv: PypiView = memo.view
        return memo, pv

    def _pypi_denied(self, request: web.Request, name: str, pv: PypiView) -> web.Response | None:
        if pv.denied is None:
            return None
        return self._refuse(request, PYPI, name, pv.denied, package_denial_message(name, pv.denied))

    async def pypi_page(
        self,
        request: web.Request,
        name: str,
        key: object,
        cached: Cached,
        is_json: bool,
        json_entry: FullEntry,
    ) -> Cached | web.Response:
        """A project page as the policy lets it be served (``name`` normalised).

        ``json_entry`` gives the project's JSON page (the decisions are made from it: it has
        the upload times); it may be ``cached.entry`` itself.
        """
        if not self.applies(PYPI, name):
            return cached
        view_memo, pv = await self._pypi_view(name, json_entry)
        denied = self._pypi_denied(request, name, pv)
        if denied is not None:
            return denied
        if not pv.files:
            return cached
        memo = self._memo.get(key)
        if memo is None or memo.source is not cached.entry or memo.view is not pv:
            body = pypiview.filter_json if is_json else pypiview.filter_html
            entry = filtered_entry(cached.entry, body(cached.entry.body, pv))
            memo = _Memo(cached.entry, view_memo.generation, view_memo.valid_until, pv, entry)
            self._memo_put(key, memo)
        self._record(request, PYPI, name, pv.evaluation.withheld, FILTERED)
        return Cached(memo.entry, cached.state)

    async def pypi_file(
        self, request: web.Request, name: str, filename: str, json_entry: FullEntry
    ) -> web.Response | None:
        """A 403 for a file (or its ``.metadata``) of a withheld release, else None."""
        if not self.applies(PYPI, name):
            return None
        _, pv = await self._pypi_view(name, json_entry)
        decision = pypiview.decision_for_file(pv, filename)
        if decision is None:
            return None
        if decision.version == "*":
            return self._pypi_denied(request, name, pv)
        return self._refuse(request, PYPI, name, decision, decision.message(name))

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
                for (e, r, a), n in sorted(self.decisions.items())
            ],
            "unknown_publish_times": dict(self.unknown_times),
        }


def _times_of(body: bytes) -> dict[str, float | None]:
    doc = orjson.loads(body)
    return npmview.publish_times(doc) if isinstance(doc, dict) else {}


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
        for (eco, rule, action), count in sorted(chain.decisions.items()):
            decisions.add_metric([eco, rule, action], count)
        yield decisions
        unknown = CounterMetricFamily(
            "pkgate_policy_unknown_publish_times",
            "Versions kept because their publish (upload) time is unknown",
            labels=("ecosystem",),
        )
        for eco, count in sorted(chain.unknown_times.items()):
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
    if registry is not None:
        registry.register(PolicyCollector(chain))
    app.cleanup_ctx.append(supplychain_ctx)
    return chain
