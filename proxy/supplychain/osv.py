"""OSV records -> blocklist entries (pure functions).

Only ``affected[]`` items for the ``npm`` and ``PyPI`` ecosystems matter.  Each becomes one
``Entry``: explicit ``versions``, ``ranges`` (``SEMVER`` or ``ECOSYSTEM``, compared with the
ecosystem's own ordering; ``GIT`` ranges say nothing about package versions and are ignored), or,
with neither, the whole package.  A record that is not a well-formed OSV object (no string id, a
non-list ``affected``, a range whose versions do not parse, ...) raises ``Malformed``; the caller
skips and counts it.  Withdrawn records block nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from ..pypi.rewrite import normalize_name
from .versions import NPM, PYPI, Comparable, Event, Range, canonical_version, version_key

OSV_ECOSYSTEMS: Final[Mapping[str, str]] = {"npm": NPM, "pypi": PYPI}
RANGE_TYPES: Final = frozenset({"SEMVER", "ECOSYSTEM"})
EVENT_KINDS: Final = frozenset({"introduced", "fixed", "last_affected"})
MALICIOUS_PREFIX: Final = "MAL-"
MAX_REASON = 160
MAX_ID = 128
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


class Malformed(ValueError):
    """A record that is not usable OSV; the message says why (safe to log)."""


def package_key(ecosystem: str, name: str) -> str:
    """How a package name compares in ``ecosystem``: npm exact, PyPI PEP 503 normalised."""
    return normalize_name(name) if ecosystem == PYPI else name


def one_line(text: str, limit: int = MAX_REASON) -> str:
    """``text`` as a short single line (feeds are untrusted: no control characters)."""
    flat = _CONTROL.sub(" ", text).strip()
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


@dataclass(frozen=True, slots=True)
class Entry:
    """One blocked package (or some of its versions), from a feed record or the manual file."""

    advisory: str  # the OSV id ("MAL-2024-1234") or "manual"
    summary: str  # one line, shown to users as the reason
    ecosystem: str  # "npm" or "pypi"
    package: str  # as compared (PyPI normalised)
    versions: frozenset[str] = frozenset()  # canonical spellings
    ranges: tuple[Range, ...] = ()
    whole: bool = False
    source: str = ""

    def matches(self, version: str) -> bool:
        """Whether this entry blocks ``version`` of its package."""
        if self.whole:
            return True
        if canonical_version(self.ecosystem, version) in self.versions:
            return True
        if self.ranges:
            key = version_key(self.ecosystem, version)
            if key is not None:
                return any(r.contains(key) for r in self.ranges)
        return False

    def matches_key(self, version: str, key: Comparable | None) -> bool:
        """``matches`` with the version's sort key already computed."""
        if self.whole or canonical_version(self.ecosystem, version) in self.versions:
            return True
        return key is not None and any(r.contains(key) for r in self.ranges)

    def predicate(self) -> dict[str, Any]:
        """Which versions this entry covers, as JSON: ``{"all": true}`` or versions and ranges."""
        if self.whole:
            return {"all": True}
        return {
            "versions": sorted(self.versions),
            "ranges": [
                [{kind: str(key) if key is not None else "0"} for kind, key in r.events]
                for r in self.ranges
            ],
        }


def _str_field(record: Mapping[str, Any], name: str) -> str | None:
    value = record.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise Malformed(f"{name} is not a string")
    return value


def _events(ecosystem: str, raw: Any) -> Range:
    if not isinstance(raw, list) or not raw:
        raise Malformed("a range without events")
    events: list[Event] = []
    for item in raw:
        if not isinstance(item, dict) or len(item) != 1:
            raise Malformed("a range event is not a one-key object")
        ((kind, version),) = item.items()
        if kind == "limit":
            continue  # a search bound for GIT ranges; never a version boundary
        if kind not in EVENT_KINDS or not isinstance(version, str):
            raise Malformed(f"unknown range event {kind!r}")
        events.append(Event(kind, version))
    try:
        return Range.build(ecosystem, events)
    except ValueError as exc:
        raise Malformed(str(exc)) from None


