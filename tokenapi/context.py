"""The identity resources of a server: store, validation cache and last-used recorder."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from .keys import config_key, recorder_key, store_key, validator_key
from .lastused import UsageRecorder
from .store import Store
from .validation import TokenValidator


async def identity_ctx(app: web.Application) -> AsyncIterator[None]:
    """Open the store, watch for revocations, flush last-used; undo it all in reverse."""
    config = app[config_key]
    store = await Store.open(config.database)
    validator = TokenValidator(store, ttl=config.token_cache_ttl, clock=config.clock)
    recorder = UsageRecorder(store, config.last_used_flush)
    app[store_key] = store
    app[validator_key] = validator
    app[recorder_key] = recorder
    try:
        async with validator.running(), recorder.running():
            yield
    finally:
        await store.close()
