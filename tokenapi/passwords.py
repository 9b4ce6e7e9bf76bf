"""Password hashes for users who log in to the session API: Argon2id (argon2-cffi), off the loop.

New hashes are Argon2id with OWASP's minimum profile (19 MiB, 2 passes, 1 lane: memory stays
small when several logins hash at once).  Hashes made before, ``scrypt$n$r$p$salt$hash``, still
verify; ``needs_rehash`` says so, and a successful login stores a fresh Argon2id hash in their
place.  Any malformed hash verifies as False.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import hmac

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MEMORY_KIB = 19 * 1024
TIME_COST = 2
PARALLELISM = 1

_hasher = PasswordHasher(time_cost=TIME_COST, memory_cost=MEMORY_KIB, parallelism=PARALLELISM)

_SCRYPT_DKLEN = 32


def hash_password(password: str) -> str:
    """An encoded Argon2id hash (PHC string: ``$argon2id$v=19$m=...,t=...,p=...$salt$hash``)."""
    return _hasher.hash(password)


@functools.cache
def _decoy() -> str:
    # Verified against when the account does not exist, so that case costs the same time.
    return _hasher.hash("pkgate: no such user")


def _scrypt_verify(password: str, encoded: str) -> bool:
    scheme, n, r, p, salt, digest = encoded.split("$")
    if scheme != "scrypt":
        return False
    expected = base64.b64decode(digest, validate=True)
    actual = hashlib.scrypt(
        password.encode("utf-8"),
        salt=base64.b64decode(salt, validate=True),
        n=int(n),
        r=int(r),
        p=int(p),
        dklen=_SCRYPT_DKLEN,
        maxmem=64 * 1024 * 1024,
    )
    return hmac.compare_digest(actual, expected)


def verify_password(password: str, encoded: str | None) -> bool:
    """True when ``password`` matches ``encoded`` (Argon2id, or an old scrypt hash)."""
    if not encoded:
        with contextlib.suppress(VerificationError):
            _hasher.verify(_decoy(), password)
        return False
    if encoded.startswith("scrypt$"):
        try:
            return _scrypt_verify(password, encoded)
        except (ValueError, TypeError):
            return False
    try:
        return _hasher.verify(encoded, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError, ValueError, TypeError):
        return False


def needs_rehash(encoded: str | None) -> bool:
    """Whether a hash that just verified should be replaced (scrypt, or weaker Argon2 settings)."""
    if not encoded or not encoded.startswith("$argon2id$"):
        return True
    try:
        return _hasher.check_needs_rehash(encoded)
    except (InvalidHashError, ValueError):
        return True


async def hash_password_async(password: str) -> str:
    return await asyncio.to_thread(hash_password, password)


async def verify_password_async(password: str, encoded: str | None) -> bool:
    return await asyncio.to_thread(verify_password, password, encoded)
