"""npm package names, paths and the packument rewrite (pure functions, no aiohttp).

A packument from the upstream names its tarballs on the upstream's origin; clients must fetch
them through pkgate instead, so every ``versions[*].dist.tarball`` becomes
``<public_url>/npm/<name>/-/<file>.tgz`` (npmjs layout, literal ``/`` in scoped names).  Integrity
fields are left exactly as they are: the bytes served are the upstream's bytes.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, NamedTuple
from urllib.parse import unquote

import orjson

# npm names are URL-safe by construction; anything else is not a package we can ask for.
_PART = r"(?![._])[A-Za-z0-9._~-]{1,214}"
_UNSCOPED_RE = re.compile(_PART)
_SCOPED_RE = re.compile(rf"@{_PART}/{_PART}")
_FILE_RE = re.compile(r"(?!\.)[A-Za-z0-9._~+-]{1,300}\.tgz")
# A version ("1.0.0-rc.1+build") or dist-tag ("latest", "next-2"); never a dot segment.
_VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~+-]{0,255}")
DIST_TAGS_PREFIX = "-/package/"
DIST_TAGS_SUFFIX = "/dist-tags"


class BadPath(ValueError):
    """The request path is not a package path pkgate can serve; the message is safe to show."""


@dataclass(frozen=True, slots=True)
class PackagePath:
    """A packument, tarball (``file``) or version document (``version``) request for a package."""

    name: str
    file: str | None = None
    version: str | None = None  # an exact version or a dist-tag

    @property
    def escaped_name(self) -> str:
        """The name as npm puts it in a packument URL (``@scope%2fname``)."""
        return self.name.replace("/", "%2f")

    @property
    def unscoped(self) -> str:
        return self.name.rpartition("/")[2]


def valid_name(name: str) -> bool:
    """Whether ``name`` is a plain or scoped npm package name."""
    if name.startswith("@"):
        return _SCOPED_RE.fullmatch(name) is not None
    return _UNSCOPED_RE.fullmatch(name) is not None


def parse_package_path(raw: str) -> PackagePath | None:
    """Parse the raw (still percent-encoded) path below the npm root, without its leading slash.

    ``@scope%2fname``, ``@scope%2Fname`` and ``@scope/name`` are the same package.  Returns None
    for a well-formed path that is not a packument, tarball or version document; raises BadPath
    for names (or versions) that cannot be npm's (which covers ``..``, ``%2e``, ``//host`` tricks).

    Paths of common length are remembered (an install asks for each of its packages, and the
    next install for the same ones): a hit is one lookup, and a refusal is never remembered.
    """
    if len(raw) <= _MEMO_PATH_LENGTH:
        return _parse_remembered(raw)
    return _parse_package_path(raw)


# Paths longer than this are parsed every time (a memo entry is at most this long).
_MEMO_PATH_LENGTH = 256


def _parse_package_path(raw: str) -> PackagePath | None:
    try:
        decoded = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise BadPath("Invalid package name") from None
    segments = decoded.split("/")
    if segments[0].startswith("@"):
        if len(segments) < 2:
            raise BadPath("Invalid package name")
        name, tail = f"{segments[0]}/{segments[1]}", segments[2:]
    else:
        name, tail = segments[0], segments[1:]
    if not valid_name(name):
        raise BadPath("Invalid package name")
    if not tail:
        return PackagePath(name)
    if len(tail) == 2 and tail[0] == "-":
        if _FILE_RE.fullmatch(tail[1]) is None:
            raise BadPath("Invalid tarball file name")
        return PackagePath(name, tail[1])
    if len(tail) == 1:
        if _VERSION_RE.fullmatch(tail[0]) is None:
            raise BadPath("Invalid version")
        return PackagePath(name, version=tail[0])
    return None


_parse_remembered = functools.lru_cache(maxsize=8192)(_parse_package_path)


def parse_dist_tags_path(rest: str) -> PackagePath | None:
    """The package of a ``-/package/<name>/dist-tags`` path (raw, below the npm root), else None.

    Raises BadPath for a name that cannot be npm's.
    """
    if not (rest.startswith(DIST_TAGS_PREFIX) and rest.endswith(DIST_TAGS_SUFFIX)):
        return None
    package = parse_package_path(rest[len(DIST_TAGS_PREFIX) : -len(DIST_TAGS_SUFFIX)])
    if package is None or package.file is not None or package.version is not None:
        return None
    return package


def tarball_file(original: Any, unscoped: str, version: str) -> str:
    """The file name a version's tarball is served under: the upstream's, else npm's default."""
    if isinstance(original, str):
        last = original.split("?", 1)[0].rstrip("/").rpartition("/")[2]
        if _FILE_RE.fullmatch(last):
            return last
    return f"{unscoped}-{version}.tgz"


