"""Typed application keys for the registry-facing side."""

from __future__ import annotations

from typing import NamedTuple

from aiohttp import web
from yarl import URL

from tokenapi.store import Token

from .registry.artifacts import ArtifactCache
from .registry.metacache import MetadataCache
from .registry.upstream import Upstream
from .settings import Settings

settings_key = web.AppKey("settings", Settings)
upstream_key = web.AppKey("upstream", Upstream)
metadata_cache_key = web.AppKey("metadata_cache", MetadataCache)
artifact_cache_key = web.AppKey("artifact_cache", ArtifactCache)
# On each registry sub-app: the absolute URL where that mount is reached (see proxy.vhosts).
registry_base_key = web.AppKey("registry_base", URL)

# Per-request keys (typed: aiohttp warns about plain string keys) for metrics and the access log.
# The registry gate's authentication sets the ecosystem ("npm" or "pypi") on every request it sees.
REQUEST_ECOSYSTEM = web.RequestKey("pkgate_ecosystem", str)
# Handlers that consult a cache set "hit", "miss" or "stale" (served stale after upstream failure).
REQUEST_CACHE = web.RequestKey("pkgate_cache", str)
# The client's address as the registry throttle worked it out (peer or trusted X-Forwarded-For,
# with the settings' trusted_proxies); the access log reuses it instead of working it out again.
REQUEST_CLIENT_IP = web.RequestKey("pkgate_client_ip", str)


class Presented(NamedTuple):
    """The credentials a registry request presented, read once by the gate's throttle.

    ``secret`` is None when no Authorization header came, "" when it was unreadable; ``cached``
    is the validation-cache hit for it, if any, taken with no await since.  (A named tuple: one
    is made per request, and it builds in about 60% of the time a frozen dataclass takes.)
    """

    secret: str | None
    cached: Token | None


# Set by the gate's throttle, reused by the authentication that runs right after it (proxy.gate).
REQUEST_PRESENTED = web.RequestKey("pkgate_presented", Presented)

# Set by the gate's authentication on a refused request that presented credentials: "invalid"
# (unknown, malformed or unreadable: a guess) or "revoked" / "expired" / "out_of_scope" (a token
# pkgate issued, now dead or used outside its scopes).
# The gate's throttle charges only guesses to the client address's failure budget.
REQUEST_AUTH_FAILURE = web.RequestKey("pkgate_auth_failure", str)
