"""Typed application keys for everything the token side keeps on the aiohttp app."""

from __future__ import annotations

from aiohttp import web

from .breach import BreachNotifier
from .config import TokenApiConfig
from .lastused import UsageRecorder
from .mail import Mailer
from .store import Store
from .validation import TokenValidator
from .webio import ApiState

config_key = web.AppKey("tokenapi_config", TokenApiConfig)
store_key = web.AppKey("store", Store)
validator_key = web.AppKey("validator", TokenValidator)
recorder_key = web.AppKey("usage_recorder", UsageRecorder)
mailer_key = web.AppKey("mailer", Mailer)
api_state_key = web.AppKey("token_api_state", ApiState)
breach_key = web.AppKey("breach_notifier", BreachNotifier)
