"""The ``blocklist_file``: manual ``[[block]]`` entries and ``[[allow]]`` exceptions (TOML).

```toml
[[block]]
ecosystem = "npm"          # or "pypi"
package = "left-pad"
versions = ["1.3.0"]       # or "*" for every version
reason = "pulled by our security team"
id = "SEC-42"              # optional; shown as the advisory id (default "manual")

[[allow]]                  # overrides every feed and every [[block]]: a false positive
ecosystem = "pypi"
package = "requests"
versions = "*"
```
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from .osv import MAX_ID, Entry, one_line, package_key
from .versions import ECOSYSTEMS, canonical_version

MAX_FILE: Final = 16 * 1024**2
MANUAL_ID: Final = "manual"


class ManualError(ValueError):
    """The file cannot be used; the message names the problem (and the entry's number)."""


@dataclass(frozen=True, slots=True)
class Allow:
    ecosystem: str
    package: str
    versions: frozenset[str] | None  # None: every version

    def covers(self, version: str) -> bool:
        return self.versions is None or canonical_version(self.ecosystem, version) in self.versions


@dataclass(frozen=True, slots=True)
class Manual:
    blocks: tuple[Entry, ...] = ()
    allows: tuple[Allow, ...] = ()


def _target(table: Any, what: str, number: int) -> tuple[str, str, frozenset[str] | None]:
    where = f"[[{what}]] #{number}"
    if not isinstance(table, dict):
        raise ManualError(f"{where} is not a table")
    ecosystem = table.get("ecosystem")
    if not isinstance(ecosystem, str) or ecosystem.strip().lower() not in ECOSYSTEMS:
        raise ManualError(f'{where}: ecosystem must be "npm" or "pypi"')
    ecosystem = ecosystem.strip().lower()
    package = table.get("package")
    if not isinstance(package, str) or not package.strip():
        raise ManualError(f"{where}: package must be a non-empty string")
    versions = table.get("versions", "*")
    if versions == "*":
        chosen: frozenset[str] | None = None
    elif isinstance(versions, list) and versions and all(isinstance(v, str) for v in versions):
        chosen = frozenset(canonical_version(ecosystem, v.strip()) for v in versions)
    else:
        raise ManualError(f'{where}: versions must be "*" or a non-empty list of strings')
    return ecosystem, package_key(ecosystem, package.strip()), chosen


def parse(data: bytes, source: str = "blocklist_file") -> Manual:
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ManualError(f"not valid TOML ({exc})") from None
    unknown = sorted(set(doc) - {"block", "allow"})
    if unknown:
        raise ManualError(f"unknown key {unknown[0]!r} (expected [[block]] and [[allow]])")
    blocks: list[Entry] = []
    for number, table in enumerate(doc.get("block", []), start=1):
        ecosystem, package, versions = _target(table, "block", number)
        reason = table.get("reason", "blocked by the administrator")
        advisory = table.get("id", MANUAL_ID)
        if not isinstance(reason, str) or not isinstance(advisory, str) or not advisory:
            raise ManualError(f"[[block]] #{number}: reason and id must be strings")
        blocks.append(
            Entry(
                advisory=one_line(advisory, MAX_ID),
                summary=one_line(reason) or "blocked by the administrator",
                ecosystem=ecosystem,
                package=package,
                versions=versions or frozenset(),
                whole=versions is None,
                source=source,
            )
        )
    allows = tuple(
        Allow(*_target(table, "allow", number))
        for number, table in enumerate(doc.get("allow", []), start=1)
    )
    return Manual(tuple(blocks), allows)


def load(path: Path) -> Manual:
    """Read and parse the file (raises ManualError, also when it cannot be read)."""
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_FILE + 1)
    except OSError as exc:
        raise ManualError(f"cannot read ({exc.strerror or exc})") from None
    if len(data) > MAX_FILE:
        raise ManualError("file is larger than the size bound")
    return parse(data, str(path))
