"""The identity resources of a server: store, validation cache, last-used recorder, breach mail."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from .breach import BreachNotifier
from .downloads import pruning
from .keys import breach_key, config_key, mailer_key, recorder_key, store_key, validator_key
from .lastused import UsageRecorder
from .store import Store
from .validation import TokenValidator


async def identity_ctx(app: web.Application) -> AsyncIterator[None]:
    """Open the store, watch for revocations, flush last-used; undo it all in reverse."""
    config = app[config_key]
    store = await Store.open(config.database, pool_size=config.database_pool_size)
    validator = TokenValidator(store, ttl=config.token_cache_ttl, clock=config.clock)
    recorder = UsageRecorder(store, config.last_used_flush)
    notifier = BreachNotifier(store, app[mailer_key], config, recorder)
    app[store_key] = store
    app[validator_key] = validator
    app[recorder_key] = recorder
    app[breach_key] = notifier
    try:
        # The recorder's last flush runs after the notifier and pruning have stopped.
        async with (
            validator.running(),
            recorder.running(),
            pruning(store, config.download_history_days),
            notifier.running(),
        ):
            yield
    finally:
        await store.close()
