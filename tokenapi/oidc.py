"""CI tokens from OIDC ID tokens (SPEC 18): ``POST /api/v1/oidc/token {"id_token": <JWT>}``.

A CI job (GitHub Actions, GitLab CI, ...) presents the ID token its platform issued it; pkgate
verifies it against one of the configured ``oidc_issuers`` and answers with an ordinary, revocable
pkgate token of the issuer's owner that lives ``lifetime`` seconds and works in ``scopes``.

Verification, in order, each failure a ``401 {"error": ...}`` naming the check (never the JWT):
size, shape, algorithm (asymmetric only: ``none`` and HMAC are refused, so a public key can never
be used as a shared secret), issuer (exact ``iss`` match with a configured one), signing key (by
``kid`` from the issuer's JWKS, refreshed once when the kid is unknown), signature (PyJWT),
``exp`` / ``nbf`` / ``iat`` against the clock with a small leeway, ``aud``, and every claim rule.

The issuer's discovery document and JWKS are untrusted input: fetched with a time limit, a size
limit and no redirects, only from https (or loopback) URLs, and cached; an issuer that cannot be
reached while no keys are cached answers 503, never a 500.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
from aiohttp import web

from . import inputs
from .clientip import client_ip
from .issue import ensure_user, issue_token
from .keys import config_key, store_key
from .oidcconfig import OidcIssuer, secure_url
from .ratelimit import StoreLimiter
from .webio import ApiError, Endpoint, iso, json_response, read_json, too_many

log = logging.getLogger(__name__)

# Asymmetric algorithms only: "none" and HS* (where a public key could pose as the secret) never.
ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
KEY_TYPES = frozenset({"RSA", "EC", "OKP"})
MAX_ID_TOKEN = 16 * 1024  # characters; real CI ID tokens are 1-3 KiB
MAX_DOCUMENT = 256 * 1024  # bytes of a discovery document or JWKS
MAX_KEYS = 64
FETCH_TIMEOUT = 10.0  # seconds for one discovery or JWKS fetch, connection included
KEYS_TTL = 3600.0  # seconds the keys are used before they are fetched again
MIN_REFRESH = 10.0  # at most one unknown-kid refresh per issuer per this many seconds
LEEWAY = 60.0  # seconds of clock skew tolerated on exp, nbf and iat
RATE_WINDOW = 60.0
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u0080-\u009f\u2028\u2029]")


class Refused(Exception):
    """The ID token failed a check; the message names the check and is safe to show."""


class KeysUnavailable(Exception):
    """The issuer's keys could not be fetched (and none are cached)."""


