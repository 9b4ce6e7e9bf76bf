"""Validation of values people type: email addresses, token names, languages."""

from __future__ import annotations

import re

from .errors import InvalidInput

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
