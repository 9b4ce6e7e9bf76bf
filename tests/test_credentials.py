from base64 import b64encode

import pytest

from tokenapi.credentials import MalformedCredentials, secret_from_header


def basic(raw: bytes) -> str:
    return "Basic " + b64encode(raw).decode()


def test_secret_from_header__missing_is_none() -> None:
    assert secret_from_header(None) is None


def test_secret_from_header__bearer() -> None:
    assert secret_from_header("Bearer pkg_abc") == "pkg_abc"


def test_secret_from_header__scheme_is_case_insensitive() -> None:
    assert secret_from_header("bearer pkg_abc") == "pkg_abc"


def test_secret_from_header__basic_password_is_the_secret() -> None:
    assert secret_from_header(basic(b"token:pkg_abc")) == "pkg_abc"


def test_secret_from_header__basic_username_with_empty_password() -> None:
    assert secret_from_header(basic(b"pkg_abc:")) == "pkg_abc"


def test_secret_from_header__basic_splits_on_first_colon() -> None:
    assert secret_from_header(basic(b"user:pa:ss")) == "pa:ss"


def test_secret_from_header__bun_bearer_with_base64_userpass() -> None:
    assert secret_from_header("Bearer " + b64encode(b"token:pkg_abc").decode()) == "pkg_abc"


@pytest.mark.parametrize(
    "header",
    [
        "",
        "Bearer",
        "Bearer   ",
        "Basic !!!notbase64",
        basic(b"\xff\xfe:\xff"),
        basic(b"no-colon-here"),
        basic(b":"),
        "Digest username=x",
        "Bearer " + "a" * 5000,
    ],
)
def test_secret_from_header__malformed(header: str) -> None:
    with pytest.raises(MalformedCredentials):
        secret_from_header(header)
