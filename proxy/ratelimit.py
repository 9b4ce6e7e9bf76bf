"""Rate limits on the registry routes: requests per token, requests per client IP, failed logins.

A ``Throttle`` per registry mount, run by its gate (``proxy.gate``) before
authentication; the limiters themselves live once on the root application so npm and PyPI (and
their virtual hosts) share the same budgets.  Three independent throttles:

- requests per client IP and requests per token, each a steady rate with a burst allowance,
  generous enough that installing hundreds of packages never meets them;
- failed authentications per client IP, a budget for *guesses*: counted from the 401 answers of
  authentication for credentials pkgate never issued (unknown, malformed, bad checksum).  Once
  an address is over it, its further guesses get 429 instead of 401.  The budget never refuses
  anything else: a valid token is served whatever other tokens from the same address did (behind
  a NAT or a shared CI runner one bad actor must not lock everyone out), and a token pkgate issued
  that is now revoked or expired always gets a fast 401 (clients retry 429s for minutes, a 401 ends
  them at once) and spends nothing.  Telling a valid token from a guess takes its one indexed
  lookup (coalesced and negatively cached by the validator); strings failing the shape or
  checksum never reach the store, and the per-IP request rate bounds the rest.

The client IP is the TCP peer, or ``X-Forwarded-For`` when the peer is a trusted proxy.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import hdrs, web

from tokenapi import tokens
from tokenapi.clientip import address_of
from tokenapi.credentials import MalformedCredentials, secret_from_header
from tokenapi.keys import validator_key
from tokenapi.ratelimit import RateLimiter
from tokenapi.validation import TokenValidator

from .errors import json_error
from .keys import RegistryFacts
from .server import SafeRequestHandler
from .settings import Network, Settings

AUTH_FAILURE_WINDOW = 60.0
TOO_MANY = "Too many requests; try again later"
TOO_MANY_FAILURES = "Too many failed authentications from this address; try again later"


@dataclass(frozen=True, slots=True)
class RegistryLimits:
    """The shared limiters of every registry mount; None where a limit is switched off."""

    per_ip: RateLimiter | None
    per_token: RateLimiter | None
    auth_failures: RateLimiter | None
    trusted_proxies: tuple[Network, ...]

    @classmethod
    def from_settings(cls, settings: Settings) -> RegistryLimits:
        """Limiters for ``settings``: rates are per second, with ``registry_rate_burst``."""
        burst = settings.registry_rate_burst
        return cls(
            per_ip=_rate(settings.registry_rate_per_ip, burst),
            per_token=_rate(settings.registry_rate_per_token, burst),
            auth_failures=(
                RateLimiter(settings.registry_auth_failures, AUTH_FAILURE_WINDOW)
                if settings.registry_auth_failures
                else None
            ),
            trusted_proxies=settings.trusted_proxies,
        )


def _rate(per_second: int, burst: int) -> RateLimiter | None:
    # GCRA: ``burst`` events at once, then one every 1/per_second seconds.
    if not per_second:
        return None
    return RateLimiter(burst, burst / per_second)


registry_limits_key = web.AppKey("registry_limits", RegistryLimits)


def setup_registry_limits(app: web.Application, settings: Settings) -> None:
    """Keep the registry limiters on the root app, shared by every registry mount."""
    app[registry_limits_key] = RegistryLimits.from_settings(settings)


def too_many(message: str, retry_after: int) -> web.Response:
    """A 429 with an integer Retry-After."""
    return json_error(429, message, headers={hdrs.RETRY_AFTER: str(int(retry_after))})


class Throttle:
    """The throttles of one registry mount: ``admit`` before authentication, ``guessed`` after a
    refused guess.  The limiters are read from the root application once, at the first request."""

    __slots__ = ("_limits", "_root", "_validator")

    def __init__(self, root: web.Application) -> None:
        self._root = root
        self._limits: RegistryLimits | None = None
        self._validator: TokenValidator | None = None

    def admit(self, request: web.Request, facts: RegistryFacts) -> web.Response | None:
        """A 429 when the address or the token is over its rate, else None (go on).

        Leaves on ``facts`` the client address and, for the authentication after it, what was
        presented with its validation-cache hit.
        """
        limits = self._limits
        if limits is None:
            limits = self._limits = self._root.get(registry_limits_key)
            if limits is None:
                return None
        ip = facts.ip = address_of(request, limits.trusted_proxies)
        per_ip = limits.per_ip
        if per_ip is not None:
            retry = per_ip.hit(ip)
            if retry is not None:
                return too_many(TOO_MANY, retry)
        header = request.headers.get(hdrs.AUTHORIZATION)
        connection = request.protocol
        if isinstance(connection, SafeRequestHandler):
            # A keep-alive connection sends the same header on every request of an install:
            # read once per connection while it does not change.
            seen = connection.credentials
            if seen is not None and seen[0] == header:
                secret, digest = seen[1], seen[2]
            else:
                secret, digest = read_credentials(header)
                connection.credentials = (header, secret, digest)
        else:
            secret, digest = read_credentials(header)
        facts.secret = secret
        if not secret:
            # Nothing presented (or nothing readable): only the request rate per address applies.
            return None
        known = None
        if digest is not None:
            validator = self._validator
            if validator is None:
                validator = self._validator = self._root[validator_key]
            known = facts.cached = validator.cached_digest(digest)
        per_token = limits.per_token
        if per_token is not None:
            key = digest if known is not None else _token_key(secret, digest)
            if key is not None:
                retry = per_token.hit(key)
                if retry is not None:
                    return too_many(TOO_MANY, retry)
        return None

    def guessed(self, facts: RegistryFacts) -> web.Response | None:
        """After a 401 for credentials pkgate never issued: spend one unit of the address's
        failure budget; once it is gone, the 429 to answer instead."""
        limits = self._limits
        if limits is None or limits.auth_failures is None or facts.ip is None:
            return None  # no limits (admit set no address), or this budget is off
        retry = limits.auth_failures.hit(facts.ip)
        return None if retry is None else too_many(TOO_MANY_FAILURES, retry)


def read_credentials(header: str | None) -> tuple[str | None, str | None]:
    """The secret in an Authorization header (None without one, ``""`` when it is unreadable:
    authentication answers 401) and, for a secret shaped like a pkgate token, its digest: the
    validation cache's and the token bucket's key."""
    try:
        secret = secret_from_header(header)
    except MalformedCredentials:
        return "", None
    if secret is None:
        return None, None
    if len(secret) == tokens.TOKEN_LEN and secret.startswith(tokens.PREFIX):
        return secret, tokens.digest(secret)
    return secret, None


def _token_key(secret: str, digest: str | None) -> str | None:
    """The per-token bucket of a secret the validation cache does not know: its digest (one
    secret, one token; ``digest`` when the caller computed it already).

    Secrets failing the checksum get no bucket (they fail authentication and count as failures),
    so garbage cannot crowd real tokens out of the limiter.
    """
    if not tokens.is_well_formed(secret):
        return None
    return digest or tokens.digest(secret)
