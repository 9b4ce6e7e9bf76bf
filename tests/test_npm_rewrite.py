"""npm path parsing, body decoding, the packument rewrite (no server)."""

from __future__ import annotations

import gzip
import json
import zlib

import pytest

from proxy.npmrewrite import (
    BadPath,
    PackagePath,
    Published,
    decode_body,
    parse_package_path,
    rewrite,
    rewrite_packument,
)

ROOT = "https://pkgate.example.test/base/npm"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("lodash", PackagePath("lodash")),
        ("@acme%2fscoped", PackagePath("@acme/scoped")),
        ("@acme%2Fscoped", PackagePath("@acme/scoped")),
        ("@acme/scoped", PackagePath("@acme/scoped")),
        ("%40acme%2Fscoped", PackagePath("@acme/scoped")),
        ("lodash/-/lodash-4.17.21.tgz", PackagePath("lodash", "lodash-4.17.21.tgz")),
        ("@acme/scoped/-/scoped-2.0.0.tgz", PackagePath("@acme/scoped", "scoped-2.0.0.tgz")),
        ("@acme%2fscoped/-/scoped-2.0.0.tgz", PackagePath("@acme/scoped", "scoped-2.0.0.tgz")),
        ("lodash/4.17.21", None),
        ("lodash/-/a/b.tgz", None),
    ],
)
def test_parse_package_path__accepts_npm_shapes(raw: str, expected: PackagePath | None) -> None:
    assert parse_package_path(raw) == expected


@pytest.mark.parametrize(
    "raw",
    ["..", "%2e%2e", ".", "_private", "@acme", "@/x", "a b", "%ff", "", "@acme%2f..", "x/-/.tgz"],
)
def test_parse_package_path__rejects_what_cannot_be_a_name(raw: str) -> None:
    with pytest.raises(BadPath):
        parse_package_path(raw)


def test_package_path__escaped_name_uses_lowercase_2f() -> None:
    assert PackagePath("@acme/scoped").escaped_name == "@acme%2fscoped"
    assert PackagePath("plain").escaped_name == "plain"


def test_decode_body__gzip_labelled_unlabelled_and_deflate() -> None:
    data = b'{"a": 1}'
    assert decode_body(gzip.compress(data), "gzip") == data
    assert decode_body(gzip.compress(data), None) == data
    assert decode_body(zlib.compress(data), "deflate") == data
    raw_deflate = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    assert decode_body(raw_deflate.compress(data) + raw_deflate.flush(), "deflate") == data
    assert decode_body(data, "identity") == data


@pytest.mark.parametrize(
    ("body", "coding"),
    [
        (b"\x1f\x8bnot really gzip", "gzip"),
        (gzip.compress(b"x" * 100)[:-10], "gzip"),
        (b"{}", "br"),
    ],
)
def test_decode_body__refuses_what_it_cannot_decode(body: bytes, coding: str) -> None:
    with pytest.raises(ValueError, match=r"undecodable|unsupported|truncated"):
        decode_body(body, coding)


def test_decode_body__bounds_the_decoded_size() -> None:
    bomb = gzip.compress(b"\0" * 1_000_000)
    with pytest.raises(ValueError, match="too large"):
        decode_body(bomb, "gzip", max_size=1000)


def test_rewrite_packument__moves_every_tarball_and_keeps_the_rest() -> None:
    doc = {
        "name": "@acme/scoped",
        "dist-tags": {"latest": "2.0.0"},
        "versions": {
            "2.0.0": {
                "dist": {
                    "tarball": "https://up.example.test/@acme/scoped/-/scoped-2.0.0.tgz",
                    "integrity": "sha512-abc",
                    "shasum": "def",
                    "signatures": [{"keyid": "k", "sig": "s"}],
                    "attestations": {"url": "u"},
                }
            },
            "1.0.0": {"dist": {"tarball": "https://up.example.test/odd/path?x=1"}},
            "0.1.0": {"dist": {"integrity": "sha512-none"}},
            "0.0.1": "not an object",
        },
        "readme": "https://up.example.test/ stays",
    }
    out = json.loads(rewrite_packument(json.dumps(doc).encode(), "@acme/scoped", ROOT))
    first = out["versions"]["2.0.0"]["dist"]
    assert first["tarball"] == f"{ROOT}/@acme/scoped/-/scoped-2.0.0.tgz"
    published = dict(first, tarball="https://up.example.test/@acme/scoped/-/scoped-2.0.0.tgz")
    assert published == doc["versions"]["2.0.0"]["dist"]  # type: ignore[index]
    assert out["versions"]["1.0.0"]["dist"]["tarball"] == f"{ROOT}/@acme/scoped/-/scoped-1.0.0.tgz"
    assert out["versions"]["0.1.0"] == {"dist": {"integrity": "sha512-none"}}
    assert out["versions"]["0.0.1"] == "not an object"
    assert out["readme"] == doc["readme"]


@pytest.mark.parametrize("body", [b"<html>", b"[1, 2]", b""])
def test_rewrite_packument__refuses_non_objects(body: bytes) -> None:
    with pytest.raises(ValueError, match="packument"):
        rewrite_packument(body, "x", ROOT)


def test_rewrite__lists_each_served_file_with_its_published_hashes() -> None:
    doc = {
        "versions": {
            "2.0.0": {
                "dist": {
                    "tarball": "https://up.example.test/@acme/scoped/-/scoped-2.0.0.tgz",
                    "integrity": "sha512-abc",
                    "shasum": "def",
                }
            },
            "1.0.0": {"dist": {"tarball": "https://up.example.test/odd", "integrity": 7}},
            "0.1.0": {"dist": {"integrity": "sha512-none"}},
        }
    }
    out = rewrite(json.dumps(doc).encode(), "@acme/scoped", ROOT)
    assert out.files == {
        "scoped-2.0.0.tgz": Published("sha512-abc", "def"),
        "scoped-1.0.0.tgz": Published(None, None),
    }
    assert json.loads(out.body) == json.loads(
        rewrite_packument(json.dumps(doc).encode(), "@acme/scoped", ROOT)
    )
