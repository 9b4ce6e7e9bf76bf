"""The policy stage of the registry pipeline: which versions of a package may be served.

Both registries ask the same question at the same two places (SPEC §14, §15):

- **metadata** (npm packuments full and abbreviated, npm version documents and dist-tags, PyPI
  project pages): ``Policy.decide(facts)`` gets what the document says about the package (its
  versions with their publish times, npm's dist-tags, PyPI's files with their versions and PEP 700
  upload times) and answers a ``Decision``: versions to remove, each with the ``Refusal`` a direct
  request for it gets; the dist-tags to publish instead (npm); or a refusal of the whole package.
  The pipeline removes what the decision says from the answer (``ecosystem`` modules know how).
- **artifacts** (npm tarballs, PyPI files and their ``.metadata``): the same decision for the
  artifact's package, looked up by the artifact's version; a removed version answers 403.

A refusal is answered ``403 {"error": refusal.message}`` with ``X-Pkgate-Policy: <kind>``.

Decisions are memoised by the pipeline per cached entry and policy ``generation``: a policy whose
rules change (a feed refresh) bumps ``generation`` and every cached answer is decided again on its
next request.  A decision may also say until when it holds (``valid_until``, wall-clock seconds),
for rules that depend on time such as a minimum release age.  ``decide`` must be cheap and must not
block (it runs on the event loop); it is called once per (entry, generation), not per request.

``applied`` is called on every answer a decision changed (a version removed, a refusal), with the
token that asked: for counting and logging decisions.  Nothing is called when the decision is
``ALLOW``, so an inactive policy costs one attribute read per request.

The default ``NoPolicy`` allows everything.  The supply-chain engine (``proxy.supplychain``)
implements this protocol and is installed at start-up as ``app[registry_key].policy = engine``
(``proxy.registry.pipeline.Registry``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol

from tokenapi.store import Token

POLICY_HEADER: Final = "X-Pkgate-Policy"


class Ecosystem(enum.StrEnum):
    NPM = "npm"
    PYPI = "pypi"


class RefusalKind(enum.StrEnum):
    """The value of ``X-Pkgate-Policy`` on a refusal."""

    BLOCKED = "blocked"
    QUARANTINED = "quarantined"


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why something may not be served; ``message`` is shown to the client as it is."""

    kind: RefusalKind
    message: str
    rule: str = ""  # which rule refused ("blocklist", "min_release_age", ...), for logs/metrics
    advisory: str | None = None  # an advisory id (OSV), for logs/metrics


@dataclass(frozen=True, slots=True)
class FileFacts:
    """One PyPI file: its name, the version it belongs to, its PEP 700 upload time if known."""

    filename: str
    version: str | None
    uploaded: float | None  # Unix time; None when the index did not say


@dataclass(frozen=True, slots=True)
class PackageFacts:
    """What a metadata document says about a package, for the policy to judge.

    ``name`` is the name as the ecosystem compares it (npm: exact; PyPI: normalised).
    ``published`` maps every version to its publish time (Unix seconds) or None when unknown;
    ``times_known`` is False when the document carries no publish times at all (npm's abbreviated
    form: the pipeline then takes them from the full packument if ``Policy.needs_publish_times``).
    """

    ecosystem: Ecosystem
    name: str
    published: Mapping[str, float | None]
    dist_tags: Mapping[str, str] = field(default_factory=dict)
    files: tuple[FileFacts, ...] = ()
    times_known: bool = True


@dataclass(frozen=True, slots=True)
class Decision:
    """What may be served of one package (see the module documentation)."""

    removed: Mapping[str, Refusal] = field(default_factory=dict)  # version -> why
    removed_files: Mapping[str, Refusal] = field(default_factory=dict)  # PyPI file name -> why
    dist_tags: Mapping[str, str] | None = None  # npm: the tags to publish instead; None: as is
    refusal: Refusal | None = None  # the whole package
    valid_until: float | None = None  # wall-clock time after which to decide again

    @property
    def allows_all(self) -> bool:
        return (
            not self.removed
            and not self.removed_files
            and self.dist_tags is None
            and self.refusal is None
        )

    def refusal_for(self, version: str | None) -> Refusal | None:
        """The refusal for a direct request of ``version`` (or of the package when unknown)."""
        if self.refusal is not None:
            return self.refusal
        return self.removed.get(version) if version is not None else None


ALLOW: Final = Decision()


class Policy(Protocol):
    """The rules deciding what may be served (see the module documentation)."""

    @property
    def active(self) -> bool:
        """False when every decision is ``ALLOW``: the pipeline then skips the stage."""
        ...

    @property
    def generation(self) -> int:
        """Changes whenever the rules change (decisions memoised before are then recomputed)."""
        ...

    @property
    def needs_publish_times(self) -> bool:
        """Whether decisions depend on publish times (npm abbreviated answers then fetch them)."""
        ...

    def decide(self, facts: PackageFacts) -> Decision: ...

    def applied(
        self,
        token: Token | None,
        facts: PackageFacts,
        decision: Decision,
        version: str | None,
    ) -> None:
        """A decision changed an answer for ``token`` (``version``: a direct request's)."""
        ...


class NoPolicy:
    """The default: everything may be served."""

    active: Final = False
    generation: Final = 0
    needs_publish_times: Final = False

    def decide(self, facts: PackageFacts) -> Decision:
        return ALLOW

    def applied(
        self,
        token: Token | None,
        facts: PackageFacts,
        decision: Decision,
        version: str | None,
    ) -> None:
        return None


class PolicyRefused(Exception):
    """Raised by the pipeline when a refusal answers the request (see ``proxy.errors``)."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


__all__ = [
    "ALLOW",
    "POLICY_HEADER",
    "Decision",
    "Ecosystem",
    "FileFacts",
    "NoPolicy",
    "PackageFacts",
    "Policy",
    "PolicyRefused",
    "Refusal",
    "RefusalKind",
]
