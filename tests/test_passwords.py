"""Password hashes: Argon2id for new ones; old scrypt hashes still log in and are upgraded then."""

import base64
import hashlib
import secrets

from argon2 import PasswordHasher
from argon2.low_level import Type

from tests.api_support import NPM_UPSTREAM, call
from tests.conftest import StartServer
from tokenapi import passwords
from tokenapi.passwords import hash_password, needs_rehash, verify_password

PASSWORD = "correct horse battery staple"


def old_scrypt_hash(password: str) -> str:
    """A hash as pkgate wrote them before Argon2id (scrypt N=2^14, r=8, p=1)."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)
    b64 = base64.b64encode
    return f"scrypt$16384$8$1${b64(salt).decode()}${b64(digest).decode()}"


def test_passwords__new_hashes_are_argon2id_with_owasp_parameters() -> None:
    encoded = hash_password(PASSWORD)
    assert encoded.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert verify_password(PASSWORD, encoded)
    assert not verify_password(PASSWORD + "!", encoded)
    assert not needs_rehash(encoded)
    assert hash_password(PASSWORD) != encoded  # salted


def test_passwords__old_scrypt_hashes_verify_and_need_a_rehash() -> None:
    encoded = old_scrypt_hash(PASSWORD)
    assert verify_password(PASSWORD, encoded)
    assert not verify_password("wrong", encoded)
    assert needs_rehash(encoded)


def test_passwords__weaker_argon2_needs_a_rehash() -> None:
    weak = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1, type=Type.ID).hash(PASSWORD)
    assert verify_password(PASSWORD, weak)
    assert needs_rehash(weak)
    argon2i = PasswordHasher(type=Type.I).hash(PASSWORD)
    assert needs_rehash(argon2i)


def test_passwords__malformed_or_missing_hashes_never_verify() -> None:
    for bad in (None, "", "scrypt$x", "scrypt$1$2$3$!!$!!", "$argon2id$garbage", "plain"):
        assert verify_password(PASSWORD, bad) is False
    assert passwords._decoy().startswith("$argon2id$")


async def test_login__an_old_scrypt_hash_is_replaced_by_argon2id_on_success(
    start_server: StartServer,
) -> None:
    server = await start_server(npm_upstream=NPM_UPSTREAM)
    old = old_scrypt_hash(PASSWORD)
    user = await server.store.create_user("old@example.com", password_hash=old)
    wrong = await call(
        server, "POST", "/api/session", json={"email": user.email, "password": "nope-nope"}
    )
    assert wrong.status == 401
    assert (await server.store.get_user(user.id)).password_hash == old  # type: ignore[union-attr]
    answer = await call(
        server, "POST", "/api/session", json={"email": user.email, "password": PASSWORD}
    )
    assert answer.status == 200
    upgraded = (await server.store.get_user(user.id)).password_hash  # type: ignore[union-attr]
    assert upgraded is not None
    assert upgraded.startswith("$argon2id$")
    assert not needs_rehash(upgraded)
    again = await call(
        server, "POST", "/api/session", json={"email": user.email, "password": PASSWORD}
    )
    assert again.status == 200
    assert (await server.store.get_user(user.id)).password_hash == upgraded  # type: ignore[union-attr]
