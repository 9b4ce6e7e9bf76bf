"""Versions and version ranges as each ecosystem orders them (pure functions).

npm versions follow semver 2.0 precedence (the ``semver`` library; build metadata ignored).
PyPI versions follow PEP 440 (``packaging``).  An OSV range is a list of events (``introduced``,
``fixed``, ``last_affected``) read in ascending version order: a version is affected when the
latest ``introduced`` at or below it is not followed by a ``fixed`` at or below it (nor by a
``last_affected`` below it).  A version that cannot be parsed is never matched by a range (only
by an explicit version string), so a junk version string can neither block nor unblock others.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import semver
from packaging.utils import canonicalize_version
from packaging.version import InvalidVersion, Version

NPM: Final = "npm"
PYPI: Final = "pypi"
ECOSYSTEMS: Final = (NPM, PYPI)


class Comparable(Protocol):
    def __lt__(self, other: Any, /) -> bool: ...
    def __le__(self, other: Any, /) -> bool: ...


@functools.lru_cache(maxsize=65536)
def npm_key(version: str) -> semver.Version | None:
    """The semver of an npm version (a leading ``v`` or ``=`` tolerated), None if it is not one."""
    text = version.strip().lstrip("=v")
    try:
        return semver.Version.parse(text)
    except (ValueError, TypeError):
        return None


@functools.lru_cache(maxsize=65536)
def pypi_key(version: str) -> Version | None:
    """The PEP 440 version, None if ``version`` is not one."""
    try:
        return Version(version)
    except InvalidVersion:
        return None


def version_key(ecosystem: str, version: str) -> Comparable | None:
    """The sort key of ``version`` in ``ecosystem``; None when it does not parse."""
    return npm_key(version) if ecosystem == NPM else pypi_key(version)


def canonical_version(ecosystem: str, version: str) -> str:
    """The spelling explicit versions are compared in (PEP 440 normal form for PyPI)."""
    if ecosystem == PYPI:
        key = pypi_key(version)
        # PEP 440 equality: 1.0 == 1.0.0 == 1.0.0.0; trailing zeros go.
        return canonicalize_version(key, strip_trailing_zero=True) if key is not None else version
    return version


def is_prerelease(ecosystem: str, version: str) -> bool:
    if ecosystem == NPM:
        key = npm_key(version)
        return key is None or key.prerelease is not None
    key2 = pypi_key(version)
    return key2 is None or key2.is_prerelease


@dataclass(frozen=True, slots=True)
class Event:
    """One OSV range event; ``kind`` is ``introduced``, ``fixed`` or ``last_affected``."""

    kind: str
    version: str


ZERO: Final = "0"  # OSV's "introduced": "0" means since the first version


@dataclass(frozen=True, slots=True)
class Range:
    """An OSV ``SEMVER`` (npm) or ``ECOSYSTEM`` (PyPI) range, its events parsed once."""

    ecosystem: str
    events: tuple[tuple[str, Comparable | None], ...]  # (kind, key); key None = "0"

    @classmethod
    def build(cls, ecosystem: str, events: Sequence[Event]) -> Range:
        """Raises ValueError when an event version does not parse or no event introduces."""
        parsed: list[tuple[str, Comparable | None]] = []
        for event in events:
            if event.kind == "introduced" and event.version == ZERO:
                parsed.append((event.kind, None))
                continue
            key = version_key(ecosystem, event.version)
            if key is None:
                raise ValueError(f"unparseable {ecosystem} version {event.version!r} in a range")
            parsed.append((event.kind, key))
        if not any(kind == "introduced" for kind, _ in parsed):
            raise ValueError("a range without an introduced event")
        # Ascending by version; "0" first.  Events at one version keep OSV's order.
        order = sorted(range(len(parsed)), key=lambda i: _EventOrder(parsed[i][1], i))
        return cls(ecosystem, tuple(parsed[i] for i in order))

    def contains(self, key: Comparable) -> bool:
        affected = False
        for kind, at in self.events:
            if kind == "introduced":
                if at is None or at <= key:
                    affected = True
                else:
                    break
            elif kind == "fixed":
                if at is not None and at <= key:
                    affected = False
                else:
                    break
            elif kind == "last_affected":
                if at is not None and at < key:
                    affected = False
                else:
                    break
        return affected


@functools.total_ordering
class _EventOrder:
    __slots__ = ("index", "key")

    def __init__(self, key: Comparable | None, index: int) -> None:
        self.key = key
        self.index = index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _EventOrder) and not self < other and not other < self

    def __hash__(self) -> int:
        return self.index

    def __lt__(self, other: _EventOrder) -> bool:
        if self.key is None or other.key is None:
            if self.key is None and other.key is None:
                return self.index < other.index
            return self.key is None
        if self.key < other.key:
            return True
        if other.key < self.key:
            return False
        return self.index < other.index
