"""Authentication of registry routes: every request carries a valid token (or anonymous is allowed).

An ``Authenticator`` per registry mount, run by its gate (``proxy.gate``): it reads
Bearer or Basic credentials, resolves them through the validation cache, records the use in
memory and stores the token on the request.
Failures are 401 with the ecosystem's challenge and a JSON error naming the reason (invalid or
revoked, "token expired", "token not valid for <ecosystem>"); the secret is never echoed.
"""

from __future__ import annotations

from aiohttp import hdrs, web
from cachetools import TTLCache

from tokenapi import tokens
from tokenapi.credentials import MalformedCredentials, secret_from_header
from tokenapi.errors import StoreUnavailable
from tokenapi.keys import recorder_key, store_key, validator_key
from tokenapi.lastused import UsageRecorder
from tokenapi.store import Token
from tokenapi.validation import EXPIRED, INVALID, TokenValidator, out_of_scope

from .errors import json_error
from .keys import RegistryFacts, settings_key
from .metrics import Metrics, metrics_key

NPM_CHALLENGE = 'Bearer realm="pkgate"'
PYPI_CHALLENGE = 'Basic realm="pkgate"'


def unauthorized(message: str, challenge: str) -> web.Response:
    return json_error(401, message, headers={hdrs.WWW_AUTHENTICATE: challenge})


class Authenticator:
    """The authentication of one registry mount; shared state is read from ``root``."""

    __slots__ = (
        "_metrics",
        "_ok_counts",
        "_ok_labels",
        "_recorder",
        "_revoked_seen",
        "_root",
        "_validator",
        "challenge",
        "ecosystem",
    )

    def __init__(self, ecosystem: str, challenge: str, root: web.Application) -> None:
        self.ecosystem = ecosystem
        self.challenge = challenge
        self._root = root
        # Failure path only: remembers which rejected digests were revoked (rather than unknown),
        # so a client retrying a dead token costs one store query per minute, not one per request.
        self._revoked_seen: TTLCache[str, bool] = TTLCache(maxsize=4096, ttl=60.0)
        # Read from the root at the first request (they exist once the app has started).
        self._validator: TokenValidator | None = None
        self._recorder: UsageRecorder | None = None
        self._metrics: Metrics | None = None
        self._ok_counts: dict[tuple[str, ...], float] | None = None
        self._ok_labels = (ecosystem, "ok")

    def accept_cached(self, facts: RegistryFacts) -> bool:
        """Accept the token the throttle found in the validation cache (with no await since),
        when it may be used here: the warm path, without a coroutine.  False: ask ``__call__``."""
        token = facts.cached
        if token is None or self.ecosystem not in token.scopes:
            return False
        self._accept(token, facts)
        return True

    async def __call__(self, request: web.Request, facts: RegistryFacts) -> web.Response | None:
        """None when the request may go on (its token, if any, on ``facts``), else the 401
        to answer (the reason on ``facts.auth_failure``)."""
        ecosystem = self.ecosystem
        token: Token | None = facts.cached
        if token is not None:
            # The throttle resolved it from the cache with no await since: no work twice.
            secret: str | None = facts.secret
        else:
            try:
                secret = secret_from_header(request.headers.get(hdrs.AUTHORIZATION))
            except MalformedCredentials as exc:
                return self._refuse(facts, "invalid", str(exc))

        if secret is None:
            self._count("missing")
            if self._root[settings_key].anonymous == "allow":
                return None
            return unauthorized("Authentication required: send your pkgate token", self.challenge)
        if token is None:
            validator = self._validator or self._started()[0]
            checked = await validator.check(secret, ecosystem)
            if checked == INVALID:
                return self._refuse(facts, await self._failure_outcome(secret), INVALID)
            if isinstance(checked, str):
                # A token pkgate issued, expired or used out of scope: not a guess.
                outcome = "expired" if checked == EXPIRED else "out_of_scope"
                return self._refuse(facts, outcome, checked)
            token = checked
        elif ecosystem not in token.scopes:
            return self._refuse(facts, "out_of_scope", out_of_scope(ecosystem))
        self._accept(token, facts)
        return None

    def _accept(self, token: Token, facts: RegistryFacts) -> None:
        """Count the success, record the use in memory, and put the token on ``facts``."""
        counts = self._ok_counts
        if counts is not None:
            counts[self._ok_labels] = counts.get(self._ok_labels, 0.0) + 1.0
        else:
            self._count("ok")
        (self._recorder or self._started()[1]).record(token.id, self.ecosystem)
        facts.token = token

    def _started(self) -> tuple[TokenValidator, UsageRecorder]:
        root = self._root
        self._validator = root[validator_key]
        self._recorder = root[recorder_key]
        return self._validator, self._recorder

    def _refuse(self, facts: RegistryFacts, outcome: str, message: str) -> web.Response:
        facts.auth_failure = outcome
        self._count(outcome)
        return unauthorized(message, self.challenge)

    def _count(self, outcome: str) -> None:
        metrics = self._metrics
        if metrics is None:
            metrics = self._metrics = self._root.get(metrics_key)
            if metrics is None:
                return
            # The warm path's count, "ok", is kept straight in the counter's values.
            self._ok_counts = metrics.auth.values
        metrics.auth_outcome(self.ecosystem, outcome)

    async def _failure_outcome(self, secret: str) -> str:
        if not tokens.is_well_formed(secret):
            return "invalid"
        digest = tokens.digest(secret)
        revoked = self._revoked_seen.get(digest)
        if revoked is None:
            try:
                revoked = await self._root[store_key].digest_revoked(digest)
            except StoreUnavailable:
                return "invalid"
            self._revoked_seen[digest] = revoked
        return "revoked" if revoked else "invalid"
