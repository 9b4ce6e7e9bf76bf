"""The supply-chain engine behind the registry pipeline's policy seam (``proxy.registry.policy``).

``SupplyChainPolicy.decide`` turns the facts of one package (versions with publish times, npm's
dist-tags, PyPI's files) into the pipeline's ``Decision``: each withheld version with the
``Refusal`` a direct request for it gets (the messages SPEC 15 prescribes), the files of withheld
PyPI releases, npm's dist-tags moved off withheld versions, a refusal of the whole package when
nothing is left (or a whole-package block), and when the answer must be made again (the first
quarantine to end).  ``applied`` counts and logs every decision that changed an answer.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Final

from tokenapi.store import Token

from ..registry.policy import (
    ALLOW,
    Decision,
    Ecosystem,
    PackageFacts,
    Refusal,
    RefusalKind,
)
from . import npmview
from .policy import BLOCKED, Engine, package_denial_message
from .policy import Decision as Withheld
from .versions import NPM, PYPI

log = logging.getLogger("pkgate.policy")

RULES: Final[Mapping[str, str]] = {BLOCKED: "blocklist", "quarantined": "min_release_age"}
KINDS: Final[Mapping[str, RefusalKind]] = {
    BLOCKED: RefusalKind.BLOCKED,
    "quarantined": RefusalKind.QUARANTINED,
}
FILTERED: Final = "filtered"
REFUSED: Final = "refused"


def refusal(withheld: Withheld, message: str) -> Refusal:
    return Refusal(
        kind=KINDS[withheld.rule],
        message=message,
        rule=RULES[withheld.rule],
        advisory=withheld.advisory,
    )


class SupplyChainPolicy:
    """``proxy.registry.policy.Policy`` backed by the blocklist and the release-age rule."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._blocklist = engine.blocklist
        # Read on every registry request: plain attributes, fixed for the process's life.
        self.active = engine.enabled
        self.needs_publish_times = bool(engine.age.npm or engine.age.pypi)
        # (ecosystem, rule, action) -> versions withheld; ecosystem -> versions kept unknown.
        self.decisions: dict[tuple[str, str, str], int] = {}
        self.unknown_times: dict[str, int] = {NPM: 0, PYPI: 0}

    @property
    def generation(self) -> int:
        blocklist = self._blocklist
        return 0 if blocklist is None else blocklist.generation

    def decide(self, facts: PackageFacts) -> Decision:
        ecosystem = str(facts.ecosystem)
        name = facts.name
        published = facts.published
        evaluation = self.engine.evaluate(ecosystem, name, published.items())
        if evaluation.unknown_times:
            self.unknown_times[ecosystem] = (
                self.unknown_times.get(ecosystem, 0) + evaluation.unknown_times
            )
        if not evaluation.withheld and evaluation.whole is None:
            return ALLOW
        valid_until = None if math.isinf(evaluation.valid_until) else evaluation.valid_until
        denied = evaluation.denial(name, published)
        if denied is not None:
            whole = refusal(denied, package_denial_message(name, denied))
            return Decision(refusal=whole, valid_until=valid_until)
        removed = {v: refusal(w, w.message(name)) for v, w in evaluation.withheld.items()}
        removed_files = {
            f.filename: removed[f.version]
            for f in facts.files
            if f.version is not None and f.version in removed
        }
        dist_tags = None
        tags = facts.dist_tags
        if facts.ecosystem is Ecosystem.NPM and any(t in removed for t in tags.values()):
            remaining = [v for v in published if v not in removed]
            dist_tags = npmview.retag(tags, remaining, removed)
        return Decision(
            removed=removed,
            removed_files=removed_files,
            dist_tags=dist_tags,
            valid_until=valid_until,
        )

    def applied(
        self,
        token: Token | None,
        facts: PackageFacts,
        decision: Decision,
        version: str | None,
    ) -> None:
        """Count and log a decision that changed an answer (one line per rule)."""
        ecosystem = str(facts.ecosystem)
        token_id = token.id if token is not None else "-"
        listed: dict[str, Refusal]
        if version is not None or decision.refusal is not None:
            action = REFUSED
            why = decision.refusal_for(version)
            if why is None:
                return
            listed = {version or "*": why}
        else:
            action = FILTERED
            listed = dict(decision.removed)
        by_rule: dict[tuple[str, str], list[str]] = {}
        advisories: dict[str, set[str]] = {}
        for listed_version, why in listed.items():
            by_rule.setdefault((why.rule, why.kind.value), []).append(listed_version)
            if why.advisory:
                advisories.setdefault(why.rule, set()).add(why.advisory)
        for (rule, kind), versions in by_rule.items():
            key = (ecosystem, kind, action)
            self.decisions[key] = self.decisions.get(key, 0) + len(versions)
            log.info(
                "policy %s token=%s ecosystem=%s package=%s version=%s rule=%s advisory=%s",
                action,
                token_id,
                ecosystem,
                facts.name,
                ",".join(versions),
                rule,
                ",".join(sorted(advisories.get(rule, ()))) or "-",
            )
