"""npm path parsing, body decoding, the packument rewrite and what is derived from it."""

from __future__ import annotations

import json

import orjson
import pytest

from proxy.npm.rewrite import (
    BadPath,
    PackagePath,
    Published,
    dist_tags,
    parse_dist_tags_path,
    parse_package_path,
    rewrite,
    rewrite_packument,
    version_document,
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
        ("lodash/4.17.21", PackagePath("lodash", version="4.17.21")),
        ("lodash/1.0.0-rc.1+build.5", PackagePath("lodash", version="1.0.0-rc.1+build.5")),
        ("@acme%2fscoped/latest", PackagePath("@acme/scoped", version="latest")),
        ("@acme/scoped/next", PackagePath("@acme/scoped", version="next")),
        ("lodash/4.17.21/x", None),
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


@pytest.mark.parametrize(
    "raw", ["lodash/..", "lodash/%2e%2e", "lodash/-", "lodash/", "lodash/a%00"]
)
def test_parse_package_path__rejects_what_cannot_be_a_version(raw: str) -> None:
    with pytest.raises(BadPath, match="Invalid version"):
        parse_package_path(raw)


@pytest.mark.parametrize(
    ("rest", "expected"),
    [
        ("-/package/lodash/dist-tags", PackagePath("lodash")),
        ("-/package/@acme%2fscoped/dist-tags", PackagePath("@acme/scoped")),
        ("-/package/@acme%2Fscoped/dist-tags", PackagePath("@acme/scoped")),
        ("-/package/@acme/scoped/dist-tags", PackagePath("@acme/scoped")),
        ("-/package/lodash/1.0.0/dist-tags", None),
        ("-/package/lodash/-/lodash-1.0.0.tgz/dist-tags", None),
        ("-/package/lodash/dist-tags/latest", None),
        ("-/package/lodash", None),
        ("-/nothing", None),
    ],
)
def test_parse_dist_tags_path__accepts_only_a_package(
    rest: str, expected: PackagePath | None
) -> None:
    assert parse_dist_tags_path(rest) == expected


def test_parse_dist_tags_path__rejects_bad_names() -> None:
    with pytest.raises(BadPath):
        parse_dist_tags_path("-/package/..%2f..%2fx/dist-tags")


PACKUMENT = orjson.dumps(
    {
        "name": "p",
        "dist-tags": {"latest": "1.1.0", "1.0.0": "1.1.0", "gone": "9.9.9"},
        "versions": {"1.0.0": {"version": "1.0.0"}, "1.1.0": {"version": "1.1.0"}},
    }
)


@pytest.mark.parametrize(
    ("spec", "version"),
    [("1.0.0", "1.0.0"), ("1.1.0", "1.1.0"), ("latest", "1.1.0"), ("gone", None), ("x", None)],
)
def test_version_document__exact_version_then_dist_tag(spec: str, version: str | None) -> None:
    answer = version_document(PACKUMENT, spec)
    if version is None:
        assert answer is None
    else:
        assert answer is not None
        assert orjson.loads(answer) == {"version": version}


def test_dist_tags__the_object_or_an_empty_one() -> None:
    assert orjson.loads(dist_tags(PACKUMENT)) == {
        "latest": "1.1.0",
        "1.0.0": "1.1.0",
        "gone": "9.9.9",
    }
    assert orjson.loads(dist_tags(b'{"versions": {}}')) == {}


def test_package_path__escaped_name_uses_lowercase_2f() -> None:
    assert PackagePath("@acme/scoped").escaped_name == "@acme%2fscoped"
    assert PackagePath("plain").escaped_name == "plain"


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
        "scoped-2.0.0.tgz": Published("sha512-abc", "def", "2.0.0"),
        "scoped-1.0.0.tgz": Published(None, None, "1.0.0"),
    }
    assert json.loads(out.body) == json.loads(
        rewrite_packument(json.dumps(doc).encode(), "@acme/scoped", ROOT)
    )
