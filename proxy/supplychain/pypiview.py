"""The PyPI side of the policy: project pages without withheld files (pure functions).

A file's release is read from its name (PEP 427 wheels, PEP 625 sdists; older sdists and eggs by
their last ``-``); a release is as old as its first upload (PEP 700 ``upload-time``).  Files of a
withheld release leave the page, and the release leaves ``versions``.  The HTML form is filtered
line by line: pkgate renders one anchor per line (``proxy.pypi.rewrite._html_page``), so a line is
dropped exactly when its anchor text is a withheld file name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from html import escape
from typing import Any

import orjson
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    parse_sdist_filename,
    parse_wheel_filename,
)

from ..pypi.rewrite import METADATA_SUFFIX
from .policy import Decision, Engine, Evaluation, parse_time
from .versions import PYPI

_OLD_SDISTS = (".tar.gz", ".tar.bz2", ".tar.xz", ".zip", ".tgz", ".tar")


def version_of(filename: str) -> str | None:
    """The release a distribution file belongs to, None when its name does not say."""
    filename = filename.removesuffix(METADATA_SUFFIX)
    lowered = filename.lower()
    try:
        if lowered.endswith(".whl"):
            return str(parse_wheel_filename(filename)[1])
        if lowered.endswith((".tar.gz", ".zip")):
            return str(parse_sdist_filename(filename)[1])
    except (InvalidWheelFilename, InvalidSdistFilename):
        pass
    if lowered.endswith(".egg"):
        parts = filename[:-4].split("-")
        return parts[1] if len(parts) >= 2 else None
    for suffix in _OLD_SDISTS:
        if lowered.endswith(suffix):
            _, sep, version = filename[: -len(suffix)].rpartition("-")
            return version if sep and version else None
    return None


@dataclass(frozen=True, slots=True)
class PypiView:
    """What the policy makes of one project."""

    evaluation: Evaluation
    files: Mapping[str, Decision] = field(default_factory=dict)  # withheld file name -> decision
    denied: Decision | None = None

    @property
    def changes(self) -> bool:
        return bool(self.files) or self.denied is not None


def files_of_json(body: bytes) -> list[tuple[str, float | None]]:
    """(file name, upload time) of a PEP 691 project page."""
    doc = orjson.loads(body)
    files = doc.get("files") if isinstance(doc, dict) else None
    out: list[tuple[str, float | None]] = []
    for f in files if isinstance(files, list) else ():
        if isinstance(f, dict) and isinstance(f.get("filename"), str):
            out.append((f["filename"], parse_time(f.get("upload-time"))))
    return out


def view(
    engine: Engine,
    name: str,
    files: Iterable[tuple[str, float | None]],
    now: float | None = None,
) -> PypiView:
    """Apply the policy to a project's files (name, upload time)."""
    releases: dict[str, float | None] = {}
    by_file: dict[str, str] = {}
    for filename, uploaded in files:
        version = version_of(filename)
        if version is None:
            continue
        by_file[filename] = version
        known = releases.get(version)
        if version not in releases or (
            uploaded is not None and (known is None or uploaded < known)
        ):
            releases[version] = uploaded
    evaluation = engine.evaluate(PYPI, name, releases.items(), now)
    if not evaluation.withheld and evaluation.whole is None:
        return PypiView(evaluation)
    withheld = {f: evaluation.withheld[v] for f, v in by_file.items() if v in evaluation.withheld}
    return PypiView(evaluation, withheld, evaluation.denial(name, releases))


def filter_json(body: bytes, pv: PypiView) -> bytes:
    doc: dict[str, Any] = orjson.loads(body)
    files = doc.get("files")
    if isinstance(files, list):
        doc["files"] = [
            f for f in files if not (isinstance(f, dict) and f.get("filename") in pv.files)
        ]
    versions = doc.get("versions")
    if isinstance(versions, list):
        doc["versions"] = [v for v in versions if v not in pv.evaluation.withheld]
    return orjson.dumps(doc)


def filter_html(body: bytes, pv: PypiView) -> bytes:
    endings = tuple(f">{escape(f)}</a><br />".encode() for f in pv.files)
    lines = body.split(b"\n")
    return b"\n".join(line for line in lines if not line.endswith(endings))


def decision_for_file(pv: PypiView, filename: str) -> Decision | None:
    """The decision for a direct file (or ``.metadata``) request, None when it may be served."""
    found = pv.files.get(filename.removesuffix(METADATA_SUFFIX))
    if found is not None:
        return found
    return pv.denied if pv.evaluation.whole is not None else None


__all__ = [
    "PypiView",
    "decision_for_file",
    "files_of_json",
    "filter_html",
    "filter_json",
    "version_of",
    "view",
]
