"""Validation of values people type: email addresses, token names, languages, lifetimes, scopes."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from .errors import InvalidInput
from .tokens import ALL_SCOPES

MAX_EMAIL_LEN = 254
MAX_NAME_LEN = 100
LANGUAGES = ("en", "ja")

_LOCAL_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}$")
_LABEL_RE = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f\u0080-\u009f\u2028\u2029]")


def normalize_email(value: object) -> str:
    """A plausible, header-safe address, lower-cased; InvalidInput otherwise."""
    if not isinstance(value, str) or not value.strip() or _CONTROL_RE.search(value):
        raise InvalidInput("A valid email address is required")
    email = value.strip()
    if len(email) > MAX_EMAIL_LEN or _CONTROL_RE.search(email):
        raise InvalidInput("A valid email address is required")
    local, sep, domain = email.rpartition("@")
    if not sep or not _LOCAL_RE.match(local) or local.startswith(".") or ".." in local:
        raise InvalidInput("A valid email address is required")
    labels = domain.split(".")
    if len(labels) < 2 or not all(_LABEL_RE.match(label) for label in labels):
        raise InvalidInput("A valid email address is required")
    return f"{local}@{domain}".lower()


def token_name(value: object, *, required_message: str = "Token name is required") -> str:
    """A short printable name; InvalidInput for missing, overlong or control characters."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(required_message)
    # Checked before stripping: a trailing CR/LF is an injection attempt, not whitespace.
    if _CONTROL_RE.search(value):
        raise InvalidInput("Token name must not contain control characters")
    name = value.strip()
    if len(name) > MAX_NAME_LEN:
        raise InvalidInput(f"Token name must be at most {MAX_NAME_LEN} characters")
    if _CONTROL_RE.search(name):
        raise InvalidInput("Token name must not contain control characters")
    return name


def language(value: object) -> str:
    """``en`` (default) or ``ja``."""
    if value is None:
        return "en"
    if not isinstance(value, str) or value not in LANGUAGES:
        raise InvalidInput(f"language must be one of: {', '.join(LANGUAGES)}")
    return value


def scopes(value: object, *, field: str = "scopes") -> tuple[str, ...]:
    """A non-empty subset of ALL_SCOPES (default: all of them), in canonical order."""
    if value is None:
        return ALL_SCOPES
    allowed = ", ".join(ALL_SCOPES)
    if (
        not isinstance(value, list | tuple)
        or not value
        or not all(isinstance(v, str) and v in ALL_SCOPES for v in value)
    ):
        raise InvalidInput(f"{field} must be a non-empty list of: {allowed}")
    return tuple(s for s in ALL_SCOPES if s in value)


def _timestamp(value: object) -> float:
    if not isinstance(value, str) or len(value) > 40 or _CONTROL_RE.search(value):
        raise InvalidInput("expires_at must be an ISO 8601 date and time")
    text = value.strip()
    if text[-1:] in ("z", "Z"):
        text = text[:-1] + "+00:00"
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput("expires_at must be an ISO 8601 date and time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # a time without an offset is UTC
    return when.timestamp()


def _duration(seconds: float) -> str:
    """``30 days``, ``12 hours``, ``90 seconds``: the largest unit that divides evenly."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            n = int(seconds // size)
            return f"{n} {unit}{'' if n == 1 else 's'}"
    n = round(seconds)
    return f"{n} second{'' if n == 1 else 's'}"


def expiry(
    expires_in: object, expires_at: object, *, now: float, max_lifetime: float | None
) -> float | None:
    """When a new token expires (None: never), from ``expires_in`` (seconds) or ``expires_at``
    (ISO 8601).  Capped by ``max_lifetime``: without either, a capped token gets the cap."""
    if expires_in is not None and expires_at is not None:
        raise InvalidInput("Give expires_in or expires_at, not both")
    when: float | None = None
    if expires_in is not None:
        if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
            raise InvalidInput("expires_in must be a number of seconds")
        if not 0 < expires_in < 100 * 365 * 86400:
            raise InvalidInput("expires_in must be a positive number of seconds")
        when = now + float(expires_in)
    elif expires_at is not None:
        when = _timestamp(expires_at)
        if when <= now:
            raise InvalidInput("expires_at must be in the future")
    if max_lifetime is not None:
        if when is None:
            return now + max_lifetime
        if when - now > max_lifetime + 1e-6:
            raise InvalidInput(
                f"Token lifetime must be at most {_duration(max_lifetime)} (token_max_lifetime)"
            )
    return when
