"""npm dist-tags after the policy withheld versions (pure functions).

A dist-tag that pointed at a withheld version moves to the highest remaining version of the same
kind (``latest`` and any tag on a release: the highest
release by semver precedence; a tag on a prerelease: the highest prerelease) or is dropped when
none remains.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .versions import NPM, is_prerelease, npm_key


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
