"""Token secrets: generation, shape and checksum checks, and the digest the store keeps."""

from __future__ import annotations

import hashlib
import secrets
import zlib

PREFIX = "pkg_"
RANDOM_LEN = 30
CHECKSUM_LEN = 6
TOKEN_LEN = len(PREFIX) + RANDOM_LEN + CHECKSUM_LEN
DISPLAY_PREFIX_LEN = 8
# The ecosystems a token may be limited to (SPEC 18); a token without limits has them all.
ALL_SCOPES: tuple[str, ...] = ("npm", "pypi")

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BASE62_SET = frozenset(BASE62)


def _base62(value: int, width: int) -> str:
    chars = []
    for _ in range(width):
        value, rem = divmod(value, 62)
        chars.append(BASE62[rem])
    return "".join(reversed(chars))


def _checksum(random_part: str) -> str:
    return _base62(zlib.crc32(random_part.encode("ascii")), CHECKSUM_LEN)


def generate() -> str:
    """Return a fresh secret: prefix, 30 random base62 characters and a CRC32 checksum."""
    random_part = "".join(secrets.choice(BASE62) for _ in range(RANDOM_LEN))
    return PREFIX + random_part + _checksum(random_part)


def is_well_formed(secret: str) -> bool:
    """Shape and checksum check that needs no store lookup."""
    if len(secret) != TOKEN_LEN or not secret.startswith(PREFIX):
        return False
    body = secret[len(PREFIX) :]
    if not _BASE62_SET.issuperset(body):
        return False
    random_part, check = body[:RANDOM_LEN], body[RANDOM_LEN:]
    return secrets.compare_digest(_checksum(random_part), check)


def digest(secret: str) -> str:
    """SHA-256 hex digest under which a secret is stored and looked up."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def display_prefix(secret: str) -> str:
    """The first characters of a secret, safe to show in lists."""
    return secret[:DISPLAY_PREFIX_LEN]