@dataclass
class _IssuerKeys:
    keys: list[dict[str, Any]] = field(default_factory=list)
    fetched_at: float | None = None  # clock time of the last successful fetch
    tried_at: float | None = None  # clock time of the last attempt (successful or not)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class KeyCache:
    """The signing keys of each issuer, from its discovery document and JWKS."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        clock: Callable[[], float],
        *,
        ttl: float = KEYS_TTL,
        min_refresh: float = MIN_REFRESH,
        timeout: float = FETCH_TIMEOUT,
    ) -> None:
        self._session = session
        self._clock = clock
        self._ttl = ttl
        self._min_refresh = min_refresh
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._issuers: dict[str, _IssuerKeys] = {}
        self.fetches = 0  # JWKS fetches made (tests count them)

    async def keys_for(self, issuer: str, kid: str | None) -> list[dict[str, Any]]:
        """The issuer's keys that may have signed a token with ``kid``; one refresh when the kid
        is unknown.  Fetches (for expiry, an unknown kid or after a failure) happen at most once
        per ``min_refresh`` per issuer, so neither stray kids nor an issuer outage turn every
        request into a fetch.  Raises KeysUnavailable when no keys were ever fetched."""
        state = self._issuers.setdefault(issuer, _IssuerKeys())
        if state.fetched_at is None or self._clock() - state.fetched_at >= self._ttl:
            await self._refresh(issuer, state)
        found = _matching(state.keys, kid)
        if found or kid is None:
            return found
        await self._refresh(issuer, state)
        return _matching(state.keys, kid)

    async def _refresh(self, issuer: str, state: _IssuerKeys) -> None:
        seen = state.tried_at
        async with state.lock:
            recent = (
                state.tried_at is not None and self._clock() - state.tried_at < self._min_refresh
            )
            # Another request fetched (or failed to) while this one waited, or just before.
            if state.tried_at == seen and not recent:
                state.tried_at = self._clock()
                try:
                    state.keys = await self._fetch(issuer)
                    state.fetched_at = self._clock()
                except KeysUnavailable as exc:
                    log.warning("OIDC issuer %s: %s", issuer, exc)
        if state.fetched_at is None:
            # Keys fetched before are kept through a failure: a flapping issuer does not stop CI.
            raise KeysUnavailable("no keys fetched from the issuer yet")

    async def _fetch(self, issuer: str) -> list[dict[str, Any]]:
        self.fetches += 1
        discovery = await self._document(f"{issuer}/.well-known/openid-configuration")
        if not isinstance(discovery, dict):
            raise KeysUnavailable("discovery document is not a JSON object")
        if str(discovery.get("issuer", "")).rstrip("/") != issuer:
            raise KeysUnavailable("discovery document names another issuer")
        jwks_uri = discovery.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not secure_url(jwks_uri):
            raise KeysUnavailable("discovery document has no https jwks_uri")
        jwks = await self._document(jwks_uri)
        raw_keys = jwks.get("keys") if isinstance(jwks, dict) else None
        if not isinstance(raw_keys, list):
            raise KeysUnavailable("JWKS has no keys array")
        keys = [
            k
            for k in raw_keys[:MAX_KEYS]
            if isinstance(k, dict) and k.get("kty") in KEY_TYPES and k.get("use", "sig") == "sig"
        ]
        return keys

    async def _document(self, url: str) -> Any:
        try:
            async with self._session.get(
                url,
                timeout=self.timeout,
                allow_redirects=False,
                headers={"Accept": "application/json"},
            ) as resp:
                if resp.status != 200:
                    raise KeysUnavailable(f"{url} answered {resp.status}")
                if resp.content_length is not None and resp.content_length > MAX_DOCUMENT:
                    raise KeysUnavailable(f"{url} is larger than {MAX_DOCUMENT} bytes")
                body = bytearray()
                async for chunk in resp.content.iter_chunked(64 * 1024):
                    body += chunk
                    if len(body) > MAX_DOCUMENT:
                        raise KeysUnavailable(f"{url} is larger than {MAX_DOCUMENT} bytes")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise KeysUnavailable(f"cannot fetch {url}: {type(exc).__name__}") from None
        try:
            return json.loads(body)
        except ValueError:
            raise KeysUnavailable(f"{url} is not JSON") from None


def _matching(keys: list[dict[str, Any]], kid: str | None) -> list[dict[str, Any]]:
    if kid is None:
        return list(keys)
    return [k for k in keys if k.get("kid") == kid]


def _claim_number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Refused(f"id_token claim {name} is not a number")
    return float(value)


class Verifier:
    """Checks ID tokens against the configured issuers."""

    def __init__(
        self,
        issuers: tuple[OidcIssuer, ...],
        public_url: str,
        keys: KeyCache,
        clock: Callable[[], float],
        *,
        leeway: float = LEEWAY,
    ) -> None:
        self._issuers = issuers
        self._public_url = public_url
        self._keys = keys
        self._clock = clock
        self._leeway = leeway

    async def verify(self, id_token: str) -> tuple[OidcIssuer, dict[str, Any]]:
        """The issuer entry the token satisfies and its claims; Refused naming the failed check."""
        if len(id_token) > MAX_ID_TOKEN:
            raise Refused(f"id_token is larger than {MAX_ID_TOKEN} characters")
        try:
            header = jwt.get_unverified_header(id_token)
            unverified = jwt.decode(id_token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise Refused("id_token is not a well-formed JWT") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise Refused("id_token signing algorithm is not allowed (asymmetric keys only)")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Refused("id_token key id is not a string")
        iss = unverified.get("iss")
        entries = [e for e in self._issuers if isinstance(iss, str) and iss.rstrip("/") == e.issuer]
        if not entries:
            raise Refused("id_token issuer is not trusted")
        candidates = await self._keys.keys_for(entries[0].issuer, kid)
        if not candidates:
            raise Refused("id_token signing key is unknown to its issuer")
        claims = self._signed_claims(id_token, alg, candidates)
        self._check_times(claims)
        failure = ""
        for entry in entries:
            failure = self._check_entry(entry, claims)
            if not failure:
                return entry, claims
        raise Refused(failure)

    def _signed_claims(self, id_token: str, alg: str, candidates: list[dict[str, Any]]) -> Any:
        for jwk in candidates:
            if jwk.get("alg") not in (None, alg):
                continue
            try:
                key = jwt.PyJWK(jwk, algorithm=alg)
            except jwt.PyJWTError:
                continue  # a key of another type, or a malformed one
            try:
                return jwt.decode(
                    id_token,
                    key,
                    algorithms=[alg],
                    # Times, audience and issuer are checked below against pkgate's own clock
                    # and settings, each with its own message.
                    options={
                        "verify_signature": True,
                        "verify_exp": False,
                        "verify_nbf": False,
                        "verify_iat": False,
                        "verify_aud": False,
                        "verify_iss": False,
                    },
                )
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError:
                raise Refused("id_token is not a well-formed JWT") from None
        raise Refused("id_token signature does not verify")

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        now = self._clock()
        exp = _claim_number(claims, "exp")
        if exp is None:
            raise Refused("id_token has no exp claim")
        if now > exp + self._leeway:
            raise Refused("id_token has expired")
        nbf = _claim_number(claims, "nbf")
        if nbf is not None and now < nbf - self._leeway:
            raise Refused("id_token is not valid yet (nbf)")
        iat = _claim_number(claims, "iat")
        if iat is not None and now < iat - self._leeway:
            raise Refused("id_token was issued in the future (iat)")

    def _check_entry(self, entry: OidcIssuer, claims: Mapping[str, Any]) -> str:
        audience = entry.audience or self._public_url
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        if not any(isinstance(a, str) and a.rstrip("/") == audience.rstrip("/") for a in auds):
            return "id_token audience is not this pkgate"
        for rule in entry.claims:
            if not rule.matches(claims.get(rule.name)):
                return f"id_token claim {rule.name} does not match"
        return ""


def token_name(claims: Mapping[str, Any]) -> str:
    """``oidc:<repository>@<ref> run <run>`` from GitHub's or GitLab's claims (``sub`` else)."""

    def text(*names: str) -> str:
        for name in names:
            value = claims.get(name)
            if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
                return _CONTROL.sub("", str(value))[:80]
        return ""

    repo = text("repository", "project_path")
    name = f"oidc:{repo}" if repo else f"oidc:{text('sub') or 'unknown'}"
    ref = text("ref")
    if ref:
        name += f"@{ref}"
    run = text("run_id", "pipeline_id")
    if run:
        name += f" run {run}"
    return name[: inputs.MAX_NAME_LEN]


@dataclass
class Oidc:
    """What the endpoint needs, kept on the application."""

    verifier: Verifier
    keys: KeyCache
    limiter: StoreLimiter  # per client IP, shared by every worker and instance


oidc_key = web.AppKey("oidc", Oidc)


async def oidc_ctx(app: web.Application) -> AsyncIterator[None]:
    """The HTTP client for issuers' keys, with the verifier (with no issuers configured every
    ID token is refused as coming from an untrusted issuer; nothing is ever fetched)."""
    config = app[config_key]
    session = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT),
        connector=aiohttp.TCPConnector(limit=10),
        headers={"User-Agent": "pkgate-oidc"},
    )
    keys = KeyCache(session, config.clock)
    app[oidc_key] = Oidc(
        Verifier(config.oidc_issuers, str(config.public_url), keys, config.clock),
        keys,
        StoreLimiter("oidc-ip", config.oidc_limit_ip, RATE_WINDOW),
    )
    try:
        yield
    finally:
        await session.close()


async def exchange(request: web.Request) -> web.Response:
    """Trade a CI ID token for a short-lived pkgate token of the issuer's owner."""
    config = request.config_dict[config_key]
    oidc = request.config_dict[oidc_key]
    store = request.config_dict[store_key]
    retry = await oidc.limiter.hit(store, client_ip(request, config.trusted_proxies))
    if retry is not None:
        raise too_many(retry)
    body = await read_json(request, ("id_token",))
    id_token = body.get("id_token")
    if not isinstance(id_token, str) or not id_token.strip():
        raise ApiError(400, "id_token is required")
    try:
        entry, claims = await oidc.verifier.verify(id_token.strip())
    except Refused as exc:
        log.info("OIDC exchange refused: %s", exc)  # the check only: never the JWT
        raise ApiError(401, str(exc)) from None
    except KeysUnavailable:
        raise ApiError(
            503, "The issuer's signing keys cannot be fetched; try again", {"Retry-After": "30"}
        ) from None
    lifetime = entry.lifetime
    if config.token_max_lifetime is not None:
        lifetime = min(lifetime, config.token_max_lifetime)
    owner = await ensure_user(store, entry.owner)
    token, secret = await issue_token(
        store,
        owner,
        name=token_name(claims),
        kind="api",
        expires_at=config.clock() + lifetime,
        scopes=entry.scopes,
    )
    log.info("OIDC token %s minted for %s (%s)", token.id, entry.issuer, token.name)
    return json_response(
        {
            "token": secret,
            "id": token.id,
            "name": token.name,
            "expires_at": iso(token.expires_at),
            "scopes": list(token.scopes),
        },
        201,
    )


ENDPOINTS = (
    Endpoint(
        "POST",
        "/v1/oidc/token",
        exchange,
        "Exchange a CI OIDC ID token (GitHub Actions, GitLab CI, ...) for a short-lived token",
        {
            201: "The minted token (its secret is shown only here)",
            400: "id_token is missing or not a string",
            401: "The ID token failed a check (the message names it)",
            413: "Body too large",
            415: "Body is not JSON",
            429: "Too many exchanges from this address",
            503: "The issuer's signing keys cannot be fetched",
        },
        body={
            "type": "object",
            "required": ["id_token"],
            "additionalProperties": False,
            "properties": {
                "id_token": {"type": "string", "maxLength": MAX_ID_TOKEN},
            },
        },
        result={
            "type": "object",
            "required": ["token", "id", "expires_at", "scopes"],
            "properties": {
                "token": {"type": "string"},
                "id": {"type": "string", "format": "uuid"},
                "name": {"type": "string"},
                "expires_at": {"type": "string", "format": "date-time"},
                "scopes": {"type": "array", "items": {"type": "string", "enum": ["npm", "pypi"]}},
            },
        },
        tag="oidc",
    ),
)
