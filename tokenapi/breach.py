"""Breach notifications (SPEC 16): mail whoever downloaded a version before it was blocked.

The blocklist refresh hands over the entries it has just added (``BreachEntry``; tokenapi does not
know the blocklist engine, the server wires the two together).  For each advisory the notifier
finds, in the download history, every user who downloaded an affected version before the entry
was first seen and still holds an active token, and queues one notification per (advisory, user)
in the store: the primary key makes a repeated refresh or a restart a no-op.  A background loop
claims due notifications one at a time (a lease, so several processes never send the same one),
mails them in the user's language and marks them sent; a failed send is retried with exponential
backoff and, after ``max_attempts``, marked failed.  Counters feed ``/metrics``; ``status()`` feeds
the admin blocklist status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

import orjson

from . import mailtext
from .config import TokenApiConfig
from .downloads import pypi_name
from .errors import StoreUnavailable
from .lastused import UsageRecorder
from .mail import Mailer, MailError, _api_url, _message
from .store import Affected, NewNotification, Notification, Store

log = logging.getLogger(__name__)

MAX_SUMMARY = 500
MAX_LINES = 50
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u0080-\u009f\u2028\u2029]+")


@dataclass(frozen=True, slots=True)
class BreachEntry:
    """A blocklist entry a refresh has just added.

    ``ecosystem`` is ``npm`` or ``pypi``; ``package`` as the ecosystem spells it (PyPI names are
    normalised here); ``affects`` tells whether a version (as recorded in the history) is hit;
    ``first_seen`` is the Unix time pkgate first saw the entry.
    """

    advisory_id: str
    summary: str
    ecosystem: str
    package: str
    affects: Callable[[str], bool]
    first_seen: float


def _clean(text: str, limit: int) -> str:
    """Feed text made safe for a mail header or body line: no control characters, bounded."""
    flat = _CONTROL.sub(" ", text).strip()
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _affected_lines(found: list[Affected]) -> list[dict[str, Any]]:
    """What the mail lists: per package, version and token, first and last download, count."""
    lines = [
        {
            "ecosystem": a.ecosystem,
            "package": a.package,
            "version": a.version,
            "token_name": a.token_name,
            "token_prefix": a.token_prefix,
            "first": a.first,
            "last": a.last,
            "count": a.count,
        }
        for a in found
    ]
    return sorted(lines, key=lambda g: (g["package"], g["version"], g["first"]))


def breach_message(config: TokenApiConfig, n: Notification) -> EmailMessage:
    """The mail for one claimed notification, in the user's language."""
    language = n.language if n.language in mailtext.BREACH else "en"
    details = orjson.loads(n.details)
    rendered = []
    for g in details["lines"]:
        times = ""
        if g["count"] > 1:
            times = mailtext.BREACH_TIMES[language].substitute(
                count=g["count"], last=_iso(g["last"])
            )
        rendered.append(
            mailtext.BREACH_LINE[language].substitute(
                package=_clean(g["package"], 214),
                version=_clean(g["version"], 128),
                ecosystem=g["ecosystem"],
                when=_iso(g["first"]),
                token_name=_clean(g["token_name"], 100),
                token_prefix=g["token_prefix"],
                times=times,
            )
        )
    packages = sorted({g["package"] for g in details["lines"]})
    advisory = _clean(n.advisory_id, 100)
    subject = mailtext.BREACH_SUBJECT[language].substitute(
        packages=_clean(", ".join(packages), 120), advisory=advisory
    )
    text = mailtext.BREACH[language].substitute(
        public_url=str(config.public_url),
        api=_api_url(config.public_url),
        advisory=advisory,
        summary=_clean(n.summary, MAX_SUMMARY) or "-",
        lines="\n".join(rendered),
    )
    return _message(config, n.email, subject, text)


