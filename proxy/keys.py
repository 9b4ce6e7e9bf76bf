"""Typed application keys for the registry-facing side."""

from __future__ import annotations

from aiohttp import web

from tokenapi.store import Token

from .registry.artifacts import ArtifactCache
from .registry.metacache import MetadataCache
from .registry.upstream import Upstream
from .settings import Settings

settings_key = web.AppKey("settings", Settings)
upstream_key = web.AppKey("upstream", Upstream)
metadata_cache_key = web.AppKey("metadata_cache", MetadataCache)
artifact_cache_key = web.AppKey("artifact_cache", ArtifactCache)


class RegistryFacts:
    """What pkgate learns about one registry request, in one object the gate puts on it.

    Each step writes its part and the later ones read it, so a warm request looks nothing up
    twice (and pays one request-mapping access instead of one per fact):

    - ``ecosystem``: ``npm`` or ``pypi``, the mount's (metrics label, access log);
    - ``ip``: the client's address as the throttle worked it out (peer or trusted
      ``X-Forwarded-For``, with the settings' trusted proxies), for the limits and the log;
    - ``secret``, ``cached``: the secret the throttle read (None when no Authorization header
      came, "" when it was unreadable) and its validation-cache hit taken with no await since,
      which authentication uses instead of reading the header again;
    - ``token``: the token authentication accepted;
    - ``auth_failure``: why authentication refused presented credentials: "invalid" (unknown,
      malformed or unreadable: a guess, charged to the address's failure budget) or "revoked" /
      "expired" / "out_of_scope" (a token pkgate issued, now dead or used outside its scopes);
    - ``cache``: "hit", "miss", "stale", "revalidated" or "bypass", set by handlers that consult
      a cache (metrics, access log).
    """

    # Class-level defaults and no __init__ of its own: making one costs no Python call, and each
    # step sets only what it learns.
    ecosystem: str = "none"
    ip: str | None = None
    secret: str | None = None
    cached: Token | None = None
    token: Token | None = None
    auth_failure: str | None = None
    cache: str | None = None

    @classmethod
    def of(cls, ecosystem: str) -> RegistryFacts:
        """New facts of a request to the ``ecosystem`` registry."""
        facts = cls()
        facts.ecosystem = ecosystem
        return facts


# Per-request key (typed: aiohttp warns about plain string keys): set by every registry gate.
REQUEST_FACTS = web.RequestKey("pkgate_registry_facts", RegistryFacts)


def registry_facts(request: web.BaseRequest) -> RegistryFacts | None:
    """The facts the registry gate put on ``request`` (None: not a registry request, e.g. a
    handler tested bare)."""
    try:
        return request[REQUEST_FACTS]
    except KeyError:
        return None


def registry_token(request: web.BaseRequest) -> Token | None:
    """The token the registry gate accepted for ``request`` (None: anonymous, or not a
    registry request)."""
    facts = registry_facts(request)
    return facts.token if facts is not None else None


def note_cache(request: web.Request, outcome: str) -> None:
    """Record how a registry answer was obtained (for the access log and metrics)."""
    # Not contextlib.suppress: a context manager costs more than the assignment, on every answer.
    try:  # noqa: SIM105
        request[REQUEST_FACTS].cache = outcome
    except KeyError:
        pass  # not a registry request (tests call handlers bare)
