"""Turning an Authorization header into the secret it carries, without trusting its shape."""

from __future__ import annotations

import binascii
from base64 import b64decode

MAX_HEADER_LEN = 4096


class MalformedCredentials(ValueError):
    """The Authorization header is present but cannot be read; the message is safe to show."""


def _basic_secret(encoded: str) -> str:
    try:
        raw = b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise MalformedCredentials("Basic credentials are not valid base64") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedCredentials("Basic credentials are not valid UTF-8") from None
    user, sep, password = text.partition(":")
    if not sep:
        raise MalformedCredentials("Basic credentials must be user:password")
    # pip/uv send https://<token>@host as the username with an empty password.
    secret = password or user
    if not secret:
        raise MalformedCredentials("Basic credentials are empty")
    return secret


def secret_from_header(header: str | None) -> str | None:
    """The secret in an Authorization header; None when there is no header at all.

    Accepts ``Bearer <secret>`` and ``Basic base64(user:secret)`` or ``base64(secret:)``; also
    bun's ``Bearer base64(user:secret)``.  Raises MalformedCredentials for anything else.
    """
    if header is None:
        return None
    if len(header) > MAX_HEADER_LEN:
        raise MalformedCredentials("Authorization header is too long")
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if not value:
        raise MalformedCredentials("Authorization header has no credentials")
    scheme = scheme.lower()
    if scheme == "bearer":
        if value.startswith("pkg_") or ":" in value:
            return value
        # bun sends `_auth` values as Bearer; accept them when they decode to user:secret.
        try:
            return _basic_secret(value)
        except MalformedCredentials:
            return value
    if scheme == "basic":
        return _basic_secret(value)
    raise MalformedCredentials("unsupported Authorization scheme; use Bearer or Basic")
