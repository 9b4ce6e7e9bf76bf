"""The npm side of the policy: packuments with withheld versions taken out (pure functions).

Withheld versions leave ``versions`` and ``time``; a dist-tag that pointed at one moves to the
highest remaining version of the same kind (``latest`` and any tag on a release: the highest
release by semver precedence; a tag on a prerelease: the highest prerelease) or is dropped when
none remains.
Tarball file names are mapped to their versions so tarball requests can be answered too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from .policy import Decision, Engine, Evaluation, parse_time
from .versions import NPM, is_prerelease, npm_key


@dataclass(frozen=True, slots=True)
class NpmView:
    """What the policy makes of one packument."""

    evaluation: Evaluation
    body: bytes | None  # the filtered packument; None: unchanged
    files: Mapping[str, Decision] = field(default_factory=dict)  # withheld tarball -> decision
    denied: Decision | None = None  # every version withheld: answer the package with this


def publish_times(doc: Mapping[str, Any]) -> dict[str, float | None]:
    """``time`` of a full packument as epoch seconds per version."""
    times = doc.get("time")
    if not isinstance(times, dict):
        return {}
    return {k: parse_time(v) for k, v in times.items() if k not in ("created", "modified")}


def _file_of(manifest: Any) -> str | None:
    dist = manifest.get("dist") if isinstance(manifest, dict) else None
    tarball = dist.get("tarball") if isinstance(dist, dict) else None
    if not isinstance(tarball, str):
        return None
    return tarball.split("?", 1)[0].rstrip("/").rpartition("/")[2] or None


def _highest(versions: list[str], prerelease: bool) -> str | None:
    best: str | None = None
    best_key = None
    for version in versions:
        key = npm_key(version)
        if key is None or (key.prerelease is not None) != prerelease:
            continue
        if best_key is None or key > best_key:
            best, best_key = version, key
    return best


def retag(
    tags: Mapping[str, Any], remaining: list[str], withheld: Mapping[str, Any]
) -> dict[str, Any]:
    """dist-tags after ``withheld`` versions left (see the module docstring)."""
    out: dict[str, Any] = {}
    for tag, target in tags.items():
        if not isinstance(target, str) or target not in withheld:
            out[tag] = target
            continue
        prerelease = tag != "latest" and is_prerelease(NPM, target)
        moved = _highest(remaining, prerelease)
        if moved is not None:
            out[tag] = moved
    return out


def view(
    engine: Engine,
    name: str,
    body: bytes,
    times: Mapping[str, float | None] | None = None,
    now: float | None = None,
) -> NpmView:
    """Apply the policy to a (rewritten) packument body, full or abbreviated.

    ``times`` are the publish times from the full packument; None means take them from ``body``.
    """
    doc = orjson.loads(body)
    versions = doc.get("versions") if isinstance(doc, dict) else None
    if not isinstance(versions, dict):
        return NpmView(engine.evaluate(NPM, name, (), now), None)
    if times is None:
        times = publish_times(doc) if engine.needs_times(NPM, name) else {}
    evaluation = engine.evaluate(NPM, name, ((v, times.get(v)) for v in versions), now)
    if not evaluation.withheld and evaluation.whole is None:
        return NpmView(evaluation, None)
    denied = evaluation.denial(name, versions)
    files: dict[str, Decision] = {}
    for version, decision in evaluation.withheld.items():
        file = _file_of(versions.get(version))
        if file is not None:
            files[file] = decision
    if denied is not None:
        for version, manifest in versions.items():
            file = _file_of(manifest)
            if file is not None and file not in files:
                files[file] = evaluation.withheld.get(version, denied)
        return NpmView(evaluation, None, files, denied)
    remaining = [v for v in versions if v not in evaluation.withheld]
    doc["versions"] = {v: versions[v] for v in remaining}
    time_field = doc.get("time")
    if isinstance(time_field, dict):
        doc["time"] = {k: t for k, t in time_field.items() if k not in evaluation.withheld}
    tags = doc.get("dist-tags")
    if isinstance(tags, dict):
        doc["dist-tags"] = retag(tags, remaining, evaluation.withheld)
    return NpmView(evaluation, orjson.dumps(doc), files)
