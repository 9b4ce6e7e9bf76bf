"""Policy decisions: which versions of a package are withheld, and why (pure, no aiohttp).

Two rules, checked in this order for every version:
- ``blocked``: the blocklist has an entry covering the version (and no ``[[allow]]`` exception);
- ``quarantined``: the version was published less than the minimum release age ago (unless the
  package matches a ``min_release_age_exempt`` glob).  A version whose publish time is unknown is
  kept and counted (``Evaluation.unknown_times``).

``Engine.evaluate`` answers for all versions of a package at once, with the time until which the
answer holds (the moment the first quarantined version comes of age); callers memoise on that.
"""

from __future__ import annotations

import fnmatch
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from .blocklist import Blocklist
from .osv import Entry, package_key
from .versions import NPM, PYPI

BLOCKED: Final = "blocked"
QUARANTINED: Final = "quarantined"
FOREVER: Final = math.inf


def format_duration(seconds: float) -> str:
    """Seconds in the settings' spelling: the largest unit that divides evenly (``3d``, ``90m``)."""
    whole = round(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole >= size and whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def format_age(seconds: float) -> str:
    """A rough, human age: ``2d 3h``, ``5h 12m``, ``40s``."""
    s = max(0, int(seconds))
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m"
    return f"{s}s"


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: object) -> float | None:
    """An ISO 8601 time (npm ``time``, PEP 700 ``upload-time``) as epoch seconds, or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


@dataclass(frozen=True, slots=True)
class Decision:
    """Why one version is withheld."""

    rule: str  # BLOCKED or QUARANTINED
    version: str
    reason: str  # the advisory summary, or the age explanation
    advisory: str | None = None
    until: float | None = None  # quarantined: when it becomes available

    def message(self, name: str) -> str:
        if self.rule == BLOCKED:
            return f"{name}@{self.version} is blocked: {self.reason} ({self.advisory})"
        return f"{name}@{self.version} is withheld until {self.reason}"


@dataclass(frozen=True, slots=True)
class Evaluation:
    """The withheld versions of one package, valid until ``valid_until`` (epoch seconds)."""

    withheld: Mapping[str, Decision] = field(default_factory=dict)
    valid_until: float = FOREVER
    unknown_times: int = 0
    whole: Entry | None = None  # an entry blocking every version of the package

    def denial(self, name: str, versions: Iterable[str]) -> Decision | None:
        """When nothing is left of ``versions``: the decision to answer the package with."""
        listed = list(versions)
        if self.whole is not None:
            return Decision(BLOCKED, "*", self.whole.summary, self.whole.advisory)
        if not listed or any(v not in self.withheld for v in listed):
            return None
        decisions = [self.withheld[v] for v in listed]
        blocked = [d for d in decisions if d.rule == BLOCKED]
        return (blocked or decisions)[-1]


def package_denial_message(name: str, decision: Decision) -> str:
    if decision.version == "*":
        return f"{name} is blocked: {decision.reason} ({decision.advisory})"
    return f"{name}: no version may be installed; newest: {decision.message(name)}"


NOTHING: Final = Evaluation()
_GLOB_SPECIALS = re.compile(r"[*?\[]")


@dataclass(frozen=True, slots=True)
class AgeRule:
    """The minimum release age per ecosystem (0 = off) and the exempt package globs."""

    npm: float = 0.0
    pypi: float = 0.0
    exempt: tuple[str, ...] = ()

    def age_for(self, ecosystem: str, name: str) -> float:
        age = self.npm if ecosystem == NPM else self.pypi
        if age and self.exempt and self.is_exempt(ecosystem, name):
            return 0.0
        return age

    def is_exempt(self, ecosystem: str, name: str) -> bool:
        compared = package_key(ecosystem, name) if ecosystem == PYPI else name
        for pattern in self.exempt:
            glob = package_key(ecosystem, pattern) if ecosystem == PYPI else pattern
            if _GLOB_SPECIALS.search(glob):
                if fnmatch.fnmatchcase(compared, glob):
                    return True
            elif compared == glob:
                return True
        return False


class Engine:
    """Blocklist + age rule -> decisions; counts every decision it makes."""

    def __init__(
        self,
        blocklist: Blocklist | None,
        age: AgeRule,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.blocklist = blocklist
        self.age = age
        self.clock = clock

    @property
    def enabled(self) -> bool:
        return (self.blocklist is not None and self.blocklist.configured) or bool(
            self.age.npm or self.age.pypi
        )

    @property
    def generation(self) -> int:
        return self.blocklist.generation if self.blocklist is not None else 0

    def needs_times(self, ecosystem: str, name: str) -> bool:
        return self.age.age_for(ecosystem, name) > 0

    def evaluate(
        self,
        ecosystem: str,
        name: str,
        versions: Iterable[tuple[str, float | None]],
        now: float | None = None,
    ) -> Evaluation:
        """Decide for every (version, publish time) of a package."""
        now = self.clock() if now is None else now
        entries: tuple[Entry, ...] | None = None
        key = package_key(ecosystem, name)
        index = self.blocklist.index if self.blocklist is not None else None
        if index is not None:
            entries = index.lookup(ecosystem, key)
        age = self.age.age_for(ecosystem, name)
        if not entries and not age:
            return NOTHING
        whole = None
        if entries:
            whole = next(
                (
                    e
                    for e in entries
                    if e.whole and not index.allows.get((ecosystem, key))  # type: ignore[union-attr]
                ),
                None,
            )
        withheld: dict[str, Decision] = {}
        valid_until = FOREVER
        unknown = 0
        for version, published in versions:
            if entries:
                assert index is not None
                hit = index.verdict(ecosystem, key, version)
                if hit is not None:
                    withheld[version] = Decision(BLOCKED, version, hit.summary, hit.advisory)
                    continue
            if age:
                if published is None:
                    unknown += 1
                    continue
                until = published + age
                if until > now:
                    reason = (
                        f"{iso(until)}: published {format_age(now - published)} ago, "
                        f"minimum age {format_duration(age)}"
                    )
                    withheld[version] = Decision(QUARANTINED, version, reason, until=until)
                    valid_until = min(valid_until, until)
        return Evaluation(withheld, valid_until, unknown, whole)
