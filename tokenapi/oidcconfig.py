"""The ``oidc_issuers`` setting: which CI identity providers may exchange ID tokens for tokens.

Each entry (a TOML table of the ``[[oidc_issuers]]`` array) names an issuer URL, the audience its
ID tokens must carry (default: the public URL), the claim values they must have (``*`` matches any
run of characters), how long minted tokens live, whose tokens they are and where they work.
Parsing fails with a one-line ``ValueError`` naming the entry and the key.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from yarl import URL

from . import inputs
from .errors import InvalidInput

DEFAULT_LIFETIME = 30 * 60.0
MAX_LIFETIME = 24 * 3600.0
KEYS = frozenset({"issuer", "audience", "claims", "lifetime", "owner", "scopes"})
_CLAIM_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


@dataclass(frozen=True, slots=True)
class ClaimRule:
    """A required claim: its value (or one of its values) must match ``pattern``."""

    name: str
    pattern: str

    def matches(self, value: object) -> bool:
        if isinstance(value, list):
            return any(self.matches(v) for v in value)
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | str):
            text = str(value)
        else:
            return False
        return glob_regex(self.pattern).fullmatch(text) is not None


def glob_regex(pattern: str) -> re.Pattern[str]:
    """``*`` matches any run of characters (``/`` included); everything else is literal."""
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.S)


@dataclass(frozen=True, slots=True)
class OidcIssuer:
    issuer: str  # as it appears in the tokens' ``iss`` claim, without a trailing slash
    owner: str  # email of the user the minted tokens belong to
    audience: str | None = None  # None: the public URL
    claims: tuple[ClaimRule, ...] = ()
    lifetime: float = DEFAULT_LIFETIME
    scopes: tuple[str, ...] = ("npm", "pypi")


def is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def secure_url(text: str) -> bool:
    """https, or http to a loopback address (a local issuer in tests)."""
    url = URL(text)
    if not url.host or url.user or url.password or url.fragment:
        return False
    return url.scheme == "https" or (url.scheme == "http" and is_loopback(url.host))


def _issuer_url(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("issuer is required (the issuer URL of the ID tokens)")
    text = value.strip().rstrip("/")
    try:
        url = URL(text)
    except ValueError:
        raise ValueError("issuer must be a URL") from None
    if url.query_string:
        raise ValueError("issuer must not have a query")
    if not secure_url(text):
        raise ValueError("issuer must be an https:// URL (http only for loopback addresses)")
    return text


def _claims(value: object) -> tuple[ClaimRule, ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise ValueError('claims must be a table such as { repository = "my-org/*" }')
    rules = []
    for name, pattern in value.items():
        if not isinstance(name, str) or not _CLAIM_NAME.fullmatch(name):
            raise ValueError(f"claims: bad claim name {str(name)[:64]!r}")
        if not isinstance(pattern, str | int) or isinstance(pattern, bool) or str(pattern) == "":
            raise ValueError(f"claims.{name} must be a non-empty string")
        rules.append(ClaimRule(name, str(pattern)))
    return tuple(rules)


def _lifetime(value: object) -> float:
    if value is None:
        return DEFAULT_LIFETIME
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("lifetime must be a number of seconds")
    if not 0 < value <= MAX_LIFETIME:
        raise ValueError(
            f"lifetime must be more than 0 and at most {MAX_LIFETIME:g} seconds (24 h)"
        )
    return float(value)


def _entry(raw: object) -> OidcIssuer:
    if not isinstance(raw, Mapping):
        raise ValueError("must be a table with issuer, owner and optional audience/claims/...")
    unknown = sorted(str(k) for k in raw if k not in KEYS)
    if unknown:
        raise ValueError(f"unknown key {unknown[0][:40]!r} (known: {', '.join(sorted(KEYS))})")
    issuer = _issuer_url(raw.get("issuer"))
    try:
        owner = inputs.normalize_email(raw.get("owner"))
    except InvalidInput:
        raise ValueError("owner must be the email address the minted tokens belong to") from None
    audience = raw.get("audience")
    if audience is not None and (not isinstance(audience, str) or not audience.strip()):
        raise ValueError("audience must be a non-empty string")
    scopes = raw.get("scopes")
    try:
        parsed_scopes = inputs.scopes(scopes if scopes is None else list(scopes))
    except (InvalidInput, TypeError):
        raise ValueError("scopes must be a non-empty list of: npm, pypi") from None
    return OidcIssuer(
        issuer=issuer,
        owner=owner,
        audience=audience.strip() if isinstance(audience, str) else None,
        claims=_claims(raw.get("claims")),
        lifetime=_lifetime(raw.get("lifetime")),
        scopes=parsed_scopes,
    )


def parse_issuers(value: Any) -> tuple[OidcIssuer, ...]:
    """The ``oidc_issuers`` setting from TOML (a list of tables) or JSON text of the same."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        import json

        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError("expected a JSON array of issuer tables") from None
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, list | tuple):
        raise ValueError("expected an array of tables ([[oidc_issuers]])")
    found = []
    for number, raw in enumerate(value):
        if isinstance(raw, OidcIssuer):
            found.append(raw)
            continue
        try:
            found.append(_entry(raw))
        except ValueError as exc:
            raise ValueError(f"entry {number + 1}: {exc}") from None
    return tuple(found)