def tarball_url(npm_root: str, name: str, file: str) -> str:
    """The public tarball URL; ``npm_root`` is ``<public_url>/npm`` without a trailing slash."""
    return f"{npm_root}/{name}/-/{file}"


class Published(NamedTuple):
    """The hashes a packument publishes for one tarball (as written there, not yet checked).

    A named tuple: immutable, as a frozen dataclass would be, but made in half the time
    (a large packument has tens of thousands of them, made on every build and restore).
    """

    integrity: str | None
    shasum: str | None
    version: str | None = None


# A ``Published`` from a tuple of its three fields, made without a Python call (the named
# tuple's own constructor is one): for the tens of thousands of rows of a restored file table.
published_of: Final[Callable[[Iterable[str | None]], Published]] = functools.partial(
    tuple.__new__, Published
)


@dataclass(frozen=True, slots=True)
class Rewritten:
    """A rewritten packument and, by served file name, what each tarball must hash to."""

    body: bytes
    files: dict[str, Published]
    published: dict[str, float | None]  # every version -> its publish time from ``time``
    dist_tags: dict[str, str]
    times_known: bool  # whether the document has a ``time`` object (the full form does)


def parse_time(value: object) -> float | None:
    """An ISO 8601 time from a packument's ``time`` object as Unix seconds, or None."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None
    return parsed.timestamp()


def rewrite(body: bytes | bytearray, name: str, npm_root: str) -> Rewritten:
    """The packument JSON with every tarball URL pointing at pkgate, and its files' hashes.

    Raises ValueError when ``body`` is not a JSON object.
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValueError("packument is not valid JSON") from exc
    if not isinstance(doc, dict):
        raise ValueError("packument is not a JSON object")
    unscoped = name.rpartition("/")[2]
    files: dict[str, Published] = {}
    versions = doc.get("versions")
    if isinstance(versions, dict):
        for version, manifest in versions.items():
            if not isinstance(manifest, dict):
                continue
            dist = manifest.get("dist")
            if not isinstance(dist, dict) or "tarball" not in dist:
                continue
            file = tarball_file(dist["tarball"], unscoped, str(version))
            dist["tarball"] = tarball_url(npm_root, name, file)
            integrity, shasum = dist.get("integrity"), dist.get("shasum")
            files[file] = Published(
                integrity if isinstance(integrity, str) else None,
                shasum if isinstance(shasum, str) else None,
                str(version),
            )
    found_times = doc.get("time")
    times: dict[str, Any] = found_times if isinstance(found_times, dict) else {}
    times_known = isinstance(found_times, dict)
    published: dict[str, float | None] = {}
    if isinstance(versions, dict):
        for version in versions:
            published[str(version)] = parse_time(times.get(version))
    tags = doc.get("dist-tags")
    dist_tags = (
        {str(k): v for k, v in tags.items() if isinstance(v, str)} if isinstance(tags, dict) else {}
    )
    return Rewritten(orjson.dumps(doc), files, published, dist_tags, times_known)


def without(
    body: bytes, removed: Mapping[str, object], dist_tags: Mapping[str, str] | None
) -> bytes:
    """A rewritten packument without the ``removed`` versions (also from ``time``), with
    ``dist_tags`` instead of its own when given."""
    doc = orjson.loads(body)
    if not isinstance(doc, dict):
        return body
    for field in ("versions", "time"):
        table = doc.get(field)
        if isinstance(table, dict):
            for version in removed:
                table.pop(version, None)
    if dist_tags is not None:
        doc["dist-tags"] = dict(dist_tags)
    return orjson.dumps(doc)


def rewrite_packument(body: bytes, name: str, npm_root: str) -> bytes:
    """The packument JSON with every tarball URL pointing at pkgate (see ``rewrite``)."""
    return rewrite(body, name, npm_root).body


def version_document(packument: bytes, spec: str) -> bytes | None:
    """The manifest of version ``spec`` (or of the version dist-tag ``spec`` points at), or None.

    ``packument`` is a body ``rewrite`` produced, so its tarball URLs already point at pkgate.
    """
    doc = orjson.loads(packument)
    versions = doc.get("versions") if isinstance(doc, dict) else None
    if not isinstance(versions, dict):
        return None
    manifest = versions.get(spec)
    if manifest is None:
        # An exact version wins over a dist-tag of the same spelling, as on the npm registry.
        tags = doc.get("dist-tags")
        target = tags.get(spec) if isinstance(tags, dict) else None
        manifest = versions.get(target) if isinstance(target, str) else None
    return orjson.dumps(manifest) if isinstance(manifest, dict) else None


def dist_tags(packument: bytes) -> bytes:
    """The packument's ``dist-tags`` object (an empty one when it has none)."""
    doc = orjson.loads(packument)
    tags = doc.get("dist-tags") if isinstance(doc, dict) else None
    return orjson.dumps(tags if isinstance(tags, dict) else {})
