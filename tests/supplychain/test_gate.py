"""The engine behind the pipeline's policy seam: facts in, the pipeline's Decision out."""

from __future__ import annotations

import logging
from pathlib import Path

import orjson
import pytest

from proxy.registry.policy import (
    ALLOW,
    Ecosystem,
    FileFacts,
    PackageFacts,
    RefusalKind,
)
from proxy.settings import SettingsError, load
from proxy.supplychain.blocklist import Blocklist
from proxy.supplychain.gate import SupplyChainPolicy
from proxy.supplychain.policy import AgeRule, Engine
from proxy.supplychain.service import age_rule

from .test_engine import DAY, NOW, mal


async def policy_with(tmp_path: Path, records: list[object], age: AgeRule) -> SupplyChainPolicy:
    feed = tmp_path / "feed.json"
    feed.write_bytes(orjson.dumps(records))
    blocklist = Blocklist([str(feed)], data_dir=tmp_path / "data")
    await blocklist.start()
    await blocklist.close()
    return SupplyChainPolicy(Engine(blocklist, age, clock=lambda: NOW))


async def test_npm_facts_become_removals_refusals_and_moved_tags(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    policy = await policy_with(
        tmp_path, [mal("MAL-1", "pkg", versions=["1.2.0"], summary="Steals")], AgeRule(npm=DAY)
    )
    assert policy.active
    assert policy.needs_publish_times
    facts = PackageFacts(
        Ecosystem.NPM,
        "pkg",
        {"1.0.0": NOW - 9 * DAY, "1.2.0": NOW - 8 * DAY, "1.3.0": NOW - 3600, "1.4.0": None},
        {"latest": "1.3.0", "old": "1.2.0", "first": "1.0.0"},
    )
    decision = policy.decide(facts)
    assert set(decision.removed) == {"1.2.0", "1.3.0"}
    blocked = decision.removed["1.2.0"]
    assert blocked.kind is RefusalKind.BLOCKED
    assert blocked.message == "pkg@1.2.0 is blocked: Steals (MAL-1)"
    assert (blocked.rule, blocked.advisory) == ("blocklist", "MAL-1")
    young = decision.removed["1.3.0"]
    assert young.kind is RefusalKind.QUARANTINED
    assert young.rule == "min_release_age"
    assert "minimum age 1d" in young.message
    assert decision.dist_tags == {"latest": "1.4.0", "old": "1.4.0", "first": "1.0.0"}
    assert decision.valid_until == NOW - 3600 + DAY
    assert policy.unknown_times["npm"] == 1  # 1.4.0 has no time: kept, counted

    class Tok:
        id = "tok-123"

    with caplog.at_level(logging.INFO, logger="pkgate.policy"):
        policy.applied(Tok(), facts, decision, None)  # type: ignore[arg-type]
        policy.applied(None, facts, decision, "1.2.0")
    lines = [r.getMessage() for r in caplog.records]
    assert any(
        "filtered token=tok-123 ecosystem=npm package=pkg version=1.2.0 rule=blocklist "
        "advisory=MAL-1" in line
        for line in lines
    )
    assert any("refused token=- ecosystem=npm package=pkg version=1.2.0" in x for x in lines)
    assert policy.decisions[("npm", "blocked", "filtered")] == 1
    assert policy.decisions[("npm", "quarantined", "filtered")] == 1
    assert policy.decisions[("npm", "blocked", "refused")] == 1


async def test_nothing_left_refuses_the_package(tmp_path: Path) -> None:
    policy = await policy_with(tmp_path, [mal("MAL-2", "evil", summary="Malware")], AgeRule())
    decision = policy.decide(PackageFacts(Ecosystem.NPM, "evil", {"1.0.0": None}))
    assert decision.refusal is not None
    assert decision.refusal.message == "evil is blocked: Malware (MAL-2)"
    assert decision.refusal_for("1.0.0") is decision.refusal
    untouched = policy.decide(PackageFacts(Ecosystem.NPM, "fine", {"1.0.0": None}))
    assert untouched is ALLOW


async def test_pypi_files_of_withheld_releases_are_removed(tmp_path: Path) -> None:
    policy = await policy_with(
        tmp_path, [mal("MAL-3", "Demo_App", "PyPI", versions=["2.0"])], AgeRule(pypi=3 * DAY)
    )
    files = (
        FileFacts("demo_app-1.0.0-py3-none-any.whl", "1.0.0", NOW - 30 * DAY),
        FileFacts("demo_app-2.0.0-py3-none-any.whl", "2.0.0", NOW - 20 * DAY),
        FileFacts("demo_app-3.0.0-py3-none-any.whl", "3.0.0", NOW - DAY),
    )
    published = {f.version: f.uploaded for f in files if f.version}
    decision = policy.decide(PackageFacts(Ecosystem.PYPI, "demo-app", published, files=files))
    assert set(decision.removed) == {"2.0.0", "3.0.0"}  # PEP 440: 2.0 == 2.0.0
    assert set(decision.removed_files) == {
        "demo_app-2.0.0-py3-none-any.whl",
        "demo_app-3.0.0-py3-none-any.whl",
    }
    assert decision.dist_tags is None


def test_exempt_globs_skip_the_age_rule() -> None:
    age = AgeRule(npm=3 * DAY, pypi=3 * DAY, exempt=("@corp/*", "Internal_Tool"))
    policy = SupplyChainPolicy(Engine(None, age, clock=lambda: NOW))
    young = {"1.0.0": NOW - 60}
    assert policy.decide(PackageFacts(Ecosystem.NPM, "@corp/lib", young)) is ALLOW
    assert policy.decide(PackageFacts(Ecosystem.PYPI, "internal-tool", young)) is ALLOW
    withheld = policy.decide(PackageFacts(Ecosystem.NPM, "@other/lib", young))
    assert withheld.refusal is not None
    assert withheld.refusal.kind is RefusalKind.QUARANTINED


def test_settings_spell_durations_and_per_ecosystem_ages() -> None:
    settings = load(
        env={
            "PKGATE_MIN_RELEASE_AGE": "3d",
            "PKGATE_PYPI_MIN_RELEASE_AGE": "0",
            "PKGATE_BLOCKLIST_REFRESH": "10m",
            "PKGATE_MIN_RELEASE_AGE_EXEMPT": "@corp/*, internal-*",
        }
    )
    rule = age_rule(settings)
    assert (rule.npm, rule.pypi) == (3 * DAY, 0.0)
    assert rule.exempt == ("@corp/*", "internal-*")
    assert settings.blocklist_refresh == 600.0
    assert load(env={"PKGATE_NPM_MIN_RELEASE_AGE": "72h"}).npm_min_release_age == 3 * DAY
    assert load(env={}).blocklist_refresh == 3600.0  # default 1h
    with pytest.raises(SettingsError, match="min_release_age"):
        load(env={"PKGATE_MIN_RELEASE_AGE": "3 weeks"})