def _affected(record_id: str, summary: str, item: Any, source: str) -> Entry | None:
    if not isinstance(item, dict):
        raise Malformed("an affected item is not an object")
    package = item.get("package")
    if not isinstance(package, dict):
        return None  # OSV allows affected items without a package (e.g. GIT only)
    ecosystem_name = package.get("ecosystem")
    name = package.get("name")
    if not isinstance(ecosystem_name, str) or not isinstance(name, str):
        raise Malformed("package ecosystem or name is not a string")
    ecosystem = OSV_ECOSYSTEMS.get(ecosystem_name.strip().lower())
    if ecosystem is None:
        return None
    name = name.strip()
    if not name or len(name) > 214:
        raise Malformed("package name is empty or too long")
    raw_versions = item.get("versions")
    raw_ranges = item.get("ranges")
    if raw_versions is not None and not isinstance(raw_versions, list):
        raise Malformed("versions is not a list")
    if raw_ranges is not None and not isinstance(raw_ranges, list):
        raise Malformed("ranges is not a list")
    versions: set[str] = set()
    for version in raw_versions or ():
        if not isinstance(version, str):
            raise Malformed("a version is not a string")
        versions.add(canonical_version(ecosystem, version.strip()))
    ranges: list[Range] = []
    for raw in raw_ranges or ():
        if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
            raise Malformed("a range is not an object with a type")
        if raw["type"] in RANGE_TYPES:
            ranges.append(_events(ecosystem, raw.get("events")))
    whole = not raw_versions and not raw_ranges
    if not whole and not versions and not ranges:
        return None  # only GIT ranges: nothing to say about package versions
    return Entry(
        advisory=record_id,
        summary=summary,
        ecosystem=ecosystem,
        package=package_key(ecosystem, name),
        versions=frozenset(versions),
        ranges=tuple(ranges),
        whole=whole,
        source=source,
    )


def entries(record: Any, source: str = "") -> list[Entry]:
    """The npm and PyPI entries of one OSV record; raises Malformed for a broken record."""
    if not isinstance(record, dict):
        raise Malformed("record is not a JSON object")
    record_id = _str_field(record, "id")
    if not record_id or len(record_id) > MAX_ID:
        raise Malformed("record has no usable id")
    if record.get("withdrawn"):
        _str_field(record, "withdrawn")
        return []
    summary = _str_field(record, "summary") or ""
    if not summary.strip():
        details = _str_field(record, "details") or ""
        summary = details.strip().split("\n", 1)[0]
    summary = one_line(summary) or ("malicious package" if is_malicious(record_id) else "listed")
    affected = record.get("affected")
    if affected is None:
        return []
    if not isinstance(affected, list):
        raise Malformed("affected is not a list")
    out: list[Entry] = []
    for item in affected:
        entry = _affected(one_line(record_id, MAX_ID), summary, item, source)
        if entry is not None:
            out.append(entry)
    return out


def is_malicious(record_id: str) -> bool:
    return record_id.startswith(MALICIOUS_PREFIX)


def relevant(record: Any) -> bool:
    """Cheap pre-check: does this record name an npm or PyPI package at all?"""
    if not isinstance(record, dict):
        return True  # let entries() report it as malformed
    affected = record.get("affected")
    if not isinstance(affected, list):
        return True
    for item in affected:
        package = item.get("package") if isinstance(item, dict) else None
        if not isinstance(package, dict):
            return True
        eco = package.get("ecosystem")
        if not isinstance(eco, str) or eco.strip().lower() in OSV_ECOSYSTEMS:
            return True
    return False


def all_entries(records: Iterable[Any], source: str = "") -> tuple[list[Entry], int]:
    """Entries of many records and how many records were malformed (skipped)."""
    out: list[Entry] = []
    malformed = 0
    for record in records:
        try:
            out.extend(entries(record, source))
        except Malformed:
            malformed += 1
    return out, malformed