class BreachNotifier:
    """Queues and sends breach mails; see the module docstring."""

    def __init__(
        self,
        store: Store,
        mailer: Mailer,
        config: TokenApiConfig,
        recorder: UsageRecorder | None = None,
        *,
        clock: Callable[[], float] = time.time,
        retry_base: float = 60.0,
        retry_max: float = 6 * 3600.0,
        max_attempts: int = 10,
        lease: float = 300.0,
        poll: float = 60.0,
    ) -> None:
        self._store = store
        self._mailer = mailer
        self._config = config
        self._recorder = recorder
        self.clock = clock
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.max_attempts = max_attempts
        self.lease = lease
        self.poll = poll
        self._incoming: list[list[BreachEntry]] = []
        self._wake = asyncio.Event()
        self._stopping = False
        self._steps_started = 0
        self._steps_finished = 0
        self._progress = asyncio.Event()
        # Counters for /metrics (this process).
        self.queued = 0
        self.lookups = 0  # per-package history queries made (tests: not one per entry)
        self.sent = 0
        self.failures = 0
        self.gave_up = 0
        self.skipped = 0
        self.last_error: str | None = None

    # -- intake ----------------------------------------------------------------------------

    def entries_added(self, entries: Iterable[BreachEntry]) -> None:
        """Hand over new entries; the background loop looks them up (never blocks the caller)."""
        batch = list(entries)
        if batch:
            self._incoming.append(batch)
            self._wake.set()

    async def enqueue(self, entries: Iterable[BreachEntry]) -> int:
        """Queue one notification per affected (advisory, user) not queued before; returns new."""
        by_advisory: dict[str, list[BreachEntry]] = {}
        for entry in entries:
            by_advisory.setdefault(entry.advisory_id, []).append(entry)
        if not by_advisory:
            return 0
        if self._recorder is not None:
            await self._recorder.sync()  # downloads still in memory count too
        # One query says which packages were ever downloaded: a first load of a large feed then
        # looks up only those, not every entry.
        downloaded = await self._store.downloaded_packages()
        items: list[NewNotification] = []
        for advisory_id, group in by_advisory.items():
            per_user: dict[str, list[Affected]] = {}
            for entry in group:
                package = pypi_name(entry.package) if entry.ecosystem == "pypi" else entry.package
                if (entry.ecosystem, package) not in downloaded:
                    continue
                self.lookups += 1
                found = await self._store.package_downloads(
                    entry.ecosystem, package, before=entry.first_seen
                )
                for a in found:
                    if self._hit(entry, a.version):
                        per_user.setdefault(a.user_id, []).append(a)
            for user_id, found in per_user.items():
                lines = _affected_lines(found)[:MAX_LINES]
                items.append(
                    NewNotification(
                        advisory_id,
                        user_id,
                        _clean(group[0].summary, MAX_SUMMARY),
                        min(e.first_seen for e in group),
                        orjson.dumps({"lines": lines}).decode(),
                    )
                )
        created = await self._store.add_notifications(items, self.clock())
        if created:
            self.queued += created
            log.info("queued %d breach notifications for %d advisories", created, len(by_advisory))
            self._wake.set()
        return created

    @staticmethod
    def _hit(entry: BreachEntry, version: str) -> bool:
        try:
            return bool(entry.affects(version))
        except Exception:
            log.exception("version predicate of %s failed on %r", entry.advisory_id, version)
            return False

    # -- delivery --------------------------------------------------------------------------

    def _backoff(self, attempts: int) -> float:
        return float(min(self.retry_base * 2 ** max(attempts - 1, 0), self.retry_max))

    async def deliver_one(self) -> bool:
        """Claim and send one due notification; False when none is due."""
        claimed = await self._store.claim_notifications(self.clock(), lease=self.lease, limit=1)
        if not claimed:
            return False
        n = claimed[0]
        if n.active_tokens == 0:
            # Revoked everything since it was queued: the account no longer gets mail.
            await self._store.finish_notification(
                n.advisory_id, n.user_id, state="skipped", now=self.clock()
            )
            self.skipped += 1
            return True
        try:
            await self._mailer.send(breach_message(self._config, n))
        except MailError as exc:
            self.failures += 1
            self.last_error = str(exc)
            attempts = n.attempts + 1
            if attempts >= self.max_attempts:
                self.gave_up += 1
                log.error("breach mail %s gave up after %d attempts", n.advisory_id, attempts)
                await self._store.finish_notification(
                    n.advisory_id, n.user_id, state="failed", now=self.clock(), error=str(exc)
                )
            else:
                at = self.clock() + self._backoff(attempts)
                await self._store.retry_notification(
                    n.advisory_id, n.user_id, at=at, error=str(exc)
                )
            return True
        await self._store.finish_notification(
            n.advisory_id, n.user_id, state="sent", now=self.clock()
        )
        self.sent += 1
        log.info("breach mail for %s sent to %s", n.advisory_id, n.email)
        return True

    async def _step(self) -> None:
        while self._incoming:
            batch = self._incoming[0]
            await self.enqueue(batch)
            self._incoming.pop(0)
        while not self._stopping and await self.deliver_one():
            pass

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            self._steps_started += 1
            step = self._steps_started
            try:
                await self._step()
                due = await self._store.next_notification_due()
            except StoreUnavailable as exc:
                log.warning("breach notifications: store unavailable, will retry: %s", exc)
                due = None
            except Exception:
                log.exception("breach notifications failed, will retry")
                due = None
            self._steps_finished = step
            self._progress.set()
            wait = self.poll if due is None else min(max(due - self.clock(), 0.0), self.poll)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def wait_idle(self) -> None:
        """Until the background loop has looked up every entry handed over and sent what is due."""
        target = self._steps_started + 1
        self._wake.set()
        while self._steps_finished < target or self._incoming:
            if self._steps_finished >= target:  # entries arrived during that pass: one more
                target = self._steps_started + 1
                self._wake.set()
            self._progress.clear()
            await self._progress.wait()

    @contextlib.asynccontextmanager
    async def running(self, grace: float = 10.0) -> AsyncIterator[None]:
        """Send in the background while the block runs; on exit let a send under way finish."""
        task = asyncio.create_task(self._run(), name="pkgate-breach-mail")
        try:
            yield
        finally:
            self._stopping = True
            self._wake.set()
            try:
                await asyncio.wait_for(task, grace)
            except TimeoutError:
                pass  # wait_for cancelled it; an unfinished claim expires with its lease
            except Exception:
                log.exception("breach notifier stopped with an error")

    async def status(self) -> dict[str, Any]:
        """Counts by state in the store, this process's counters, and recent failures."""
        counts, failing = await self._store.notification_summary()
        return {
            "notifications": counts,
            "send_failures": self.failures,
            "last_error": self.last_error,
            "failing": [
                {"advisory_id": a, "email": e, "attempts": n, "error": err}
                for a, e, n, err in failing
            ],
        }
