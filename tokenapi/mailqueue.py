"""Delivering queued mail: the background sender of ``mail_outbox`` (one per process).

Registrations send their own mail at once (see ``store/registration.py``); what is left in the
queue is mail whose sender died before it was done, or (never from a registration) mail to try
again.  Each process polls for due rows, leases them, sends, and deletes each sent one; a failed
attempt is retried with a growing delay, and a message still undelivered after ``GIVE_UP``
seconds is dropped with an error in the log (its token stays valid, and registering the address
again mails a reset code).
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import logging
import time
from collections.abc import AsyncIterator
from email.message import EmailMessage

from aiohttp import web

from .errors import StoreUnavailable
from .keys import config_key, mailer_key, store_key
from .mail import Mailer, MailError
from .store import Store, mailqueue

log = logging.getLogger(__name__)

# Seconds between looks at the queue for mail whose sender died (or to retry).
POLL_INTERVAL = 5.0
FIRST_RETRY = 30.0
MAX_RETRY = 3600.0
GIVE_UP = 24 * 3600.0


def lease_for(smtp_timeout: float) -> float:
    """How long a sender may hold a message: long enough for one whole SMTP attempt."""
    return 2 * smtp_timeout + 30.0


def serialize(message: EmailMessage) -> str:
    return message.as_string(policy=email.policy.SMTP)


def parse(text: str) -> EmailMessage:
    parsed = email.message_from_string(text, policy=email.policy.SMTP)
    assert isinstance(parsed, EmailMessage)
    return parsed


def next_delay(attempts: int) -> float:
    return float(min(MAX_RETRY, FIRST_RETRY * 2 ** max(0, attempts - 1)))


async def deliver_due(store: Store, mailer: Mailer, *, lease: float) -> int:
    """Send every due message once; returns how many were delivered."""
    sent = 0
    for queued in await mailqueue.claim_due(store, lease=lease):
        try:
            await mailer.send(parse(queued.message))
        except MailError as exc:
            now = time.time()
            if now - queued.created_at >= GIVE_UP:
                log.error(
                    "mail to %s given up after %d attempts: %s",
                    queued.recipient,
                    queued.attempts,
                    exc,
                )
                await mailqueue.delete(store, queued.id)
            else:
                delay = next_delay(queued.attempts)
                log.warning(
                    "mail to %s failed (attempt %d), retrying in %.0f s: %s",
                    queued.recipient,
                    queued.attempts,
                    delay,
                    exc,
                )
                await mailqueue.retry_later(store, queued.id, at=now + delay, error=str(exc))
            continue
        await mailqueue.delete(store, queued.id)
        log.info("queued mail to %s delivered (attempt %d)", queued.recipient, queued.attempts)
        sent += 1
    return sent


async def run_sender(store: Store, mailer: Mailer, *, lease: float, interval: float) -> None:
    """Deliver due mail until cancelled."""
    while True:
        try:
            await deliver_due(store, mailer, lease=lease)
        except StoreUnavailable as exc:
            log.warning("mail queue unavailable: %s", exc)
        except Exception:
            log.exception("mail queue delivery failed")
        await asyncio.sleep(interval)


async def mail_queue_ctx(app: web.Application) -> AsyncIterator[None]:
    """Run the background sender while the app runs (after the store is open)."""
    config = app[config_key]
    task = asyncio.create_task(
        run_sender(
            app[store_key],
            app[mailer_key],
            lease=lease_for(config.smtp_timeout),
            interval=POLL_INTERVAL,
        ),
        name="pkgate-mail-queue",
    )
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
