"""Download history (SPEC 16): what a served file is, listing it newest first, pruning it.

The registry side calls ``record_npm_tarball`` / ``record_pypi_file`` after an artifact was
answered to a token; both only append to the recorder's memory, which the last-used flush writes.
Listings merge what memory still holds over the store, so a download shows up at once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import orjson
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from .errors import InvalidInput, StoreUnavailable
from .lastused import UsageRecorder
from .store import Download, DownloadQuery, DownloadRow, Store

log = logging.getLogger(__name__)

ECOSYSTEMS = ("npm", "pypi")
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
PRUNE_EVERY = 3600.0
DAY = 86400.0

_SDIST_FALLBACK = (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tbz", ".zip", ".tar")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# --- what a file is ------------------------------------------------------------------------


def pypi_version(text: str) -> str:
    """A PyPI version as compared and stored: PEP 440 normal form when it parses."""
    try:
        return str(Version(text))
    except InvalidVersion:
        return text


def pypi_name(text: str) -> str:
    return canonicalize_name(text)


@functools.lru_cache(maxsize=8192)
def pypi_file(filename: str) -> tuple[str, str] | None:
    """(normalised project, normalised version) of a wheel or sdist file name, else None."""
    lowered = filename.lower()
    try:
        if lowered.endswith(".whl"):
            wheel = parse_wheel_filename(filename)
            return str(wheel[0]), str(wheel[1])
        if lowered.endswith((".tar.gz", ".zip")):
            sdist = parse_sdist_filename(filename)
            return str(sdist[0]), str(sdist[1])
    except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
        pass
    # Legacy files (old sdist suffixes, names packaging rejects): project-version<suffix>.
    suffix = next((s for s in _SDIST_FALLBACK if lowered.endswith(s)), None)
    if suffix is None and lowered.endswith((".whl", ".egg")):
        suffix = filename[filename.rfind(".") :]
        name, sep, rest = filename.partition("-")
        version = rest.partition("-")[0].removesuffix(suffix)
    elif suffix is not None:
        name, sep, version = filename[: -len(suffix)].rpartition("-")
    else:
        return None
    if not sep or not name or not version:
        return None
    return canonicalize_name(name), pypi_version(version)


def npm_tarball_version(package: str, filename: str) -> str | None:
    """The version in ``<unscoped name>-<version>.tgz``, or None when the name does not fit."""
    base = package.rpartition("/")[2]
    if not filename.endswith(".tgz") or not filename.startswith(base + "-"):
        return None
    version = filename[len(base) + 1 : -len(".tgz")]
    return version or None


def record_npm_tarball(recorder: UsageRecorder, token_id: str, package: str, filename: str) -> None:
    version = npm_tarball_version(package, filename)
    if version is not None:
        recorder.record_download(token_id, "npm", package, version, filename)


def record_pypi_file(recorder: UsageRecorder, token_id: str, filename: str) -> None:
    if filename.endswith(".metadata"):
        return
    parsed = pypi_file(filename)
    if parsed is not None:
        recorder.record_download(token_id, "pypi", parsed[0], parsed[1], filename)


# --- listing ---------------------------------------------------------------------------------


def encode_cursor(row: Download) -> str:
    raw = orjson.dumps([row.downloaded_at, row.id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str) -> tuple[float, str]:
    bad = InvalidInput("cursor is not one this server gave out")
    if len(text) > 200:
        raise bad
    try:
        data = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        raise bad from None
    if (
        not isinstance(data, list)
        or len(data) != 2
        or not isinstance(data[0], int | float)
        or isinstance(data[0], bool)
        or not isinstance(data[1], str)
    ):
        raise bad
    return float(data[0]), data[1]


def parse_time(text: str, name: str) -> float:
    """ISO 8601 (``2026-12-01``, ``2026-12-01T10:00:00Z``) or Unix seconds; InvalidInput else."""
    value = text.strip()
    try:
        return float(value) if re.fullmatch(r"\d{1,12}(\.\d+)?", value) else _iso(value)
    except ValueError:
        raise InvalidInput(f"{name} must be an ISO 8601 time or Unix seconds") from None


def _iso(value: str) -> float:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _text(params: Mapping[str, str], name: str, max_len: int = 214) -> str | None:
    raw = params.get(name)
    if raw is None:
        return None
    value = raw.strip()
    if not value or len(value) > max_len or _CONTROL.search(value):
        raise InvalidInput(f"{name} must be 1 to {max_len} printable characters")
    return value


def build_query(
    params: Mapping[str, str],
    allowed: Iterable[str],
    *,
    email: Callable[[str], str] | None = None,
) -> DownloadQuery:
    """A store query from request parameters; InvalidInput names the first bad one."""
    allowed = set(allowed) | {"limit", "cursor"}
    for key in params:
        if key not in allowed:
            shown = key if re.fullmatch(r"[A-Za-z_]{1,24}", key) else "?"
            raise InvalidInput(f"Unknown query parameter: {shown!r}")
    ecosystem = _text(params, "ecosystem", 16)
    if ecosystem is not None and ecosystem not in ECOSYSTEMS:
        raise InvalidInput(f"ecosystem must be one of: {', '.join(ECOSYSTEMS)}")
    package = _text(params, "package")
    version = _text(params, "version", 128)
    if package is not None and ecosystem == "pypi":
        package = pypi_name(package)
    if version is not None and ecosystem == "pypi":
        version = pypi_version(version)
    raw_email = params.get("email")
    found_email = None
    if raw_email is not None and email is not None:
        found_email = email(raw_email)
    since = parse_time(params["since"], "since") if "since" in params else None
    limit = DEFAULT_LIMIT
    if "limit" in params:
        raw = params["limit"].strip()
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
            raise InvalidInput(f"limit must be a whole number from 1 to {MAX_LIMIT}")
        limit = int(raw)
    after = decode_cursor(params["cursor"]) if "cursor" in params else None
    return DownloadQuery(
        email=found_email,
        ecosystem=ecosystem,
        package=package,
        version=version,
        since=since,
        after=after,
        limit=limit,
    )


def _package_variants(query: DownloadQuery) -> list[DownloadQuery]:
    """Without an ecosystem a package or version filter means npm's spelling or PyPI's."""
    if query.ecosystem is not None or (query.package is None and query.version is None):
        return [query]
    npm = replace(query, ecosystem="npm")
    pypi = replace(
        query,
        ecosystem="pypi",
        package=None if query.package is None else pypi_name(query.package),
        version=None if query.version is None else pypi_version(query.version),
    )
    return [npm, pypi]


def _matches(d: Download, q: DownloadQuery) -> bool:
    if q.token_id is not None and d.token_id != q.token_id:
        return False
    if q.ecosystem is not None and d.ecosystem != q.ecosystem:
        return False
    if q.package is not None and d.package != q.package:
        return False
    if q.version is not None and d.version != q.version:
        return False
    if q.since is not None and d.downloaded_at < q.since:
        return False
    if q.before is not None and d.downloaded_at >= q.before:
        return False
    if q.after is not None:
        at, last = q.after
        if not (d.downloaded_at < at or (d.downloaded_at == at and d.id < last)):
            return False
    return True


def _order(row: DownloadRow) -> tuple[float, str]:
    return row.download.downloaded_at, row.download.id


@dataclass(frozen=True, slots=True)
class Page:
    rows: list[DownloadRow]
    next_cursor: str | None


async def history(store: Store, recorder: UsageRecorder | None, query: DownloadQuery) -> Page:
    """One page of the history, newest first, memory merged over the store."""
    variants = _package_variants(query)
    probe = [replace(v, limit=query.limit + 1) for v in variants]
    found: dict[str, DownloadRow] = {}
    for q in probe:
        for row in await store.list_downloads(q):
            found[row.download.id] = row
    if recorder is not None:
        pending = [
            d
            for d in recorder.pending_downloads()
            if d.id not in found and any(_matches(d, q) for q in variants)
        ]
        if pending:
            owners = await store.token_owners(d.token_id for d in pending)
            for d in pending:
                owner = owners.get(d.token_id)
                if owner is None:
                    continue
                name, prefix, user_id, email = owner
                if query.user_id is not None and user_id != query.user_id:
                    continue
                if query.email is not None and email.lower() != query.email.lower():
                    continue
                found[d.id] = DownloadRow(d, name, prefix, user_id, email)
    rows = sorted(found.values(), key=_order, reverse=True)
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    return Page(rows, encode_cursor(rows[-1].download) if more and rows else None)


# --- pruning ---------------------------------------------------------------------------------


async def prune(store: Store, days: int, now: float | None = None) -> int:
    """Delete history older than ``days`` days (counted back from ``now``), and the tokens that
    expired before then: every download of such a token is older than that, so no breach
    notification can still need it (CI tokens from OIDC are minted per job and would otherwise
    pile up in their owner's list).  Returns how many downloads went."""
    cutoff = (time.time() if now is None else now) - days * DAY
    removed = await store.prune_downloads(cutoff)
    if removed:
        log.info("pruned %d downloads older than %d days", removed, days)
    expired = await store.prune_expired_tokens(cutoff)
    if expired:
        log.info("deleted %d tokens expired more than %d days ago", expired, days)
    return removed


@contextlib.asynccontextmanager
async def pruning(
    store: Store, days: int, every: float = PRUNE_EVERY, clock: Callable[[], float] = time.time
) -> AsyncIterator[None]:
    """Prune at start-up and then every ``every`` seconds while the block runs."""

    async def loop() -> None:
        while True:
            try:
                await prune(store, days, clock())
            except StoreUnavailable as exc:
                log.warning("download history pruning failed, will retry: %s", exc)
            await asyncio.sleep(every)

    task = asyncio.create_task(loop(), name="pkgate-download-prune")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
