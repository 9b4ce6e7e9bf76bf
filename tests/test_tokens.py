import pytest

from tokenapi import tokens


def test_generate__has_prefix_length_and_valid_checksum() -> None:
    secret = tokens.generate()
    assert secret.startswith("pkg_")
    assert len(secret) == 40
    assert tokens.is_well_formed(secret)


def test_generate__secrets_differ() -> None:
    assert len({tokens.generate() for _ in range(200)}) == 200


def test_is_well_formed__rejects_a_changed_character() -> None:
    secret = tokens.generate()
    body = secret[4:]
    flipped = ("B" if body[0] == "A" else "A") + body[1:]
    assert not tokens.is_well_formed("pkg_" + flipped)


@pytest.mark.parametrize(
    "value",
    ["", "pkg_", "pkg_short", "xyz_" + "a" * 36, "pkg_" + "a" * 35 + "!", "pkg_" + "é" * 36],
)
def test_is_well_formed__rejects_bad_shapes(value: str) -> None:
    assert not tokens.is_well_formed(value)


def test_digest__is_sha256_hex_and_stable() -> None:
    secret = tokens.generate()
    assert tokens.digest(secret) == tokens.digest(secret)
    assert len(tokens.digest(secret)) == 64
    assert tokens.display_prefix(secret) == secret[:8]
